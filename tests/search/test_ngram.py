"""The n-gram estimate (mixture.search.ngram) and the predictors built on it."""

import numpy as np
import pytest
from mixture.config import PredictorConfig
from mixture.search import ngram
from mixture.search import predictor as pred

V = 40
TARGET = [np.tile(np.arange(20), 30)]  # 0 1 2 ... 19 0 1 ...: a bigram pattern over tokens 0-19


def shards() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "match": np.tile(np.arange(20), 500),  # the target's bigrams
        "shuffled": rng.permutation(np.tile(np.arange(20), 500)),  # its unigrams, not its bigrams
        "other": rng.integers(20, 40, 10_000),  # none of its tokens
    }


def estimate(**kw) -> ngram.Estimate:
    args = dict(vocab=V, tokens=100_000, smoothing=0.01, max_tokens=5_000_000, positions=8192) | kw
    return ngram.build(shards(), ["match", "shuffled", "other"], TARGET, **args)


def test_the_cluster_with_the_targets_bigrams_ranks_first_then_its_unigrams_then_neither():
    e = estimate()(np.eye(3))
    assert e[0] > e[1] > e[2]
    assert e[0] > -0.5  # nearly every bigram predicted (log p near 0)
    assert e[2] < np.log(1 / V)  # worse than a uniform guess


def test_more_of_the_matching_cluster_is_better_all_the_way():
    share = np.linspace(0, 1, 11)
    W = np.column_stack([share, np.zeros(11), 1 - share])
    assert np.all(np.diff(estimate()(W)) > 0)


def test_weights_need_not_sum_to_one_and_chunks_agree(monkeypatch):
    est = estimate()
    W = np.random.default_rng(1).dirichlet(np.ones(3), 50)
    whole = est(W)
    assert np.allclose(est(W * 3), whole)
    monkeypatch.setattr(ngram, "CHUNK", 7)
    assert np.allclose(est(W), whole)
    with pytest.raises(ValueError, match="3 clusters"):
        est(W[:, :2])


def test_counts_are_exact_and_big_clusters_are_counted_in_blocks():
    tokens = np.random.default_rng(2).integers(0, 6, 5000)
    prev, tok = ngram.target_pairs([np.array([1, 2, 3, 1, 2])], 100)
    keys = np.unique(prev * 6 + tok)
    pair, uni, n = ngram.cluster_counts([tokens], keys, 6)
    want = [int(np.sum((tokens[:-1] == k // 6) & (tokens[1:] == k % 6))) for k in keys]
    assert pair.tolist() == want and n == 5000
    assert uni.tolist() == [int(np.sum(tokens == t)) for t in range(6)]
    assert len(ngram.sample(tokens, 5000)) == 1  # at the cap: all of it
    blocks = ngram.sample(tokens, 4999)
    assert len(blocks) == ngram.BLOCKS and sum(map(len, blocks)) <= 4999


def test_target_positions_stay_within_windows_and_are_capped():
    prev, tok = ngram.target_pairs([np.array([1, 2]), np.array([3, 4, 5])], 100)
    assert list(zip(prev, tok)) == [(1, 2), (3, 4), (4, 5)]  # no (2, 3) across the windows
    prev, tok = ngram.target_pairs([np.arange(1000)], 10)
    assert len(tok) == 10 and np.all(tok == prev + 1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        ngram.target_pairs([np.array([7])], 10)


# ------------------------------------------------------------------------------ the predictors
def runs(n: int = 24, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(seed).dirichlet(np.ones(3), n), np.random.default_rng(seed + 1).normal(0, 1, n)


def test_ngram_fits_the_estimates_scale_and_a_negative_slope_gives_no_ranking():
    est = estimate()
    X, noise = runs()
    y = 2.0 + 0.5 * est(X) + 0.01 * noise
    model = pred.fit_one("ngram", PredictorConfig(), 0, X, y, estimate=est)
    assert model.b == pytest.approx(0.5, rel=0.05)
    cfg = PredictorConfig(candidates=["ngram"], cv_folds=len(y))
    assert pred.cross_validate("ngram", X, y, cfg, estimate=est).spearman > 0.95
    assert pred.fit_one("ngram", cfg, 0, X, -y, estimate=est).b == 0.0  # clipped: a constant
    # (left-out means of the other runs: an anti-ranking, never chosen over a real one)
    assert pred.cross_validate("ngram", X, -y, cfg, estimate=est).spearman <= 0


def test_ngram_gp_learns_what_the_estimate_misses():
    est = estimate()
    X, noise = runs(30)
    y = est(X) - 3.0 * X[:, 1] ** 2 + 0.01 * noise  # the shuffled cluster hurts more than its counts say
    cfg = PredictorConfig(candidates=["ngram", "ngram_gp"], cv_folds=len(y))
    line = pred.cross_validate("ngram", X, y, cfg, estimate=est).spearman
    curve = pred.cross_validate("ngram_gp", X, y, cfg, estimate=est).spearman
    assert curve > line + 0.05 and curve > 0.9
    model = pred.fit_one("ngram_gp", cfg, 0, X, y, estimate=est)
    far, near = model.predict_std(np.array([[0.0, 0.0, 1.0]])), model.predict_std(X[:1])
    assert far[0] > near[0]


def test_without_an_estimate_the_ngram_predictors_are_left_out():
    X, noise = runs()
    y = X[:, 0] + 0.01 * noise
    fitted = pred.fit_select(X, y, PredictorConfig(candidates=["ridge", "ngram", "ngram_gp"]))
    assert set(fitted.cv) == {"ridge"}
    with pytest.raises(ValueError, match="need the n-gram estimate"):
        pred.fit_select(X, y, PredictorConfig(candidates=["ngram"]))
    fitted = pred.fit_select(X, y, PredictorConfig(candidates=["ridge", "ngram"]), estimate=estimate())
    assert set(fitted.cv) == {"ridge", "ngram"}


# ------------------------------------------------------------------------ a search's estimate
def test_a_search_estimates_on_its_targets_text_and_only_when_a_predictor_uses_it(tmp_path, sample_records):
    import gzip
    import json

    from mixture.climblab import ClimbLab
    from mixture.config import parse_config
    from mixture.dataset import open_dataset
    from mixture.search.synthetic import make_climblab

    by_source: dict[str, list[str]] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r["text"][:3000])
    sources = sorted(by_source)[:3]
    names = ["c00", "c01", "c02"]
    make_climblab(str(tmp_path / "climblab"), {c: by_source[s][:10] for c, s in zip(names, sources)}, vocab_size=300)
    target = tmp_path / "target.jsonl.gz"  # unseen documents of the second cluster's source
    with gzip.open(target, "wt") as f:
        for i, text in enumerate(by_source[sources[1]][10:16]):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    lab = ClimbLab(open_dataset(str(tmp_path / "climblab")))

    def cfg(**search):
        s = {"target": {"val_uris": [str(target)], "val_docs": 6, "val_tokens": 3000}} | search
        return parse_config({"output_root": str(tmp_path), "input": {"uris": ["unused"]}, "search": s})

    e = ngram.for_search(cfg(), lab, names)
    assert e is not None and int(np.argmax(e(np.eye(3)))) == 1  # its own source's cluster first
    assert ngram.for_search(cfg(ngram={"enabled": False}), lab, names) is None
    assert ngram.for_search(cfg(predictor={"candidates": ["ridge", "gp"]}), lab, names) is None
    tasks_only = {"val_uris": [], "tasks": [str(target)]}
    assert ngram.for_search(cfg(target=tasks_only), lab, names) is None
