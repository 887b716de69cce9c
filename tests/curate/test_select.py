"""Score once, decide many times: the `annotated` dataset of the sample corpus (`curate` on Spark,
local[2], once for the module) holds every signal the rules read, exactly; `select` decides from
it without Spark: the stored signals replay every rule like the live filters, a filter registered
from outside the package is applied by `select` alone, and a threshold change reruns only
`select`."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mixture import pipeline
from mixture.config import FilterConfig, load_config
from mixture.curate.filters import Filter, FilterChain, compute_signals, filter_config, registered, stats
from mixture.dataset import open_dataset
from mixture.registry import FILTERS
from pydantic import Field

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _config(root: Path, **overrides):
    """The demo's curation settings (its exemptions and relaxed limits) on the sample corpus."""
    sets = {
        "output_root": str(root),
        "input.uris": [str(REPO / "data/sample/corpus.jsonl.gz")],
        "curate.spark_master": "local[2]",
        "curate.partitions": 2,
        "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
        **overrides,
    }
    return load_config(REPO / "configs/demo.yaml", sets)


@pytest.fixture(scope="module")
def sample(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    cfg = _config(root)
    results = pipeline.run_all(cfg, until="curated")
    assert [r.stage for r in results] == ["curate", "select"]
    annotated = open_dataset(pipeline.dataset_uri(cfg, "annotated"))
    rows = [row for f in annotated.files("docs/") for row in pq.read_table(f).to_pylist()]
    return root, cfg, rows


def _read(ds, prefix: str) -> list[dict]:
    return [row for f in ds.files(prefix) for row in pq.read_table(f).to_pylist()]


def test_stored_signals_replay_every_rule_exactly(sample):
    _, cfg, rows = sample
    assert len(rows) == 2531
    configured = FilterChain(cfg.curate.filters)
    names = list(configured.functions)
    for row in rows:
        s = stats(row["text"])
        live = compute_signals(s, configured.functions)
        stored = {"n_words": float(row["n_words"]), **{n: row[n] for n in names}}
        assert stored == live, row["id"]  # float64 round trip: every bit
        replay, direct = configured.decide(stored, row["text"]), configured(row["text"])
        assert (replay.reason, replay.failed, replay.exempt) == (direct.reason, direct.failed, direct.exempt)
        # every rule of every filter, enabled or not, at the default and the configured limits
        for name, flt in registered():
            for sub in (flt.config_model(), filter_config(cfg.curate.filters, name)):
                assert flt.decide(stored, sub) == flt.check(s, sub), (row["id"], name)


def test_selection_matches_the_live_filters(sample):
    _, cfg, rows = sample
    curated = pipeline.run_stage(cfg, "select").dataset
    chain = FilterChain(cfg.curate.filters)
    live = {row["id"]: chain(row["text"]).reason for row in rows}
    rejected = {r["id"]: r["reason"] for r in _read(curated, "rejected/")}
    kept = {r["id"] for r in _read(curated, "docs/")}
    assert {i for i, r in rejected.items() if r.startswith("filter:")} == {i for i, r in live.items() if r}
    assert all(rejected[i] == r for i, r in live.items() if r)
    assert kept | set(rejected) == set(live) and not kept & set(rejected)
    counts = curated.manifest.counts
    assert counts["documents_out"] == len(kept) == 2027  # as the single-stage curation kept
    assert (counts["exact_duplicates"], counts["near_duplicates"]) == (32, 35)
    assert curated.manifest.extra["filters"]["fineweb"]["max_short_line_ratio"] == 0.8


# ------------------------------------------------------------------------ a filter from outside
class DigitsConfig(FilterConfig):
    enabled: bool = False
    max_digit_ratio: float = Field(0.05, ge=0, le=1)


class Digits(Filter):
    """Rejects documents whose characters are more than `max_digit_ratio` digits."""

    config_model = DigitsConfig
    order = 5  # before the built-ins: its reason is the first

    @staticmethod
    def signals(cfg: DigitsConfig):
        return {"digit_ratio": lambda s: sum(c.isdigit() for c in s.text) / max(len(s.text), 1)}

    @staticmethod
    def decide(sig, cfg: DigitsConfig):
        return "too_many_digits" if sig["digit_ratio"] > cfg.max_digit_ratio else None


@pytest.fixture
def digits_filter():
    FILTERS.register("digits")(Digits)
    yield Digits
    FILTERS.unregister("digits")


def test_a_filter_registered_by_a_test_module_is_applied_by_select(sample, digits_filter):
    root, base_cfg, rows = sample
    before = open_dataset(pipeline.dataset_uri(base_cfg, "curated"))
    kept_before = {r["id"] for r in _read(before, "docs/")}
    ratios = {row["id"]: sum(c.isdigit() for c in row["text"]) / max(len(row["text"]), 1) for row in rows}
    limit = sorted(ratios[i] for i in kept_before)[len(kept_before) * 3 // 4]  # a quarter of the kept above
    cfg = _config(root, **{"curate.filters.digits": {"enabled": True, "max_digit_ratio": limit}})
    result = pipeline.run_stage(cfg, "select")
    assert not result.skipped
    curated = result.dataset
    above = {i for i, r in ratios.items() if r > limit}
    rejected = {r["id"]: r["reason"] for r in _read(curated, "rejected/")}
    kept = {r["id"] for r in _read(curated, "docs/")}
    assert {i for i, r in rejected.items() if r == "filter:digits:too_many_digits"} == above
    assert not kept & above and kept_before - above <= kept  # the rest as before
    assert any(0 < ratios[i] <= limit for i in kept) and kept_before & above  # both sides of the limit
    assert curated.manifest.counts["filtered"]["digits"] == len(above)
    assert curated.manifest.extra["filters"]["digits"]["max_digit_ratio"] == limit


def test_a_threshold_change_reruns_only_select(sample):
    root, _, rows = sample
    stricter = _config(root, **{"curate.filters.gopher_quality.min_words": 400})  # the sample: 202+ words
    results = pipeline.run_all(stricter, until="curated")
    assert [(r.stage, r.skipped) for r in results] == [("curate", True), ("select", False)]
    assert results[0].summary == [("up to date", results[0].dataset.uri)]
    counts = results[1].dataset.manifest.counts
    assert counts["filtered"]["gopher_quality"] > 73  # 73 at min_words 50
    chain = FilterChain(stricter.curate.filters)
    live = {row["id"]: chain(row["text"]).reason for row in rows}
    rejected = {r["id"]: r["reason"] for r in _read(results[1].dataset, "rejected/")}
    assert {i: r for i, r in rejected.items() if r.startswith("filter:")} == {i: r for i, r in live.items() if r}
    assert [r.skipped for r in pipeline.run_all(stricter, until="curated")] == [True, True]


# ------------------------------------------------------------- which signals are stored
OFF = {f"curate.filters.{n}.enabled": False for n in ("gopher_quality", "gopher_repetition", "c4", "fineweb")}


def test_the_annotation_stores_the_enabled_filters_signals(spark, tiny_corpus, tmp_path, caplog):
    """Every filter off: no signal is computed or stored (MinHash dedup only) and the curated docs
    have no q_*; switching c4 on annotates again, saying why, with c4's signals exact; a c4
    threshold then reruns only `select`, and switching c4 off again would annotate again."""
    from mixture.curate import annotated_versions

    root = tmp_path / "out"
    none = _config(root, **OFF, **{"input.uris": [str(tiny_corpus)]})
    results = pipeline.run_all(none, until="curated")
    annotated, curated = (r.dataset for r in results)
    assert annotated.manifest.extra["signals"] == []
    columns = set(pq.read_schema(annotated.files("docs/")[0]).names)
    assert {"n_words", "exact_group", "near_group"} <= columns and not {"q_sentences", "stop_words"} & columns
    assert not [c for c in pq.read_schema(curated.files("docs/")[0]).names if c.startswith("q_")]
    assert curated.manifest.counts["filtered"] == {} and curated.manifest.counts["documents_out"] > 250

    c4_on = {**OFF, "curate.filters.c4.enabled": True, "input.uris": [str(tiny_corpus)]}
    c4 = _config(root, **c4_on)
    with caplog.at_level("INFO", logger="mixture.stages.curate"):
        results = pipeline.run_all(c4, until="curated")
    assert [(r.stage, r.skipped) for r in results] == [("curate", False), ("select", False)]
    assert (
        "curate: annotating every input file again: the committed annotation lacks the signals of enabled "
        "filter(s): c4 reads has_lorem_ipsum, has_curly_brace, q_sentences" in caplog.messages
    )
    annotated, curated = (r.dataset for r in results)
    assert annotated.manifest.extra["signals"] == ["has_lorem_ipsum", "has_curly_brace", "q_sentences"]
    chain = FilterChain(c4.curate.filters)
    rows = _read(annotated, "docs/")
    for row in rows:  # the same float64 as the live signals
        stored = {"n_words": float(row["n_words"]), **{n: row[n] for n in chain.functions}}
        assert stored == compute_signals(stats(row["text"]), chain.functions)
    rejected = {r["id"]: r["reason"] for r in _read(curated, "rejected/") if r["reason"].startswith("filter:")}
    assert rejected == {row["id"]: chain(row["text"]).reason for row in rows if chain(row["text"]).reason}
    assert rejected and [c for c in pq.read_schema(curated.files("docs/")[0]).names if c.startswith("q_")] == [
        "q_sentences"
    ]

    stricter = _config(root, **{**c4_on, "curate.filters.c4.min_sentences": 8})
    results = pipeline.run_all(stricter, until="curated")
    assert [(r.stage, r.skipped) for r in results] == [("curate", True), ("select", False)]
    assert results[1].dataset.manifest.counts["filtered"]["c4"] > curated.manifest.counts["filtered"]["c4"]
    assert annotated_versions.signals_change(annotated, none.curate).startswith(
        "no enabled filter reads the stored signal(s) has_lorem_ipsum, has_curly_brace, q_sentences"
    )
    assert annotated_versions.signals_change(annotated, stricter.curate) is None
