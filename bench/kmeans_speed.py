"""k-means at CLIMB's K_init = 1000: faiss (what the cluster stage runs) vs scikit-learn's
MiniBatchKMeans and KMeans, same data, same K, same iteration budget, interleaved repeats.

    .venv/bin/python bench/kmeans_speed.py [--n 100000] [--dim 384] [--k 1000] [--repeats 3] [--no-full]

Data: unit vectors drawn around 2,000 random directions with per-direction spread (a "random-ish"
stand-in for 100k sentence embeddings: clustered, 384-d, L2-normalised). Objectives, computed
the same way for every method from its own centroids: mean squared L2 distance to the nearest
centroid (what Lloyd's k-means minimises; lower is better) and mean cosine to the nearest
normalised centroid (what spherical k-means maximises; higher is better).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def make_data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((2000, dim)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    which = rng.integers(0, len(dirs), n)
    spread = rng.uniform(0.6, 1.4, len(dirs)).astype(np.float32)[which, None]
    x = dirs[which] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim) * 1.2
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def objectives(x: np.ndarray, centroids: np.ndarray) -> tuple[float, float]:
    import faiss

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    l2 = faiss.IndexFlatL2(c.shape[1])
    l2.add(c)
    d2, _ = l2.search(x, 1)
    cn = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    ip = faiss.IndexFlatIP(c.shape[1])
    ip.add(cn)
    sim, _ = ip.search(x, 1)
    return float(d2.mean()), float(sim.mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-repeats", type=int, default=1)
    ap.add_argument("--no-full", action="store_true", help="skip sklearn KMeans (slowest)")
    args = ap.parse_args()

    import faiss
    from mixture.cluster.kmeans import spherical_kmeans
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = make_data(args.n, args.dim)
    k, niter = args.k, args.niter

    def ours(seed):
        r = spherical_kmeans(x, k, niter=niter, nredo=1, seed=seed, max_train_points=len(x), use_gpu=False)
        return r.centroids

    def faiss_l2(seed):
        km = faiss.Kmeans(
            args.dim, k, niter=niter, seed=seed, max_points_per_centroid=len(x) // k + 1, min_points_per_centroid=1
        )
        km.train(x)
        return km.centroids

    def minibatch(seed):
        # batch 4096, as many passes over the data as the others' iterations (max_iter = epochs)
        m = MiniBatchKMeans(
            k,
            batch_size=4096,
            max_iter=niter,
            n_init=1,
            random_state=seed,
            max_no_improvement=None,
            tol=0.0,
            init="k-means++",
            init_size=3 * k,
        )
        m.fit(x)
        return m.cluster_centers_

    def full(seed):
        m = KMeans(k, n_init=1, max_iter=niter, tol=0.0, random_state=seed, algorithm="lloyd")
        m.fit(x)
        return m.cluster_centers_

    contenders = {
        "faiss spherical (cluster stage)": (ours, args.repeats),
        "faiss L2": (faiss_l2, args.repeats),
        "sklearn MiniBatchKMeans": (minibatch, args.repeats),
    }
    if not args.no_full:
        contenders["sklearn KMeans (lloyd)"] = (full, args.full_repeats)
    print(
        f"{args.n:,} x {args.dim} unit vectors, K={k}, {niter} iterations (MiniBatch: {niter} epochs of "
        f"batch 4096), faiss {faiss.__version__}, threads: faiss {faiss.omp_get_max_threads()}"
    )
    times: dict[str, list[float]] = {name: [] for name in contenders}
    objs: dict[str, tuple[float, float]] = {}
    for r in range(max(n for _, n in contenders.values())):
        for name, (fn, reps) in contenders.items():
            if r >= reps:
                continue
            t0 = time.perf_counter()
            cents = fn(r)
            times[name].append(time.perf_counter() - t0)
            if name not in objs:
                objs[name] = objectives(x, cents)
    base = statistics.median(times["faiss spherical (cluster stage)"])
    print(
        f"\n{'':34s} {'seconds (median)':>17s} {'runs':>24s} {'vs faiss sph.':>13s} "
        f"{'mean sq. L2':>12s} {'mean cos':>9s}"
    )
    for name in contenders:
        t = statistics.median(times[name])
        runs = "/".join(f"{v:.1f}" for v in times[name])
        l2, cos = objs[name]
        print(f"{name:34s} {t:17.2f} {runs:>24s} {t / base:12.2f}x {l2:12.5f} {cos:9.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
