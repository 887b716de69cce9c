"""Static embeddings (`embed.model_type: static`) against the transformer encoder, in one run.

    .venv/bin/python bench/embed_static.py [--docs 0] [--threads 2] [--k 9 27] [--pca-dims 256]
        [--cache out/bench-static]

On data/sample/corpus.jsonl.gz (every document, or the first --docs after a seeded shuffle):
the project's encoder (`mixture.cluster.encoder.Embedder`, all-MiniLM-L6-v2, 256 tokens, fp32, --threads
torch threads) and the model2vec model distilled from the same folder (`mixture.cluster.static_encoder`,
whole documents; distilled once into --cache, the time printed apart). For each: docs/s of the
encoding alone, then the project's k-means (`mixture.cluster.kmeans.spherical_kmeans`, same seed) at
each K, and purity and NMI of the clusters against the documents' `source`
(`mixture.cluster.evaluation.purity` / `nmi`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def load(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    random.Random(seed).shuffle(recs)
    recs = recs[:n] if n else recs
    return [r["text"] for r in recs], [r["source"] for r in recs]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=0, help="0: every document")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[9, 27])
    ap.add_argument("--pca-dims", type=int, default=256)
    ap.add_argument("--cache", default=str(REPO / "out" / "bench-static"))
    args = ap.parse_args()

    import numpy as np
    import torch
    from mixture.cluster.encoder import Embedder
    from mixture.cluster.evaluation import nmi, purity
    from mixture.cluster.kmeans import spherical_kmeans
    from mixture.cluster.static_encoder import StaticEmbedder, ensure_model
    from mixture.config import EmbedConfig

    torch.set_num_threads(args.threads)
    texts, sources = load(args.docs)
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"{len(texts)} documents, {len(set(sources))} sources, {words:.0f} words on average")
    cfg = EmbedConfig(model_type="static", static_pca_dims=args.pca_dims, threads=args.threads)

    t0 = time.perf_counter()
    facts = ensure_model(args.cache, cfg)
    print(f"static model {facts['hash']} (pca_dims {args.pca_dims}): ready in {time.perf_counter() - t0:.1f} s")
    encoders = {
        "transformer (MiniLM, 256 tokens)": Embedder.from_config(cfg),
        f"static (model2vec, {args.pca_dims}-d, whole docs)": StaticEmbedder.load(facts),
    }
    rows = []
    for name, enc in encoders.items():
        enc.encode(texts[:8])  # warm-up
        t0 = time.perf_counter()
        emb = enc.encode(texts)
        secs = time.perf_counter() - t0
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        scores = []
        for k in args.k:
            labels = spherical_kmeans(emb, k, niter=20, seed=0, use_gpu=False).assign
            scores.append((k, purity(labels, np.array(sources)), nmi(labels, np.array(sources))))
        rows.append((name, emb.shape[1], len(texts) / secs, secs, scores))

    print()
    print(
        f"{'encoder':<38} {'dim':>4} {'docs/s':>8} {'seconds':>8} " + " ".join(f"{'K=' + str(k):>15}" for k in args.k)
    )
    print(f"{'':<38} {'':>4} {'':>8} {'':>8} " + " ".join(f"{'purity   NMI':>15}" for _ in args.k))
    for name, dim, rate, secs, scores in rows:
        cells = " ".join(f"{p:>7.3f} {n:>7.3f}" for _, p, n in scores)
        print(f"{name:<38} {dim:>4} {rate:>8.1f} {secs:>8.1f} {cells}")
    print(f"\nspeed-up of the static model: {rows[1][2] / rows[0][2]:.1f}x ({args.threads} torch threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
