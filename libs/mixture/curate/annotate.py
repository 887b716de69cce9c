"""Annotation on Spark: raw files -> the `annotated` dataset (every readable document with its
signals and dedup groups, plus the quarantine side set). No document is dropped here.

"Score once, decide many times" (Dolma's taggers and mixer; DataTrove's stats): this step
computes everything that needs the raw text at scale, once; `select.py` takes the decisions
from the stored values without Spark, so tuning a threshold never reruns this.

Steps (DataFrame transformations; per-batch work in `batches.py` via `mapInArrow`):
1. ingest: the input files are listed on the driver and cut into splits (`ingest.py`); each
   executor reads its splits through mixture.storage (local or S3) and quarantines bad records;
2. duplicate ids: a record whose id an earlier record (by file, line) already has is quarantined;
3. signals: every registered filter's signals (`filters/`), stored as float64 so a rule replays
   exactly, plus the exact-dedup key (SHA-1 of the lower-cased, whitespace-collapsed text);
4. exact groups: documents with the same key; `exact_group` is the group's smallest id;
5. near groups: MinHash LSH on word 5-grams over one representative per exact group (the
   members' shingles are identical), candidates verified by exact Jaccard, connected
   components (`dedup.py`, `minhash.py`); `near_group` is the component's smallest id (members
   of an exact group share it);
6. write: `docs/` and `quarantine/` Parquet parts, written by the executors; a row's part is
   xxhash64 of its id (quarantine: file and line) modulo the number of parts, rows sorted by id
   inside a part, so the output is the same bytes for any number of partitions or executors;
7. accounting: per input file, read = annotated + quarantined, or the stage fails.

Groups are computed over every readable document; `select` picks each group's survivor among
the members that pass the filters (the smallest id), as the single-stage curation did. One
documented difference: the single stage fingerprinted filter survivors only, so a chain of near
duplicates A~F~B through a document F that fails a filter now links A and B (one survives where
both did), and LSH candidate pairs (each bucket member with the bucket's first and previous id)
are drawn from all documents. On the demo corpus the curated files are identical, byte for byte.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from mixture.config import Config
from mixture.curate import accounting, batches, dedup, ingest, minhash
from mixture.curate.filters import stored_signal_names

log = logging.getLogger(__name__)

QUARANTINE_FIELDS = [("file", "string"), ("line", "bigint"), ("reason", "string"), ("raw", "string")]


def annotated_fields(cfg: Config) -> list[tuple[str, str]]:
    """Columns of `annotated/docs/`: the document, where it came from, its signals and groups.
    `id_hash` (Spark's xxhash64 of the id) lets `select` place rows in the same parts."""
    return (
        [("id", "string"), ("text", "string"), ("source", "string"), ("file", "string"), ("n_words", "int")]
        + [(n, "double") for n in stored_signal_names(cfg.curate.filters)]
        + [("exact_group", "string"), ("near_group", "string"), ("id_hash", "bigint")]
    )


def plan(spark, cfg: Config) -> tuple[list[ingest.InputFile], list[ingest.Split]]:
    """Input files and their splits, with the line numbers of byte-range splits resolved by a
    parallel newline count."""
    files = ingest.list_inputs(cfg.input.uris)
    if not files:
        raise FileNotFoundError(f"no input files match {cfg.input.uris}")
    splits = ingest.plan_splits(files, cfg.input.format, cfg.curate.split_bytes)
    todo = [(i, s.to_json()) for i, s in enumerate(splits) if s.kind == "jsonl" and (s.start > 0 or s.end >= 0)]
    if todo:
        counted = (
            spark.sparkContext.parallelize(todo, min(len(todo), cfg.curate.partitions))
            .map(lambda item: (item[0], ingest.count_newlines(ingest.Split.from_json(item[1]))))
            .collectAsMap()
        )
        splits = ingest.resolve_line_numbers(splits, counted)
    return files, splits


def read_records(spark, cfg: Config, splits: list[ingest.Split]):
    """Every record of every split as a DataFrame (INGEST_SCHEMA)."""
    opts = ingest.ReadOptions.from_config(cfg.input, cfg.curate.max_doc_bytes)
    rows = [(s.to_json(),) for s in splits]
    slices = max(1, min(len(rows), cfg.curate.partitions))
    split_df = spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), "split string")
    return split_df.mapInArrow(batches.ingest_batches(opts), batches.INGEST_SCHEMA)


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
    raw = F.substring(
        F.to_json(F.struct("id", F.substring("text", 1, ingest.RAW_CHARS).alias("text"), "source")), 1, ingest.RAW_CHARS
    )
    return (
        ranked.withColumn("raw", F.when(dup, raw).otherwise(F.col("raw")))
        .withColumn("reason", F.when(dup, F.lit("duplicate_id")).otherwise(F.col("reason")))
        .withColumn("id", F.when(dup, F.lit(None)).otherwise(F.col("id")))
        .withColumn("text", F.when(dup, F.lit(None)).otherwise(F.col("text")))
        .withColumn("source", F.when(dup, F.lit(None)).otherwise(F.col("source")))
        .drop("_rank")
    )


def add_signals(records, cfg: Config):
    """Step 3: n_words, every signal and the exact-dedup key beside each good record."""
    filters = cfg.curate.filters
    return records.mapInArrow(
        batches.signal_batches(filters.model_dump(mode="json")), batches.signal_schema(batches.INGEST_SCHEMA, filters)
    )


def lsh_params(cfg: Config) -> tuple[minhash.LSHParams, str]:
    fz = cfg.curate.fuzzy_dedup
    params, table = minhash.lsh_params(
        fz.threshold, fz.num_perm, fz.bands, fz.rows, fz.false_positive_weight, fz.false_negative_weight
    )
    return params, minhash.format_tradeoff(
        fz.threshold, params, table, fz.false_positive_weight, fz.false_negative_weight
    )


def dedup_groups(docs, cfg: Config, params: minhash.LSHParams):
    """Steps 4-5: (id, exact_group, near_group) for every document of `docs` (id, text,
    text_hash), and the fuzzy-dedup statistics. `exact_group` is null for a document whose
    text no other has; `near_group` is null for one with no near duplicate (an exact copy is
    one: its group is then its exact group)."""
    from pyspark.sql import functions as F

    fz = cfg.curate.fuzzy_dedup
    exact = docs.groupBy("text_hash").agg(F.min("id").alias("exact_rep"), F.count("*").alias("copies"))
    members = docs.select("id", "text_hash").join(exact, "text_hash").localCheckpoint(eager=True)
    reps = docs.join(exact.select(F.col("exact_rep").alias("id")), "id", "left_semi").select("id", "text")
    near, stats = dedup.near_duplicates(
        reps, fz.threshold, fz.ngram, params, cfg.seed, verify=fz.verify, max_iterations=fz.max_cc_iterations
    )
    roots = near.select(F.col("near_of").alias("exact_rep")).distinct().withColumn("is_root", F.lit(True))
    rep_group = (
        near.select(F.col("id").alias("exact_rep"), F.col("near_of"))
        .join(roots, "exact_rep", "full_outer")
        .select(
            "exact_rep", F.coalesce("near_of", F.when(F.col("is_root"), F.col("exact_rep"))).alias("rep_near_group")
        )
    )
    exact_group = F.when(F.col("copies") > 1, F.col("exact_rep"))
    groups = members.join(rep_group, "exact_rep", "left").select(
        "id", exact_group.alias("exact_group"), F.coalesce("rep_near_group", exact_group).alias("near_group")
    )
    return groups, stats


def write_dataset(
    df,
    staging: str,
    prefix: str,
    fields: list[tuple[str, str]],
    key_cols: list[str],
    sort_keys: list[str],
    n_rows: int,
    docs_per_file: int,
) -> int:
    """Write `df` as part files under `<staging>/<prefix>/`; returns the rows written. The part
    of a row is xxhash64(key) mod parts, parts = ceil(rows / docs_per_file): independent of how
    Spark partitions the data. Parts that got no row are written empty, so the files are always
    part-00000 .. part-<parts-1>."""
    from pyspark.sql import functions as F

    parts = max(1, math.ceil(n_rows / docs_per_file))
    bucketed = (
        df.select(*[n for n, _ in fields], *[c for c in key_cols if c not in dict(fields)])
        .withColumn("_bucket", F.pmod(F.xxhash64(*key_cols), F.lit(parts)).cast("int"))
        .repartition(parts, "_bucket")
    )
    written = bucketed.mapInArrow(
        batches.write_buckets(staging, prefix, fields, sort_keys), "bucket int, rows bigint"
    ).collect()
    by_bucket: dict[int, int] = {}
    for row in written:
        if row["bucket"] in by_bucket:
            raise RuntimeError(f"{prefix}: part {row['bucket']} was written twice")
        by_bucket[row["bucket"]] = row["rows"]
    schema = batches.arrow_schema(fields)
    for b in range(parts):
        if b not in by_bucket:
            by_bucket[b] = batches.write_table(
                schema.empty_table(), schema, sort_keys, batches.part_uri(staging, prefix, b)
            )
    return sum(by_bucket.values())


def count_outcomes(scored, files: list[ingest.InputFile]) -> dict[str, Any]:
    """Step 7: read per file (counted before any join) against annotated + quarantined."""
    from pyspark.sql import functions as F

    read_per_file = {r["file"]: r["count"] for r in scored.groupBy("file").count().collect()}
    outcome = F.when(F.col("reason").isNull(), F.lit(accounting.ANNOTATED)).otherwise(
        F.concat(F.lit(accounting.QUARANTINE_PREFIX), "reason")
    )
    rows = scored.groupBy("file", outcome.alias("outcome")).count().collect()
    return accounting.build_counts(
        [f.uri for f in files], read_per_file, [(r["file"], r["outcome"], r["count"]) for r in rows]
    )


def write_outputs(scored, groups, cfg: Config, staging: str, counts: dict[str, Any]) -> None:
    """Step 6: `docs/` (every annotated document) and `quarantine/`, checked against the counts."""
    from pyspark.sql import functions as F

    docs = scored.where(F.col("reason").isNull()).join(groups, "id", "left").withColumn("id_hash", F.xxhash64("id"))
    bad = scored.where(F.col("reason").isNotNull())
    n_quarantined = sum(counts["quarantined"].values())
    dpf = cfg.curate.docs_per_file
    written = {
        "docs": write_dataset(
            docs, staging, "docs", annotated_fields(cfg), ["id"], ["id"], counts["documents_out"], dpf
        ),
        "quarantine": write_dataset(
            bad,
            staging,
            "quarantine",
            QUARANTINE_FIELDS,
            ["file", "line"],
            ["file", "line", "reason"],
            n_quarantined,
            dpf,
        ),
    }
    accounting.check_written({"docs": counts["documents_out"], "quarantine": n_quarantined}, written)


def annotate(spark, cfg: Config, staging: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, Any]]]:
    """Every step in order; returns (counts, extra, summary) of the `annotated` dataset."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.curate.partitions))
    timer = _Timer()
    files, splits = plan(spark, cfg)
    scored = add_signals(mark_duplicate_ids(read_records(spark, cfg, splits)), cfg)
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    counts = count_outcomes(scored, files)
    timer.done("read_and_signals")

    params, tradeoff = lsh_params(cfg)
    log.info("%s", tradeoff)
    groups, stats = dedup_groups(scored.where(F.col("reason").isNull()).select("id", "text", "text_hash"), cfg, params)
    groups = groups.localCheckpoint(eager=True)
    timer.done("dedup_groups")

    write_outputs(scored, groups, cfg, staging, counts)
    scored.unpersist()
    timer.done("write")
    extra = {
        "signals": stored_signal_names(cfg.curate.filters),
        "fuzzy_dedup": {"lsh": _lsh_dict(params), **stats.as_dict()},
        "input_files": len(files),
        "splits": len(splits),
        "seconds": timer.seconds(),
    }
    summary = [
        (
            "documents",
            f"{counts['documents_in']:,} read, {counts['documents_out']:,} annotated "
            f"from {len(files)} file(s) in {timer.total():.1f} s",
        ),
        ("quarantined", counts["quarantined"] or 0),
        (
            "dedup groups",
            f"{stats.groups} near-duplicate groups among exact-group representatives "
            f"(MinHash {params.num_perm} perms, {params.bands} bands x {params.rows} rows)",
        ),
    ]
    return counts, extra, summary


def _lsh_dict(params: minhash.LSHParams) -> dict[str, Any]:
    return {
        "num_perm": params.num_perm,
        "bands": params.bands,
        "rows": params.rows,
        "false_positive_area": round(params.false_positive_area, 5),
        "false_negative_area": round(params.false_negative_area, 5),
    }


class _Timer:
    """Seconds per named step, logged as each ends."""

    def __init__(self):
        self.t0 = time.time()
        self.steps: dict[str, float] = {}

    def done(self, name: str) -> None:
        self.steps[name] = round(time.time() - self.t0 - sum(self.steps.values()), 2)
        log.info("curate: %s done in %.1f s", name, self.steps[name])

    def total(self) -> float:
        return time.time() - self.t0

    def seconds(self) -> dict[str, float]:
        return {**self.steps, "total": round(self.total(), 1)}
