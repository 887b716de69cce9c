"""A build killed with SIGKILL at every point where it changes a file (each write begun and each
write finished, each delete, move, link and folder made, the commit's steps included) leaves the
committed `climbmix` folder equal to its manifest: the one before the run, or the new one whole,
never scratch (`.tmp-shuffle/`) or a file the manifest does not list; a rerun then commits the
same files as a build that was never killed (checked after every third point and after every
point inside the commit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.pipeline import run_stage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Runs in a subprocess (a clean process to fork from): the clean build here, then for each kill
# point a fresh copy of the inputs, a forked child that builds and kills itself at that point, then
# (every third point, and every point inside the commit) a forked rerun.
DRIVER = r"""
import json, os, shutil, signal, sys
from pathlib import Path
sys.path[:0] = [sys.argv[3]]
from helpers.climbmix import make_config
from mixture import dataset, storage
from mixture.pipeline import run_stage

base, work = Path(sys.argv[1]), Path(sys.argv[2])
OLD = json.loads((base / "climbmix" / "_manifest.json").read_text())["config_hash"]
OPS = ("open_write", "delete", "move", "link", "makedirs")


def hooked(kill_at):
    count = [0]

    def point():
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    for name in OPS:
        orig = getattr(storage, name)
        if name == "open_write":
            from contextlib import contextmanager

            @contextmanager
            def wrapped(*a, _o=orig, **k):
                point()
                with _o(*a, **k) as f:
                    yield f
                    point()  # written, not yet renamed into place
        else:
            def wrapped(*a, _o=orig, **k):
                point()
                return _o(*a, **k)
        setattr(storage, name, wrapped)
    return count


def child(root, kill_at):
    pid = os.fork()
    if pid == 0:
        count = hooked(kill_at) if kill_at else [0]
        run_stage(make_config(root), "build")
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


os.fsync = lambda fd: None  # a killed process loses nothing fsync would keep: only time saved
dataset.code_version = lambda: "test"  # a fact of the manifest, not of the files: no git calls
root = work / "run"  # one path for every round: the dataset card names the input's path
shutil.copytree(base, root)
# the clean build in this process, not in a fork: every child forked after it starts with the
# build's modules imported (~0.6 s of a child's 0.7 s, over a hundred children), the same kill points
run_stage(make_config(root), "build")
print(json.dumps({"clean": inspect(root)}), flush=True)
shutil.rmtree(root)
n = 1
while True:
    shutil.copytree(base, root)
    killed = child(root, n)
    state = inspect(root)
    # the resume is checked after every third kill, and after every kill inside the commit
    resume = n % 3 == 0 or not state["committed"] or state["config"] != OLD
    rerun = child(root, 0) if resume else None
    print(json.dumps({"point": n, "killed": killed == -signal.SIGKILL, "after_kill": state,
                      "rerun": rerun, "after_rerun": inspect(root) if resume else None}), flush=True)
    shutil.rmtree(root)
    if killed != -signal.SIGKILL:
        break
    n += 1
"""

INSPECT = r'''
import hashlib, json
def inspect(root):
    """The climbmix folder: no manifest and no files; or its manifest's files, each matching."""
    folder = root / "climbmix"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    if "_manifest.json" not in files:  # nothing visible; an earlier build, if any, set aside
        previous = root / "_staging" / "climbmix.previous" / "_manifest.json"
        return {"committed": False, "previous": previous.is_file()}
    m = json.loads((folder / "_manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in m["files"]}
    extra = [f for f in files if f != "_manifest.json" and f not in listed]
    bad = [p for p, h in listed.items() if not (folder / p).is_file()
           or hashlib.sha256((folder / p).read_bytes()).hexdigest() != h]
    return {"committed": True, "config": m["config_hash"], "extra": extra, "bad": bad,
            "files": {p: h for p, h in sorted(listed.items())}}
'''


def test_a_build_killed_at_any_point_leaves_the_committed_folder_equal_to_its_manifest(tmp_path, sample_records):
    base = tmp_path / "base"
    lab = make_climblab(base, sample_records, row_group_size=4)
    make_search(base, lab, WEIGHTS)
    # a committed build of other settings, which the new one replaces (the commit sets it aside
    # first: tests/test_dataset.py kills a commit with no earlier dataset)
    old = {f["path"]: f["sha256"] for f in run_stage(make_config(base, tokens=8_000), "build").dataset.manifest.files}
    work = tmp_path / "work"
    work.mkdir()
    script = INSPECT + DRIVER
    proc = subprocess.run(
        [sys.executable, "-c", script, str(base), str(work), str(REPO / "tests")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    expected = rounds.pop(0)["clean"]["files"]
    assert expected != old
    assert len(rounds) > 40 and not rounds[-1]["killed"]  # every point, then a run past the last
    for r in rounds:
        state = r["after_kill"]
        where = f"killed at point {r['point']}: {state}"
        if state["committed"]:
            assert state["extra"] == [] and state["bad"] == [], where
            assert state["files"] in (expected, old), where
        else:  # killed inside the commit: the earlier build is set aside, and put back by the rerun
            assert state["previous"], where
        if r["rerun"] is not None:
            assert r["rerun"] == 0 and r["after_rerun"]["committed"], r
            assert r["after_rerun"]["files"] == expected and not r["after_rerun"]["extra"], r
    assert sum(r["rerun"] is not None for r in rounds) >= len(rounds) // 3
