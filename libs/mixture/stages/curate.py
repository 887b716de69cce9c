"""Stage `curate`: raw files -> the `annotated` dataset, on Spark (`mixture.curate.annotate`).

Every readable document with every registered filter's signals and its exact and near
duplicate groups, plus the quarantine side set; nothing is filtered here (the `select` stage
decides). Runs on the active Spark session (spark-submit, tests) or on a new one for
`curate.spark_master`, which it then stops.
"""

from __future__ import annotations

from mixture.contract import StageContext, StageOutput
from mixture.curate import annotate, track


def run(ctx: StageContext) -> StageOutput:
    from pyspark.sql import SparkSession

    from mixture import spark as spark_env

    cfg = ctx.cfg
    spark = SparkSession.getActiveSession()
    owned = spark is None
    if owned:
        spark = spark_env.session(cfg.curate.spark_master, "climb-curate", cfg.curate.partitions)
    try:
        counts, extra, summary = annotate.annotate(spark, cfg, ctx.writer.staging)
    finally:
        if owned and spark is not None:
            spark.stop()
    if run_id := track.log_run(cfg, "curate", counts, extra):
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)
