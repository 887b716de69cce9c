"""Stage `cluster`: the groups the search mixes, from k-means (CLIMB) or from the user.

`cluster.method: kmeans` (the default) follows CLIMB (Diao et al., NVIDIA 2025: its clustering
step and the ClimbLab construction): spherical k-means with K_init = 1000 (`cluster.k_init`,
capped on a small corpus), pruning of clusters whose mean quality is below
`quality.min_cluster_quality` (paper: 3.0 on 1-5) or that hold fewer than `min_cluster_size`
documents, a Ward merge of the survivors (`merge_distance`, paper 1.5; `target_clusters`, paper
~20), final ids by size; in bounded memory, in streamed passes over the embeddings and the
curated documents (`mixture.cluster.stream`, `mixture.cluster.passes`). A refresh extends the
committed clustering with the documents added since, assigned to its centroids, unless the
drift check calls for a re-clustering (`mixture.cluster.refresh`).

`cluster.method: field` / `assignments` takes groups the user already has instead (RegMix-style
domain mixing, Liu et al. 2024; `mixture.cluster.user_groups`); it reads no embeddings.

Reads `curated` and `embeddings`; writes the `clusters` dataset (docs/DATASETS.md, "clusters"):
assignments.parquet, mapping.json, report.md / report.json (`mixture.cluster.report`,
`mixture.cluster.render`), and with k-means centroids_init.npy, centroids.npy and map.png;
logged to MLflow.
"""

from __future__ import annotations

import logging
import time

from mixture import increments
from mixture.cluster import passes, refresh, render, stream, user_groups
from mixture.cluster.report import build_report
from mixture.contract import StageContext, StageOutput

log = logging.getLogger(__name__)


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
        done = run_refresh(ctx, delta)
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
    cfg, seed = ctx.cfg.cluster, ctx.cfg.seed
    corpus = stream.open_corpus(ctx.input("embeddings"), ctx.input("curated"))
    scoring = passes.open_scoring(cfg, seed, corpus)
    cl, stats = passes.cluster_corpus(ctx.writer, cfg, seed, corpus, scoring)
    counts = passes.count_documents(cl)
    metrics = {"kmeans_objective": cl.km.objective, "kmeans_seconds": cl.km.seconds}
    metrics["stage_seconds"] = time.perf_counter() - t_start
    rep = build_report(passes.report_inputs(cfg, seed, corpus, cl, stats, scoring))
    rep["counts"] = counts
    points, n_clusters = stats.map_points(), len(stats.sizes)
    render.stage_report(ctx.cfg, ctx.writer, rep, points=points, n_clusters=n_clusters, metrics=metrics)
    out = passes.output(cfg, counts, rep, cl, scoring.names)
    out.extra["seconds"] = {"kmeans": round(cl.km.seconds, 2), "stage": round(metrics["stage_seconds"], 2)}
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"clustered": corpus.n, **drift})
    out.extra["drift_reference"] = passes.drift_reference(cl, stats, lin.version)
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    out.summary.append(("clusters version", f"{lin.version} (full: {why})"))
    log.info("cluster: version %d, full (%s)", lin.version, why)
    return out


def run_refresh(ctx: StageContext, delta: increments.Delta) -> StageOutput | refresh.Drift:
    """The incremental path: the new documents assigned to the committed centroids and the drift
    check (`refresh.extend`), then the committed files carried over; or why to re-cluster."""
    prev = delta.previous
    inputs = ctx.input("embeddings"), ctx.input("curated")
    ext = refresh.extend(ctx.writer, delta, *inputs, ctx.cfg.cluster, ctx.cfg.refresh, ctx.cfg.seed)
    if isinstance(ext, refresh.Drift):
        return ext
    removed = refresh.stage_files(ctx.writer, prev, ext.drop)
    counts, extra, change = refresh.version_facts(prev, ext, removed)
    lin = increments.next_lineage(prev, "incremental", ctx.settings_hash, ctx.inputs, change)
    summary = refresh.summary(counts, extra, change, lin.version)
    log.info("cluster: version %d, incremental: %s", lin.version, change)
    return StageOutput(counts=counts, extra=increments.record(ctx.writer, prev, lin, extra), summary=summary)


def run_groups(ctx: StageContext) -> StageOutput:
    """cluster.method field / assignments: the user's groups as the clusters; no embeddings read."""
    t_start = time.perf_counter()
    cfg, curated = ctx.cfg.cluster, ctx.input("curated")
    rep, ng, grouping, scores = user_groups.cluster_groups(ctx.writer, cfg, ctx.cfg.seed, curated, ctx.cfg.embed.model)
    metrics = {"stage_seconds": time.perf_counter() - t_start}
    n_clusters = int(ng.mapping.max()) + 1
    render.stage_report(ctx.cfg, ctx.writer, rep, points=None, n_clusters=n_clusters, metrics=metrics)
    out = user_groups.output(cfg, rep, grouping, scores)
    grouped = {"grouped": rep["counts"]["documents_in"]}
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, grouped)
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    return out
