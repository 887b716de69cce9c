"""Overlapping runs of one stage, and runs killed at any point, never lose a committed dataset.

Processes, not threads: each run is `python -m tests.helpers.toy_stage`, a stage that stages its
files slowly through the real runner (lease, writer, commit).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mixture.dataset import open_dataset

REPO = Path(__file__).resolve().parents[1]


def _start(root: Path, on_busy: str = "wait", seconds: float = 1.0, force: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.helpers.toy_stage", str(root), on_busy, str(seconds)]
    return subprocess.Popen(
        args + (["force"] if force else []),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _consistent(root: Path) -> dict:
    """The committed toy dataset, checked file by file against its manifest."""
    ds = open_dataset(str(root / "toy"))
    ds.verify()
    assert len(ds.manifest.files) == 4
    pids = {(root / "toy" / f["path"]).read_text().split()[-1] for f in ds.manifest.files}
    assert len(pids) == 1, "files of two runs mixed in one dataset"
    return json.loads((root / "toy" / "_manifest.json").read_text())


def test_second_run_waits_then_finds_the_dataset_up_to_date(tmp_path):
    first = _start(tmp_path, seconds=2.0)
    time.sleep(0.8)  # the first one holds the lease by now
    second = _start(tmp_path)
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), (err1, err2)
    assert out1.strip() == "ran" and out2.strip() == "up to date"
    assert "is being written by pid" in err2 and "waiting" in err2
    _consistent(tmp_path)


def test_fail_fast_is_one_line_and_leaves_the_first_run_alone(tmp_path):
    first = _start(tmp_path, seconds=2.0)
    time.sleep(0.8)
    second = _start(tmp_path, on_busy="fail", force=True)
    out2, err2 = second.communicate(timeout=60)
    first.communicate(timeout=60)
    assert second.returncode == 2
    lines = [ln for ln in err2.strip().splitlines() if ln.startswith("climb:")]
    assert len(lines) == 1 and "LeaseBusy" in lines[0] and "Traceback" not in err2
    assert first.returncode == 0
    _consistent(tmp_path)


@pytest.mark.slow
def test_overlapping_forced_runs_with_random_kills_never_lose_the_dataset(tmp_path):
    """Seeded rounds: two forced runs of one stage at once, one of them killed with SIGKILL at a
    random moment (while staging, waiting or committing). A committed dataset always remains and
    is consistent; the survivor exits 0."""
    rng = random.Random(7)
    first = _start(tmp_path, seconds=0.2)
    assert first.wait(timeout=60) == 0
    for _ in range(6):
        a, b = _start(tmp_path, seconds=0.6, force=True), _start(tmp_path, seconds=0.6, force=True)
        victim, survivor = (a, b) if rng.random() < 0.5 else (b, a)
        time.sleep(rng.uniform(0.0, 2.0))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        survivor.communicate(timeout=60)
        assert survivor.returncode == 0
        _consistent(tmp_path)
