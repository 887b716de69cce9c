"""Shared fixtures: the committed sample corpus, tiny configs, and a real S3 endpoint over HTTP
(moto's standalone server on a free loopback port)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from itertools import islice
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint over HTTP. Sets the standard AWS environment variables for the session
    (test credentials, not secrets) and yields the endpoint URL."""
    port = _free_port()
    # the environment's own moto (pinned in requirements-dev.txt), not whatever is first on PATH
    exe = str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        exe = shutil.which("moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing-key-id",
        AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def spark_jvm():
    """The run's one JVM, started first: the curate stage ends a JVM it starts itself, so
    without it every test that runs the stage with no session active would start its own (~10 s)."""
    from mixture import spark as spark_helper

    spark_helper.session("local[2]", "climb-tests", 2).stop()


@pytest.fixture(scope="session")
def spark(s3_endpoint):
    """The tests' Spark session (local[2]), started once the S3 endpoint's environment is set:
    its Python workers keep the environment they start with, so a session that a test started
    earlier without it (through the pipeline) is stopped first. Without this the S3 tests passed
    only where an earlier module had happened to start the session after the endpoint."""
    from mixture import spark as spark_helper
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and active.conf.get("spark.executorEnv.AWS_ENDPOINT_URL", None) != s3_endpoint:
        active.stop()
    return spark_helper.session("local[2]", "climb-tests", 2)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the endpoint; yields its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def short_jvm_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a subprocess whose JVM lives for one small job (`climb curate`, `spark-submit`):
    the JIT's first tier only. C2 compiling Spark's start-up code is most of such a JVM's CPU
    (curating ~40 documents: 27 -> 17 CPU-s for `climb curate`, 33 -> 22 for `spark-submit`); what
    the job computes and commits is the same. The collector and memory settings stay the
    pipeline's own (`mixture.spark`)."""
    options = " ".join(filter(None, [env.get("JAVA_TOOL_OPTIONS"), "-XX:TieredStopAtLevel=1"]))
    return {**env, "JAVA_TOOL_OPTIONS": options}


def first_passing(records, n: int, min_words: int) -> list[dict]:
    """The first `n` of `records` with `min_words` words or more that pass the default filters,
    not `-copy` ids: the filter chain runs until it has them, not over the whole sample."""
    from mixture.config import FiltersConfig
    from mixture.curate.filters import FilterChain

    chain = FilterChain(FiltersConfig())
    long_enough = (r for r in records if len(r["text"].split()) >= min_words and not r["id"].endswith("-copy"))
    return list(islice((r for r in long_enough if chain(r["text"]).reason is None), n))


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    return read_jsonl_gz(SAMPLE)


def tiny_config_dict(tmp_path: Path, input_uris: list[str]) -> dict:
    """A configuration small enough for an end-to-end test on 2 cores."""
    return {
        "run_name": "test",
        "output_root": str(tmp_path / "out"),
        "input": {"uris": input_uris},
        "curate": {"spark_master": "local[2]", "partitions": 2},
        "embed": {"batch_size": 32, "max_tokens": 128, "shard_docs": 100},
        "cluster": {
            "k_init": 12,
            "niter": 10,
            "target_clusters": 4,
            "merge_distance": None,
            "quality": {"min_cluster_quality": 0.0},
        },
        "shards": {"vocab_size": 512, "tokenizer_train_docs": 300},
        "search": {
            "iterations": [4, 2],
            "candidates": 2000,
            "top_n": 8,
            "top_k": 4,
            "proxy": {"preset": "cpu-tiny", "tokens": 8192, "batch_size": 4, "seq_len": 64},
            "transfer_proxy": {"preset": "cpu-tiny", "tokens": 8192, "batch_size": 4, "seq_len": 64},
            "target": {"val_uris": [str(TARGET)], "val_docs": 8},
            "predictor": {"cv_folds": 3},
            "playoff": {"enabled": False},  # 6 runs cannot afford one (tests/search/test_playoff.py)
        },
        "build": {"tokens": 20_000, "shard_docs": 50},
        "tracking": {"experiment": "test"},
    }


@pytest.fixture
def tiny_corpus(tmp_path, sample_records) -> Path:
    """About 300 real documents from every source of the sample corpus."""
    by_source: dict[str, list[dict]] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r)
    picked = [r for recs in by_source.values() for r in recs[:30]]
    return write_jsonl(tmp_path / "input" / "tiny.jsonl", picked)
