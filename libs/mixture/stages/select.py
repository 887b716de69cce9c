"""Stage `select`: the `annotated` dataset -> the `curated` dataset, without Spark
(`mixture.curate.select`).

Applies the configured filters (thresholds, switches, `exempt_if`) to the stored signals and
the dedup switches to the stored groups, and writes the curated documents and the rejected and
quarantine side sets: a threshold change reruns only this stage. A refresh (`mixture.increments`)
decides only the documents annotated since the covered version and removes the ones withdrawn
or retracted since (`mixture.curate.curated_versions`).
"""

from __future__ import annotations

import logging

from mixture import increments
from mixture.contract import StageContext, StageOutput
from mixture.curate import curated_versions, select, track

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.cfg
    annotated = ctx.input("annotated")
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, cfg.refresh.incremental)
    if delta is not None and delta.previous.manifest.inputs == ctx.writer.inputs:
        delta, why = None, "the input is the committed version's (a forced run rebuilds)"
    number = increments.version(ctx.previous) + 1
    if delta is None:
        log.info("select: full (%s)", why)
        counts, extra, summary = select.select(annotated, cfg, ctx.writer.staging)
        d = {"kept_new": counts["documents_out"], "removed": 0}
    else:
        counts, extra, summary = curated_versions.extend(annotated, delta.previous, delta, cfg, ctx.writer, number)
        d = extra.pop("delta")
    lin = increments.next_lineage(
        ctx.previous, "full" if delta is None else "incremental", ctx.settings_hash, ctx.inputs, d
    )
    extra = increments.record(ctx.writer, ctx.previous, lin, extra)
    summary.insert(0, ("version", _version_line(lin, why)))
    if run_id := track.log_run(cfg, "select", counts, extra):
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)


def _version_line(lin: increments.Lineage, why: str) -> str:
    d = lin.delta
    if lin.mode == "full":
        return f"v{lin.version}: full ({why})"
    return (
        f"v{lin.version}: refresh: {d['kept_new']:,} new kept, {d['exact_duplicates_of_existing']:,} exact and "
        f"{d['near_duplicates_of_existing']:,} near duplicates of earlier documents, {d['removed']:,} removed, "
        f"{d.get('revived', 0):,} revived"
    )
