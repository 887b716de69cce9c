"""CLIMB's clustering of a whole corpus in streamed passes (Diao et al., NVIDIA 2025: its
clustering step and the ClimbLab construction), with the functions of `mixture.cluster.kmeans`.

k-means trains on a seeded sample of at most `max_train_points` embeddings (default 256 x K,
faiss's points per centroid; K_init = 1000 in the paper, capped on a small corpus), read shard by
shard by row number (`train`). Then, over `mixture.cluster.stream`'s blocks:

1. pass 1 (`assign_and_score`): each block assigned to its nearest centroid (faiss search),
   scored by every quality scorer batch-wise; per k-means cluster sizes and quality sums, the
   distances' histogram (the drift check's reference), per-document results spilled to disk;
2. on those aggregates (`merge_clusters`): pruning of clusters whose mean quality is below
   `quality.min_cluster_quality` (paper: 3.0 on 1-5) or that hold fewer than `min_cluster_size`
   documents (their documents get `cluster = -1`: accounted, never silently dropped), a Ward
   merge of the surviving centroids (`merge_distance`, paper 1.5; `target_clusters`, paper ~20),
   final ids by size;
3. pass 2 (`write_assignments`): assignments.parquet block by block, the final centroids summed;
4. pass 3 (`central_documents`): the report's snippets, the documents nearest each centroid.

Same inputs, same bytes as the in-memory code (bench/RESULTS.md, "Clustering in bounded memory").
Writes assignments.parquet, centroids_init.npy, centroids.npy and mapping.json into the staged
dataset; the report's statistics are gathered on the way (`mixture.cluster.report.Collector`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import storage
from mixture.cluster.kmeans import (
    ClusterError,
    MergeResult,
    assign_nearest,
    effective_k,
    final_ids,
    gpu_count,
    normalize_rows,
    prune_reasons,
    train_centroids,
    train_rows,
    ward_merge,
)
from mixture.cluster.report import Collector, ReportInputs
from mixture.cluster.scorers import ScoreBatch, ScoreSetup, Scoring, open_scorers
from mixture.cluster.stream import Corpus, Spill, source_codes
from mixture.config import ClusterConfig
from mixture.contract import StageOutput
from mixture.curate import documents

log = logging.getLogger(__name__)


@dataclass
class KMeansModel:
    """The trained centroids and how they were trained (the assignments are streamed)."""

    centroids: np.ndarray  # float32 [k, d], unit norm
    objective: float  # mean cosine of every document to its centroid
    train_points: int
    seconds: float
    gpu: bool
    far_distance: float = float("nan")  # 95th percentile of 1 - cosine to the nearest centroid


# The drift check's distance histogram: 1 - cosine in [0, 2], in bins of 0.0005.
DIST_BINS = 4000


def distance_histogram(sims: np.ndarray) -> np.ndarray:
    """Counts of the documents' cosine distances (1 - cosine to the nearest centroid) per bin."""
    bins = np.clip(((1.0 - sims.astype(np.float64)) * (DIST_BINS / 2)).astype(np.int64), 0, DIST_BINS - 1)
    return np.bincount(bins, minlength=DIST_BINS)


def percentile_distance(hist: np.ndarray, q: float = 0.95) -> float:
    """The upper edge of the bin holding the q-quantile of the histogram's distances."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    at = int(np.searchsorted(np.cumsum(hist), q * total))
    return (at + 1) * 2.0 / DIST_BINS


@dataclass
class Pass1:
    """Per k-means cluster aggregates of the first streamed pass, and its spilled parts."""

    sizes: np.ndarray  # documents per k-means cluster
    quality_sum: np.ndarray  # float64, the pruning scorer's sum per k-means cluster
    sim_sum: float
    sources: dict[str, int]  # source label -> code, in first-seen order
    assign_seconds: float = 0.0  # in faiss's search only (k-means seconds = training + this)
    dist_hist: np.ndarray = field(default_factory=lambda: np.zeros(DIST_BINS, dtype=np.int64))


def assign_and_score(corpus: Corpus, centroids: np.ndarray, scoring: Scoring, gpu: bool, spill: Spill) -> Pass1:
    """Pass 1: every block assigned to its nearest centroid and scored; per k-means cluster sizes
    and quality sums; per document arrays spilled; ids checked unique."""
    k = len(centroids)
    agg = Pass1(np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.float64), 0.0, {})
    hashes = []
    for start, ids, x, meta in tqdm(corpus.blocks(scoring.needs_text), desc="assign", unit="block"):
        t0 = time.perf_counter()
        sims, assign = assign_nearest(x, centroids, gpu)
        agg.assign_seconds += time.perf_counter() - t0
        scores = scoring.score(ScoreBatch(start, x, meta))
        quality = scores[scoring.chosen].astype(np.float64)
        np.add.at(agg.sizes, assign, 1)
        np.add.at(agg.quality_sum, assign, quality)  # in document order, as np.bincount sums
        agg.sim_sum += float(sims.sum(dtype=np.float64))
        agg.dist_hist += distance_histogram(sims)
        words = meta.column("n_words").to_numpy(zero_copy_only=False) if "n_words" in meta.column_names else None
        arrays = {"assign": assign, "source": source_codes(meta, agg.sources)}
        arrays.update({f"score_{n}": v.astype(np.float32) for n, v in scores.items()})
        if words is not None:
            arrays["words"] = np.nan_to_num(words.astype(np.float64)).astype(np.int64)
        spill.put(start, arrays)
        hashes.append(documents.id_hashes(ids))
    if len(np.unique(np.concatenate(hashes))) != corpus.n:
        raise ClusterError(f"{corpus.embeddings.uri}: document ids are not unique")
    return agg


@dataclass
class Clustering:
    """The k-means clusters, what pruning kept, and the final clusters after the merge."""

    km: KMeansModel
    sizes: np.ndarray  # documents per k-means cluster
    reasons: list[str | None]  # per k-means cluster: None (kept) or why it was pruned
    mean_quality: np.ndarray  # per k-means cluster
    merged: MergeResult
    mapping: np.ndarray  # k-means cluster -> final cluster, -1 when pruned
    final_sizes: np.ndarray  # documents per final cluster


def prune(cfg: ClusterConfig, sizes: np.ndarray, quality_sum: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """(reason per k-means cluster, mean quality per k-means cluster); fails when none is kept."""
    k = len(sizes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_q = quality_sum / sizes
    reasons = prune_reasons(sizes, mean_q, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
    if all(r is not None for r in reasons):
        raise ClusterError(
            f"all {k} k-means clusters were pruned (cluster mean quality {np.nanmin(mean_q):.2f}.."
            f"{np.nanmax(mean_q):.2f} vs min_cluster_quality {cfg.quality.min_cluster_quality}, "
            f"min_cluster_size {cfg.min_cluster_size}): lower the thresholds"
        )
    return reasons, mean_q


def merge_clusters(cfg: ClusterConfig, km: KMeansModel, p1: Pass1) -> Clustering:
    """Prune the k-means clusters on their aggregates, Ward-merge the survivors' centroids and
    number the final clusters by size."""
    k = len(km.centroids)
    reasons, mean_q = prune(cfg, p1.sizes, p1.quality_sum)
    kept = np.array([c for c in range(k) if reasons[c] is None], dtype=np.int64)
    merged = ward_merge(km.centroids[kept], cfg.merge_distance, cfg.target_clusters)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[kept] = final_ids(merged.labels, kept, p1.sizes)
    final_sizes = np.bincount(mapping[kept], weights=p1.sizes[kept], minlength=int(mapping.max()) + 1)
    return Clustering(km, p1.sizes, reasons, mean_q, merged, mapping, final_sizes.astype(np.int64))


def open_scoring(cfg: ClusterConfig, seed: int, corpus: Corpus) -> Scoring:
    """The configured quality scorers, set up on the corpus (their samples read by row)."""
    names = documents.column_names(corpus.curated)
    setup = ScoreSetup(cfg.quality, seed, corpus.n, names, corpus.curated, corpus.embeddings, corpus.rows)
    return open_scorers(cfg, setup)


def train(cfg: ClusterConfig, seed: int, corpus: Corpus, gpu: bool) -> tuple[np.ndarray, int, bool]:
    """(centroids, training points, GPU) of k-means on the seeded sample, read shard by shard."""
    k = effective_k(cfg.k_init, corpus.n, cfg.min_points_per_centroid)
    rows = train_rows(corpus.n, cfg.train_points(k), seed)
    return train_centroids(corpus.rows(rows), k, cfg.niter, cfg.nredo, seed, gpu), len(rows), gpu


def assignment_schema(names: list[str]) -> pa.Schema:
    fields = [("id", pa.string()), ("cluster_init", pa.int32()), ("cluster", pa.int32()), ("quality", pa.float32())]
    return pa.schema(fields + [(f"score_{n}", pa.float32()) for n in names])


def write_assignments(w, corpus: Corpus, cl: Clustering, spill: Spill, scoring: Scoring, stats: Collector):
    """Pass 2: assignments.parquet written block by block (one record batch each) and the final
    centroids summed in document order (as the in-memory sum did); the report's statistics."""
    names = scoring.names
    sums = np.zeros((len(cl.final_sizes), corpus.d), dtype=np.float64)
    schema = assignment_schema(names)
    with storage.open_write(w.path("assignments.parquet")) as f, pq.ParquetWriter(f, schema) as out:
        for start, ids, x in corpus.vectors():
            part = spill.get(start)
            cluster = cl.mapping[part["assign"]]
            cols = [
                ids,
                pa.array(part["assign"].astype(np.int32)),
                pa.array(cluster.astype(np.int32)),
                pa.array(part[f"score_{scoring.chosen}"]),
            ]
            out.write_table(pa.Table.from_arrays(cols + [pa.array(part[f"score_{n}"]) for n in names], schema=schema))
            kept = cluster >= 0
            np.add.at(sums, cluster[kept], x[kept])
            stats.add(start, ids, x, part, cluster)
    return normalize_rows(sums)


def central_documents(corpus: Corpus, cl: Clustering, spill: Spill, centroids: np.ndarray, stats: Collector):
    """Pass 3: each final cluster's documents nearest its centroid (the report's snippets)."""
    for start, ids, x in corpus.vectors():
        stats.add_central(start, ids, x, cl.mapping[spill.get(start)["assign"]], centroids)


def _write_npy(uri: str, arr: np.ndarray) -> None:
    with storage.open_write(uri) as f:
        np.save(f, arr, allow_pickle=False)


def count_documents(cl: Clustering) -> dict[str, int]:
    """Documents in = kept + pruned, or the stage fails."""
    n = int(cl.sizes.sum())
    kept = int(cl.final_sizes.sum())
    counts = {
        "documents_in": n,
        "documents_out": kept,
        "k_init": len(cl.km.centroids),
        "clusters": len(cl.final_sizes),
        "pruned_clusters": int(sum(r is not None for r in cl.reasons)),
        "pruned_documents": int(cl.sizes[cl.mapping < 0].sum()),
    }
    if counts["documents_out"] + counts["pruned_documents"] != n:
        raise ClusterError("document counts do not add up")
    return counts


def cluster_corpus(w, cfg: ClusterConfig, seed: int, corpus: Corpus, scoring: Scoring) -> tuple[Clustering, Collector]:
    """Train on the sample, assign and score (pass 1, spilled to a local temporary folder), prune
    and merge, write the assignments (pass 2) and find the snippets (pass 3); the data files
    staged in `w`."""
    gpu = gpu_count() > 0  # imports faiss: not part of the k-means seconds
    t0 = time.perf_counter()
    centroids, train_points, gpu = train(cfg, seed, corpus, gpu)
    trained = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="climb-cluster-") as tmp:
        spill = Spill(tmp)
        p1 = assign_and_score(corpus, centroids, scoring, gpu, spill)
        km = KMeansModel(
            centroids,
            p1.sim_sum / corpus.n,
            train_points,
            trained + p1.assign_seconds,
            gpu,
            percentile_distance(p1.dist_hist),
        )
        log.info(
            "k-means: K=%d on %d of %d documents in %.1f s (%s), mean cosine %.4f",
            len(centroids),
            train_points,
            corpus.n,
            km.seconds,
            "GPU" if gpu else "CPU",
            km.objective,
        )
        cl = merge_clusters(cfg, km, p1)
        stats = Collector(seed, corpus.n, cl.mapping, cl.final_sizes, list(p1.sources), scoring.names)
        final = write_assignments(w, corpus, cl, spill, scoring, stats)
        central_documents(corpus, cl, spill, final, stats)
    _write_npy(w.path("centroids_init.npy"), centroids.astype(np.float32))
    _write_npy(w.path("centroids.npy"), final.astype(np.float32))
    storage.write_json(w.path("mapping.json"), {str(c): int(m) for c, m in enumerate(cl.mapping)})
    return cl, stats


def drift_reference(cl: Clustering, stats: Collector, version: int) -> dict:
    """What an incremental version's drift check compares with (the manifest's extra): the 95th
    percentile distance of the clustered documents to their nearest k-means centroid, the final
    clusters' word shares and the kept k-means clusters' mean quality."""
    words = stats.words if stats.words is not None else cl.final_sizes
    total = max(float(np.sum(words)), 1.0)
    return {
        "version": version,
        "far_distance_p95": cl.km.far_distance,
        "distance": "1 - cosine to the nearest k-means centroid",
        "shares_of": "words" if stats.words is not None else "documents",
        "shares": {str(c): float(w) / total for c, w in enumerate(words)},
        "mean_quality_init": {str(c): float(q) for c, q in enumerate(cl.mean_quality) if cl.reasons[c] is None},
    }


def report_inputs(
    cfg: ClusterConfig, seed: int, corpus: Corpus, cl: Clustering, stats: Collector, scoring: Scoring
) -> ReportInputs:
    """What the report is a function of, once the corpus is clustered and streamed."""
    return ReportInputs(
        cfg=cfg,
        seed=seed,
        n=corpus.n,
        km=cl.km,
        reasons=cl.reasons,
        sizes_init=cl.sizes,
        mean_quality_init=cl.mean_quality,
        mapping=cl.mapping,
        merged=cl.merged,
        stats=stats,
        notes=scoring.notes(),
        scorer=cfg.quality.scorer,
        curated=corpus.curated,
        model=corpus.embeddings.manifest.extra.get("model"),
    )


def output(cfg: ClusterConfig, counts: dict, rep: dict, cl: Clustering, scorers: list[str]) -> StageOutput:
    """The manifest's counts, extra and summary of a full k-means version (before its lineage)."""
    ev = rep["evaluation"]
    sizes_line = ", ".join(f"{c['cluster']}={c['documents']}" for c in rep["clusters"])
    summary = [
        (
            "clusters",
            f"K_init {counts['k_init']} -> {counts['clusters']} final "
            f"({counts['pruned_clusters']} pruned, {counts['pruned_documents']:,} documents), "
            f"scorer {cfg.quality.scorer}",
        ),
        ("cluster sizes", sizes_line),
    ]
    if ev.get("final"):
        summary.append(
            (
                "purity/NMI vs source (evaluation only)",
                f"final {ev['final']['purity']:.3f} / {ev['final']['nmi']:.3f}, "
                f"k-means {ev['init']['purity']:.3f} / {ev['init']['nmi']:.3f}",
            )
        )
    extra = {
        "k_init_requested": cfg.k_init,
        "scorer": cfg.quality.scorer,
        "scorers": scorers,
        "kmeans_objective": cl.km.objective,
        "merge_heights_applied": cl.merged.applied,
        "evaluation": ev,
    }
    return StageOutput(counts=counts, extra=extra, summary=summary)
