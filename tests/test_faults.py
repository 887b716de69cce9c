"""Operating-system and environment failures are one line naming the file or resource and what to
do, exit status 2, with nothing half-written committed: a real full disk (a small tmpfs), a SQLite
store that cannot be opened or grow, and the line's own rules (`mixture.faults`)."""

from __future__ import annotations

import errno
import re
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from helpers import small_disk
from helpers.climbmix import WEIGHTS, make_climblab, make_search
from mixture import faults

CLIMB = str(Path(sys.executable).parent / "climb")


# ------------------------------------------------------------------------------- the rules
def test_errors_of_the_operating_system_are_said_in_one_line_naming_the_file():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.bin")
    assert faults.describe(full).line.startswith("no space left on the disk holding /data/out/x.bin: free space")
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/in/a.jsonl")
    assert "permission denied: /data/in/a.jsonl" in faults.describe(denied).line
    # raised from: the cause is found, and the caller's `where` names a file the error does not
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("writing a shard failed") from err
    except RuntimeError as err:
        assert "the disk holding /out/_staging/climbmix-1" in faults.describe(err, "/out/_staging/climbmix-1").line
    # a Java error reaches Python as text only
    java = RuntimeError("py4j: java.io.FileNotFoundException: /out/_staging/a/part-0.parquet (Permission denied)")
    assert "permission denied: /out/_staging/a/part-0.parquet" in faults.describe(java).line
    assert faults.describe(KeyError("x")) is None and faults.describe(FileNotFoundError(2, "gone", "/x")) is None


def test_a_sqlite_store_that_cannot_be_opened_and_a_dead_endpoint(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(sqlite3.OperationalError) as info:
        sqlite3.connect(str(tmp_path / "file" / "mlflow.db")).execute("create table t (x)")
    assert "cannot be opened or written" in faults.describe(info.value, "sqlite:///x/mlflow.db").line
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError) as refused:
        socket.create_connection(("127.0.0.1", port), timeout=2)
    fault = faults.describe(refused.value)
    assert "is not reachable" in fault.line and fault.transient


def test_urls_lose_their_user_info():
    text = "Could not connect to the endpoint URL: http://admin:hunter2@minio:9000/bucket/key"
    assert faults.redact(text) == "Could not connect to the endpoint URL: http://minio:9000/bucket/key"
    err = type("EndpointConnectionError", (Exception,), {})(text)
    line = faults.describe(err).line
    assert "hunter2" not in line and "admin" not in line and "http://minio:9000/bucket/key" in line


# ---------------------------------------------------------------------------- a full disk
def _build_config(root: Path, tokens: int) -> dict:
    return {
        "output_root": str(root),
        "input": {"uris": [str(root / "input.jsonl")]},
        "seed": 7,
        "build": {"tokens": tokens, "shard_docs": 16},
        "tracking": {"experiment": "test"},
    }


def _build_on_a_full_disk(tmp_path: Path, sample_records, tokens: int, free_kb: int):
    """`climb build` on a small disk filled but for `free_kb` KiB, then again once it is freed:
    (its first error lines, milliseconds, datasets committed after the first and second run)."""
    src, disk = tmp_path / "src", tmp_path / "disk"
    lab = make_climblab(src, sample_records)
    make_search(src, lab, WEIGHTS)
    conf = tmp_path / "build.yaml"
    conf.write_text(yaml.safe_dump(_build_config(disk, tokens)))
    size_kb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 1024 + 1024
    script = f"""
cp -a "{src}/." "{disk}/"
fill {free_kb}
start=$(date +%s%N)
{CLIMB} build --config "{conf}"
echo "rc=$? ms=$(( ($(date +%s%N) - start) / 1000000 ))"
find "{disk}" -name _manifest.json | sort | sed 's|^|committed |'
echo "--- freed" >&2
rm "{disk}/filler"
{CLIMB} build --config "{conf}" > /dev/null 2>&1
echo "rerun=$?"
find "{disk}" -name _manifest.json | sort | sed 's|^|recommitted |'
"""
    proc = small_disk.run(disk, size_kb, script)
    first = proc.stderr.split("--- freed")[0]
    assert re.search(r"^rc=2 ", proc.stdout, re.M), proc.stdout + proc.stderr
    assert "Traceback" not in first, first
    assert "rerun=0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    errors = [ln for ln in first.splitlines() if ln.startswith("climb:")]
    ms = int(re.search(r"ms=(\d+)", proc.stdout).group(1))
    committed = [re.findall(rf"^{w} .*/(\w+)/_manifest.json$", proc.stdout, re.M) for w in ("committed", "recommitted")]
    return errors, ms, committed


INPUTS = ["climblab", "clusters", "curated", "search"]


def test_a_disk_that_fills_up_during_the_build_is_one_line_and_the_rerun_builds(tmp_path, sample_records):
    errors, ms, (after, rerun) = _build_on_a_full_disk(tmp_path, sample_records, tokens=12_000, free_kb=104)
    assert len(errors) == 1 and ms < 30_000, errors
    assert errors[0].startswith("climb: build: no space left on the disk holding") and "free space" in errors[0]
    assert str(tmp_path / "disk" / "_staging" / "climbmix-") in errors[0]
    assert after == INPUTS and rerun == INPUTS[:1] + ["climbmix"] + INPUTS[1:]  # nothing half-written committed


def test_a_build_that_cannot_fit_is_refused_before_it_writes_its_bulk(tmp_path, sample_records):
    errors, ms, (after, rerun) = _build_on_a_full_disk(tmp_path, sample_records, tokens=40_000, free_kb=120)
    assert len(errors) == 1 and ms < 30_000, errors
    assert errors[0].startswith("climb: build: needs at least") and "free: free space there" in errors[0], errors
    assert after == INPUTS and "climbmix" in rerun
    assert not list((tmp_path / "disk").glob("*"))  # the disk was only ever mounted inside the namespace


SEARCH_ON_A_FULL_STORE = """
import logging, sys
from collections import defaultdict
import numpy as np
sys.path[:0] = [sys.argv[3]]
from conftest import SAMPLE, read_jsonl_gz
from test_tracking import _config
from mixture import pipeline
from mixture.search.synthetic import SyntheticObjective, make_climblab
from mixture.stages import search as stage

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
tmp, store = __import__("pathlib").Path(sys.argv[1]), sys.argv[2]
by_source = defaultdict(list)
for r in read_jsonl_gz(SAMPLE):
    by_source[r["source"]].append(r["text"][:2000])
names = ["c00", "c01", "c02", "c03"]
make_climblab(str(tmp / "out" / "climblab"), {n: by_source[s][:6] for n, s in zip(names, sorted(by_source))}, 400)
cfg = _config(tmp, store)
ctx = pipeline.open_stage(cfg, "search")
objective = SyntheticObjective(np.array([0.1, 0.2, 0.3, 0.4]), noise=0.02, names=names)
ds = pipeline.commit(ctx, stage.run(ctx, objective=objective.proxy))
ds.verify()
print("committed", ds.manifest.counts)
"""


@pytest.mark.slow
def test_an_mlflow_store_on_a_full_disk_is_a_warning_and_the_stage_commits(tmp_path):
    disk = tmp_path / "disk"
    script = f"""
fill 48
{sys.executable} -c '{SEARCH_ON_A_FULL_STORE}' "{tmp_path}" "sqlite:///{disk}/mlflow.db" "{Path(__file__).parent}"
echo "rc=$?"
"""
    proc = small_disk.run(disk, 2048, script)
    assert "rc=0" in proc.stdout and "committed {'iterations': 2, 'runs': 6}" in proc.stdout, proc.stdout + proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING mixture.tracking")]
    assert len(warnings) == 1 and "search: not recorded in MLflow" in warnings[0], proc.stderr[-3000:]
    assert "disk is full" in warnings[0] or "no space left" in warnings[0], warnings[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_disk_that_fills_up_during_the_spark_curation_is_one_line(tmp_path, tiny_corpus):
    """The curation writes through Spark's Python workers: their `No space left on device` reaches
    the driver inside a Java error, and is still one line naming the stage's staging folder."""
    from conftest import tiny_config_dict

    disk = tmp_path / "disk"
    conf = tmp_path / "curate.yaml"
    data = tiny_config_dict(tmp_path, [str(tiny_corpus)])
    conf.write_text(yaml.safe_dump({**data, "output_root": str(disk)}))
    script = f"""
fill 96
{CLIMB} curate --config "{conf}"
echo "rc=$?"
find "{disk}" -name _manifest.json | sed 's|^|committed |'
"""
    proc = small_disk.run(disk, 4096, script, timeout=600)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("climb:")]
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("climb: curate: no space left on the disk holding") and str(disk) in errors[0]
    assert "committed " not in proc.stdout
