"""Stage `embed`: one vector per curated document, written in resumable shards.

CLIMB (Diao et al., NVIDIA 2025) embeds every document before clustering. Reads `curated`;
writes the `embeddings` dataset (`mixture.cluster.embeddings`: `emb-XXXXX.npy` +
`ids-XXXXX.parquet`) with `mixture.cluster.embed`: the run's documents (every document, or the
delta since the committed version: `source`) are split into ranges of `embed.range_shards`
shards of `embed.shard_docs` documents, each range staged idempotently by `embed_range`. The
stage is registered resumable: a killed run keeps its finished shards and a rerun computes only
the missing ones. Locally `embed.workers` spawned processes take the ranges and the stage
commits when all are staged; under Airflow (`dags/climb_corpus_refresh.py`) each range is a
mapped task in the `gpu` pool and `finish` builds the output from the staged shards for the
runner's commit. `embed.model_type: static` embeds with a model2vec model distilled locally
(`static_model`, provenance in the manifest).

With the user's own groups (`cluster.method` field or assignments: RegMix-style domain mixing,
Liu et al. 2024) nothing reads the embeddings, so the stage commits an empty dataset that says
why (its hash covers `cluster.needs_embeddings`, so switching back to k-means embeds the corpus).
"""

from __future__ import annotations

import logging

from mixture import increments
from mixture.cluster.embed import (
    OnShard,
    Progress,
    Range,
    Source,
    count_staged,
    embed_range,
    model_extra,
    progress_line,
    ranges,
    run_ranges,
    source_of,
    stage_version,
    static_provenance,
)
from mixture.cluster.encoder import EmbedError
from mixture.contract import StageContext, StageOutput
from mixture.curate import documents

log = logging.getLogger(__name__)

# What the Airflow tasks call (dags/climb_corpus_refresh.py): a range's work comes from the family.
__all__ = ["Progress", "Range", "embed_range", "finish", "ranges", "run", "skipped", "source", "static_model"]


def source(ctx: StageContext) -> Source:
    """What this run embeds: the delta since the committed version when `increments.plan` gives
    one and the shards then line up with curated, else every document (`source_of`)."""
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is not None and same_inputs(ctx):
        delta, why = None, "the inputs are those of the committed version (a forced run rebuilds)"
    return source_of(ctx.input("curated"), delta, why)


def same_inputs(ctx: StageContext) -> bool:
    """Whether the committed version was made from these very input manifests: nothing to extend
    it with, so only a forced run gets here, and it rebuilds."""
    prev = ctx.previous
    return prev is not None and prev.manifest.inputs == {n: d.manifest_sha256 for n, d in ctx.inputs.items()}


def static_model(ctx: StageContext) -> dict | None:
    """The static model's provenance (distilled once, before any worker starts), or None."""
    return static_provenance(ctx.cfg.embed, ctx.cfg.cluster.quality.scorer, ctx.cfg.output_root)


def embed_corpus(ctx: StageContext, on_shard: OnShard | None = None) -> StageOutput:
    """The stage body. `on_shard(index, computed)` is called after each shard is in place
    (workers = 1 only; used by tests to interrupt a run)."""
    src = source(ctx)
    rs = ranges(src, ctx.cfg.embed)
    n_new = sum(r.docs for r in rs)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    run_ranges(ctx.writer, src, rs, p, on_shard)
    if p.documents != n_new:
        raise EmbedError(f"embedded {p.documents} documents but the run has {n_new} to embed")
    return output(ctx, src, p)


def finish(ctx: StageContext) -> StageOutput:
    """The output of a stage whose ranges were embedded by separate tasks: every planned shard
    must be staged (their ids were checked when staged); nothing is computed."""
    src = source(ctx)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    count_staged(ctx.writer, src, p)
    return output(ctx, src, p)


def output(ctx: StageContext, src: Source, p: Progress) -> StageOutput:
    """The manifest's counts, extra (with the lineage) and summary; an incremental run's kept
    and rewritten files staged first (`stage_version`)."""
    delta, n, shards = stage_version(ctx.writer, ctx.previous, src, p)
    mode = "incremental" if src.incremental else "full"
    lin = increments.next_lineage(ctx.previous, mode, ctx.settings_hash, ctx.inputs, delta)
    extra = increments.record(ctx.writer, ctx.previous, lin, model_extra(p.cfg, p, shards))
    summary = [
        ("embedded", progress_line(p)),
        ("embeddings version", f"{lin.version} ({mode}: {src.why}); {n:,} documents, delta {delta}"),
    ]
    log.info("embed: version %d, %s (%s)", lin.version, mode, src.why)
    counts = {"documents_in": n, "documents_out": n, "dim": int(p.dim)}  # in = out: checked
    return StageOutput(counts=counts, extra=extra, summary=summary)


def skipped(ctx: StageContext) -> StageOutput:
    """The empty embeddings dataset of a run whose clusters need none (no model is loaded); a
    full version in the lineage every time."""
    n_in = documents.count(ctx.input("curated"))
    why = f"cluster.method={ctx.cfg.cluster.method}: no embedding needed"
    log.info("embed: skipped (%s)", why)
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"embedded": 0})
    return StageOutput(
        counts={"documents_in": n_in, "documents_out": 0},
        extra=increments.record(ctx.writer, ctx.previous, lin, {"skipped": why}),
        summary=[("skipped", f"{why} ({n_in:,} curated documents)")],
    )


def run(ctx: StageContext) -> StageOutput:
    if not ctx.cfg.cluster.needs_embeddings:
        return skipped(ctx)
    return embed_corpus(ctx)
