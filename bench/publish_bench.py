"""Benchmark: publishing a ClimbMix-sized folder to S3 and reading it back, against the
alternatives a user would reach for, on the same local S3 endpoint (moto's server over HTTP).

    .venv/bin/python bench/publish_bench.py [--mb 96] [--files 4] [--repeats 3] [--pyarrow]

Upload (every method writes the same committed dataset under a fresh prefix):
  publish            mixture.publish: multipart, 4 files x 4 parts in flight, SHA-256 checksums,
                     verified against the stored checksum, manifest last
  publish-download   the same, verified by reading every object back
  pyarrow-copy       pyarrow.fs.copy_files (the project's IO layer), no verification; only with
                     --pyarrow, one run: against moto its multipart completion is retried with
                     long backoffs ("CompletedMultipartUpload got error embedded in a 200 OK")
  boto3-naive        one put_object per file in a loop, then a download to check the sha256
Read (the published version):
  reader             mixture.publish.reader.ClimbMix: tokens through the verified cache, Parquet verified
  boto3-raw          get_object of every file of the version, no verification
  pyarrow-raw        pyarrow S3FileSystem reads of the same files, no verification
Prints MB/s medians of the repeats and ratios. The endpoint is an in-memory Python server on
the same 2 cores, so absolute numbers are far below a real object store's; the ratios say what
the guarantees cost.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.s3 import start_moto as start

    return start()


def make_dataset(root: Path, mb: float, files: int):
    """A committed dataset shaped like a build: `files` token shards of mb/files MB each, a
    Parquet shard per token shard (random text), a tokenizer and a card."""
    from mixture import storage
    from mixture.dataset import DatasetWriter

    rng = np.random.default_rng(0)
    w = DatasetWriter(str(root / "climbmix"), "build", "bench", {})
    per = int(mb * 2**20 / files)
    for i in range(files):
        tokens = rng.integers(0, 8192, per // 2, dtype=np.uint16)
        storage.write_bytes(w.path(f"tokens/part-{i:05d}.bin"), tokens.tobytes())
        with storage.open_write(w.path(f"tokens/part-{i:05d}.idx")) as f:
            np.save(f, np.arange(0, len(tokens) + 1, 512, dtype=np.int64))
        words = rng.integers(0, 50_000, (2000, 60)).astype(str)
        pq.write_table(
            pa.table(
                {
                    "text": [" ".join(r) for r in words],
                    "cluster": ["c00"] * 2000,
                    "id": [f"d{i}-{j}" for j in range(2000)],
                }
            ),
            w.path(f"parquet/part-{i:05d}.parquet"),
        )
    storage.write_text(w.path("tokenizer/tokenizer.json"), "{}")
    storage.write_text(w.path("README.md"), "# bench\n")
    return w.commit(
        {"documents": files * 2000, "tokens": files * per // 2}, {"dtype": "uint16", "eos_id": 0, "mixture": {}}
    )


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=96)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pyarrow", action="store_true", help="also time pyarrow.fs.copy_files once")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc, url = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = url
    tmp = Path(tempfile.mkdtemp(prefix="publish-bench-"))
    try:
        import boto3
        import pyarrow.fs as pafs
        from mixture import storage
        from mixture.config import parse_config
        from mixture.publish.publisher import publish_dataset
        from mixture.publish.reader import ClimbMix

        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="bench")
        ds = make_dataset(tmp, args.mb, args.files)
        total = sum(f["bytes"] for f in ds.manifest.files)
        cfg = parse_config(
            {
                "output_root": str(tmp),
                "input": {"uris": ["x"]},
                "publish": {"uri": "s3://bench/climbmix", "multipart_chunk_mb": 8, "track": False},
            }
        )
        fs, _ = storage.filesystem("s3://bench/x")

        def publish(verify: str, tag: str):
            cfg.publish.verify = verify
            return lambda: publish_dataset(ds, cfg, version=tag)

        def pyarrow_copy(tag: str):
            return lambda: pafs.copy_files(
                ds.uri,
                f"bench/pyarrow/{tag}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
                use_threads=True,
            )

        def naive(tag: str):
            def run():
                for f in ds.manifest.files:
                    key = f"naive/{tag}/{f['path']}"
                    with open(ds.path(f["path"]), "rb") as fh:
                        s3.put_object(Bucket="bench", Key=key, Body=fh)
                    body = s3.get_object(Bucket="bench", Key=key)["Body"].read()
                    assert hashlib.sha256(body).hexdigest() == f["sha256"]

            return run

        methods = {
            "publish": lambda r: publish("checksum", f"c{r}"),
            "publish-download": lambda r: publish("download", f"d{r}"),
            "boto3-naive": naive,
        }
        for make in methods.values():  # warm-up: imports, connections
            make("warm")()
        upload: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.repeats):
            for name, make in methods.items():  # interleaved: the machine's noise hits all alike
                upload[name].append(timed(make(str(r))))
        if args.pyarrow:
            upload["pyarrow-copy"] = [timed(pyarrow_copy("0"))]

        def read_reader():
            mix = ClimbMix("s3://bench/climbmix/c0", cache_dir=str(tmp / f"cache-{time.time_ns()}"))
            for i in range(len(mix.token_shards)):
                tokens, _ = mix.tokens(i)
                int(tokens[-1])
            for i in range(len(mix.parquet_files)):
                mix.read_shard(i)

        def read_raw():
            for info in fs.get_file_info(pafs.FileSelector("bench/climbmix/c0", recursive=True)):
                if info.type == pafs.FileType.File:
                    with fs.open_input_stream(info.path) as f:
                        f.read()

        def read_boto3():
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="climbmix/c0/"):
                for o in page.get("Contents", []):
                    s3.get_object(Bucket="bench", Key=o["Key"])["Body"].read()

        read = {"reader": [], "boto3-raw": [], "pyarrow-raw": []}
        for _ in range(args.repeats):
            read["reader"].append(timed(read_reader))
            read["boto3-raw"].append(timed(read_boto3))
            read["pyarrow-raw"].append(timed(read_raw))

        mbytes = total / 1e6
        print(
            f"dataset: {len(ds.manifest.files)} files, {mbytes:.1f} MB; endpoint: moto_server (local, HTTP); "
            f"{args.repeats} repeats, medians"
        )
        base = statistics.median(upload["publish"])
        print(f"{'upload':<18}{'median s':>10}{'MB/s':>8}{'vs publish':>12}")
        for name, secs in upload.items():
            m = statistics.median(secs)
            print(f"{name:<18}{m:>10.2f}{mbytes / m:>8.1f}{m / base:>11.2f}x")
        base = statistics.median(read["boto3-raw"])
        print(f"{'read':<18}{'median s':>10}{'MB/s':>8}{'vs boto3-raw':>14}")
        for name, secs in read.items():
            m = statistics.median(secs)
            print(f"{name:<18}{m:>10.2f}{mbytes / m:>8.1f}{m / base:>13.2f}x")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
