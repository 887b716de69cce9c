"""k-means, pruning and merging as pure functions on arrays (numpy, faiss, scipy).

The clustering of CLIMB (Diao et al., NVIDIA 2025, its clustering step and the ClimbLab
construction), without datasets or files (streamed over a corpus by `mixture.cluster.passes`):

1. `spherical_kmeans`: k-means with K_init = 1000 in the paper on L2-normalised embeddings
   (faiss, spherical), trained on a seeded sample of at most `max_train_points` rows, then every
   row assigned to its nearest centroid by inner product (`assign_nearest`). Same seed, same
   data -> same clusters; the GPU index is used when faiss sees a GPU. `effective_k` caps K_init
   at n / `min_points_per_centroid` on a small corpus (with a warning).
2. `prune_reasons`: a cluster is dropped when its mean document quality is below the threshold
   (paper: 3.0 on the 1-5 scale of its fastText classifiers) or it is smaller than a minimum size.
3. `ward_merge`: surviving centroids are merged with Ward linkage while the merge height is
   <= `merge_distance` (paper: 1.5) and, when `target_clusters` is set (paper: about 20;
   ClimbLab has 20), further until at most that many groups remain.
4. `final_ids`: final ids 0..K-1 by size (documents, descending; ties by the smallest k-means id).

Scale of the merge distance. scipy's Ward height for two single centroids u, v is ||u - v||; a
merged group of sizes a, b at centroid distance D has height sqrt(2ab / (a + b)) * D. On
unit-normalised vectors ||u - v||^2 = 2 (1 - cos(u, v)), so a height h between two single
centroids means cos = 1 - h^2 / 2: 0.5 -> 0.875, 1.0 -> 0.5, 1.5 -> -0.125, and no two unit
vectors are farther than 2. k-means centroids of a real corpus sit at cosine ~0.2-0.9 from each
other (heights ~0.45-1.25 for singletons), and heights of merged groups grow with sqrt(size),
so 1.5 on unit vectors merges aggressively. The paper's 1.5 was for its own (1024-d) embedding
space; `target_clusters` is the knob that transfers between models, which is why both exist.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The inputs cannot be clustered as configured; the message says why."""


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def effective_k(k_init: int, n_docs: int, min_points_per_centroid: int) -> int:
    """K_init, capped so that every centroid has at least `min_points_per_centroid` documents
    on average (too few points per centroid gives noise clusters)."""
    if n_docs < 1:
        raise ClusterError("no documents to cluster")
    cap = max(1, n_docs // min_points_per_centroid)
    if k_init > cap:
        log.warning(
            "cluster.k_init=%d is too many for %d documents (at least %d per centroid): using K=%d",
            k_init,
            n_docs,
            min_points_per_centroid,
            cap,
        )
        return cap
    return k_init


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 [k, d], unit norm
    assign: np.ndarray  # int64 [n]
    similarity: np.ndarray  # float32 [n], cosine to the assigned centroid
    objective: float  # mean cosine to the assigned centroid (higher is better)
    train_points: int
    seconds: float
    gpu: bool


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def assign_nearest(
    x: np.ndarray, centroids: np.ndarray, use_gpu: bool = False, chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, index) of each row's nearest centroid by inner product."""
    import faiss

    index: Any = faiss.IndexFlatIP(centroids.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sims = np.empty(len(x), dtype=np.float32)
    idx = np.empty(len(x), dtype=np.int64)
    for start in tqdm(range(0, len(x), chunk), desc="assign", unit="chunk", disable=len(x) <= chunk):
        d, i = index.search(np.ascontiguousarray(x[start : start + chunk]), 1)
        sims[start : start + chunk], idx[start : start + chunk] = d[:, 0], i[:, 0]
    return sims, idx


def train_rows(n: int, max_train_points: int, seed: int) -> np.ndarray:
    """Row numbers (ascending) of the seeded k-means training sample: every row when n <=
    max_train_points, else a uniform sample without replacement (the same rows whether the
    vectors are in memory or read shard by shard)."""
    if n <= max_train_points:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, max_train_points, replace=False))


def train_centroids(train: np.ndarray, k: int, niter: int, nredo: int, seed: int, use_gpu: bool) -> np.ndarray:
    """faiss spherical k-means on the (unit-norm) training rows; unit-norm centroids [k, d]."""
    import faiss

    train = np.ascontiguousarray(train, dtype=np.float32)
    # faiss would subsample to max_points_per_centroid * k itself: the sample is the one the
    # config asks for, so let faiss use all of it (and not warn about small clusters).
    km = faiss.Kmeans(
        train.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=True,
        gpu=bool(use_gpu),
        verbose=False,
        max_points_per_centroid=math.ceil(len(train) / k) + 1,
        min_points_per_centroid=1,
    )
    km.train(train)
    assert km.centroids is not None
    return normalize_rows(km.centroids)


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 20,
    nredo: int = 1,
    seed: int = 0,
    max_train_points: int = 256_000,
    use_gpu: bool | None = None,
) -> KMeansResult:
    """faiss spherical k-means on a seeded sample of at most `max_train_points` rows, then an
    assignment of every row, all in memory (the stage streams the same steps over the shards).
    `x` must be L2-normalised."""
    t0 = time.perf_counter()
    if use_gpu is None:
        use_gpu = gpu_count() > 0
    train = x[train_rows(len(x), max_train_points, seed)]
    centroids = train_centroids(train, k, niter, nredo, seed, bool(use_gpu))
    sims, assign = assign_nearest(x, centroids, bool(use_gpu))
    return KMeansResult(
        centroids, assign, sims, float(sims.mean()), len(train), time.perf_counter() - t0, bool(use_gpu)
    )


# ----------------------------------------------------------------------------------- pruning
def prune_reasons(
    sizes: np.ndarray, mean_quality: np.ndarray, min_cluster_size: int, min_cluster_quality: float
) -> list[str | None]:
    """Per k-means cluster: None (kept), "empty", "size" or "quality". A cluster exactly at a
    threshold is kept (the paper drops clusters *below* 3.0)."""
    reasons: list[str | None] = []
    for size, q in zip(sizes, mean_quality):
        if size == 0:
            reasons.append("empty")
        elif size < min_cluster_size:
            reasons.append("size")
        elif not q >= min_cluster_quality:  # NaN counts as failing
            reasons.append("quality")
        else:
            reasons.append(None)
    return reasons


# ----------------------------------------------------------------------------------- merging
@dataclass
class MergeResult:
    labels: np.ndarray  # [m] group of each input centroid, 0..g-1 (first appearance order)
    heights: np.ndarray  # all m-1 Ward merge heights, ascending
    applied: int  # how many of those merges were applied
    n_at_distance: int  # groups after the distance cut alone


def ward_merge(centroids: np.ndarray, merge_distance: float | None, target_clusters: int | None) -> MergeResult:
    """Ward-linkage merge of centroids: every merge of height <= merge_distance, then more
    merges (lowest first) until at most target_clusters groups remain."""
    from scipy.cluster.hierarchy import linkage

    m = len(centroids)
    if m == 0:
        raise ClusterError("no centroids to merge")
    if m == 1:
        return MergeResult(np.zeros(1, dtype=np.int64), np.zeros(0), 0, 1)
    z = linkage(np.asarray(centroids, dtype=np.float64), method="ward")
    heights = z[:, 2]
    # Ward heights never decrease along the linkage, so "all merges <= d" is a prefix of z.
    n_groups = m - int((heights <= merge_distance).sum()) if merge_distance is not None else m
    n_at_distance = n_groups
    if target_clusters is not None:
        n_groups = min(n_groups, target_clusters)
    applied = m - max(n_groups, 1)
    parent = list(range(2 * m - 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for row in range(applied):
        a, b = int(z[row, 0]), int(z[row, 1])
        parent[root(a)] = m + row
        parent[root(b)] = m + row
    roots = [root(i) for i in range(m)]
    compact: dict[int, int] = {}
    labels = np.array([compact.setdefault(r, len(compact)) for r in roots], dtype=np.int64)
    return MergeResult(labels, heights, applied, n_at_distance)


def final_ids(group_of_kept: np.ndarray, kept: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Final id for each kept k-means cluster: groups numbered by total documents, descending,
    ties broken by the group's smallest k-means id."""
    groups = np.unique(group_of_kept)
    total = {g: int(sizes[kept[group_of_kept == g]].sum()) for g in groups}
    first = {g: int(kept[group_of_kept == g].min()) for g in groups}
    order = sorted(groups, key=lambda g: (-total[g], first[g]))
    rank = {g: i for i, g in enumerate(order)}
    return np.array([rank[g] for g in group_of_kept], dtype=np.int64)
