"""Two clean runs of the search (real proxies) commit byte-identical files: a run's record holds
what its job and the data decide, and its wall-clock timings go to the run log, MLflow and the
manifest's `seconds`, never into a committed file."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from mixture import pipeline, storage
from mixture.config import parse_config
from mixture.search.synthetic import make_climblab

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"


def test_two_clean_searches_commit_the_same_bytes(tmp_path, sample_records):
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:3000])
    texts = {f"c{i:02d}": by_source[s][:8] for i, s in enumerate(sorted(by_source)[:4])}
    root = tmp_path / "out"
    make_climblab(str(root / "climblab"), texts, vocab_size=400)
    proxy = {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64}
    cfg = parse_config(
        {
            "output_root": str(root),
            "input": {"uris": ["unused"]},
            "search": {
                "iterations": [4, 2],
                "candidates": 2000,
                "top_n": 6,
                "top_k": 4,
                "proxy": proxy,
                "transfer_proxy": proxy,
                "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
                "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
                "playoff": {"enabled": False},  # a few tiny runs cannot afford one (tests/search/test_playoff.py)
            },
            "tracking": {"experiment": "test", "uri": f"sqlite:///{tmp_path}/mlflow.db"},
        }
    )
    runs = []
    for _ in range(2):
        ds = pipeline.run_stage(cfg, "search").dataset
        ds.verify()
        runs.append({f["path"]: f["sha256"] for f in ds.manifest.files})
        assert ds.manifest.extra["seconds"]["proxies"] > 0  # the timings: in the manifest's facts
        run = storage.read_json(ds.files("runs/")[0])
        assert "seconds" not in run and "finished_at" not in run and "seconds" not in run["train"]
        shutil.rmtree(root / "search")  # the next run is a clean one, at the same place
    assert len([p for p in runs[0] if p.startswith("runs/")]) == 6
    assert runs[0] == runs[1]
