"""Benchmark: the `build` stage against the pandas script a user would write instead.

    .venv/bin/python bench/publish_build.py [--docs 20000] [--clusters 8] [--tokens 4000000] [--repeats 3]

Input: a synthetic committed climblab (`--clusters` clusters of `--docs` documents each, 50-400
tokens and matching random text per document). Both methods sample each cluster to its share of
`--tokens` with upsampling, shuffle globally and write Parquet shards of 50,000 documents:
  build        mixture.stages.build via the pipeline: Parquet (text, cluster, id) AND token shards,
               manifest with checksums, dataset card
  pandas       per cluster DataFrame.sample(weights by share, replace when upsampling) on the
               text only, concat, sample(frac=1), to_parquet per shard; no tokens, no manifest
Prints medians of the repeats, documents/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def make_climblab(root: Path, n_clusters: int, docs: int, seed: int = 0) -> dict[str, int]:
    from mixture import storage
    from mixture.dataset import DatasetWriter

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    w = DatasetWriter(str(root / "climblab"), "shards", "bench", {})
    storage.write_text(w.path("tokenizer/tokenizer.json"), "{}")
    info = {}
    for c in range(n_clusters):
        name = f"c{c:02d}"
        lengths = rng.integers(50, 400, docs)
        tokens = rng.integers(1, 8192, int(lengths.sum()), dtype=np.uint16)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens[offsets[1:] - 1] = 0  # end-of-document id
        Path(w.path(f"{name}/tokens.bin")).write_bytes(tokens.tobytes())
        with open(w.path(f"{name}/tokens.idx"), "wb") as f:
            np.save(f, offsets)
        texts = [" ".join(words[rng.integers(0, 5000, n // 2)]) for n in lengths]
        pq.write_table(
            pa.table({"id": [f"{name}-{i}" for i in range(docs)], "text": texts}), w.path(f"{name}/text.parquet")
        )
        info[name] = {"documents": docs, "tokens": int(offsets[-1])}
    total = sum(v["tokens"] for v in info.values())
    lab = w.commit(
        {
            "documents_in": docs * n_clusters,
            "documents_out": docs * n_clusters,
            "tokens": total,
            "clusters": n_clusters,
        },
        {"clusters": info, "vocab_size": 8192, "eos_id": 0, "dtype": "uint16"},
    )
    rng = np.random.default_rng(1)
    weights = rng.dirichlet(np.full(n_clusters, 0.5))
    mix = {f"c{c:02d}": float(x) for c, x in enumerate(weights)}
    s = DatasetWriter(str(root / "search"), "search", "bench", {"climblab": lab.manifest_sha256})
    storage.write_json(s.path("mixture.json"), {"weights": mix})
    s.commit({"runs": 0, "iterations": 0})
    return info


def pandas_build(root: Path, out: Path, tokens: int, shard_docs: int, seed: int) -> int:
    mix = json.loads((root / "search" / "mixture.json").read_text())["weights"]
    info = json.loads((root / "climblab" / "_manifest.json").read_text())["extra"]["clusters"]
    frames = []
    for c, w in mix.items():
        df = pd.read_parquet(root / "climblab" / c / "text.parquet")
        frac = w * tokens / info[c]["tokens"]
        frames.append(df.sample(frac=min(frac, 15.0), replace=frac > 1, random_state=seed).assign(cluster=c))
    allrows = pd.concat(frames).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(allrows), shard_docs):
        allrows.iloc[s : s + shard_docs][["text", "cluster", "id"]].to_parquet(
            out / f"part-{s // shard_docs:05d}.parquet"
        )
    return len(allrows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from mixture.config import parse_config
    from mixture.pipeline import run_stage

    tmp = Path(tempfile.mkdtemp(prefix="build-bench-"))
    try:
        t = time.perf_counter()
        make_climblab(tmp, args.clusters, args.docs)
        print(f"synthetic climblab: {args.clusters} x {args.docs:,} documents in {time.perf_counter() - t:.1f} s")
        cfg = parse_config(
            {"output_root": str(tmp), "input": {"uris": ["x"]}, "build": {"tokens": args.tokens, "shard_docs": 50_000}}
        )
        times: dict[str, list[float]] = {"build": [], "pandas": []}
        n_build = n_pandas = 0
        for r in range(args.repeats):
            t = time.perf_counter()
            ds = run_stage(cfg, "climbmix", force=True).dataset
            times["build"].append(time.perf_counter() - t)
            n_build = ds.manifest.counts["documents"]
            t = time.perf_counter()
            n_pandas = pandas_build(tmp, tmp / f"pandas-{r}", args.tokens, 50_000, r)
            times["pandas"].append(time.perf_counter() - t)
        print(
            f"budget {args.tokens:,} tokens; build wrote {n_build:,} documents "
            f"({ds.manifest.counts['tokens']:,} tokens), pandas {n_pandas:,} documents; medians of {args.repeats}"
        )
        base = statistics.median(times["build"])
        for name, secs in times.items():
            m = statistics.median(secs)
            n = n_build if name == "build" else n_pandas
            print(f"{name:<8}{m:>8.2f} s{n / m:>12,.0f} docs/s{m / base:>8.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
