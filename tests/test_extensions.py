"""Extension points: a predictor registered from outside `libs/mixture` is one module and no edit
elsewhere; the config knows it by name, the search cross-validates it like the built-ins, and an
unknown name is a config error that lists the known ones."""

from __future__ import annotations

import numpy as np
import pytest
from mixture.config import ConfigError, PredictorConfig, parse_config
from mixture.registry import PREDICTORS
from mixture.search import predictor as pred


class NearestRunPredictor:
    """Predicts the score of the nearest observed mixture (1-NN): a toy, but a real ranking."""

    name = "nearest_run"
    simplicity = 5

    def __init__(self, cfg, seed: int = 0):
        pass

    def fit(self, X, y):
        self.X, self.y = np.asarray(X), np.asarray(y)
        return self

    def predict(self, X):
        d = ((np.asarray(X)[:, None, :] - self.X[None]) ** 2).sum(-1)
        return self.y[d.argmin(1)]


@pytest.fixture
def registered():
    PREDICTORS.register("nearest_run")(NearestRunPredictor)
    yield
    PREDICTORS.unregister("nearest_run")


def _config(candidates):
    return parse_config(
        {"output_root": "/tmp/x", "input": {"uris": ["/tmp/x"]}, "search": {"predictor": {"candidates": candidates}}}
    )


def test_a_predictor_from_a_test_module_is_cross_validated_and_can_win(registered):
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), size=40)
    y = np.where(X[:, 0] > 0.25, 1.0, 0.0) + 0.01 * rng.standard_normal(40)  # a step: 1-NN ranks it well
    cfg = _config(["ridge", "nearest_run"]).search.predictor
    fitted = pred.fit_select(X, y, cfg, seed=0)
    assert set(fitted.cv) == {"ridge", "nearest_run"}
    assert fitted.cv["nearest_run"].spearman > 0.5
    assert fitted.rank(X)[0] in np.flatnonzero(X[:, 0] > 0.25)


def test_unknown_predictor_is_a_config_error_listing_the_known_ones():
    with pytest.raises(
        ConfigError,
        match="unknown predictor 'nearest_run'; known: gp, lightgbm, mixing_law, mixing_law_components, ngram, "
        "ngram_gp, ridge",
    ):
        _config(["ridge", "nearest_run"])
    defaults = ["lightgbm", "ridge", "ridge_sqrt", "mixing_law", "gp", "ngram", "ngram_gp"]
    assert PredictorConfig().candidates == defaults


# ------------------------------------------------------------------------- an output format
class JsonlFormat:
    """One JSON line per document: its text, cluster and token ids (a toy, for this test)."""

    name = "jsonl_test"
    files = ("jsonl/part-NNNNN.jsonl",)
    hf_data_files = "jsonl/part-*.jsonl"

    def write_shard(self, writer, shard, cfg) -> None:
        import json

        rows = shard.table.to_pylist()
        lines = [
            json.dumps({"text": r["text"], "cluster": r["cluster"], "tokens": t.tolist()})
            for r, t in zip(rows, shard.tokens, strict=True)
        ]
        from mixture import storage

        storage.write_text(writer.path(f"jsonl/{shard.part}.jsonl"), "\n".join(lines) + "\n")

    def card_files(self, dtype) -> list[str]:
        return ["- `jsonl/part-NNNNN.jsonl`: text, cluster and token ids per line"]

    def card_loading(self, dtype) -> list[str]:
        return ['`datasets.load_dataset("json", data_files="jsonl/part-*.jsonl")`']


def test_an_output_format_from_a_test_module_is_written_beside_the_others(tmp_path, sample_records):
    import json

    import pyarrow.parquet as pq
    from helpers.climbmix import make_climblab, make_config, make_search
    from mixture.pipeline import run_stage
    from mixture.registry import OUTPUT_FORMATS

    OUTPUT_FORMATS.register("jsonl_test")(JsonlFormat)
    try:
        root = tmp_path / "out"
        lab = make_climblab(root, sample_records)
        make_search(root, lab, {"c00": 0.4, "c01": 0.3, "c02": 0.2, "c03": 0.1})
        ds = run_stage(make_config(root, formats=["parquet", "jsonl_test"]), "build").dataset
    finally:
        OUTPUT_FORMATS.unregister("jsonl_test")
    jsonl = sorted(ds.files("jsonl/"))
    parquet = sorted(ds.files("parquet/"))
    assert len(jsonl) == len(parquet) > 0 and not ds.files("tokens/")
    for j, p in zip(jsonl, parquet, strict=True):
        rows = [json.loads(line) for line in open(j)]
        table = pq.read_table(p)
        assert [r["text"] for r in rows] == table.column("text").to_pylist()  # same documents, same order
        assert all(r["tokens"] for r in rows)
    card = open(ds.path("README.md")).read()
    assert "jsonl/part-NNNNN.jsonl" in card
