"""Stage `shards`: ClimbLab-style token shards, one folder of tokens per final cluster.

Reads the curated documents and the cluster assignments, gets a tokenizer (a local one named by
`shards.tokenizer`, or a byte-level BPE trained on a seeded sample of `tokenizer_train_docs` kept
documents), tokenizes every document of every kept cluster and writes per cluster `cNN/tokens.bin`
+ `.idx` (`mixture.climblab.tokens`) and `cNN/text.parquet` (id, text in the same order, sorted by id),
with the tokens per cluster in the manifest (`mixture.climblab` reads it). Documents of pruned
clusters (cluster -1) are counted, not written: documents in = written + pruned, or the stage fails.

The work is data-parallel: parts of `shards.part_docs` curated documents are tokenized into sorted
runs per (part, cluster) in the staging folder (`mixture.climblab.parts`), then each cluster's runs
are merged by id into its files (`mixture.climblab.merge`). Both steps are idempotent (the stage is
registered resumable: a killed run keeps its finished parts and merged clusters). Locally
`shards.workers` spawned processes run the parts and then the merges (`run`); under Airflow `parts`
plans them (and stages the tokenizer), each part and each merge is a mapped task (`tokenize_part`,
`merge_cluster`), and `finish` builds the output for the runner's commit
(`dags/climb_corpus_refresh.py`). The committed files are the same bytes whatever the number of
parts or workers.

Incremental versions (`increment`, the one decision every step takes: `increments.plan`): when
the clusters were not rebuilt since the version this dataset covers, only the curated files added
since are tokenized and only the touched clusters merged (`mixture.climblab.increment`); the
untouched clusters are kept as they were and the removal lists are carried and forwarded.

Bounded memory: a record batch, the tokenizer's training sample, up to `merge.MERGE_IDS` ids of
the runs being merged and each cluster's offsets (8 bytes a document).
"""

from __future__ import annotations

from typing import Any

from mixture import increments
from mixture.climblab import increment as climblab_increment
from mixture.climblab import merge as climblab_merge
from mixture.climblab import parts as climblab_parts
from mixture.climblab.increment import Increment
from mixture.contract import StageContext, StageOutput
from mixture.curate import documents

BATCH_ROWS = documents.BATCH_ROWS


def increment(ctx: StageContext) -> tuple[Increment | None, str]:
    """(the increment to process, why) or (None, why a full build is needed): the one decision
    every step of the stage takes alike (`increments.plan`): the clusters rebuilt, other settings,
    `refresh.incremental` off or no earlier version with a lineage mean a full build."""
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is None:
        return None, why
    return climblab_increment.since(delta, why, ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS), why


def _inputs(ctx: StageContext, inc: Increment | None) -> climblab_parts.Inputs:
    """The documents to tokenize: the increment's, or every curated document."""
    return inc.inputs if inc else climblab_parts.inputs(ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS)


def prepare(
    ctx: StageContext, inc: Increment | None
) -> tuple[climblab_parts.Inputs, climblab_parts.Scan, list[climblab_parts.Part]]:
    """Check the inputs, stage the tokenizer (trained once; an incremental run keeps the previous
    version's) and plan the parts (over the new documents only when incremental)."""
    inp = _inputs(ctx, inc)
    previous, since = (inc.previous, inc.since) if inc else (None, None)
    scanned, planned = climblab_parts.prepare(ctx.writer, inp, ctx.cfg.shards, ctx.cfg.seed, previous, since)
    return inp, scanned, planned


def parts(ctx: StageContext) -> list[climblab_parts.Part]:
    """The tokenization parts (the tokenizer staged first, so every part uses the same one)."""
    return prepare(ctx, increment(ctx)[0])[2]


def tokenize_part(ctx: StageContext, part: climblab_parts.Part) -> dict[str, Any]:
    """One part's runs into the staging folder (kept when already staged)."""
    inp = _inputs(ctx, increment(ctx)[0])
    return climblab_parts.tokenize_part(inp, ctx.writer, part, climblab_parts.staged_tokenizer(ctx.writer))


def clusters(ctx: StageContext) -> list[int]:
    """The clusters to merge, one merge each: every final cluster, or the touched ones."""
    inc, _ = increment(ctx)
    return climblab_increment.touched(inc) if inc else climblab_parts.scan(_inputs(ctx, inc)).clusters


def merge_cluster(ctx: StageContext, c: int) -> dict[str, Any]:
    """Cluster c's files from every part's runs (kept when already merged); incremental: merged
    with the previous version's cluster less the removed ids."""
    inc, _ = increment(ctx)
    planned = climblab_parts.plan(climblab_parts.count(_inputs(ctx, inc)), ctx.cfg.shards.part_docs)
    dtype = climblab_parts.staged_dtype(ctx.writer)
    return climblab_merge.merge_cluster(ctx.writer, planned, c, dtype, inc.carried if inc else None)


def finish(ctx: StageContext, progress: dict[str, int] | None = None) -> StageOutput:
    """The output of a stage whose clusters are all merged (the runs are removed from staging),
    with its lineage; an incremental version keeps the untouched clusters' files as they were."""
    inc, why = increment(ctx)
    scanned = climblab_parts.scan(_inputs(ctx, None))  # the counts cover every curated document
    if inc is None:
        info = climblab_merge.finish(ctx.writer, scanned.clusters)
    else:
        info, delta = climblab_increment.finish(ctx.writer, inc)
    out = climblab_merge.output(ctx.writer, scanned, info)
    if inc is None:
        delta = {k: out.counts[k] for k in ("clusters", "documents_out", "tokens")}
        line = f"full build: {why}"
    else:
        line = climblab_increment.describe(delta, why)
    mode = "incremental" if inc else "full"
    lin = increments.next_lineage(ctx.previous, mode, ctx.settings_hash, ctx.inputs, delta)
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    out.summary.insert(0, ("mode", line))
    if progress is not None:
        out.summary.append(("parts", climblab_merge.progress_line(progress)))
    return out


def run(ctx: StageContext) -> StageOutput:
    inc, _ = increment(ctx)
    inp, scanned, planned = prepare(ctx, inc)
    cs = climblab_increment.touched(inc) if inc else scanned.clusters
    dtype = climblab_parts.staged_dtype(ctx.writer)
    progress = climblab_merge.run_local(
        inp, ctx.writer, planned, cs, dtype, ctx.cfg.shards.workers, inc.carried if inc else None
    )
    return finish(ctx, progress)
