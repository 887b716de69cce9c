"""Stage `curate`: raw files -> the `annotated` dataset, on Spark (`mixture.curate.annotate`).

Every readable document with every registered filter's signals and its exact and near
duplicate groups, plus the quarantine side set; nothing is filtered here (the `select` stage
decides). Runs on the active Spark session (spark-submit, tests) or on a new one for
`curate.spark_master`, which it then stops.

A refresh (`refresh.incremental`, the default, and a committed version made with the same
settings): only the input files that are new or changed since are read, their documents are
deduplicated against every document already annotated, and the committed version's files are
carried over less the documents of changed and deleted files (`mixture.curate.refresh`).
Documents `climb retract` took out stay out: their ids are listed in every later version's
`removed/` and counted as `retracted` when an input file still holds them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from mixture import increments
from mixture.contract import StageContext, StageOutput
from mixture.curate import annotate, ingest, prior, refresh, track

log = logging.getLogger(__name__)


@contextmanager
def _spark(cfg):
    from pyspark.sql import SparkSession

    from mixture import spark as spark_env

    spark = SparkSession.getActiveSession()
    owned = spark is None
    if owned:
        spark = spark_env.session(cfg.curate.spark_master, "climb-curate", cfg.curate.partitions)
    try:
        yield spark
    finally:
        if owned and spark is not None:
            spark.stop()


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.cfg
    files = ingest.list_inputs(cfg.input.uris)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input.uris}")
    delta, why = increments.plan(ctx.previous, {}, ctx.settings_hash, cfg.refresh.incremental)
    number = increments.version(ctx.previous) + 1
    changes = prior.classify(refresh.inputs_of(ctx.previous) if delta else [], files, number)
    log.info("curate: %s", why if delta is None else f"refresh: {changes.counts()}")
    blocked = retracted_ids(ctx.previous)
    earlier = None
    if delta is not None:
        assert ctx.previous is not None
        docs, state = ctx.previous.files("docs/"), ctx.previous.files(prior.STATE)
        earlier = annotate.Earlier(state, docs, changes.withdrawn)
    new_counts: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    summary: list[tuple[str, Any]] = []
    if changes.to_read:
        with _spark(cfg) as spark:
            tag = "/" + increments.tag(number) if earlier else ""
            new_counts, extra, summary = annotate.annotate(
                spark, cfg, ctx.writer.staging, changes.to_read, earlier, tag, sorted(blocked)
            )
    counts, withdrawn = new_counts, 0
    if delta is not None:
        assert ctx.previous is not None
        counts, withdrawn = refresh.carry(ctx.writer, ctx.previous, changes, new_counts, number)
        extra = {**ctx.previous.manifest.extra, **extra}
    else:
        increments.write_removed(ctx.writer, number, increments.ids_table(blocked, increments.RETRACTED))
    assert counts is not None
    extra["inputs"] = refresh.write_inputs(ctx.writer, changes)
    extra["input_files"] = len(files)
    linked = extra.pop("earlier", {})
    mode = "full" if delta is None else "incremental"
    lin = increments.next_lineage(
        ctx.previous, mode, ctx.settings_hash, {}, refresh.delta_counts(changes, new_counts, withdrawn, linked)
    )
    extra = increments.record(ctx.writer, ctx.previous, lin, extra)
    summary = _refresh_lines(lin, why) + summary
    if run_id := track.log_run(cfg, "curate", counts, extra):
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)


def retracted_ids(previous) -> set[str]:
    """Every id `climb retract` took out of earlier versions: never annotated again, even by a
    full run over input files that still hold them (the lists are carried into every version)."""
    if previous is None:
        return set()
    removed = increments.removed_since(previous, 0)
    return {
        i
        for i, r in zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist())
        if r == increments.RETRACTED
    }


def _refresh_lines(lin: increments.Lineage, why: str) -> list[tuple[str, object]]:
    d = lin.delta
    if lin.mode == "full":
        return [("version", f"v{lin.version}: full ({why})")]
    return [
        (
            "version",
            f"v{lin.version}: refresh of v{lin.version - 1}: {d['files_new']} new, {d['files_changed']} changed, "
            f"{d['files_deleted']} deleted, {d['files_unchanged']} unchanged input file(s); "
            f"{d['documents_new']:,} new documents, {d['withdrawn']:,} withdrawn",
        )
    ]
