"""A search with proxy workers, its driver killed with SIGKILL: no worker is left, and none writes
into the staging folder afterwards (nobody holds the stage's lease any more)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from helpers.processes import descendants, kill_all, wait_gone
from mixture.search.synthetic import make_climblab

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"
CLIMB = str(Path(sys.executable).parent / "climb")


def _config(tmp_path: Path, sample_records) -> Path:
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:3000])
    texts = {f"c{i:02d}": by_source[s][:8] for i, s in enumerate(sorted(by_source)[:4])}
    root = tmp_path / "out"
    make_climblab(str(root / "climblab"), texts, vocab_size=400)
    proxy = {"preset": "cpu-tiny", "tokens": 65536, "batch_size": 4, "seq_len": 64, "threads": 1}
    conf = {
        "output_root": str(root),
        "input": {"uris": ["unused"]},
        "search": {
            "iterations": [8, 4],
            "candidates": 2000,
            "top_n": 6,
            "top_k": 4,
            "workers": 2,
            "proxy": proxy,
            "transfer_proxy": proxy,
            "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
            "playoff": {"enabled": False},  # 12 tiny runs cannot afford one (tests/search/test_playoff.py)
        },
        "tracking": {"experiment": "test", "uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_killing_the_driver_of_a_search_leaves_no_worker_and_no_write(tmp_path, sample_records):
    conf = _config(tmp_path, sample_records)
    staging = tmp_path / "out" / "_staging"
    driver = subprocess.Popen(
        [CLIMB, "search", "--config", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    procs: dict[int, int] = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            procs |= descendants(driver.pid)
            if len(procs) >= 2 and list(staging.glob("search-*/runs/*.json")):
                break  # the workers are training: one proxy run is written already
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:] if driver.stderr else ""
        assert list(staging.glob("search-*/runs/*.json")), "no proxy run finished in time"
        procs |= descendants(driver.pid)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = wait_gone(procs, timeout=5)
    kill_all(left)
    assert left == [], f"{len(left)} of the driver's {len(procs)} processes outlived it"
    before = _snapshot(staging)
    time.sleep(3)
    assert _snapshot(staging) == before  # nothing wrote into _staging after the kill
