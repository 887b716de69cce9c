"""Stage `cluster`: the groups the search mixes, from k-means (CLIMB) or from the user.

`cluster.method: kmeans` (the default) follows CLIMB (Diao et al., NVIDIA 2025: its clustering
step and the ClimbLab construction) with the functions of `mixture.cluster.kmeans`: spherical k-means
with K_init = 1000 (`cluster.k_init`, capped on a small corpus), pruning of clusters whose mean
quality is below `quality.min_cluster_quality` (paper: 3.0 on 1-5) or that hold fewer than
`min_cluster_size` documents (their documents get `cluster = -1`: accounted, never silently
dropped), a Ward merge of the surviving centroids (`merge_distance`, paper 1.5; `target_clusters`,
paper ~20), final ids by size. The quality scores come from the configured scorers (`compute_scores`).

`cluster.method: field` / `assignments` takes groups the user already has instead (RegMix-style
domain mixing, Liu et al. 2024; `mixture.cluster.groups`): a curated document field, optionally merged by
a mapping file, or an `id -> group` file. It reads no embeddings (the `embed` stage committed an
empty dataset); pruning by size and quality (scorers that need only the curated q_* signals)
applies per group, documents without a group get `cluster = -1` and are counted by reason, and
final ids are ordered by size as with k-means.

Bounded memory (k-means): nothing holds the corpus. k-means trains on a seeded sample of at most
`max_train_points` embeddings (default 256 x K, faiss's points per centroid), read shard by shard
by row number; then pass 1 streams the embeddings with the curated q_* columns in blocks of
`BLOCK_ROWS` (assignment by faiss search against the centroids, every scorer batch-wise,
per-cluster sizes and quality sums, per-document results spilled to local disk), pruning and the
merge work on those aggregates, pass 2 writes assignments.parquet block by block and sums the
final centroids, pass 3 finds the report's snippets. Same inputs, same bytes as the in-memory code
(bench/RESULTS.md, "Clustering in bounded memory").

With the user's groups the curated metadata (no text) is read in record batches into Arrow
columns: ids stay one Arrow array (unique by their 64-bit hashes, the colliding ones compared
exactly), each document's group is an integer code (`mixture.cluster.groups`: Arrow dictionary encoding of
the field, or Arrow hash lookups of the assignments file), and assignments.parquet is written one
row group per `BLOCK_ROWS` documents: no Python object per document.

Outputs (docs/DATASETS.md, "clusters"): assignments.parquet, mapping.json, report.md /
report.json (`mixture.cluster.report`), and with k-means centroids_init.npy, centroids.npy and map.png;
logged to MLflow.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import increments, storage
from mixture.cluster import embeddings
from mixture.cluster import report as R
from mixture.cluster.groups import (
    GroupError,
    Grouping,
    NumberedGroups,
    assignment_files,
    by_assignments,
    by_field,
    first_duplicate,
    number_groups,
    read_assignments,
    read_mapping,
)
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
from mixture.cluster.scorers import ScoreBatch, Scores, ScoreSetup, Scoring, compute_scores, open_scorers
from mixture.config import ClusterConfig
from mixture.contract import StageContext, StageOutput
from mixture.curate import documents, retract
from mixture.dataset import Dataset

log = logging.getLogger(__name__)


def curated_meta_columns(names: list[str]) -> list[str]:
    """id, source, n_words and every q_* signal of the curated docs (no text)."""
    return [c for c in ("id", "source", "n_words") if c in names] + [c for c in names if c.startswith("q_")]


# Rows per streamed block: assign_nearest's chunk, so faiss is asked the same queries as it would
# be on the whole array (the same results bit for bit); 64k x 384 float32 is 100 MB.
BLOCK_ROWS = 1 << 16


def _unit(vecs: np.ndarray) -> np.ndarray:
    """normalize_rows in place (the same values): the block buffer becomes the unit vectors."""
    return np.divide(vecs, np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12), out=vecs)


@dataclass
class Corpus:
    """The curated documents and their embeddings, streamed together in blocks (the embed stage
    writes the vectors in the curated order; any other order is an error)."""

    embeddings: Dataset
    curated: Dataset
    n: int
    d: int
    columns: list[str]  # the curated columns the scorers and the report read

    def blocks(self, text: bool = False) -> Iterator[tuple[int, pa.Array, np.ndarray, pa.Table]]:
        """(first row, ids, unit-norm vectors, curated columns) per block."""
        cols = self.columns + (["text"] if text else [])
        curated = documents.iter_blocks(self.curated, cols, BLOCK_ROWS)
        for (start, ids, vecs), meta in zip(embeddings.iter_blocks(self.embeddings, BLOCK_ROWS), curated):
            if not ids.equals(meta.column("id").combine_chunks().cast(pa.string())):
                raise mismatch(self.embeddings, self.curated, self.n, self.n)
            yield start, ids, _unit(vecs), meta

    def vectors(self) -> Iterator[tuple[int, pa.Array, np.ndarray]]:
        """(first row, ids, unit-norm vectors) per block, from the embeddings alone."""
        for start, ids, vecs in embeddings.iter_blocks(self.embeddings, BLOCK_ROWS):
            yield start, ids, _unit(vecs)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Unit-norm vectors of the given rows (ascending), read shard by shard."""
        return normalize_rows(embeddings.read_rows(self.embeddings, rows))


def mismatch(emb: Dataset, curated: Dataset, n_emb: int, n_cur: int) -> ClusterError:
    """Why the embeddings do not match the curated documents (hashed ids: 8 bytes a document)."""
    a = np.concatenate([documents.id_hashes(b.column("id")) for b in documents.iter_batches(curated, ["id"])])
    b = np.concatenate([documents.id_hashes(ids) for ids, _ in embeddings.iter_shards(emb)])
    missing, unknown = len(np.setdiff1d(a, b)), len(np.setdiff1d(b, a))
    if n_emb == n_cur and not missing and not unknown:
        return ClusterError(f"{emb.uri}: the embeddings are not in the curated documents' order: rerun `embed`")
    return ClusterError(
        f"curated has {n_cur} documents, embeddings {n_emb} ({missing} curated documents without an "
        f"embedding, {unknown} embeddings of documents not in curated): rerun `embed`"
    )


def open_corpus(ctx: StageContext) -> Corpus:
    """The two inputs, checked to hold the same number of documents (their ids are compared
    block by block while streaming)."""
    emb = ctx.input("embeddings")
    if "skipped" in emb.manifest.extra:  # committed for cluster.method field / assignments
        raise ClusterError(
            f"{emb.uri} holds no embeddings ({emb.manifest.extra['skipped']}): run `embed` with cluster.method kmeans"
        )
    curated = ctx.input("curated")
    files = embeddings.shard_files(emb)
    n_emb, n_cur = sum(r for _, _, r in files), documents.count(curated)
    if n_emb != n_cur:
        raise mismatch(emb, curated, n_emb, n_cur)
    return Corpus(emb, curated, n_emb, embeddings.dimension(emb), curated_meta_columns(documents.column_names(curated)))


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


class Spill:
    """Per block arrays of the first pass kept on local disk until the second (np.save each)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def put(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        with open(self.folder / f"{start:012d}.npz", "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    def get(self, start: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{start:012d}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def source_codes(meta: pa.Table, codes: dict[str, int]) -> np.ndarray:
    """int32 code of each document's source label (-1: none or empty), new labels added to `codes`."""
    if "source" not in meta.column_names:
        return np.full(meta.num_rows, -1, dtype=np.int32)
    enc = meta.column("source").combine_chunks().cast(pa.string()).dictionary_encode()
    lookup = np.array([codes.setdefault(v, len(codes)) if v else -1 for v in enc.dictionary.to_pylist()] + [-1])
    idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
    return lookup[idx].astype(np.int32)


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


def train(cfg: ClusterConfig, seed: int, corpus: Corpus, gpu: bool) -> tuple[np.ndarray, int, bool]:
    """(centroids, training points, GPU) of k-means on the seeded sample, read shard by shard."""
    k = effective_k(cfg.k_init, corpus.n, cfg.min_points_per_centroid)
    rows = train_rows(corpus.n, cfg.train_points(k), seed)
    return train_centroids(corpus.rows(rows), k, cfg.niter, cfg.nredo, seed, gpu), len(rows), gpu


def _assignment_schema(names: list[str]) -> pa.Schema:
    fields = [("id", pa.string()), ("cluster_init", pa.int32()), ("cluster", pa.int32()), ("quality", pa.float32())]
    return pa.schema(fields + [(f"score_{n}", pa.float32()) for n in names])


def write_assignments(w, corpus: Corpus, cl: Clustering, spill: Spill, scoring: Scoring, stats: R.Collector):
    """Pass 2: assignments.parquet written block by block (one record batch each) and the final
    centroids summed in document order (as the in-memory sum did); the report's statistics."""
    names = scoring.names
    sums = np.zeros((len(cl.final_sizes), corpus.d), dtype=np.float64)
    schema = _assignment_schema(names)
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


def central_documents(corpus: Corpus, cl: Clustering, spill: Spill, centroids: np.ndarray, stats: R.Collector):
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


def write_report(ctx: StageContext, inp: R.ReportInputs, counts: dict, seconds: float) -> dict:
    """The report files into the dataset and MLflow; the report dict."""
    rep = R.build_report(inp)
    rep["counts"] = counts
    with tempfile.TemporaryDirectory() as tmp:
        files = R.write_report(
            rep, Path(tmp), points=inp.stats.map_points(), n_clusters=len(inp.stats.sizes), seed=inp.seed
        )
        for path in files:
            storage.write_bytes(ctx.writer.path(path.name), path.read_bytes())
        _log_mlflow(
            ctx.cfg,
            rep,
            counts,
            Path(tmp),
            {"kmeans_objective": inp.km.objective, "kmeans_seconds": inp.km.seconds, "stage_seconds": seconds},
        )
    return rep


def cluster_stream(ctx: StageContext, corpus: Corpus, scoring: Scoring, spill: Spill) -> tuple[Clustering, R.Collector]:
    """Train on the sample, assign and score (pass 1), prune and merge, write the assignments
    (pass 2) and find the snippets (pass 3); the stage's data files."""
    cfg: ClusterConfig = ctx.cfg.cluster
    gpu = gpu_count() > 0  # imports faiss: not part of the k-means seconds
    t0 = time.perf_counter()
    centroids, train_points, gpu = train(cfg, ctx.cfg.seed, corpus, gpu)
    trained = time.perf_counter() - t0
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
    stats = R.Collector(ctx.cfg.seed, corpus.n, cl.mapping, cl.final_sizes, list(p1.sources), scoring.names)
    final = write_assignments(ctx.writer, corpus, cl, spill, scoring, stats)
    central_documents(corpus, cl, spill, final, stats)
    _write_npy(ctx.writer.path("centroids_init.npy"), centroids.astype(np.float32))
    _write_npy(ctx.writer.path("centroids.npy"), final.astype(np.float32))
    storage.write_json(ctx.writer.path("mapping.json"), {str(c): int(m) for c, m in enumerate(cl.mapping)})
    return cl, stats


def run(ctx: StageContext) -> StageOutput:
    """k-means: extend the committed clustering with the documents added since (assigned to its
    centroids) when `increments.plan` gives a delta and the drift check passes, else cluster
    every document; the user's groups: a full run each time."""
    if ctx.cfg.cluster.method != "kmeans":
        return run_groups(ctx)
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is not None and same_inputs(ctx):
        delta, why = None, "the inputs are those of the committed version (a forced run rebuilds)"
    drift: dict = {}
    if delta is not None:
        done = refresh(ctx, delta)
        if isinstance(done, StageOutput):
            return done
        why, drift = f"re-clustered: {done.reason}", {"recluster_reason": done.reason, **done.figures}
        log.warning("cluster: %s", why)
        ctx.writer.reset()  # the refresh's staged pieces
    return run_kmeans(ctx, why, drift)


def same_inputs(ctx: StageContext) -> bool:
    """Whether the committed version was made from these very input manifests (as in `embed`):
    nothing to extend it with, so only a forced run gets here, and it rebuilds."""
    prev = ctx.previous
    return prev is not None and prev.manifest.inputs == {n: d.manifest_sha256 for n, d in ctx.inputs.items()}


def run_kmeans(ctx: StageContext, why: str, drift: dict) -> StageOutput:
    """Cluster every document (the full path); a full version in the lineage."""
    t_start = time.perf_counter()
    cfg: ClusterConfig = ctx.cfg.cluster
    corpus = open_corpus(ctx)
    setup = ScoreSetup(
        cfg.quality,
        ctx.cfg.seed,
        corpus.n,
        documents.column_names(corpus.curated),
        corpus.curated,
        corpus.embeddings,
        corpus.rows,
    )
    scoring = open_scorers(cfg, setup)
    with tempfile.TemporaryDirectory(prefix="climb-cluster-") as tmp:
        cl, stats = cluster_stream(ctx, corpus, scoring, Spill(tmp))
    counts = count_documents(cl)
    inp = R.ReportInputs(
        cfg=cfg,
        seed=ctx.cfg.seed,
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
    rep = write_report(ctx, inp, counts, time.perf_counter() - t_start)
    out = output(cfg, counts, rep, cl, scoring.names)
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"clustered": corpus.n, **drift})
    out.extra["drift_reference"] = drift_reference(cl, stats, lin.version)
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    out.summary.append(("clusters version", f"{lin.version} (full: {why})"))
    log.info("cluster: version %d, full (%s)", lin.version, why)
    return out


def drift_reference(cl: Clustering, stats: R.Collector, version: int) -> dict:
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


# ------------------------------------------------------------------------- incremental refresh
@dataclass
class Drift:
    """Why an incremental refresh re-clusters instead, with what was measured."""

    reason: str
    figures: dict = field(default_factory=dict)


@dataclass
class Tally:
    """Per-cluster sums of a set of documents: words (or documents) and documents per final
    cluster, quality sum and documents per k-means cluster."""

    words: np.ndarray
    docs: np.ndarray
    q_sum: np.ndarray
    q_n: np.ndarray
    n: int = 0
    far: int = 0

    @classmethod
    def empty(cls, k: int, f: int) -> Tally:
        return cls(np.zeros(f), np.zeros(f, np.int64), np.zeros(k), np.zeros(k, np.int64))

    def add(self, init: np.ndarray, cluster: np.ndarray, quality: np.ndarray, words: np.ndarray) -> None:
        kept = cluster >= 0
        f, k = len(self.words), len(self.q_sum)
        self.words += np.bincount(cluster[kept], weights=words[kept], minlength=f)[:f]
        self.docs += np.bincount(cluster[kept], minlength=f)[:f]
        self.q_sum += np.bincount(init, weights=quality.astype(np.float64), minlength=k)[:k]
        self.q_n += np.bincount(init, minlength=k)[:k]
        self.n += len(init)


def view(ds: Dataset, rels: set[str]) -> Dataset:
    """The dataset with only the files `rels` in its manifest (the added or the kept ones)."""
    from dataclasses import replace

    files = [f for f in ds.manifest.files if f["path"] in rels]
    return Dataset(ds.uri, replace(ds.manifest, files=files), ds.manifest_sha256)


def _rels(ds: Dataset, uris: list[str]) -> set[str]:
    return {u[len(ds.uri.rstrip("/")) + 1 :] for u in uris}


def words_of(meta: pa.Table, by_words: bool) -> np.ndarray:
    """Each document's words (n_words; missing: 0), or ones when shares are of documents."""
    if not by_words or "n_words" not in meta.column_names:
        return np.ones(meta.num_rows)
    return np.nan_to_num(meta.column("n_words").to_numpy(zero_copy_only=False).astype(np.float64))


def refresh(ctx: StageContext, delta: increments.Delta) -> StageOutput | Drift:
    """The incremental path: the new documents (embeddings shards added since) assigned to the
    committed k-means centroids, scored and staged as `assignments-vNNNN-00000.parquet`; then
    the drift check on the whole corpus as it is now. Returns the output, or why to re-cluster."""
    prev, cfg = ctx.previous, ctx.cfg.cluster
    assert prev is not None
    ref = prev.manifest.extra.get("drift_reference") or {}
    if not np.isfinite(ref.get("far_distance_p95", float("nan"))):
        return Drift("the committed clustering records no distance percentile (drift_reference)")
    emb, curated = ctx.input("embeddings"), ctx.input("curated")
    n_total = documents.count(curated)
    if "skipped" in emb.manifest.extra or sum(r for _, _, r in embeddings.shard_files(emb)) != n_total:
        return Drift("the embeddings do not match the curated documents")
    setup = ScoreSetup(cfg.quality, ctx.cfg.seed, n_total, documents.column_names(curated), curated, emb, None)
    setup.sample = lambda rows: normalize_rows(embeddings.read_rows(emb, rows))
    scoring = open_scorers(cfg, setup)
    if scoring.names != prev.manifest.extra.get("scorers"):
        return Drift(f"the quality scorers changed ({prev.manifest.extra.get('scorers')} -> {scoring.names})")
    number = increments.version(prev) + 1
    new_rel = f"assignments-{increments.tag(number)}-00000.parquet"  # `vNNNN-`: increments.version_of
    k, f = int(prev.manifest.counts["k_init"]), int(prev.manifest.counts["clusters"])
    by_words = ref.get("shares_of") == "words"
    new = assign_new(ctx, delta, scoring, new_rel, (k, f, n_total, by_words, float(ref["far_distance_p95"])))
    if isinstance(new, Drift):
        return new
    drop = removed_ids(delta, curated, emb)
    kept_files = _rels(curated, documents.doc_files(curated)) - _rels(curated, delta.added(curated, "curated", "docs/"))
    old = tally_kept(prev, view(curated, kept_files), drop.column("id"), Tally.empty(k, f), by_words)
    if old is None or old.n + new.n != n_total:
        return Drift("the committed assignments do not line up with the curated documents")
    figures = measure(ref, old, new)
    reason = exceeds(ctx.cfg.refresh, figures)
    if reason:
        return Drift(reason, figures)
    return commit_refresh(ctx, drop, old, new, figures)


def assign_new(ctx: StageContext, delta: increments.Delta, scoring: Scoring, rel: str, shape: tuple):
    """Assign, score and stage the new documents (block by block); their tally, or Drift when
    they do not line up with the curated documents added since."""
    k, f, n_total, by_words, far_at = shape
    emb, curated, prev = ctx.input("embeddings"), ctx.input("curated"), ctx.previous
    assert prev is not None
    new_emb = view(emb, _rels(emb, delta.added(emb, "embeddings", "emb-") + delta.added(emb, "embeddings", "ids-")))
    new_cur = view(curated, _rels(curated, delta.added(curated, "curated", "docs/")))
    n_new = sum(r for _, _, r in embeddings.shard_files(new_emb)) if new_emb.manifest.files else 0
    tally = Tally.empty(k, f)
    if n_new == 0:
        return tally if not new_cur.manifest.files or documents.count(new_cur) == 0 else Drift("no new embeddings")
    if not new_cur.manifest.files or documents.count(new_cur) != n_new:
        return Drift("the new embeddings do not match the curated documents added since")
    centroids = storage.load_npy(prev.path("centroids_init.npy")).astype(np.float32)
    mapping_raw = storage.read_json(prev.path("mapping.json"))
    mapping = np.array([mapping_raw[str(c)] for c in range(len(centroids))], dtype=np.int64)
    corpus = Corpus(
        new_emb, new_cur, n_new, embeddings.dimension(new_emb), curated_meta_columns(documents.column_names(curated))
    )
    schema, gpu = _assignment_schema(scoring.names), gpu_count() > 0
    with storage.open_write(ctx.writer.path(rel)) as fh, pq.ParquetWriter(fh, schema) as out:
        for start, ids, x, meta in corpus.blocks(scoring.needs_text):
            sims, assign = assign_nearest(x, centroids, gpu)
            scores = scoring.score(ScoreBatch(n_total - n_new + start, x, meta))
            cluster = mapping[assign]
            cols = [ids, pa.array(assign.astype(np.int32)), pa.array(cluster.astype(np.int32))]
            cols.append(pa.array(scores[scoring.chosen].astype(np.float32)))
            cols += [pa.array(scores[n].astype(np.float32)) for n in scoring.names]
            out.write_table(pa.Table.from_arrays(cols, schema=schema))
            tally.add(assign, cluster, scores[scoring.chosen], words_of(meta, by_words))
            tally.far += int(((1.0 - sims) > far_at).sum())
    return tally


def removed_ids(delta: increments.Delta, curated: Dataset, emb: Dataset) -> pa.Table:
    """(id, reason) removed since the covered versions: curated's and the embeddings' lists, one
    row per id (forwarded to the datasets downstream)."""
    table = pa.concat_tables([delta.removed(curated, "curated"), delta.removed(emb, "embeddings")])
    if not table.num_rows:
        return table
    first = table.group_by("id", use_threads=False).aggregate([("reason", "first")])
    return first.rename_columns(["id", "reason"]).sort_by("id")


def _rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last shorter) from a stream of tables."""
    held: list[pa.Table] = []
    n = 0
    for t in tables:
        held.append(t)
        n += t.num_rows
        while n >= rows:
            table = pa.concat_tables(held)
            yield table.slice(0, rows).combine_chunks()
            held, n = [table.slice(rows)], n - rows
    if n:
        yield pa.concat_tables(held).combine_chunks()


def tally_kept(prev: Dataset, kept: Dataset, drop: pa.ChunkedArray, tally: Tally, by_words: bool) -> Tally | None:
    """The committed assignments less the removed ids, streamed beside the curated documents
    they must line up with (ids compared block by block; None when they do not)."""
    import pyarrow.compute as pc

    drop_ids = drop.combine_chunks().cast(pa.string())

    def assigned() -> Iterator[pa.Table]:
        for uri in assignment_files(prev):
            with storage.open_read(uri) as fh:
                for b in pq.ParquetFile(fh).iter_batches(columns=["id", "cluster_init", "cluster", "quality"]):
                    t = pa.Table.from_batches([b])
                    yield t.filter(pc.invert(pc.is_in(t.column("id"), value_set=drop_ids))) if len(drop_ids) else t

    cols = ["id"] + (["n_words"] if "n_words" in documents.column_names(kept) else [])
    blocks = documents.iter_blocks(kept, cols, BLOCK_ROWS) if kept.manifest.files else iter(())
    for a, c in itertools.zip_longest(_rechunk(assigned(), BLOCK_ROWS), blocks):
        if a is None or c is None or not a.column("id").equals(c.column("id").cast(pa.string())):
            return None
        init = a.column("cluster_init").to_numpy().astype(np.int64)
        cluster = a.column("cluster").to_numpy().astype(np.int64)
        tally.add(init, cluster, a.column("quality").to_numpy(), words_of(c, by_words))
    return tally


def measure(ref: dict, old: Tally, new: Tally) -> dict:
    """The drift figures: share of new documents far from every centroid, total variation of the
    final clusters' word shares against the clustering version's, largest move of a kept k-means
    cluster's mean quality against the clustering version's (a cluster emptied is left out)."""
    words = old.words + new.words
    now = words / max(words.sum(), 1e-12)
    then = np.zeros(len(now))
    for c, share in ref["shares"].items():
        then[int(c)] = share
    q_n = old.q_n + new.q_n
    shifts = [
        abs((old.q_sum[int(c)] + new.q_sum[int(c)]) / q_n[int(c)] - q)
        for c, q in ref["mean_quality_init"].items()
        if q_n[int(c)] > 0
    ]
    return {
        "far_share": round(new.far / new.n, 6) if new.n else 0.0,
        "far_documents": new.far,
        "share_shift": round(float(0.5 * np.abs(now - then).sum()), 6),
        "quality_shift": round(float(max(shifts, default=0.0)), 6),
        "shares_of": ref.get("shares_of", "words"),
    }


def exceeds(rc, figures: dict) -> str:
    """Why the figures call for a re-clustering ('' when they do not)."""
    why = []
    if figures["far_share"] > rc.max_far_share:
        why.append(
            f"{figures['far_share']:.1%} of the new documents are farther from every centroid than 95% of "
            f"the clustered documents (refresh.max_far_share {rc.max_far_share})"
        )
    if figures["share_shift"] > rc.max_share_shift:
        why.append(
            f"the clusters' {figures['shares_of']} shares moved by {figures['share_shift']:.4f} "
            f"(total variation; refresh.max_share_shift {rc.max_share_shift})"
        )
    if figures["quality_shift"] > rc.max_quality_shift:
        why.append(
            f"a kept cluster's mean quality moved by {figures['quality_shift']:.3f} "
            f"(refresh.max_quality_shift {rc.max_quality_shift})"
        )
    return "; ".join(why)


def _redacted_report(prev: Dataset, w, rel: str, gone: set[str]) -> bool:
    """Stage the report file of the clustering version with the snippets of removed documents (a
    retracted text must leave every dataset) replaced by `[retracted]`; False (nothing staged)
    when it quotes none of them."""
    text = storage.read_text(prev.path(rel))
    if rel.endswith(".json"):
        obj, n = retract.redact_json(json.loads(text), gone)
        text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    else:
        text, n = retract.redact_markdown(text, gone)
    if n:
        storage.write_text(w.path(rel), text)
    return n > 0


def commit_refresh(ctx: StageContext, drop: pa.Table, old: Tally, new: Tally, figures: dict) -> StageOutput:
    """Stage the rest of the incremental version: the committed assignments files less the
    removed ids, the centroids, mapping and report files as they were, the removal lists; the
    counts for the corpus as it is now."""
    prev, w = ctx.previous, ctx.writer
    assert prev is not None
    rewritten = increments.carry_parquet(w, prev, "assignments", drop.column("id").combine_chunks())
    gone = set(drop.column("id").to_pylist())
    for entry in prev.manifest.files:
        rel = entry["path"]
        if rel in retract.REPORT_FILES and gone and _redacted_report(prev, w, rel, gone):
            continue
        if not rel.startswith(("assignments", increments.REMOVED)) and rel != increments.HISTORY:
            w.keep(prev, rel)
    increments.keep_removed(w, prev)
    number = increments.version(prev) + 1
    increments.write_removed(w, number, drop)
    pc_ = prev.manifest.counts
    n, kept = old.n + new.n, int(old.docs.sum() + new.docs.sum())
    counts = {**pc_, "documents_in": n, "documents_out": kept, "pruned_documents": n - kept}
    extra = {k: v for k, v in prev.manifest.extra.items() if k != increments.LINEAGE}
    extra["clusters_now"] = {
        str(c): {"documents": int(d), figures["shares_of"]: int(x)}
        for c, (d, x) in enumerate(zip(old.docs + new.docs, old.words + new.words))
    }
    extra["report_version"] = extra["drift_reference"]["version"]
    delta = {"assigned": new.n, "removed": int(sum(rewritten.values())), **figures}
    lin = increments.next_lineage(prev, "incremental", ctx.settings_hash, ctx.inputs, delta)
    summary = [
        (
            "clusters",
            f"{new.n:,} new documents assigned to the {counts['clusters']} clusters of version "
            f"{extra['report_version']}, {delta['removed']:,} removed; {kept:,} of {n:,} in kept clusters",
        ),
        (
            "drift",
            f"far {figures['far_share']:.1%}, share shift {figures['share_shift']:.4f}, "
            f"quality shift {figures['quality_shift']:.3f} (within refresh thresholds)",
        ),
        ("clusters version", f"{lin.version} (incremental: report.* as of version {extra['report_version']})"),
    ]
    log.info("cluster: version %d, incremental: %s", lin.version, delta)
    return StageOutput(counts=counts, extra=increments.record(w, prev, lin, extra), summary=summary)


def output(cfg: ClusterConfig, counts: dict, rep: dict, cl: Clustering, scorers: list[str]) -> StageOutput:
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


def _log_mlflow(cfg, rep: dict, counts: dict, folder: Path, extra_metrics: dict[str, float]) -> None:
    import mlflow

    from mixture import tracking

    # nested under a parent run when one is active (a whole-pipeline run), else a run of its own
    with tracking.run(cfg, "cluster", nested=mlflow.active_run() is not None, tags={"stage": "cluster"}):
        mlflow.log_params(tracking.flat_params("cluster", cfg.cluster.model_dump(mode="json")))
        metrics = {k: float(v) for k, v in counts.items() if isinstance(v, (int, float))}
        metrics.update(extra_metrics)
        for level in ("init", "final"):
            ev = rep["evaluation"].get(level)
            if ev:
                metrics[f"purity_{level}"] = ev["purity"]
                metrics[f"nmi_{level}"] = ev["nmi"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder))


# ------------------------------------------------------------------------- the user's groups
def group_of(ctx: StageContext, meta: pa.Table) -> Grouping:
    """Each curated document's user group, by the configured method."""
    cfg: ClusterConfig = ctx.cfg.cluster
    if cfg.method == "assignments":
        assert cfg.assignments is not None
        return by_assignments(meta.column("id"), read_assignments(cfg.assignments))
    assert cfg.field is not None
    if cfg.field not in meta.column_names:
        raise GroupError(
            f"cluster.field {cfg.field!r}: the curated documents have no such column (they have "
            f"{', '.join(c for c in meta.column_names if not c.startswith('q_'))} and q_* signals; "
            "the input's label field, input.source_field, is carried as `source`)"
        )
    mapping = read_mapping(cfg.mapping) if cfg.mapping else None
    return by_field(meta.column(cfg.field), mapping, cfg.unmapped)


def read_group_meta(ctx: StageContext) -> tuple[pa.Array, pa.Table]:
    """(ids, curated metadata with the grouping field) in the curated order, streamed in record
    batches into Arrow columns (no Python object per document); ids must be unique (checked on
    their hashes, `mixture.cluster.groups.first_duplicate`)."""
    field = ctx.cfg.cluster.field
    meta = documents.read_table(
        ctx.input("curated"),
        lambda names: (
            curated_meta_columns(names)
            + ([field] if field and field in names and field not in curated_meta_columns(names) else [])
        ),
    )
    ids = meta.column("id").cast(pa.string())  # chunked: one array could not hold over 2 GiB of ids
    dup = first_duplicate(ids)
    if dup is not None:
        raise ClusterError(f"{ctx.input('curated').uri}: document ids are not unique (e.g. {ids[dup].as_py()!r})")
    return ids, meta


def write_group_data(w, ids: pa.Array, ng: NumberedGroups, quality: np.ndarray, scores: Scores) -> None:
    """assignments.parquet (the columns of k-means's, `cluster_init` being the user group's index,
    plus `group`), written one row group per `BLOCK_ROWS` documents, and mapping.json
    (`{user group: final id or -1}`)."""
    names = pa.array(ng.names, pa.string())
    by_name = sorted(scores.by_name.items())
    fields = [("id", pa.string()), ("cluster_init", pa.int32()), ("cluster", pa.int32()), ("quality", pa.float32())]
    schema = pa.schema(fields + [(f"score_{n}", pa.float32()) for n, _ in by_name] + [("group", pa.string())])
    with storage.open_write(w.path("assignments.parquet")) as f, pq.ParquetWriter(f, schema) as out:
        for start in range(0, max(len(ids), 1), BLOCK_ROWS):
            rows = slice(start, start + BLOCK_ROWS)
            init = ng.init[rows]
            cols = [
                ids.slice(start, BLOCK_ROWS),
                pa.array(init.astype(np.int32)),
                pa.array(ng.cluster[rows].astype(np.int32)),
                pa.array(quality[rows].astype(np.float32)),
            ]
            cols += [pa.array(values[rows].astype(np.float32)) for _, values in by_name]
            cols.append(names.take(pa.array(init, mask=init < 0)))
            out.write_table(pa.Table.from_arrays(cols, schema=schema))
    storage.write_json(w.path("mapping.json"), {g: int(m) for g, m in zip(ng.names, ng.mapping)})


def count_groups(ng: NumberedGroups, gr: Grouping) -> dict[str, int]:
    """Documents in = kept + in pruned groups + without a group, or the stage fails."""
    n = len(ng.cluster)
    kept = int((ng.cluster >= 0).sum())
    ungrouped = int((ng.init < 0).sum())
    counts = {
        "documents_in": n,
        "documents_out": kept,
        "groups": len(ng.names),
        "clusters": int((ng.mapping >= 0).sum()),
        "pruned_clusters": int(sum(r is not None for r in ng.reasons)),
        "pruned_documents": n - kept - ungrouped,
        "ungrouped_documents": ungrouped,
        "unknown_ids": gr.unknown_ids,
    }
    if kept + counts["pruned_documents"] + ungrouped != n or ungrouped != sum(gr.ungrouped.values()):
        raise ClusterError("document counts do not add up")
    return counts


def run_groups(ctx: StageContext) -> StageOutput:
    """cluster.method field / assignments: the user's groups as the clusters; no embeddings read."""
    t_start = time.perf_counter()
    cfg: ClusterConfig = ctx.cfg.cluster
    ids, meta = read_group_meta(ctx)
    grouping = group_of(ctx, meta)
    no_embeddings = np.zeros((len(ids), 0), dtype=np.float32)
    scores = compute_scores(cfg, ctx.cfg.seed, no_embeddings, meta, ctx.input("curated"), None)
    quality = scores.by_name[cfg.quality.scorer]
    ng = number_groups(grouping, quality, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
    write_group_data(ctx.writer, ids, ng, quality, scores)
    counts = count_groups(ng, grouping)
    inp = R.GroupReportInputs(
        cfg=cfg,
        seed=ctx.cfg.seed,
        ids=ids,
        meta=meta,
        groups=ng,
        grouping=grouping,
        quality=quality,
        scores=scores,
        curated=ctx.input("curated"),
        model=ctx.cfg.embed.model,
    )
    rep = R.build_group_report(inp)
    rep["counts"] = counts
    with tempfile.TemporaryDirectory() as tmp:
        for path in R.write_report(
            rep, Path(tmp), points=None, n_clusters=int(ng.mapping.max()) + 1, seed=ctx.cfg.seed
        ):
            storage.write_bytes(ctx.writer.path(path.name), path.read_bytes())
        _log_mlflow(ctx.cfg, rep, counts, Path(tmp), {"stage_seconds": time.perf_counter() - t_start})
    out = group_output(cfg, counts, rep, grouping, scores)
    lin = increments.next_lineage(
        ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"grouped": counts["documents_in"]}
    )
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    return out


def group_output(cfg: ClusterConfig, counts: dict, rep: dict, gr: Grouping, scores: Scores) -> StageOutput:
    names = {c["name"]: c["group"] for c in rep["clusters"]}
    summary = [
        (
            "clusters",
            f"{counts['groups']} user groups (cluster.method {cfg.method}) -> {counts['clusters']} "
            f"final ({counts['pruned_clusters']} pruned, {counts['pruned_documents']:,} documents), "
            f"scorer {cfg.quality.scorer}",
        ),
        ("cluster sizes", ", ".join(f"{c['name']}={c['group']}:{c['documents']}" for c in rep["clusters"])),
    ]
    if gr.ungrouped:
        summary.append(
            ("documents without a group (cluster -1)", ", ".join(f"{k} {v:,}" for k, v in gr.ungrouped.items()))
        )
    if gr.unknown_ids:
        summary.append(("assignment ids not in curated", f"{gr.unknown_ids:,} (e.g. {', '.join(gr.unknown_examples)})"))
    extra = {
        "method": cfg.method,
        "groups": names,
        "scorer": cfg.quality.scorer,
        "scorers": sorted(scores.by_name),
        "ungrouped": dict(gr.ungrouped),
        "unknown_id_examples": list(gr.unknown_examples),
        "evaluation": rep["evaluation"],
    }
    return StageOutput(counts=counts, extra=extra, summary=summary)
