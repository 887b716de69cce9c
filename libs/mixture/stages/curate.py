"""Stage `curate`: raw files -> the `annotated` dataset, on Spark (`mixture.curate.annotate`).

Every readable document with the enabled filters' signals (`curate.signals`) and its exact and
near duplicate groups, plus the quarantine side set; nothing is filtered here (the `select` stage
decides). Runs on the active Spark session (spark-submit, tests) or on a new one for
`curate.spark_master`, which it then stops, ending the JVM it started (`climb run`'s later stages
get its memory back).

A refresh (`refresh.incremental`, the default, and a committed version made with the same
settings): only the input files that are new or changed since are read, their documents are
deduplicated against every document already annotated, and the committed version's files are
carried over less the documents of changed and deleted files (`mixture.curate.annotated_versions`).
Documents `climb retract` took out stay out: their ids are listed in every later version's
`removed/` and counted as `retracted` when an input file still holds them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from mixture import increments
from mixture.contract import StageContext, StageOutput
from mixture.curate import annotate, annotated_versions, ingest, track

log = logging.getLogger(__name__)


@contextmanager
def _spark(cfg):
    from pyspark.sql import SparkSession

    from mixture import spark as spark_env

    spark = SparkSession.getActiveSession()
    if spark is not None:  # spark-submit's, the tests', a notebook's: theirs to stop
        yield spark
        return
    had_jvm = spark_env.launched_here()
    spark = spark_env.session(cfg.curate.spark_master, "climb-curate", cfg.curate.partitions)
    try:
        yield spark
    except BaseException:
        spark_env.stop(spark)  # the JVM stays: Spark's errors need it to say what they are
        raise
    spark_env.stop(spark, end_jvm=not had_jvm)  # a JVM started for it ends: later stages get its memory


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.cfg
    files = ingest.list_inputs(cfg.input.uris)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input.uris}")
    v = annotated_versions.plan_version(
        ctx.previous, files, ctx.settings_hash, cfg.refresh.incremental, ctx.writer.config_hash
    )
    if signals := annotated_versions.signals_change(ctx.previous, cfg.curate):
        log.info("curate: annotating every input file again: %s", signals)
    log.info("curate: %s", v.why if v.previous is None else f"refresh: {v.changes.counts()}")
    new_counts: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    summary: list[tuple[str, Any]] = []
    if v.changes.to_read:
        with _spark(cfg) as spark:
            new_counts, extra, summary = annotate.annotate(
                spark, cfg, ctx.writer.staging, v.changes.to_read, v.earlier, v.tag, sorted(v.retracted)
            )
    extra["input_files"] = len(files)
    extra["sources"] = cfg.input.configured_uris  # as configured: the dataset card's "Sources"
    new = (new_counts, extra)
    counts, extra, lin = annotated_versions.finish_version(ctx.writer, v, ctx.previous, ctx.settings_hash, new)
    summary = _refresh_lines(lin, v.why) + summary
    if run_id := track.log_run(cfg, "curate", counts, extra):
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)


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
