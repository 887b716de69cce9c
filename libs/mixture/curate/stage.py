"""The `curate` stage: raw files -> the `curated` dataset (docs, quarantine, rejected), on Spark.

Steps (each a DataFrame transformation; per-batch work in `steps.py` via `mapInArrow`):
1. ingest: the input files are listed on the driver and cut into splits (`ingest.py`); the splits
   are distributed and each executor reads its own through mixture.storage (local or S3);
2. duplicate ids: a record whose id an earlier record (by file, line) already has is quarantined;
3. score: the heuristic filters (Gopher quality and repetition, C4, FineWeb; `filters.py`) give
   each document its first failing rule and its continuous q_* signals;
4. exact dedup: SHA-1 of the normalised text, smallest id kept (`dedup.py`);
5. fuzzy dedup: MinHash LSH on word 5-grams, candidates verified by exact Jaccard, connected
   components, smallest id of each group kept (`dedup.py`, `minhash.py`);
6. accounting: per input file read = kept + quarantined + filtered + exact + near, or the stage
   fails (`accounting.py`);
7. write: `docs/`, `quarantine/` and `rejected/` Parquet part files, each written by the executor
   that holds it; a row's part is a hash of its id (quarantine: file and line) modulo the number
   of parts (rows / `docs_per_file`), rows sorted by id inside a part, so the output is the same
   bytes for any number of partitions or executors.

Per-filter statistics go to MLflow (one run named "curate") and to the manifest's `extra`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from tqdm import tqdm

from mixture import tracking
from mixture.config import Config
from mixture.curate import accounting, dedup, ingest, minhash, steps
from mixture.curate.filters import signal_names
from mixture.contract import StageContext, StageOutput

log = logging.getLogger(__name__)

QUARANTINE_FIELDS = [("file", "string"), ("line", "bigint"), ("reason", "string"), ("raw", "string")]
REJECTED_FIELDS = [("id", "string"), ("text", "string"), ("source", "string"), ("reason", "string"),
                   ("duplicate_of", "string")]


def docs_fields(cfg: Config) -> list[tuple[str, str]]:
    return ([("id", "string"), ("text", "string"), ("source", "string"), ("n_words", "int")]
            + [(n, "float") for n in signal_names(cfg.curate.filters)])


def _spark(cfg: Config):
    """The active session (spark-submit, tests) or a new one for `curate.spark_master`; the flag
    says whether this stage created it (and so stops it)."""
    from pyspark.sql import SparkSession

    from mixture import spark as spark_helper

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    return spark_helper.session(cfg.curate.spark_master, "climb-curate", cfg.curate.partitions), True


def plan(spark, cfg: Config) -> tuple[list[ingest.InputFile], list[ingest.Split]]:
    """Input files and their splits, with the line numbers of byte-range splits resolved by a
    parallel newline count."""
    files = ingest.list_inputs(cfg.input.uris)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input.uris}")
    splits = ingest.plan_splits(files, cfg.input.format, cfg.curate.split_bytes)
    todo = [(i, s.to_json()) for i, s in enumerate(splits) if s.kind == "jsonl" and (s.start > 0 or s.end >= 0)]
    if todo:
        counted = (spark.sparkContext.parallelize(todo, min(len(todo), cfg.curate.partitions))
                   .map(lambda item: (item[0], ingest.count_newlines(ingest.Split.from_json(item[1]))))
                   .collectAsMap())
        splits = ingest.resolve_line_numbers(splits, counted)
    return files, splits


def read_records(spark, cfg: Config, splits: list[ingest.Split]):
    """Every record of every split as a DataFrame (INGEST_SCHEMA)."""
    opts = ingest.ReadOptions.from_config(cfg.input, cfg.curate.max_doc_bytes)
    rows = [(s.to_json(),) for s in splits]
    slices = max(1, min(len(rows), cfg.curate.partitions))
    split_df = spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), "split string")
    return split_df.mapInArrow(steps.ingest_batches(opts), steps.INGEST_SCHEMA)


def mark_duplicate_ids(records):
    """Quarantine (`duplicate_id`) every good record whose id an earlier one (by file, line)
    has. Quarantined records are keyed by their own (file, line) so they spread evenly."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    good = F.col("reason").isNull()
    key1 = F.when(good, F.col("id")).otherwise(F.col("file"))
    key2 = F.when(good, F.lit(None).cast("bigint")).otherwise(F.col("line"))
    w = Window.partitionBy(good, key1, key2).orderBy("file", "line")
    ranked = records.withColumn("_rank", F.row_number().over(w))
    dup = good & (F.col("_rank") > 1)
    raw = F.substring(F.to_json(F.struct("id", F.substring("text", 1, ingest.RAW_CHARS).alias("text"), "source")),
                      1, ingest.RAW_CHARS)
    return (ranked
            .withColumn("raw", F.when(dup, raw).otherwise(F.col("raw")))
            .withColumn("reason", F.when(dup, F.lit("duplicate_id")).otherwise(F.col("reason")))
            .withColumn("id", F.when(dup, F.lit(None)).otherwise(F.col("id")))
            .withColumn("text", F.when(dup, F.lit(None)).otherwise(F.col("text")))
            .withColumn("source", F.when(dup, F.lit(None)).otherwise(F.col("source")))
            .drop("_rank"))


def write_dataset(df, staging: str, prefix: str, fields: list[tuple[str, str]], key_cols: list[str],
                  sort_keys: list[str], n_rows: int, docs_per_file: int) -> int:
    """Write `df` as part files under `<staging>/<prefix>/`; returns the rows written. The part
    of a row is xxhash64(key) mod parts, parts = ceil(rows / docs_per_file): independent of how
    Spark partitions the data. Parts that got no row are written empty, so the files are always
    part-00000 .. part-<parts-1>."""
    from pyspark.sql import functions as F

    parts = max(1, math.ceil(n_rows / docs_per_file))
    bucketed = (df.select(*[n for n, _ in fields], *[c for c in key_cols if c not in dict(fields)])
                .withColumn("_bucket", F.pmod(F.xxhash64(*key_cols), F.lit(parts)).cast("int"))
                .repartition(parts, "_bucket"))
    written = bucketed.mapInArrow(steps.write_buckets(staging, prefix, fields, sort_keys),
                                  "bucket int, rows bigint").collect()
    by_bucket: dict[int, int] = {}
    for row in written:
        if row["bucket"] in by_bucket:
            raise RuntimeError(f"{prefix}: part {row['bucket']} was written twice")
        by_bucket[row["bucket"]] = row["rows"]
    schema = steps.arrow_schema(fields)
    for b in range(parts):
        if b not in by_bucket:
            by_bucket[b] = steps.write_table(schema.empty_table(), schema, sort_keys,
                                             steps.part_uri(staging, prefix, b))
    return sum(by_bucket.values())


def _signal_quantiles(kept, names: list[str]) -> dict[str, dict[str, float]]:
    if not names:
        return {}
    qs = kept.approxQuantile(names, [0.1, 0.5, 0.9], 0.001)
    return {n: {"p10": q[0], "p50": q[1], "p90": q[2]} for n, q in zip(names, qs) if q}


def curate(spark, cfg: Config, staging: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, Any]]]:
    """Run every step; returns (counts, extra, summary)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cur = cfg.curate
    spark.conf.set("spark.sql.shuffle.partitions", str(cur.partitions))
    t0 = time.time()
    timings: dict[str, float] = {}
    progress = tqdm(total=6, desc="curate", unit="step", leave=False)

    def step_done(name: str, steps_done: int = 1) -> None:
        timings[name] = round(time.time() - t0 - sum(timings.values()), 2)
        log.info("curate: %s done in %.1f s", name, timings[name])
        progress.update(steps_done)

    # 1-3: read, quarantine duplicate ids, score --------------------------------------------
    progress.set_postfix_str("ingest")
    files, splits = plan(spark, cfg)
    records = mark_duplicate_ids(read_records(spark, cfg, splits))
    scored = records.mapInArrow(steps.score_batches(cur.filters.model_dump(mode="json")),
                                steps.score_schema(steps.INGEST_SCHEMA, cur.filters))
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    read_per_file = {r["file"]: r["count"] for r in scored.groupBy("file").count().collect()}
    step_done("read_and_score", 2)

    bad = scored.where(F.col("reason").isNotNull())
    docs = scored.where(F.col("reason").isNull())
    passing = docs.where(F.col("filter_reason").isNull())

    # 4: exact dedup ----------------------------------------------------------------------
    progress.set_postfix_str("exact dedup")
    if cur.exact_dedup:
        exact = dedup.exact_duplicates(passing.select("id", "text_hash"))
    else:
        exact = spark.createDataFrame([], "id string, exact_of string")
    exact = exact.localCheckpoint(eager=True)       # used twice below; computed once here
    step_done("exact_dedup")

    # 5: fuzzy dedup ----------------------------------------------------------------------
    progress.set_postfix_str("fuzzy dedup")
    fz = cur.fuzzy_dedup
    params, table = minhash.lsh_params(fz.threshold, fz.num_perm, fz.bands, fz.rows,
                                       fz.false_positive_weight, fz.false_negative_weight)
    tradeoff = minhash.format_tradeoff(fz.threshold, params, table, fz.false_positive_weight,
                                       fz.false_negative_weight)
    fuzzy_stats: dict[str, Any] = {}
    if fz.enabled:
        log.info("%s", tradeoff)
        survivors = passing.join(exact, "id", "left_anti").select("id", "text")
        near, stats = dedup.near_duplicates(survivors, fz.threshold, fz.ngram, params, cfg.seed,
                                            verify=fz.verify, max_iterations=fz.max_cc_iterations)
        fuzzy_stats = stats.as_dict()
    else:
        near = spark.createDataFrame([], "id string, near_of string")
    step_done("fuzzy_dedup")

    # 6: outcomes and accounting ----------------------------------------------------------
    progress.set_postfix_str("accounting")
    # An exact duplicate points at the survivor of its group: its representative, or what
    # that representative became a near duplicate of.
    exact_final = (exact.join(near.select(F.col("id").alias("exact_of"), "near_of"), "exact_of", "left")
                   .select("id", F.coalesce("near_of", "exact_of").alias("exact_final")))
    decided = (docs.join(exact_final, "id", "left").join(near, "id", "left")
               .withColumn("outcome", F.when(F.col("filter_reason").isNotNull(), F.col("filter_reason"))
                           .when(F.col("exact_final").isNotNull(), F.lit(accounting.EXACT))
                           .when(F.col("near_of").isNotNull(), F.lit(accounting.NEAR))
                           .otherwise(F.lit(accounting.KEPT)))
               .withColumn("duplicate_of", F.coalesce("exact_final", "near_of")))
    decided = decided.persist(StorageLevel.MEMORY_AND_DISK)
    outcome_rows = (decided.select("file", "outcome")
                    .union(bad.select("file", F.concat(F.lit(accounting.QUARANTINE_PREFIX), "reason")))
                    .groupBy("file", "outcome").count().collect())
    outcomes = [(r["file"], r["outcome"], r["count"]) for r in outcome_rows]
    counts = accounting.build_counts([f.uri for f in files], read_per_file, outcomes)
    step_done("accounting")

    # 7: write ------------------------------------------------------------------------------
    progress.set_postfix_str("write")
    kept = decided.where(F.col("outcome") == accounting.KEPT)
    n_quarantined = sum(counts["quarantined"].values())
    n_rejected = counts["documents_in"] - counts["documents_out"] - n_quarantined
    written = {"docs": write_dataset(kept, staging, "docs", docs_fields(cfg), ["id"], ["id"],
                                     counts["documents_out"], cur.docs_per_file),
               "quarantine": write_dataset(bad, staging, "quarantine", QUARANTINE_FIELDS, ["file", "line"],
                                           ["file", "line", "reason"], n_quarantined, cur.docs_per_file)}
    expected = {"docs": counts["documents_out"], "quarantine": n_quarantined}
    if cur.keep_rejected:
        rejected = (decided.where(F.col("outcome") != accounting.KEPT)
                    .withColumn("reason", F.col("outcome")))
        written["rejected"] = write_dataset(rejected, staging, "rejected", REJECTED_FIELDS, ["id"], ["id"],
                                            n_rejected, cur.docs_per_file)
        expected["rejected"] = n_rejected
    accounting.check_written(expected, written)
    step_done("write")

    # statistics --------------------------------------------------------------------------
    # Every filter that rejects a document on its own ("fail:<filter>:<rule>") and every
    # exemption ("exempt:<filter>"), in one job.
    tags = F.concat(F.transform(F.split(F.coalesce("filter_failed", F.lit("")), ";"), lambda x: F.concat(F.lit("fail:"), x)),
                    F.transform(F.split(F.coalesce("exempt", F.lit("")), ";"), lambda x: F.concat(F.lit("exempt:"), x)))
    tag_counts = {r["tag"]: r["count"] for r in docs.select(F.explode(tags).alias("tag"))
                  .where(~F.col("tag").isin("fail:", "exempt:")).groupBy("tag").count().collect()}
    would_reject = {t[len("fail:"):]: n for t, n in tag_counts.items() if t.startswith("fail:")}
    exempted = {t[len("exempt:"):]: n for t, n in tag_counts.items() if t.startswith("exempt:")}
    per_filter_alone: dict[str, int] = {}
    for rule, n in would_reject.items():
        name = rule.split(":", 1)[0]
        per_filter_alone[name] = per_filter_alone.get(name, 0) + n
    quantiles = _signal_quantiles(kept, ["n_words"] + signal_names(cur.filters)) if counts["documents_out"] else {}
    decided.unpersist()
    scored.unpersist()
    timings["statistics"] = round(time.time() - t0 - sum(timings.values()), 2)
    progress.close()
    seconds = time.time() - t0

    extra = {
        "filters": {"first_failure_rules": accounting.rule_counts(outcomes),
                    "rejects_alone": dict(sorted(per_filter_alone.items())),
                    "rejects_alone_rules": dict(sorted(would_reject.items())),
                    "exempted": dict(sorted(exempted.items()))},
        "fuzzy_dedup": {"lsh": {"num_perm": params.num_perm, "bands": params.bands, "rows": params.rows,
                                "false_positive_area": round(params.false_positive_area, 5),
                                "false_negative_area": round(params.false_negative_area, 5)},
                        **fuzzy_stats} if fz.enabled else {"enabled": False},
        "signals_kept": quantiles,
        "input_files": len(files),
        "splits": len(splits),
        "seconds": {**timings, "total": round(seconds, 1)},
    }
    summary = [
        ("documents", f"{counts['documents_in']:,} read, {counts['documents_out']:,} kept "
                      f"from {len(files)} file(s) in {seconds:.1f} s"),
        ("quarantined", counts["quarantined"] or 0),
        ("filtered", counts["filtered"] or 0),
        ("exact duplicates", counts["exact_duplicates"]),
        ("near duplicates", f"{counts['near_duplicates']} (MinHash {params.num_perm} perms, "
                            f"{params.bands} bands x {params.rows} rows, Jaccard >= {fz.threshold})"
         if fz.enabled else "off"),
    ]
    return counts, extra, summary


def _log_mlflow(cfg: Config, counts: dict[str, Any], extra: dict[str, Any]) -> str | None:
    import mlflow

    try:
        tracking.tracking_uri(cfg)
    except ValueError as err:
        log.warning("curate: not logging to MLflow (%s)", err)
        return None
    with tracking.run(cfg, "curate", tags={"stage": "curate"}) as run:
        params = tracking.flat_params("curate", cfg.curate.model_dump(mode="json"))
        params.update(tracking.flat_params("input", cfg.input.model_dump(mode="json", exclude={"uris"})))
        params["input.files"] = extra["input_files"]
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics = {"documents_in": counts["documents_in"], "documents_out": counts["documents_out"],
                   "exact_duplicates": counts["exact_duplicates"], "near_duplicates": counts["near_duplicates"],
                   "seconds": extra["seconds"]["total"]}
        metrics.update({f"quarantined.{k}": v for k, v in counts["quarantined"].items()})
        metrics.update({f"filtered.{k}": v for k, v in counts["filtered"].items()})
        f = extra["filters"]
        for name, rules in f["first_failure_rules"].items():
            metrics.update({f"rule.{name}.{rule}": n for rule, n in rules.items()})
        metrics.update({f"rejects_alone.{k}": v for k, v in f["rejects_alone"].items()})
        metrics.update({f"exempted.{k}": v for k, v in f["exempted"].items()})
        for name, q in extra["signals_kept"].items():
            metrics.update({f"signal.{name}.{k}": v for k, v in q.items()})
        fz = extra["fuzzy_dedup"]
        metrics.update({f"fuzzy.{k}": v for k, v in fz.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_metrics({k.replace(":", "."): float(v) for k, v in metrics.items()})
        mlflow.log_dict({"counts": counts, "extra": extra}, "curate_counts.json")
        return run.info.run_id


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.cfg
    staging = ctx.writer.staging
    spark, owned = _spark(cfg)
    try:
        counts, extra, summary = curate(spark, cfg, staging)
    finally:
        if owned:
            spark.stop()
    run_id = _log_mlflow(cfg, counts, extra)
    if run_id:
        summary.append(("MLflow run", run_id))
    return StageOutput(counts=counts, extra=extra, summary=summary)
