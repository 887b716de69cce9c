"""MLflow is the run's record, not its data: a store that cannot be written is one warning line
naming it, and the stage still commits; a bug in the code that logs still fails the stage."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mixture import pipeline, tracking
from mixture.config import parse_config
from mixture.curate import track as curate_track
from mixture.search.synthetic import SyntheticObjective, make_climblab
from mixture.stages import search as search_stage

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"


def _config(tmp_path: Path, tracking_uri: str):
    return parse_config(
        {
            "output_root": str(tmp_path / "out"),
            "input": {"uris": ["unused"]},
            "search": {
                "iterations": [4, 2],
                "candidates": 500,
                "top_n": 4,
                "top_k": 2,
                "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
                "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
                "playoff": {"enabled": False},  # a few tiny runs cannot afford one (tests/search/test_playoff.py)
            },
            "tracking": {"experiment": "test", "uri": tracking_uri},
        }
    )


def _broken_store(tmp_path: Path) -> str:
    """A SQLite store that cannot be opened: its folder is a file."""
    (tmp_path / "not-a-folder").write_text("")
    return f"sqlite:///{tmp_path}/not-a-folder/mlflow.db"


def test_a_store_that_cannot_be_written_never_loses_the_stages_data(tmp_path, sample_records, caplog):
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:2000])
    names = ["c00", "c01", "c02", "c03"]
    texts = {n: by_source[s][:6] for n, s in zip(names, sorted(by_source))}
    make_climblab(str(tmp_path / "out" / "climblab"), texts, vocab_size=400)
    cfg = _config(tmp_path, _broken_store(tmp_path))
    objective = SyntheticObjective(np.array([0.1, 0.2, 0.3, 0.4]), noise=0.02, names=names)
    ctx = pipeline.open_stage(cfg, "search")
    with caplog.at_level(logging.WARNING, logger="mixture.tracking"):
        out = search_stage.run(ctx, objective=objective.proxy)
        ds = pipeline.commit(ctx, out)
    ds.verify()
    assert ds.manifest.counts == {"runs": 6, "iterations": 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once, not once per proxy run
    assert "search: not recorded in MLflow" in warnings[0] and "not-a-folder" in warnings[0]
    assert "committed as usual" in warnings[0] and "\n" not in warnings[0]


def test_the_curation_record_and_the_error_that_is_a_bug(tmp_path, caplog):
    cfg = _config(tmp_path, _broken_store(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mixture.tracking"):
        assert curate_track.log_run(cfg, "select", {"documents_in": 3, "documents_out": 2}, {}) is None
    assert any("select: not recorded in MLflow" in r.getMessage() for r in caplog.records)
    with pytest.raises(KeyError):  # not the store: a bug keeps its traceback
        with tracking.recorded(cfg, "select"):
            raise KeyError("counts")
    calls = []
    tracked = tracking.Tracked(cfg, "t", lambda: calls.append(1) or {"x": 1})
    with pytest.raises(AttributeError):
        tracked.missing_method()


def test_experiments_are_marked_for_the_training_view_old_ones_too(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _config(tmp_path, uri)
    client = mlflow.MlflowClient(uri)
    old = client.create_experiment("test-old")  # created before the project set the kind
    chosen = client.create_experiment("test-chosen", tags={tracking.KIND_TAG: "genai_development"})
    new = tracking.setup(cfg, "test-new")
    assert tracking.setup(cfg, "test-old") == old and tracking.setup(cfg, "test-chosen") == chosen
    kinds = {e: client.get_experiment(e).tags.get(tracking.KIND_TAG) for e in (new, old, chosen)}
    assert kinds == {new: "custom_model_development", old: "custom_model_development", chosen: "genai_development"}

    # the UI's address: a local `mlflow ui`, or the tracking server without its user-info
    assert tracking.ui_address(cfg) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:token@mlflow.example:443/")
    server = parse_config({**cfg.model_dump(mode="json"), "tracking": {"experiment": "test", "uri": None}})
    assert tracking.ui_address(server) == "https://mlflow.example:443"
    url = tracking.experiment_url(tracking.ui_address(server), "7", orderByKey="metrics.`score`")
    assert (
        url
        == "https://mlflow.example:443/#/experiments/7/runs?workflowType=machine_learning&orderByKey=metrics.%60score%60"
    )
