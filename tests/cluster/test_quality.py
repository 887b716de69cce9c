"""Quality scorers on the paper's 1-5 scale: heuristic (from q_* signals), classifier
(logistic regression on embeddings against a reference set), fastText label mapping."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from mixture.cluster.scorers import QualityError, to_scale
from mixture.cluster.scorers.classifier import ReferenceClassifier, read_reference_texts
from mixture.cluster.scorers.fasttext import FastTextScorer, fasttext_available, fasttext_label_scores
from mixture.cluster.scorers.heuristic import HEURISTIC_SIGNALS, Ramp, heuristic_scores
from mixture.config import ConfigError, parse_config


def test_ramp_passes_through_bad_threshold_good_in_both_directions():
    up = Ramp(0.4, 0.8, 0.95)  # higher is better (alpha words ratio)
    assert up(np.array([0.0, 0.4, 0.6, 0.8, 0.875, 0.95, 1.0])).tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1])
    down = Ramp(0.4, 0.2, 0.0)  # lower is better (duplicate-line characters)
    assert down(np.array([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])).tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ValueError):
        Ramp(0.0, 1.0, 0.5)


def test_documents_on_the_filter_thresholds_score_three():
    # every signal exactly at its published threshold -> d = 0.5 everywhere -> 1 + 4 * 0.5 = 3.0
    at = {name: np.array([ramps[0].threshold]) for name, ramps in HEURISTIC_SIGNALS.items()}
    assert heuristic_scores(at).scores.tolist() == [3.0]
    good = {name: np.array([ramps[0].good]) for name, ramps in HEURISTIC_SIGNALS.items()}
    good["q_mean_word_length"] = np.array([5.0])  # inside both sides' good range
    assert heuristic_scores(good).scores.tolist() == [5.0]
    bad = {name: np.array([ramps[0].bad]) for name, ramps in HEURISTIC_SIGNALS.items()}
    assert heuristic_scores(bad).scores.tolist() == [1.0]


def test_mean_word_length_is_two_sided():
    r = heuristic_scores({"q_mean_word_length": np.array([1.0, 3.0, 5.0, 10.0, 20.0])})
    assert r.scores.tolist() == pytest.approx([1.0, 3.0, 5.0, 3.0, 1.0])


def test_heuristic_uses_the_columns_present_and_reports_the_rest():
    sig = {
        "q_alpha_words_ratio": np.array([0.95, 0.6]),  # d 1.0, 0.25
        "q_dup_line_char_frac": np.array([0.0, 0.2]),  # d 1.0, 0.5
        "q_made_up_signal": np.array([1.0, 2.0]),
    }
    r = heuristic_scores(sig)
    assert r.used == ["q_alpha_words_ratio", "q_dup_line_char_frac"]
    assert r.ignored == ["q_made_up_signal"]
    assert r.scores.tolist() == pytest.approx([5.0, 1 + 4 * 0.375])
    assert r.scores.dtype == np.float32


def test_missing_values_are_skipped_and_all_missing_is_neutral_and_counted():
    sig = {
        "q_alpha_words_ratio": np.array([0.95, np.nan, np.nan]),
        "q_dup_line_char_frac": np.array([np.nan, 0.0, np.nan]),
    }
    r = heuristic_scores(sig)
    assert r.scores.tolist() == pytest.approx([5.0, 5.0, 3.0])
    assert r.no_signal == 1


def test_no_known_signal_is_a_clear_error_and_overrides_extend_the_table():
    with pytest.raises(QualityError, match="q_\\* quality signals"):
        heuristic_scores({"q_custom": np.array([0.5])})
    r = heuristic_scores({"q_custom": np.array([0.0, 0.5, 1.0])}, {"q_custom": (0.0, 0.5, 1.0)})
    assert r.scores.tolist() == pytest.approx([1.0, 3.0, 5.0])


def test_quality_config_checks_scorer_inputs():
    base = {"output_root": "/tmp/x", "input": {"uris": ["a"]}}
    with pytest.raises(ConfigError, match="reference_uris"):
        parse_config({**base, "cluster": {"quality": {"scorer": "classifier"}}})
    with pytest.raises(ConfigError, match="fasttext_model"):
        parse_config({**base, "cluster": {"quality": {"scorer": "fasttext"}}})
    with pytest.raises(ConfigError, match="heuristic_signals"):
        parse_config({**base, "cluster": {"quality": {"heuristic_signals": {"q_x": [0.0, 2.0, 1.0]}}}})


def test_heuristic_thresholds_follow_the_curation_filters():
    # The ramp's midpoint is the filter's limit: Gopher's minimum mean word length 3 -> 4.5 makes
    # a mean word length of 4.5 borderline (3.0) instead of good (5.0).
    sig = {"q_mean_word_length": np.array([4.5, 6.0])}
    assert heuristic_scores(sig).scores.tolist() == [5.0, 5.0]
    moved = heuristic_scores(sig, filters={"gopher_quality": {"min_mean_word_length": 4.5}})
    assert moved.scores.tolist() == pytest.approx([3.0, 5.0])
    # A filter left out keeps its default limits; a count limit maps onto its share signal.
    stop = {"q_stop_words": np.array([0.02, 0.04])}
    assert heuristic_scores(stop).scores.tolist() == pytest.approx([3.0, 1 + 4 * 0.6])
    assert heuristic_scores(stop, filters={"gopher_quality": {"min_stop_words": 4}}).scores.tolist() == pytest.approx(
        [1 + 4 * 0.25, 3.0]
    )


def test_compute_scores_reads_the_filter_limits_from_the_curated_manifest(tmp_path):
    import pyarrow as pa
    from mixture.cluster.scorers import compute_scores
    from mixture.dataset import Dataset, Manifest

    cfg = parse_config({"output_root": str(tmp_path), "input": {"uris": ["a"]}})
    meta = pa.table({"q_mean_word_length": [4.5, 6.0]})

    def curated(extra):
        return Dataset(str(tmp_path), Manifest("select", "h", {}, {}, [], extra), "0" * 64)

    limits = cfg.curate.filters.gopher_quality.model_copy(update={"min_mean_word_length": 4.5})
    default = compute_scores(cfg.cluster, 0, np.zeros((2, 4)), meta, curated({}), curated({}))
    moved = compute_scores(
        cfg.cluster,
        0,
        np.zeros((2, 4)),
        meta,
        curated({"filters": {"gopher_quality": limits.model_dump(mode="json")}}),
        curated({}),
    )
    assert default.by_name["heuristic"].tolist() == [5.0, 5.0]
    assert moved.by_name["heuristic"].tolist() == pytest.approx([3.0, 5.0])
    assert moved.notes["heuristic"]["signals_used"] == ["q_mean_word_length"]


def test_scorer_names_come_from_the_registry():
    base = {"output_root": "/tmp/x", "input": {"uris": ["a"]}}
    with pytest.raises(ConfigError, match="known: classifier, fasttext, heuristic"):
        parse_config({**base, "cluster": {"quality": {"scorer": "perplexity"}}})


def _sphere(rng, center, n, noise):
    x = center + noise * rng.standard_normal((n, len(center)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_classifier_scores_reference_like_documents_high():
    rng = np.random.default_rng(0)
    d = 16
    hq, other = np.eye(d)[0], np.eye(d)[1]
    reference = _sphere(rng, hq, 60, 0.3)
    corpus = np.vstack([_sphere(rng, hq, 100, 0.3), _sphere(rng, other, 300, 0.3)])
    clf = ReferenceClassifier(seed=0)
    s = clf.fit_score(reference, corpus, negatives=200)
    assert (clf.n_reference, clf.n_negative) == (60, 200)
    assert s.min() >= 1.0 and s.max() <= 5.0
    assert s[:100].mean() > 3.5 and s[100:].mean() < 2.0
    # the same seed gives the same negatives and so the same scores
    assert np.array_equal(ReferenceClassifier(seed=0).fit_score(reference, corpus, 200), s)
    # new documents: the mean of the two fold models
    assert clf.probability(_sphere(rng, hq, 5, 0.3)).min() > 0.5


def test_classifier_does_not_score_its_own_negatives_down():
    # reference and corpus from the same distribution: every negative is scored by the model
    # that did not see it, so negatives and unsampled documents look alike (~3.0)
    rng = np.random.default_rng(1)
    center = np.eye(16)[0]
    corpus = _sphere(rng, center, 400, 0.5)
    clf = ReferenceClassifier(seed=0)
    s = clf.fit_score(_sphere(rng, center, 200, 0.5), corpus, negatives=200)
    sampled = np.zeros(400, dtype=bool)
    sampled[np.sort(np.random.default_rng(0).choice(400, 200, replace=False))] = True
    assert abs(s[sampled].mean() - s[~sampled].mean()) < 0.3


def test_reference_files_plain_and_gzip_and_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "three", "id": 3}) + "\n")
    assert read_reference_texts([str(tmp_path)]) == ["one", "two", "three"]
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(QualityError, match="c.jsonl:2"):
        read_reference_texts([str(tmp_path / "c.jsonl")])
    (tmp_path / "d.jsonl").write_text("not json\n")
    with pytest.raises(QualityError, match="d.jsonl:1: not valid JSON"):
        read_reference_texts([str(tmp_path / "d.jsonl")])
    with pytest.raises(QualityError, match="name no files"):
        read_reference_texts([str(tmp_path / "missing*.jsonl")])


def test_fasttext_labels_map_onto_the_scale():
    # numeric labels 0..5: the expected label, 0 -> 1 and 5 -> 5
    labels = [("__label__5", "__label__0", "__label__3"), ("__label__0", "__label__5", "__label__3")]
    probs = [np.array([1.0, 0.0, 0.0]), np.array([0.5, 0.0, 0.5])]
    assert fasttext_label_scores(labels, probs).tolist() == pytest.approx([5.0, 1 + 4 * 1.5 / 5])
    # binary: 1 + 4 * P(positive)
    labels = [("__label__hq", "__label__cc"), ("__label__cc", "__label__hq")]
    probs = [np.array([0.75, 0.25]), np.array([0.9, 0.1])]
    assert fasttext_label_scores(labels, probs).tolist() == pytest.approx([4.0, 1.4])
    with pytest.raises(QualityError, match="cannot tell"):
        fasttext_label_scores([("__label__a", "__label__b")], [np.array([0.5, 0.5])])
    assert to_scale(np.array([-1.0, 0.0, 0.5, 2.0])).tolist() == [1.0, 1.0, 3.0, 5.0]


@pytest.mark.skipif(fasttext_available(), reason="fasttext is installed here")
def test_fasttext_asked_for_but_not_installed_is_a_clear_error(tmp_path):
    with pytest.raises(QualityError, match="fasttext. package is not installed"):
        FastTextScorer(str(tmp_path / "model.bin"))


@pytest.mark.skipif(not fasttext_available(), reason="the optional fasttext package is not installed")
def test_fasttext_scorer_with_a_trained_model(tmp_path, sample_records):
    import fasttext

    train = tmp_path / "train.txt"
    lines = [
        ("__label__hq " if r["source"] in ("python-docs", "debian-policy") else "__label__cc ")
        + " ".join(r["text"].split()[:200])
        for r in sample_records[:600]
    ]
    train.write_text("\n".join(lines) + "\n")
    fasttext.train_supervised(str(train), epoch=25, lr=1.0, verbose=0, seed=0, thread=1).save_model(
        str(tmp_path / "q.bin")
    )
    texts = [r["text"] for r in sample_records[600:800]]
    hq = np.array([r["source"] in ("python-docs", "debian-policy") for r in sample_records[600:800]])
    s = FastTextScorer(str(tmp_path / "q.bin")).scores(texts)
    assert s.min() >= 1.0 and s.max() <= 5.0
    assert s[hq].mean() > s[~hq].mean() + 1.0


def test_classifier_scores_batch_by_batch_as_on_the_whole_corpus():
    rng = np.random.default_rng(2)
    hq, other = np.eye(16)[0], np.eye(16)[1]
    reference = _sphere(rng, hq, 40, 0.3)
    corpus = np.vstack([_sphere(rng, hq, 80, 0.3), _sphere(rng, other, 170, 0.3)])
    whole = ReferenceClassifier(seed=5).fit_score(reference, corpus, negatives=100)
    clf = ReferenceClassifier(seed=5)
    read: list[np.ndarray] = []
    clf.fit(reference, len(corpus), 100, lambda rows: read.append(rows) or corpus[rows])
    assert len(read) == 1 and len(read[0]) == 100  # only the negatives' rows are read
    batches = np.concatenate([clf.score(corpus[s : s + 64], s) for s in range(0, len(corpus), 64)])
    assert np.allclose(batches, whole, atol=1e-6)


def test_heuristic_scores_batch_by_batch_and_sums_its_notes(tmp_path):
    import pyarrow as pa
    from mixture.cluster.scorers import ScoreBatch, ScoreSetup, open_scorers
    from mixture.dataset import Dataset, Manifest

    cfg = parse_config({"output_root": str(tmp_path), "input": {"uris": ["a"]}})
    curated = Dataset(str(tmp_path), Manifest("select", "h", {}, {}, [], {}), "0" * 64)
    values = np.array([4.5, np.nan, 6.0, 2.0, np.nan])
    meta = pa.table({"q_mean_word_length": values, "q_other": np.ones(5)})
    setup = ScoreSetup(cfg.cluster.quality, 0, 5, meta.column_names, curated, None, None)
    scoring = open_scorers(cfg.cluster, setup)
    parts = [scoring.score(ScoreBatch(s, np.zeros((2, 0)), meta.slice(s, 2)))["heuristic"] for s in (0, 2, 4)]
    whole = heuristic_scores({"q_mean_word_length": values, "q_other": np.ones(5)})
    assert np.array_equal(np.concatenate(parts), whole.scores)
    assert scoring.notes()["heuristic"] == {
        "signals_used": ["q_mean_word_length"],
        "signals_ignored": ["q_other"],
        "documents_without_signals": 2,
    }
    # a batch from a file without the column: its documents have no signal (neutral 3.0)
    assert scoring.score(ScoreBatch(5, np.zeros((1, 0)), pa.table({"q_other": [1.0]})))["heuristic"].tolist() == [3.0]
