"""Stage `cluster`: the groups the search mixes, from k-means (CLIMB) or from the user.

`cluster.method: kmeans` (the default) follows CLIMB (Diao et al., NVIDIA 2025: its clustering
step and the ClimbLab construction) with the functions of `mixture.kmeans`: spherical k-means
with K_init = 1000 (`cluster.k_init`, capped on a small corpus), pruning of clusters whose mean
quality is below `quality.min_cluster_quality` (paper: 3.0 on 1-5) or that hold fewer than
`min_cluster_size` documents (their documents get `cluster = -1`: accounted, never silently
dropped), a Ward merge of the surviving centroids (`merge_distance`, paper 1.5; `target_clusters`,
paper ~20), final ids by size. The quality scores come from the configured scorers (`compute_scores`).

`cluster.method: field` / `assignments` takes groups the user already has instead (RegMix-style
domain mixing, Liu et al. 2024; `mixture.groups`): a curated document field, optionally merged by
a mapping file, or an `id -> group` file. It reads no embeddings (the `embed` stage committed an
empty dataset); pruning by size and quality (scorers that need only the curated q_* signals)
applies per group, documents without a group get `cluster = -1` and are counted by reason, and
final ids are ordered by size as with k-means.

Outputs (docs/DATASETS.md, "clusters"): assignments.parquet, mapping.json, report.md /
report.json (`mixture.report`), and with k-means centroids_init.npy, centroids.npy and map.png;
logged to MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import documents, storage
from mixture import report as R
from mixture.config import ClusterConfig
from mixture.contract import StageContext, StageOutput
from mixture.embeddings import load_embeddings
from mixture.groups import (
    GroupError,
    Grouping,
    NumberedGroups,
    by_assignments,
    by_field,
    number_groups,
    read_assignments,
    read_mapping,
)
from mixture.kmeans import (
    ClusterError,
    KMeansResult,
    MergeResult,
    effective_k,
    final_ids,
    normalize_rows,
    prune_reasons,
    spherical_kmeans,
    ward_merge,
)
from mixture.scorers import Scores, compute_scores

log = logging.getLogger(__name__)


def curated_meta_columns(names: list[str]) -> list[str]:
    """id, source, n_words and every q_* signal of the curated docs (no text)."""
    return [c for c in ("id", "source", "n_words") if c in names] + [c for c in names if c.startswith("q_")]


def load_inputs(ctx: StageContext) -> tuple[list[str], np.ndarray, pa.Table]:
    """(ids, unit-norm embeddings, curated metadata in the embeddings' order); the two datasets
    must hold the same documents."""
    embeddings = ctx.input("embeddings")
    if "skipped" in embeddings.manifest.extra:  # committed for cluster.method field / assignments
        raise ClusterError(
            f"{embeddings.uri} holds no embeddings ({embeddings.manifest.extra['skipped']}): "
            "run `embed` with cluster.method kmeans"
        )
    ids, emb = load_embeddings(embeddings)
    if len(set(ids)) != len(ids):
        raise ClusterError(f"{embeddings.uri}: document ids are not unique")
    meta = documents.read_table(ctx.input("curated"), curated_meta_columns)
    meta_ids = meta.column("id").to_pylist()
    if len(meta_ids) != len(ids) or set(meta_ids) != set(ids):
        missing, unknown = len(set(meta_ids) - set(ids)), len(set(ids) - set(meta_ids))
        raise ClusterError(
            f"curated has {len(meta_ids)} documents, embeddings {len(ids)} "
            f"({missing} curated documents without an embedding, {unknown} embeddings of "
            "documents not in curated): rerun `embed`"
        )
    row_of = {doc_id: r for r, doc_id in enumerate(meta_ids)}
    return ids, normalize_rows(emb), meta.take(pa.array([row_of[i] for i in ids], pa.int64()))


@dataclass
class Clustering:
    """The k-means clusters, what pruning kept, and the final clusters after the merge."""

    km: KMeansResult
    reasons: list[str | None]  # per k-means cluster: None (kept) or why it was pruned
    mean_quality: np.ndarray  # per k-means cluster
    merged: MergeResult
    mapping: np.ndarray  # k-means cluster -> final cluster, -1 when pruned
    cluster: np.ndarray  # final cluster per document
    centroids: np.ndarray  # final centroids (unit norm)


def prune(cfg: ClusterConfig, km: KMeansResult, quality: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """(reason per k-means cluster, mean quality per k-means cluster); fails when none is kept."""
    k = len(km.centroids)
    sizes = np.bincount(km.assign, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_q = np.bincount(km.assign, weights=quality, minlength=k) / sizes
    reasons = prune_reasons(sizes, mean_q, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
    if all(r is not None for r in reasons):
        raise ClusterError(
            f"all {k} k-means clusters were pruned (cluster mean quality {np.nanmin(mean_q):.2f}.."
            f"{np.nanmax(mean_q):.2f} vs min_cluster_quality {cfg.quality.min_cluster_quality}, "
            f"min_cluster_size {cfg.min_cluster_size}): lower the thresholds"
        )
    return reasons, mean_q


def cluster_documents(cfg: ClusterConfig, seed: int, x: np.ndarray, quality: np.ndarray) -> Clustering:
    """k-means, prune, merge, number the final clusters, and their centroids."""
    k = effective_k(cfg.k_init, len(x), cfg.min_points_per_centroid)
    km = spherical_kmeans(x, k, cfg.niter, cfg.nredo, seed, cfg.max_train_points)
    log.info(
        "k-means: K=%d on %d of %d documents in %.1f s (%s), mean cosine %.4f",
        k,
        km.train_points,
        len(x),
        km.seconds,
        "GPU" if km.gpu else "CPU",
        km.objective,
    )
    reasons, mean_q = prune(cfg, km, quality)
    kept = np.array([c for c in range(k) if reasons[c] is None], dtype=np.int64)
    merged = ward_merge(km.centroids[kept], cfg.merge_distance, cfg.target_clusters)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[kept] = final_ids(merged.labels, kept, np.bincount(km.assign, minlength=k))
    cluster = mapping[km.assign]
    in_kept = cluster >= 0
    sums = np.zeros((int(mapping.max()) + 1, x.shape[1]), dtype=np.float64)
    np.add.at(sums, cluster[in_kept], x[in_kept])
    return Clustering(km, reasons, mean_q, merged, mapping, cluster, normalize_rows(sums))


def _write_npy(uri: str, arr: np.ndarray) -> None:
    with storage.open_write(uri) as f:
        np.save(f, arr, allow_pickle=False)


def write_data(w, ids: list[str], cl: Clustering, quality: np.ndarray, scores: Scores) -> None:
    """assignments.parquet, the centroids and the k-means -> final mapping."""
    cols = {
        "id": pa.array(ids, pa.string()),
        "cluster_init": pa.array(cl.km.assign.astype(np.int32)),
        "cluster": pa.array(cl.cluster.astype(np.int32)),
        "quality": pa.array(quality.astype(np.float32)),
    }
    for name, values in sorted(scores.by_name.items()):
        cols[f"score_{name}"] = pa.array(values.astype(np.float32))
    with storage.open_write(w.path("assignments.parquet")) as f:
        pq.write_table(pa.table(cols), f)
    _write_npy(w.path("centroids_init.npy"), cl.km.centroids.astype(np.float32))
    _write_npy(w.path("centroids.npy"), cl.centroids.astype(np.float32))
    storage.write_json(w.path("mapping.json"), {str(c): int(m) for c, m in enumerate(cl.mapping)})


def count_documents(cl: Clustering) -> dict[str, int]:
    """Documents in = kept + pruned, or the stage fails."""
    n = len(cl.cluster)
    kept = int((cl.cluster >= 0).sum())
    counts = {
        "documents_in": n,
        "documents_out": kept,
        "k_init": len(cl.km.centroids),
        "clusters": len(cl.centroids),
        "pruned_clusters": int(sum(r is not None for r in cl.reasons)),
        "pruned_documents": n - kept,
    }
    if counts["documents_out"] + counts["pruned_documents"] != n:
        raise ClusterError("document counts do not add up")
    return counts


def write_report(ctx: StageContext, inp: R.ReportInputs, counts: dict, seconds: float) -> dict:
    """The report files into the dataset and MLflow; the report dict."""
    rep = R.build_report(inp)
    rep["counts"] = counts
    with tempfile.TemporaryDirectory() as tmp:
        files = R.write_report(rep, Path(tmp), x=inp.x, cluster=inp.cluster, centroids=inp.centroids, seed=inp.seed)
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


def run(ctx: StageContext) -> StageOutput:
    if ctx.cfg.cluster.method != "kmeans":
        return run_groups(ctx)
    t_start = time.perf_counter()
    cfg: ClusterConfig = ctx.cfg.cluster
    ids, x, meta = load_inputs(ctx)
    scores = compute_scores(cfg, ctx.cfg.seed, x, meta, ids, ctx.input("curated"), ctx.input("embeddings"))
    quality = scores.by_name[cfg.quality.scorer]
    cl = cluster_documents(cfg, ctx.cfg.seed, x, quality)
    write_data(ctx.writer, ids, cl, quality, scores)
    counts = count_documents(cl)
    inp = R.ReportInputs(
        cfg=cfg,
        seed=ctx.cfg.seed,
        ids=ids,
        x=x,
        meta=meta,
        km=cl.km,
        reasons=cl.reasons,
        mean_quality_init=cl.mean_quality,
        mapping=cl.mapping,
        cluster=cl.cluster,
        centroids=cl.centroids,
        quality=quality,
        scores=scores,
        merged=cl.merged,
        curated=ctx.input("curated"),
        model=ctx.input("embeddings").manifest.extra.get("model"),
    )
    rep = write_report(ctx, inp, counts, time.perf_counter() - t_start)
    return output(cfg, counts, rep, cl, scores)


def output(cfg: ClusterConfig, counts: dict, rep: dict, cl: Clustering, scores: Scores) -> StageOutput:
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
        "scorers": sorted(scores.by_name),
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
        return by_assignments(meta.column("id").to_pylist(), read_assignments(cfg.assignments))
    assert cfg.field is not None
    if cfg.field not in meta.column_names:
        raise GroupError(
            f"cluster.field {cfg.field!r}: the curated documents have no such column (they have "
            f"{', '.join(c for c in meta.column_names if not c.startswith('q_'))} and q_* signals; "
            "the input's label field, input.source_field, is carried as `source`)"
        )
    mapping = read_mapping(cfg.mapping) if cfg.mapping else None
    return by_field(meta.column(cfg.field).to_pylist(), mapping, cfg.unmapped)


def read_group_meta(ctx: StageContext) -> tuple[list[str], pa.Table]:
    """(ids, curated metadata with the grouping field) in the curated order; ids must be unique."""
    field = ctx.cfg.cluster.field
    meta = documents.read_table(
        ctx.input("curated"),
        lambda names: (
            curated_meta_columns(names)
            + ([field] if field and field in names and field not in curated_meta_columns(names) else [])
        ),
    )
    ids = meta.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ClusterError(f"{ctx.input('curated').uri}: document ids are not unique")
    return ids, meta


def write_group_data(w, ids: list[str], ng: NumberedGroups, quality: np.ndarray, scores: Scores) -> None:
    """assignments.parquet (the columns of k-means's, `cluster_init` being the user group's index,
    plus `group`) and mapping.json (`{user group: final id or -1}`)."""
    cols = {
        "id": pa.array(ids, pa.string()),
        "cluster_init": pa.array(ng.init.astype(np.int32)),
        "cluster": pa.array(ng.cluster.astype(np.int32)),
        "quality": pa.array(quality.astype(np.float32)),
    }
    for name, values in sorted(scores.by_name.items()):
        cols[f"score_{name}"] = pa.array(values.astype(np.float32))
    cols["group"] = pa.array([ng.names[g] if g >= 0 else None for g in ng.init], pa.string())
    with storage.open_write(w.path("assignments.parquet")) as f:
        pq.write_table(pa.table(cols), f)
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
    scores = compute_scores(cfg, ctx.cfg.seed, no_embeddings, meta, ids, ctx.input("curated"), None)  # type: ignore[arg-type]
    quality = scores.by_name[cfg.quality.scorer]
    ng = number_groups(grouping.group, quality, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
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
        for path in R.write_report(rep, Path(tmp), x=None, cluster=ng.cluster, centroids=None, seed=ctx.cfg.seed):
            storage.write_bytes(ctx.writer.path(path.name), path.read_bytes())
        _log_mlflow(ctx.cfg, rep, counts, Path(tmp), {"stage_seconds": time.perf_counter() - t_start})
    return group_output(cfg, counts, rep, grouping, scores)


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
