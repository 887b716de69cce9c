"""Leases: one writer per dataset. Local leases die with their holder; S3 leases expire, are
renewed by a heartbeat, and an expired one is taken over by exactly one contender."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from mixture import lease

HOLDER = """
import sys, time
from mixture import lease
with lease.hold(sys.argv[1], "curated"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_local_lease_is_exclusive_and_dies_with_its_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(lease.LeaseBusy, match=f"curated is being written by pid {proc.pid} on"):
            with lease.hold(str(tmp_path), "curated", wait=False):
                pass
        with pytest.raises(lease.LeaseBusy):
            with lease.hold(str(tmp_path), "curated", wait=True, timeout=0.5, poll=0.1):
                pass
        with lease.hold(str(tmp_path), "embeddings", wait=False):  # another dataset: free
            pass
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs
        proc.wait(10)
        t0 = time.monotonic()
        with lease.hold(str(tmp_path), "curated", wait=False) as owner:
            assert owner["pid"] == os.getpid()
        assert time.monotonic() - t0 < 1
    finally:
        proc.kill()


def _lease_object(bucket: str) -> dict | None:
    s3 = boto3.client("s3")
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key="root/_leases/v1.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def test_an_s3_lease_is_exclusive_renewed_and_released(s3_bucket):
    root = f"s3://{s3_bucket}/root"
    with lease.hold(root, "v1", wait=False, ttl=6) as owner:
        first = _lease_object(s3_bucket)
        assert first["token"] == owner["token"]
        with pytest.raises(lease.LeaseBusy, match="v1 is being written by pid"):
            with lease.hold(root, "v1", wait=False):
                pass
        time.sleep(2.5)  # the heartbeat renews every ttl/3
        assert _lease_object(s3_bucket)["expires"] > first["expires"]
    assert _lease_object(s3_bucket) is None  # released
    with lease.hold(root, "v1", wait=False):
        pass


def test_an_expired_s3_lease_is_taken_over_by_exactly_one(s3_bucket):
    s3 = boto3.client("s3")
    dead = {"host": "gone", "pid": 1, "token": "dead", "since": "then", "expires": time.time() - 1}
    s3.put_object(Bucket=s3_bucket, Key="root/_leases/v1.json", Body=json.dumps(dead).encode())
    uri = f"s3://{s3_bucket}/root/_leases/v1.json"
    a, b = lease.S3Lease(uri, 30), lease.S3Lease(uri, 30)
    won = [x._try_once() is None for x in (a, b)]  # both see the expired lease
    assert won == [True, False]
    assert _lease_object(s3_bucket)["token"] == a.owner["token"]
    a.release()
    assert _lease_object(s3_bucket) is None
