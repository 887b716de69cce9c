"""Benchmark: the cluster stage's streaming path at 100k and 300k documents, in bounded memory.

    .venv/bin/python bench/cluster_scale.py [--sizes 100000 300000] [--k 256] [--dim 384]

For each size, a synthetic but realistic pair of committed inputs is built in a temporary folder:
`curated` (docs/part-*.parquet of 50,000 rows: id, a short real text cycled from the sample
corpus, source, n_words and two q_* signals the heuristic scorer knows) and `embeddings`
(emb/ids shards of 10,000 rows, the embed stage's format): 384-d unit vectors around 300 random
directions (Gaussian noise of norm ~1.3: each vector at cosine ~0.6 to its direction, like a
sentence encoder's topical neighbours), the q_*
signals shifted per direction so some k-means clusters fall below the pruning line. Then
`mixture.stages.cluster.run` runs in a child process (K_init --k, everything else at its default:
the training sample is 256 x K, 20 iterations, Ward merge to 20 clusters, the report with its
TF-IDF sample and map; no token estimate: the synthetic embeddings name no model), and the parent
samples the child's RSS with psutil every 20 ms. Prints wall seconds, peak RSS and the growth
ratios between the sizes; the issue's target is peak RSS growing < 25% from 100k to 300k.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["web", "code", "news", "wiki", "forum", "papers", "books", "legal", "manuals"]


def config(root: Path, k: int) -> dict:
    return {
        "run_name": "bench",
        "output_root": str(root),
        "input": {"uris": ["synthetic"]},
        "cluster": {"k_init": k},
        "tracking": {"experiment": "cluster-scale"},
    }


def sample_texts(n_words: int = 40) -> list[str]:
    with gzip.open(ROOT / "data" / "sample" / "corpus.jsonl.gz", "rt") as f:
        return [" ".join(json.loads(line)["text"].split()[:n_words]) for line in f]


def build(root: Path, n: int, dim: int, seed: int = 0) -> None:
    """Committed curated + embeddings datasets of n synthetic documents."""
    from mixture import pipeline
    from mixture.cluster import embeddings
    from mixture.config import parse_config
    from mixture.dataset import DatasetWriter

    cfg = parse_config(config(root, 8))
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((300, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    quality_shift = rng.uniform(-3.0, 1.0, len(centers))  # some directions below the pruning line
    texts = sample_texts()
    cur = DatasetWriter(
        pipeline.dataset_uri(cfg, "curated"), "curated", pipeline.config_hash(cfg, pipeline.stage("curated")), {}
    )
    emb = DatasetWriter(pipeline.dataset_uri(cfg, "embeddings"), "embeddings", "bench", {})
    for w in (cur, emb):
        w.reset()
    for part, lo in enumerate(range(0, n, 50_000)):
        rows = np.arange(lo, min(lo + 50_000, n))
        center = rng.integers(0, len(centers), len(rows))
        ids = [f"doc-{i:09d}" for i in rows]
        doc_texts = [texts[(i * 7919) % len(texts)] for i in rows]
        cols = {
            "id": pa.array(ids, pa.string()),
            "text": pa.array(doc_texts, pa.string()),
            "source": pa.array([SOURCES[c % len(SOURCES)] for c in center], pa.string()),
            "n_words": pa.array([len(t.split()) for t in doc_texts], pa.int32()),
            "q_mean_word_length": pa.array(rng.normal(4.6, 0.5, len(rows)) + quality_shift[center], pa.float32()),
            "q_alpha_words_ratio": pa.array(np.clip(rng.normal(0.9, 0.05, len(rows)), 0, 1), pa.float32()),
        }
        with open(cur.path(f"docs/part-{part:05d}.parquet"), "wb") as f:
            pq.write_table(pa.table(cols), f)
        for s, start in enumerate(range(0, len(rows), 10_000)):
            sl = slice(start, start + 10_000)
            noise = rng.standard_normal((len(center[sl]), dim)).astype(np.float32)
            x = centers[center[sl]] + (1.3 / np.sqrt(dim)) * noise  # cosine ~0.6 to its direction
            embeddings.write_shard(emb, part * 5 + s, ids[sl], x / np.linalg.norm(x, axis=1, keepdims=True))
    cur.commit({"documents_in": n, "documents_out": n}, {})
    emb.commit({"documents": n}, {"dim": dim})


def stage(root: Path, k: int) -> None:
    """The child: the cluster stage on the committed inputs (what the parent measures)."""
    from mixture import pipeline
    from mixture.config import parse_config
    from mixture.contract import StageContext
    from mixture.dataset import DatasetWriter, open_dataset
    from mixture.stages import cluster

    cfg = parse_config(config(root, k))
    inputs = {name: open_dataset(pipeline.dataset_uri(cfg, name)) for name in ("curated", "embeddings")}
    w = DatasetWriter(pipeline.dataset_uri(cfg, "clusters"), "clusters", "bench", {})
    w.reset()
    out = cluster.run(StageContext(cfg, pipeline.stage("clusters"), inputs, w))
    w.commit(out.counts, out.extra)
    print(json.dumps({"counts": out.counts, "summary": out.summary}))


def measure(root: Path, k: int) -> dict:
    """Run the stage in a child process; wall seconds, peak RSS (psutil, 20 ms) and its output."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--stage", str(root), "--k", str(k)], stdout=subprocess.PIPE, text=True
    )
    peak = [0]
    proc = psutil.Process(child.pid)

    def sample() -> None:
        while child.poll() is None:
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = child.communicate()
    wall = time.perf_counter() - t0
    thread.join()
    if child.returncode:
        raise SystemExit(f"the cluster stage failed at {root}")
    return {"seconds": wall, "peak_rss_mb": peak[0] / 2**20, "out": json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return stage(Path(args.stage), args.k)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="cluster-scale-") as tmp:
            t0 = time.perf_counter()
            build(Path(tmp), n, args.dim)
            built = time.perf_counter() - t0
            r = measure(Path(tmp), args.k)
        c = r["out"]["counts"]
        rows.append((n, r["seconds"], r["peak_rss_mb"], c))
        print(
            f"built {n:,} documents in {built:.1f} s; stage {r['seconds']:.1f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, counts {c}",
            flush=True,
        )
    print()
    print(f"K_init {args.k}, training sample cap 256 x K = {256 * args.k:,}, {args.dim}-d, blocks of 65,536 rows")
    print("| documents | wall s | peak RSS MB | k-means K | final clusters | pruned docs |")
    print("|---|---|---|---|---|---|")
    for n, s, m, c in rows:
        print(f"| {n:,} | {s:.1f} | {m:.0f} | {c['k_init']} | {c['clusters']} | {c['pruned_documents']:,} |")
    if len(rows) >= 2:
        (n0, s0, m0, _), (n1, s1, m1, _) = rows[0], rows[-1]
        print(
            f"\n{n0:,} -> {n1:,} documents ({n1 / n0:.1f}x): time x{s1 / s0:.2f}, "
            f"peak RSS x{m1 / m0:.3f} ({(m1 / m0 - 1) * 100:+.1f}%)"
        )


if __name__ == "__main__":
    main()
