"""Cluster quality on the sample corpus: how well the embed -> k-means -> prune -> Ward-merge
pipeline recovers the corpus' 9 sources (labels used for evaluation only), side by side with
what a user might do instead, on the same documents:

  - TF-IDF + scikit-learn KMeans with the same final K (the classic topic-clustering recipe),
  - the same embeddings + scikit-learn KMeans directly at the final K (no K_init / merge).

    .venv/bin/python bench/cluster_quality.py [--out /tmp/climb-bench-cluster] [--max-tokens 256]
        [--k-init 100] [--targets 20 9] [--min-quality 3.0]

The curated input is the whole corpus (2,531 documents, no filtering) with the curation stage's
q_* signals (mixture.curate.filters when importable). Embeddings are committed once under --out
and reused by later runs (the stage is up to date). Purity: share of documents in their
cluster's majority source; NMI: normalised mutual information (arithmetic).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]


def q_signals(texts: list[str]) -> dict[str, list[float]]:
    from mixture.config import FiltersConfig
    from mixture.curate.filters import FilterChain

    chain = FilterChain(FiltersConfig())
    rows = [chain(t).signals for t in texts]
    return {k: [r[k] for r in rows] for k in rows[0]}


def commit_curated(cfg, records: list[dict]) -> None:
    from mixture import pipeline
    from mixture.dataset import DatasetWriter, try_open

    uri = pipeline.dataset_uri(cfg, "curated")
    if try_open(uri):
        return
    texts = [r["text"] for r in records]
    cols = {
        "id": pa.array([r["id"] for r in records], pa.string()),
        "text": pa.array(texts, pa.string()),
        "source": pa.array([r["source"] for r in records], pa.string()),
        "n_words": pa.array([len(t.split()) for t in texts], pa.int32()),
    }
    for name, values in q_signals(texts).items():
        cols[name] = pa.array(values, pa.float32())
    w = DatasetWriter(uri, "curated", pipeline.config_hash(cfg, pipeline.stage("curated")), {})
    with open(w.path("docs/part-00000.parquet"), "wb") as f:
        pq.write_table(pa.table(cols), f)
    n = len(records)
    w.commit(
        {
            "documents_in": n,
            "documents_out": n,
            "quarantined": {},
            "filtered": {},
            "exact_duplicates": 0,
            "near_duplicates": 0,
            "per_file": {},
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/climb-bench-cluster")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--k-init", type=int, default=100)
    ap.add_argument("--targets", type=int, nargs="+", default=[20, 9])
    ap.add_argument("--min-quality", type=float, default=3.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from mixture import pipeline
    from mixture.cluster.embeddings import load_embeddings
    from mixture.cluster.evaluation import nmi, purity
    from mixture.cluster.kmeans import normalize_rows, ward_merge
    from mixture.config import parse_config
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    source_of = {r["id"]: r["source"] for r in records}

    def config(target: int | None, min_quality: float):
        return parse_config(
            {
                "output_root": args.out,
                "input": {"uris": ["unused"]},
                "embed": {"max_tokens": args.max_tokens, "shard_docs": 1000},
                "cluster": {
                    "k_init": args.k_init,
                    "target_clusters": target,
                    "merge_distance": None,
                    "quality": {"min_cluster_quality": min_quality},
                },
                "tracking": {"experiment": "bench"},
            }
        )

    cfg = config(args.targets[0], args.min_quality)
    commit_curated(cfg, records)
    t0 = time.perf_counter()
    res = pipeline.run_stage(cfg, "embeddings")
    print(
        f"embeddings: {'reused' if res.skipped else f'computed in {time.perf_counter() - t0:.0f} s'} "
        f"({len(records)} documents, max_tokens {args.max_tokens})"
    )
    ids, emb = load_embeddings(res.dataset)
    x = normalize_rows(emb)
    labels = np.array([source_of[i] for i in ids])
    print(f"{len(ids)} documents, {len(set(labels))} sources; k-means K_init={args.k_init}, seed 0\n")

    rows = []
    for target in args.targets:
        for min_q in sorted({0.0, args.min_quality}):
            t0 = time.perf_counter()
            ds = pipeline.run_stage(config(target, min_q), "clusters", force=True).dataset
            secs = time.perf_counter() - t0
            a = pq.read_table(ds.path("assignments.parquet")).to_pandas()
            src = a["id"].map(source_of).to_numpy()
            kept = a["cluster"].to_numpy() >= 0
            c = ds.manifest.counts
            rows.append(
                (
                    f"CLIMB pipeline, target {target}, min quality {min_q:g}",
                    c["clusters"],
                    purity(a["cluster"][kept], src[kept]),
                    nmi(a["cluster"][kept], src[kept]),
                    f"{c['pruned_documents']} pruned docs, {secs:.0f} s",
                )
            )
        if target == args.targets[0]:
            init = a["cluster_init"].to_numpy()
            rows.insert(0, (f"k-means alone, K_init={c['k_init']}", c["k_init"], purity(init, src), nmi(init, src), ""))
        t0 = time.perf_counter()
        direct = KMeans(target, n_init=1, random_state=0).fit_predict(x)
        rows.append(
            (
                f"embeddings + sklearn KMeans K={target}",
                target,
                purity(direct, labels),
                nmi(direct, labels),
                f"{time.perf_counter() - t0:.1f} s",
            )
        )
        t0 = time.perf_counter()
        texts = [r["text"] for r in records]
        order = {r["id"]: i for i, r in enumerate(records)}
        tf = TfidfVectorizer(
            stop_words="english", sublinear_tf=True, max_features=50_000, min_df=2, max_df=0.5
        ).fit_transform([texts[order[i]] for i in ids])
        tfk = KMeans(target, n_init=1, random_state=0).fit_predict(tf)
        rows.append(
            (
                f"TF-IDF + sklearn KMeans K={target}",
                target,
                purity(tfk, labels),
                nmi(tfk, labels),
                f"{time.perf_counter() - t0:.1f} s",
            )
        )

    print(f"{'method':52s} {'clusters':>8s} {'purity':>7s} {'NMI':>6s}  notes")
    for name, k, p, m, note in rows:
        print(f"{name:52s} {k:8d} {p:7.3f} {m:6.3f}  {note}")

    # the Ward merge heights on these centroids: what merge_distance gives how many clusters
    cents = np.load(ds.path("centroids_init.npy"))
    sizes = np.bincount(a["cluster_init"], minlength=len(cents))
    m = ward_merge(cents[sizes > 0], None, None)
    h = np.sort(m.heights)
    print(
        f"\nWard heights of {len(h) + 1} unit-norm k-means centroids: min {h.min():.3f}, median "
        f"{np.median(h):.3f}, max {h.max():.3f}"
    )
    for groups in (100, 50, 20, 10, 5):
        if groups <= len(h):
            print(
                f"  {groups:4d} clusters <-> merge_distance in [{h[len(h) - groups]:.3f}, {h[len(h) - groups + 1]:.3f})"
            )
    print(f"  merge_distance 1.5 (paper) -> {len(h) + 1 - int((h <= 1.5).sum())} clusters")
    cos = x @ x.T
    print(
        f"  pairwise document cosine: median {np.median(cos):.3f}; centroid pairwise cosine median "
        f"{np.median((cents @ cents.T)[np.triu_indices(len(cents), 1)]):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
