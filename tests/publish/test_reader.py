"""Reading ClimbMix datasets (a local build, a published version on S3) with checksums."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.dataset import DatasetError
from mixture.pipeline import publish, run_stage
from mixture.publish.reader import ChecksumError, ClimbMix


@pytest.fixture
def build(tmp_path, sample_records):
    root = tmp_path / "out"
    lab = make_climblab(root, sample_records, with_upstream=False)
    make_search(root, lab, WEIGHTS)
    cfg = make_config(root)
    cfg.publish.track = False
    return cfg, run_stage(cfg, "climbmix").dataset


def test_local_build_texts_and_tokens_line_up(build):
    _, ds = build
    mix = ClimbMix(ds.uri)
    assert mix.version is None and len(mix) == ds.manifest.counts["documents"]
    assert mix.mixture == pytest.approx(WEIGHTS)
    rows = list(mix.iter_texts())
    docs = list(mix.iter_tokens())
    assert len(rows) == len(docs) == len(mix)
    tok = mix.tokenizer()
    for row, ids in zip(rows, docs):
        assert ids.dtype == np.uint16 and ids[-1] == mix.eos_id
        assert tok.decode(ids[:-1].tolist()) == row["text"]
    assert sum(len(d) for d in docs) == ds.manifest.counts["tokens"]
    # the same as reading the files with pyarrow and numpy alone
    plain = [r for p in sorted(ds.files("parquet/")) for r in pq.read_table(p).to_pylist()]
    assert plain == rows
    mix.verify()


def test_local_corruption_is_detected(build):
    _, ds = build
    bin_path = Path(ds.path("tokens/part-00000.bin"))
    raw = bytearray(bin_path.read_bytes())
    raw[10] ^= 0xFF  # same size, one byte flipped
    bin_path.write_bytes(bytes(raw))
    mix = ClimbMix(ds.uri)
    assert len(mix.read_table()) == len(mix)  # the Parquet is intact
    with pytest.raises(ChecksumError, match="tokens/part-00000.bin"):
        list(mix.iter_tokens())
    with pytest.raises(ChecksumError):
        mix.verify()
    # an unverified reader returns the damaged data without complaint
    assert len(list(ClimbMix(ds.uri, verify=False).iter_tokens())) == len(mix)


def test_published_corruption_is_detected(build, s3_endpoint, s3_bucket, tmp_path):
    cfg, ds = build
    cfg.publish.uri = f"s3://{s3_bucket}/cm"
    uri = publish(cfg, version="v1")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    key = "cm/v1/parquet/part-00001.parquet"
    good = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=s3_bucket, Key=key, Body=good[:-8] + b"\0" * 8)
    mix = ClimbMix(uri, cache_dir=str(tmp_path / "cache"))
    mix.read_shard(0)  # other shards still read
    with pytest.raises(ChecksumError, match="part-00001.parquet"):
        mix.read_table()
    # tokens come through a verified cache; a damaged cache copy is fetched again
    first = [d.copy() for d in mix.iter_tokens()]
    cached = Path(mix.cache_dir) / "tokens" / "part-00000.bin"
    assert cached.exists()
    cached.write_bytes(b"\0" * cached.stat().st_size)
    again = list(ClimbMix(uri, cache_dir=str(tmp_path / "cache")).iter_tokens())
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_latest_pointer_is_checked_and_incomplete_versions_are_invisible(build, s3_endpoint, s3_bucket):
    cfg, ds = build
    cfg.publish.uri = f"s3://{s3_bucket}/cm"
    publish(cfg, version="v1")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    pointer = json.loads(s3.get_object(Bucket=s3_bucket, Key="cm/latest")["Body"].read())
    assert ClimbMix(f"s3://{s3_bucket}/cm").manifest_sha256 == pointer["manifest_sha256"]
    # a manifest replaced behind the pointer's back
    m = json.loads(s3.get_object(Bucket=s3_bucket, Key="cm/v1/_manifest.json")["Body"].read())
    m["counts"]["documents"] += 1
    s3.put_object(Bucket=s3_bucket, Key="cm/v1/_manifest.json", Body=json.dumps(m).encode())
    with pytest.raises(ChecksumError, match="latest"):
        ClimbMix(f"s3://{s3_bucket}/cm")
    # a version without a manifest does not exist for readers
    s3.put_object(Bucket=s3_bucket, Key="cm/v2/parquet/part-00000.parquet", Body=b"partial")
    with pytest.raises(DatasetError, match="no ClimbMix dataset"):
        ClimbMix(f"s3://{s3_bucket}/cm/v2")
