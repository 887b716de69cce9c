"""Chaos rounds: overlapping runs and publishers, killed at random, never lose or corrupt data.

    .venv/bin/python bench/chaos.py [--stage-rounds 50] [--publish-rounds 20] [--seed 0]

Not a test (the suite runs a few rounds of each in tests/test_concurrency.py and
tests/publish/test_publish.py); this runs many, seeded, and prints the counts issue 14 asks for:

1. Stage rounds: two forced runs of one stage at once (`tests/helpers/toy_stage.py`, the real
   runner: lease, writer, commit), one killed with SIGKILL at a random moment (staging, waiting
   for the lease, committing). Afterwards the committed dataset must exist, verify against its
   manifest and hold the files of one run only.
2. Publish rounds: two `jobs/publish.py` processes of one `--version` at once against a moto S3
   server started here on 127.0.0.1, with different builds or identical ones (seeded), and in half
   the rounds one of them killed with SIGKILL at a random moment and then run again. Afterwards
   the version must be committed and verify with the reader, and `latest` must read back and
   verify. Exit statuses other than 0, or 2 with the one-line "different content" refusal, count
   as unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


# --------------------------------------------------------------------------------- stages
def _toy(root: Path, force: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.helpers.toy_stage", str(root), "wait", "0.6"] + (["force"] if force else [])
    return subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _toy_state(root: Path) -> str:
    """'ok', 'missing' or 'inconsistent' for the committed toy dataset."""
    from mixture.dataset import DatasetError, open_dataset

    try:
        ds = open_dataset(str(root / "toy"))
    except DatasetError:
        return "missing"
    try:
        ds.verify()
    except DatasetError:
        return "inconsistent"
    pids = {(root / "toy" / f["path"]).read_text().split()[-1] for f in ds.manifest.files}
    return "ok" if len(ds.manifest.files) == 4 and len(pids) == 1 else "inconsistent"


def stage_rounds(n: int, rng: random.Random, work: Path) -> dict[str, int]:
    root = work / "stage"
    assert _toy(root, force=False).wait(timeout=120) == 0
    counts = {"rounds": 0, "survivor_failed": 0, "missing": 0, "inconsistent": 0}
    for _ in range(n):
        a, b = _toy(root, True), _toy(root, True)
        victim, survivor = (a, b) if rng.random() < 0.5 else (b, a)
        time.sleep(rng.uniform(0.0, 2.0))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        survivor.communicate(timeout=120)
        counts["rounds"] += 1
        counts["survivor_failed"] += survivor.returncode != 0
        state = _toy_state(root)
        if state != "ok":
            counts[state] += 1
    return counts


# -------------------------------------------------------------------------------- publish
def start_moto() -> tuple[subprocess.Popen, str]:
    """The shared moto server, with this run's (test) credentials in the environment."""
    from helpers.s3 import start_moto as start

    proc, url = start()
    os.environ.update(
        AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="chaos", AWS_SECRET_ACCESS_KEY="chaos", AWS_DEFAULT_REGION="us-east-1"
    )
    return proc, url


def make_builds(work: Path, bucket: str) -> list[tuple[Path, object]]:
    """Two committed ClimbMix builds of the sample corpus with different content, and a config
    file for each that publishes to s3://bucket/climbmix."""
    from conftest import SAMPLE, read_jsonl_gz
    from helpers.s3 import publishable_builds

    return publishable_builds(work, read_jsonl_gz(SAMPLE), bucket, "chaos")


def _publisher(conf: Path, version: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "publish.py"), "--config", str(conf), "--version", version],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _expected_exit(proc: subprocess.Popen, err: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.startswith("climb:")]
    if "Traceback" in err:
        return False
    return proc.returncode == 0 or (proc.returncode == 2 and len(lines) == 1 and "different content" in lines[0])


def _version_state(bucket: str, version: str) -> str:
    from mixture.dataset import DatasetError
    from mixture.publish.reader import ClimbMix

    try:
        mix = ClimbMix(f"s3://{bucket}/climbmix/{version}")
    except DatasetError:
        return "missing"
    try:
        mix.verify()
        mix.read_table()
    except DatasetError:
        return "inconsistent"
    return "ok"


def _latest_ok(bucket: str) -> bool:
    from mixture.publish.reader import ClimbMix

    try:
        ClimbMix(f"s3://{bucket}/climbmix").verify()
        return True
    except Exception:  # noqa: BLE001 - any failure to read `latest` counts
        return False


def publish_round(i: int, rng: random.Random, builds: list, bucket: str, counts: dict[str, int]) -> None:
    version = f"chaos{i}"
    different = rng.random() < 0.5
    confs = [builds[0][0], builds[1][0] if different else builds[0][0]]
    procs = [_publisher(c, version) for c in confs]
    killed = rng.random() < 0.5
    if killed:
        victim = rng.randrange(2)
        time.sleep(rng.uniform(0.2, 2.5))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=60)
        procs[victim] = _publisher(confs[victim], version)  # and run again
    for p in procs:
        _, err = p.communicate(timeout=300)
        counts["unexpected_exit"] += not _expected_exit(p, err)
    counts["rounds"] += 1
    counts["different_content" if different else "identical_content"] += 1
    counts["killed"] += killed
    state = _version_state(bucket, version)
    if state != "ok":
        counts[state] += 1
    counts["bad_latest"] += not _latest_ok(bucket)


def publish_rounds(m: int, rng: random.Random, work: Path) -> dict[str, int]:
    import boto3

    moto, url = start_moto()
    try:
        bucket = "chaos"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        builds = make_builds(work, bucket)
        counts = dict.fromkeys(
            (
                "rounds",
                "different_content",
                "identical_content",
                "killed",
                "unexpected_exit",
                "missing",
                "inconsistent",
                "bad_latest",
            ),
            0,
        )
        for i in range(m):
            publish_round(i, rng, builds, bucket, counts)
        return counts
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage-rounds", type=int, default=50)
    p.add_argument("--publish-rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        t0 = time.time()
        stages = stage_rounds(args.stage_rounds, rng, Path(tmp))
        t1 = time.time()
        publishes = publish_rounds(args.publish_rounds, rng, Path(tmp))
        t2 = time.time()
    print(f"stage rounds:   {json.dumps(stages)}  ({t1 - t0:.0f} s)")
    print(f"publish rounds: {json.dumps(publishes)}  ({t2 - t1:.0f} s)")
    bad = (
        stages["missing"]
        + stages["inconsistent"]
        + publishes["missing"]
        + publishes["inconsistent"]
        + publishes["bad_latest"]
    )
    print(
        f"missing or inconsistent datasets/versions: {bad - publishes['bad_latest']}; bad latest: "
        f"{publishes['bad_latest']}"
    )
    return 1 if bad or stages["survivor_failed"] or publishes["unexpected_exit"] else 0


if __name__ == "__main__":
    sys.exit(main())
