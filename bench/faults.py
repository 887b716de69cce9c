"""Fault probe: what an operator sees when the machine or the environment fails a run.

    .venv/bin/python bench/faults.py

Not a test (tests/test_preflight.py, tests/test_faults.py, tests/test_tracking.py,
tests/search/test_search_workers.py, tests/climbmix/test_build_kills.py and
tests/search/test_search_reproducible.py check each case); this runs them all once, as a user
would (the `climb` command, real files, a real full disk: a tmpfs in a private mount namespace),
and prints one table: the case, what is expected, what happened (exit status, stderr lines that
are not log lines, seconds: of the failing command; for the killed search, from the kill until no
worker was left; for the last two, the whole probe) and whether it held. Takes about three
minutes on two cores.

Cases: a file the run cannot read inside a folder it can; a disk that fills up during the build;
a build too large for its disk; an input file that is empty; credentials in AWS_ENDPOINT_URL; an
MLflow server that does not answer; an MLflow store on a full disk; the driver of a search with
two proxy workers killed with SIGKILL; a build killed at every point where it changes a file; two
clean searches compared byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
CLIMB = str(Path(sys.executable).parent / "climb")
SECRET = "s3cr3t-FAULTS"
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d |\d{4}/\d\d/\d\d |\S+ \d+%\||\s*$|.*it/s\]$|.*run/s\]$|.*part/s\]$)")


def _records():
    from conftest import SAMPLE, read_jsonl_gz

    return read_jsonl_gz(SAMPLE)


def _errors(stderr: str) -> list[str]:
    """The stderr lines a user reads as the failure (log lines and progress bars aside)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln) and "%|" not in ln]


def _config(path: Path, **data) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"tracking": {"experiment": "faults"}, **data}))
    return path


def _climb(args: list[str], env: dict | None = None, prefix: list[str] = ()) -> tuple[int, list[str], float]:
    t0 = time.time()
    p = subprocess.run(list(prefix) + [CLIMB] + args, capture_output=True, text=True, env=env, timeout=300)
    return p.returncode, _errors(p.stderr), time.time() - t0


# ------------------------------------------------------------------------------ the cases
def unreadable_file(work: Path) -> dict:
    folder = work / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(_records()[0]) + "\n")
    (folder / "b.jsonl").write_text(json.dumps(_records()[1]) + "\n")
    (folder / "b.jsonl").chmod(0)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    conf = _config(work / "c.yaml", output_root=str(work / "out"), input={"uris": [str(folder)]})
    rc, lines, secs = _climb(["curate", "--config", str(conf)], prefix=prefix)
    ok = rc == 2 and len(lines) == 1 and "b.jsonl" in lines[0] and "permission denied" in lines[0]
    return {"exit": rc, "lines": len(lines), "seconds": secs, "held": ok, "said": lines[:1]}


def _full_disk_build(work: Path, tokens: int, free_kb: int) -> dict:
    from helpers import small_disk
    from helpers.climbmix import WEIGHTS, make_climblab, make_search

    src, disk = work / "src", work / "disk"
    make_search(src, make_climblab(src, _records()), WEIGHTS)
    conf = _config(
        work / "b.yaml",
        output_root=str(disk),
        input={"uris": [str(disk / "in.jsonl")]},
        seed=7,
        build={"tokens": tokens, "shard_docs": 16},
    )
    size_kb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 1024 + 1024
    script = f"""cp -a "{src}/." "{disk}/"; fill {free_kb}; s=$(date +%s%N)
{CLIMB} build --config "{conf}"; echo "rc=$? ms=$(( ($(date +%s%N) - s) / 1000000 ))"
ls "{disk}/climbmix/_manifest.json" 2>/dev/null && echo "half-committed"; echo "--- freed" >&2; rm "{disk}/filler"
{CLIMB} build --config "{conf}" > /dev/null 2>&1; echo "rerun=$?"
"""
    proc = small_disk.run(disk, size_kb, script)
    lines = _errors(proc.stderr.split("--- freed")[0])
    rc = int(re.search(r"rc=(\d+)", proc.stdout).group(1))
    secs = int(re.search(r"ms=(\d+)", proc.stdout).group(1)) / 1000
    ok = rc == 2 and len(lines) == 1 and "half-committed" not in proc.stdout and "rerun=0" in proc.stdout
    return {"exit": rc, "lines": len(lines), "seconds": secs, "held": ok, "said": lines[:1]}


def disk_fills_up(work: Path) -> dict:
    out = _full_disk_build(work, 12_000, 104)
    out["held"] = out["held"] and "no space left" in out["said"][0]
    return out


def build_too_large(work: Path) -> dict:
    out = _full_disk_build(work, 40_000, 120)
    out["held"] = out["held"] and "needs at least" in out["said"][0]
    return out


def empty_input(work: Path) -> dict:
    (work / "empty.jsonl").write_text("")
    conf = _config(work / "c.yaml", output_root=str(work / "out"), input={"uris": [str(work / "empty.jsonl")]})
    rc, lines, secs = _climb(["run", "--config", str(conf)])
    committed = list((work / "out").rglob("_manifest.json")) if (work / "out").exists() else []
    ok = rc == 2 and len(lines) == 1 and "no document" in lines[0] and not committed
    return {"exit": rc, "lines": len(lines), "seconds": secs, "held": ok, "said": lines[:1]}


def endpoint_with_credentials(work: Path) -> dict:
    conf = _config(work / "c.yaml", output_root=str(work / "out"), input={"uris": ["s3://bucket/corpus/"]})
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://operator:{SECRET}@127.0.0.1:9"}
    t0 = time.time()
    p = subprocess.run([CLIMB, "curate", "--config", str(conf)], capture_output=True, text=True, env=env)
    secs = time.time() - t0
    verbose = subprocess.run([CLIMB, "-v", "curate", "--config", str(conf)], capture_output=True, text=True, env=env)
    seen = p.stdout + p.stderr + verbose.stdout + verbose.stderr
    lines = _errors(p.stderr)
    ok = p.returncode == 2 and len(lines) == 1 and "must not contain credentials" in lines[0]
    ok = ok and SECRET not in seen and "operator" not in seen  # with -v (its traceback) too
    return {"exit": p.returncode, "lines": len(lines), "seconds": secs, "held": ok, "said": lines[:1]}


def dead_mlflow_server(work: Path) -> dict:
    from conftest import SAMPLE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = _config(
        work / "c.yaml",
        output_root=str(work / "out"),
        input={"uris": [str(SAMPLE)]},
        tracking={"experiment": "faults", "uri": f"http://127.0.0.1:{port}"},
    )
    rc, lines, secs = _climb(["curate", "--config", str(conf)])
    ok = rc == 2 and len(lines) == 1 and "not reachable" in lines[0]
    return {"exit": rc, "lines": len(lines), "seconds": secs, "held": ok, "said": lines[:1]}


def mlflow_store_full(work: Path) -> dict:
    from helpers import small_disk
    from test_faults import SEARCH_ON_A_FULL_STORE

    disk = work / "disk"
    script = f"""fill 48; s=$(date +%s%N)
{sys.executable} -c '{SEARCH_ON_A_FULL_STORE}' "{work}" "sqlite:///{disk}/mlflow.db" "{REPO / "tests"}"
echo "rc=$? ms=$(( ($(date +%s%N) - s) / 1000000 ))"
"""
    proc = small_disk.run(disk, 2048, script)
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING mixture.tracking")]
    rc = int(re.search(r"rc=(\d+)", proc.stdout).group(1))
    ok = rc == 0 and "committed" in proc.stdout and len(warnings) == 1
    said = [re.sub(r"\(sqlite:///\S+\)", "(sqlite:///…/mlflow.db)", w) for w in warnings[:1]]
    secs = int(re.search(r"ms=(\d+)", proc.stdout).group(1)) / 1000
    return {"exit": rc, "lines": len(_errors(proc.stderr)), "seconds": secs, "held": ok, "said": said}


def killed_search_driver(work: Path) -> dict:
    from helpers.processes import descendants, kill_all, wait_gone
    from search.test_search_workers import _config as search_config
    from search.test_search_workers import _snapshot

    conf = search_config(work, _records())
    staging = work / "out" / "_staging"
    driver = subprocess.Popen([CLIMB, "search", "--config", str(conf)], stderr=subprocess.DEVNULL)
    procs: dict[int, int] = {}
    deadline = time.time() + 240
    while time.time() < deadline and not (len(procs) >= 2 and list(staging.glob("search-*/runs/*.json"))):
        procs |= descendants(driver.pid)
        time.sleep(0.2)
    procs |= descendants(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.time()
    left = wait_gone(procs, timeout=5)
    gone_after = time.time() - t0
    kill_all(left)
    before = _snapshot(staging)
    time.sleep(3)
    writes = _snapshot(staging) != before
    said = [f"{len(procs)} processes under the driver; {len(left)} left 5 s after the kill; writes after: {writes}"]
    return {"exit": -9, "lines": 0, "seconds": gone_after, "held": not left and not writes, "said": said}


def build_killed_everywhere(work: Path) -> dict:
    from climbmix.test_build_kills import DRIVER, INSPECT
    from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
    from mixture.pipeline import run_stage

    base = work / "base"
    make_search(base, make_climblab(base, _records(), row_group_size=4), WEIGHTS)
    run_stage(make_config(base, tokens=8_000), "build")  # an earlier build, which the new one replaces
    (work / "w").mkdir()
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-c", INSPECT + DRIVER, str(base), str(work / "w"), str(REPO / "tests")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    rounds = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    rounds.pop(0)
    broken = [r["point"] for r in rounds if r["after_kill"].get("extra") or r["after_kill"].get("bad")]
    resumed = [r for r in rounds if r["rerun"] is not None]
    bad_resume = [r["point"] for r in resumed if r["rerun"] != 0 or r["after_rerun"].get("extra")]
    said = [
        f"{len(rounds) - 1} kill points: {len(broken)} left a committed folder unequal to its manifest; "
        f"{len(resumed)} resumed, {len(bad_resume)} of them badly"
    ]
    return {
        "exit": p.returncode,
        "lines": 0,
        "seconds": time.time() - t0,
        "held": not broken and not bad_resume,
        "said": said,
    }


def two_clean_searches(work: Path) -> dict:
    import logging

    logging.disable(logging.WARNING)
    from search.test_search_reproducible import test_two_clean_searches_commit_the_same_bytes as check

    t0 = time.time()
    try:
        check(work, _records())
        held, said = True, ["two clean searches (6 real proxy runs each): every committed sha256 equal"]
    except AssertionError as err:
        held, said = False, [str(err).splitlines()[0][:160]]
    return {"exit": 0, "lines": 0, "seconds": time.time() - t0, "held": held, "said": said}


CASES: list[tuple[str, str, Callable[[Path], dict]]] = [
    ("unreadable file in a readable folder", "one line naming it, exit 2", unreadable_file),
    ("disk fills up during the build", "one line, exit 2, nothing committed, rerun builds", disk_fills_up),
    ("build larger than its disk", "refused before its bulk, one line, exit 2", build_too_large),
    ("empty input file", "refused before any stage commits, exit 2", empty_input),
    ("credentials in AWS_ENDPOINT_URL", "refused; secret, user nowhere (-v too)", endpoint_with_credentials),
    ("MLflow server down", "one line, exit 2, before any stage", dead_mlflow_server),
    ("MLflow store on a full disk", "one warning, the stage commits", mlflow_store_full),
    ("search driver killed (2 workers)", "no worker left, no write after", killed_search_driver),
    ("build killed at every file change", "committed folder = manifest; resumes", build_killed_everywhere),
    ("two clean searches", "byte-identical committed files", two_clean_searches),
]


def main() -> int:
    rows = []
    for name, expected, case in CASES:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            try:
                r = case(Path(tmp))
            except Exception as err:  # noqa: BLE001 - a probe that breaks is a row, not the end
                r = {"exit": "-", "lines": "-", "seconds": 0.0, "held": False, "said": [f"probe failed: {err!r}"[:200]]}
            finally:
                for p in Path(tmp).rglob("*"):  # mode 000 files: let the clean-up remove them
                    p.chmod(0o755) if p.is_dir() else p.chmod(0o644)
                shutil.rmtree(tmp, ignore_errors=True)
        rows.append((name, expected, r))
        print(f"{name}: {'held' if r['held'] else 'FAILED'} ({r['seconds']:.1f} s)", file=sys.stderr, flush=True)
    print("| case | expected | exit | stderr lines | seconds | held | what the user saw |")
    print("|---|---|---:|---:|---:|---|---|")
    for name, expected, r in rows:
        said = " ".join(r["said"]).replace("|", "\\|")[:220]
        held = "yes" if r["held"] else "NO"
        print(f"| {name} | {expected} | {r['exit']} | {r['lines']} | {r['seconds']:.1f} | {held} | {said} |")
    return 0 if all(r["held"] for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
