"""Benchmark: the streaming loader (`mixture.publish.streaming.ClimbMixStream`) reading a published
ClimbMix version from S3 (moto's server on 127.0.0.1, started here) against the same files read
from the local folder, through a DataLoader as a training loop would.

    .venv/bin/python bench/streaming.py [--mb 64] [--files 4] [--seq-len 1024] [--batch 16] [--workers 2] [--repeats 3]
                                        [--train-steps 200]

The dataset is shaped like a build's token output (`files` uint16 token shards of mb/files MB,
a manifest with every file's sha256), published with `mixture.publish.publisher.publish_dataset`. Each
repeat reads every window once:
  local           the committed folder; every shard hashed against the manifest before use
  local-noverify  the same with verify=False (what the checksums cost locally)
  s3-cold         s3://…/ through the `latest` pointer, a fresh cache folder: every shard downloaded
                  once (workers share it under a file lock), hashed while downloading
  s3-warm         the same cache folder again: cached shards re-hashed, nothing downloaded
Prints tokens/s (targets per second: windows x seq_len) medians and the ratio to `local`. The
endpoint is an in-memory Python server on the same 2 cores, so S3 figures are a floor, not what a
real object store gives.

Then a real consumer (`--train-steps`, 0 skips it): the search's CPU proxy (`cpu-2m`, its default
seq_len 256 and batch 4) trained for that many AdamW steps on windows streamed from S3 by a
DataLoader with `--workers` workers, against the same steps on windows already in memory: training
tokens/s of both (one torch thread, the proxy's default; the streamed figure includes the cold
download of the shards the steps read), so the loader's cost inside a training loop shows.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.s3 import start_moto as start

    return start()


def make_dataset(root: Path, mb: float, files: int):
    """A committed dataset with `files` token shards (random uint16 ids, documents of 512 tokens)."""
    from mixture import storage
    from mixture.dataset import DatasetWriter

    rng = np.random.default_rng(0)
    w = DatasetWriter(str(root / "climbmix"), "build", "bench", {})
    per = int(mb * 2**20 / files) // 2
    for i in range(files):
        storage.write_bytes(w.path(f"tokens/part-{i:05d}.bin"), rng.integers(0, 8192, per, dtype=np.uint16).tobytes())
        with storage.open_write(w.path(f"tokens/part-{i:05d}.idx")) as f:
            np.save(f, np.append(np.arange(0, per, 512, dtype=np.int64), per))
    return w.commit(
        {"documents": files * (per // 512), "tokens": files * per}, {"dtype": "uint16", "eos_id": 0, "mixture": {}}
    )


def read_all(uri: str, args: argparse.Namespace, **kw) -> tuple[float, int]:
    """(seconds, tokens) to read every window of the version once through a DataLoader."""
    from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream

    t = time.perf_counter()
    stream = ClimbMixStream(uri, args.seq_len, **kw)
    n = 0
    for x, _ in ClimbMixLoader(stream, batch_size=args.batch, num_workers=args.workers):
        n += x.numel()
    return time.perf_counter() - t, n


def train_rate(batches, steps: int, vocab: int) -> tuple[float, float]:
    """(training tokens/s, last loss) of the cpu-2m proxy for `steps` steps on `batches`."""
    import torch
    import torch.nn.functional as F
    from mixture.config import ProxyConfig
    from mixture.search.proxy import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the proxy's default (search.proxy.threads), one core for the loader
    model = build_model(ProxyConfig(preset="cpu-2m"), vocab, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    it, n, t = iter(batches), 0, time.perf_counter()
    for _ in range(steps):
        inputs, targets = next(it)
        logits = model(inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += targets.numel()
    return n / (time.perf_counter() - t), loss.item()


def train_bench(args: argparse.Namespace, tmp: Path) -> None:
    """The proxy trained from the stream (S3, cold cache) and from batches already in memory."""
    from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream

    seq, batch = 256, 4
    stream = ClimbMixStream("s3://bench/climbmix", seq, cache_dir=str(tmp / "cache-train"))
    loader = ClimbMixLoader(stream, batch_size=batch, num_workers=args.workers)
    streamed, loss_s = train_rate(loader, args.train_steps, 8192)
    local = ClimbMixLoader(ClimbMixStream(str(tmp / "climbmix"), seq), batch_size=batch)
    in_memory, loss_m = train_rate(list(itertools.islice(local, args.train_steps)), args.train_steps, 8192)
    print(
        f"train cpu-2m, seq_len {seq}, batch {batch}, {args.train_steps} steps: from S3 through the stream "
        f"{streamed:,.0f} tokens/s (loss {loss_s:.2f}), from memory {in_memory:,.0f} tokens/s "
        f"(loss {loss_m:.2f}); ratio {streamed / in_memory:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=64)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=200)
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    proc, url = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = url
    tmp = Path(tempfile.mkdtemp(prefix="streaming-bench-"))
    try:
        import boto3
        from mixture.config import parse_config
        from mixture.publish.publisher import publish_dataset

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        ds = make_dataset(tmp, args.mb, args.files)
        cfg = parse_config(
            {
                "output_root": str(tmp),
                "input": {"uris": ["x"]},
                "publish": {"uri": "s3://bench/climbmix", "multipart_chunk_mb": 8, "track": False},
            }
        )
        publish_dataset(ds, cfg, version="v1")
        runs: dict[str, list[tuple[float, int]]] = {k: [] for k in ("local", "local-noverify", "s3-cold", "s3-warm")}
        read_all(ds.uri, args)  # warm-up: imports, page cache
        for r in range(args.repeats):  # interleaved: the machine's noise hits all alike
            cache = str(tmp / f"cache-{r}")
            runs["local"].append(read_all(ds.uri, args))
            runs["local-noverify"].append(read_all(ds.uri, args, verify=False))
            runs["s3-cold"].append(read_all("s3://bench/climbmix", args, cache_dir=cache))
            runs["s3-warm"].append(read_all("s3://bench/climbmix", args, cache_dir=cache))
        mb = sum(f["bytes"] for f in ds.manifest.files if f["path"].endswith(".bin")) / 1e6
        print(
            f"dataset: {args.files} token shards, {mb:.1f} MB; seq_len {args.seq_len}, batch {args.batch}, "
            f"{args.workers} DataLoader workers; endpoint: moto_server (local, HTTP); {args.repeats} repeats, "
            "medians"
        )
        base = statistics.median(n / s for s, n in runs["local"])
        print(f"{'read':<16}{'median s':>10}{'tokens/s':>14}{'vs local':>10}")
        for name, rs in runs.items():
            secs = statistics.median(s for s, _ in rs)
            tps = statistics.median(n / s for s, n in rs)
            print(f"{name:<16}{secs:>10.2f}{tps:>14,.0f}{tps / base:>9.2f}x")
        if args.train_steps:
            train_bench(args, tmp)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
