"""Stage `select`: the `annotated` dataset -> the `curated` dataset, without Spark
(`mixture.curate.select`).

Applies the configured filters (thresholds, switches, `exempt_if`) to the stored signals and
the dedup switches to the stored groups, and writes the curated documents and the rejected and
quarantine side sets: a threshold change reruns only this stage.
"""

from __future__ import annotations

from mixture.contract import StageContext, StageOutput
from mixture.curate import select, track


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.cfg
    counts, extra, summary = select.select(ctx.input("annotated"), cfg, ctx.writer.staging)
    if run_id := track.log_run(cfg, "select", counts, extra):
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)
