"""Annotation on Spark: raw files -> the `annotated` dataset (every readable document with its
signals and dedup groups, plus the quarantine side set). No document is dropped here.

"Score once, decide many times" (Dolma's taggers and mixer; DataTrove's stats): this step
computes everything that needs the raw text at scale, once; `select.py` takes the decisions
from the stored values without Spark, so tuning a threshold never reruns this.

Steps (DataFrame transformations; per-batch work in `batches.py` via `mapInArrow`). The texts
stay out of the JVM: the scan writes each split's to a file in the staging folder (`texts.py`),
the DataFrames cache and shuffle small columns only (file, line, split, pos, id, hashes, band
keys), and the steps that need a text read it back in Python by (split, pos): the LSH candidates'
verification, the duplicate ids' quarantine records, and the writers of `docs/` (after the
shuffle into the output parts; before it when the parts are many: `texts.write_after_shuffle`):
1. scan: the input files are listed on the driver and cut into splits (`ingest.py`); one Python
   pass per split reads its records through mixture.storage (local or S3), quarantines bad ones,
   writes their texts to the split's file, and computes for the good ones the enabled filters'
   signals (`filters/`, float64 so a rule replays exactly; every registered filter's with
   `curate.signals: all`; none when every filter is off), the exact-dedup key (SHA-1 of the
   lower-cased, whitespace-collapsed text) and the MinHash LSH band keys (word 5-gram shingles,
   `minhash.py`);
2. identity: the curated id of every good record (its id; `<path>:<id>` when ids are not
   declared unique and another file has the same id, `input.unique_ids`), and `duplicate_id`
   for a record whose curated id an earlier one (by file, line) has: a window on small columns;
3. exact groups: documents with the same key; `exact_group` is the group's smallest id;
4. near groups: LSH candidates among one representative per exact group (the members' shingles
   are identical), verified by exact Jaccard of the shingles (recomputed for the candidates
   only), connected components (`dedup.py`): on the driver when there are at most
   `curate.driver_rows` good records (their small columns collected through files,
   `mixture.spark.collect_arrow`) and at most as many candidate pairs, on Spark otherwise;
   `near_group` is the component's smallest id (members of an exact group share it);
5. write: the records' corrections (curated id, duplicate id, groups; only the records that
   have one) are joined by (file, line), broadcast when they are at most `curate.driver_rows`;
   `docs/` and `quarantine/` Parquet parts are written by the executors; a row's part is
   xxhash64 of its id (quarantine: file and line) modulo the number of parts, rows sorted by id
   inside a part, so the output is the same bytes for any number of partitions or executors;
6. accounting: per input file, read (counted on the scan) = annotated + quarantined, or the
   stage fails.

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
from dataclasses import dataclass
from typing import Any

from mixture import storage
from mixture.config import Config
from mixture.curate import accounting, batches, dedup_groups, ingest, minhash, prior, texts
from mixture.curate.filters import stored_signal_names
from mixture.spark import by_value, checkpoint, collect_arrow, give_back_memory, local_frame, map_batches

log = logging.getLogger(__name__)

QUARANTINE_FIELDS = [("file", "string"), ("line", "bigint"), ("reason", "string"), ("raw", "string")]


def annotated_fields(cfg: Config) -> list[tuple[str, str]]:
    """Columns of `annotated/docs/`: the document, where it came from, its signals and groups.
    `id_hash` (Spark's xxhash64 of the id) lets `select` place rows in the same parts."""
    return (
        [("id", "string"), ("text", "string"), ("source", "string"), ("file", "string"), ("n_words", "int")]
        + [(n, "double") for n in stored_signal_names(cfg.curate.filters, cfg.curate.every_signal)]
        + [("exact_group", "string"), ("near_group", "string"), ("id_hash", "bigint")]
        + prior.PRIOR_FIELDS
    )


def plan(spark, cfg: Config, files: list[ingest.InputFile]) -> list[ingest.Split]:
    """The input files' splits, with the line numbers of byte-range splits resolved by a
    parallel newline count."""
    splits = ingest.plan_splits(files, cfg.input.format, cfg.curate.split_bytes)
    todo = [(i, s.to_json()) for i, s in enumerate(splits) if s.kind == "jsonl" and (s.start > 0 or s.end >= 0)]
    if todo:
        todo_df = local_frame(spark, todo, "i int, split string", cfg.curate.partitions)
        counted = map_batches(todo_df, batches.newline_batches, "i int, n bigint").collect()
        splits = ingest.resolve_line_numbers(splits, {r["i"]: r["n"] for r in counted})
    return splits


def scan(spark, cfg: Config, splits: list[ingest.Split], params: minhash.LSHParams, texts_folder: str):
    """Step 1 (and the keys of steps 3-4) in one Python pass per split: every record read
    (`batches.SCAN_SCHEMA`: its text in the split's file under `texts_folder`, the rows have its
    (split, pos)), with the signals, the exact-dedup hash and the LSH band keys of the good ones."""
    opts = ingest.ReadOptions.from_config(cfg.input, cfg.curate.max_doc_bytes)
    fz = cfg.curate.fuzzy_dedup
    lsh = (fz.ngram, params.num_perm, params.bands, params.rows, cfg.seed)
    rows = [(n, s.to_json()) for n, s in enumerate(splits)]
    split_df = local_frame(spark, rows, "n int, split string", cfg.curate.partitions)
    filters = cfg.curate.filters
    every = cfg.curate.every_signal
    scan_fn = batches.scan_batches(opts, filters.model_dump(mode="json"), lsh, texts_folder, every)
    return map_batches(split_df, scan_fn, batches.scan_schema(filters, every))


def identify(scored, files: list[ingest.InputFile], unique_ids: bool, earlier=None, retracted=None):
    """Step 2 on small columns: (file, line, split, pos, id, n_words, doc_id, dup, collides, text_hash, keys)
    of every good record. `doc_id` is the curated id: the input id, prefixed with the file's relative path
    (`<path>:<id>`) when ids are not declared unique and another file has the same id; `dup`: an
    earlier record (by file, line) has the same `doc_id` (quarantined as `duplicate_id`);
    `collides`: documents with different input ids got this curated id. `earlier` (a refresh:
    the state of the documents already curated, `prior.STATE_FIELDS`) counts as earlier records
    whose ids never change (`mixture.curate.prior`). `retracted` (a DataFrame of ids that
    `climb retract` took out): a document with one of them is `retracted` (and `dup`, so it is
    left out of everything; counted, never written)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    good = scored.where(F.col("reason").isNull()).select(
        "file", "line", "split", "pos", "id", "n_words", "text_hash", "keys"
    )
    if unique_ids:
        good = good.withColumn("doc_id", F.col("id"))
    else:
        spark = scored.sparkSession
        tags = local_frame(spark, [(f.uri, f.rel) for f in files], "file string, tag string")
        by_id = Window.partitionBy("id")
        clash = F.min("file").over(by_id) != F.max("file").over(by_id)
        if earlier is not None:
            used = earlier.select(F.col("input_id").alias("id")).distinct().withColumn("used", F.lit(True))
            good = good.join(used, "id", "left")
            clash = clash | F.col("used").isNotNull()
        tagged = F.concat(F.col("tag"), F.lit(":"), F.col("id"))
        good = (
            good.join(F.broadcast(tags), "file")
            .withColumn("doc_id", F.when(clash, tagged).otherwise(F.col("id")))
            .drop("tag", "used")
        )
    first = Window.partitionBy("doc_id").orderBy("file", "line")
    by_doc = Window.partitionBy("doc_id")  # the same partitioning: no second shuffle
    dup = F.row_number().over(first) > 1
    collides = F.min("id").over(by_doc) != F.max("id").over(by_doc)
    if earlier is not None:
        taken = earlier.select(F.col("id").alias("doc_id"), F.col("input_id").alias("taken_by"))
        good = good.join(taken, "doc_id", "left")
        dup = dup | F.coalesce(F.col("taken_by") == F.col("id"), F.lit(False))
        collides = collides | F.coalesce(F.col("taken_by") != F.col("id"), F.lit(False))
    good = good.withColumn("collides", F.coalesce(collides, F.lit(False))).withColumn("dup", dup).drop("taken_by")
    if retracted is None:
        return good.withColumn("retracted", F.lit(False))
    blocked = F.broadcast(retracted.select(F.col("id").alias("doc_id"), F.lit(True).alias("retracted")))
    good = good.join(blocked, "doc_id", "left").withColumn("retracted", F.coalesce("retracted", F.lit(False)))
    return good.withColumn("dup", F.col("dup") | F.col("retracted"))


class IdCollisionError(RuntimeError):
    """Two different input ids give one curated id (a `<path>:<id>` or `<path>:<line>` form)."""


def check_collisions(rows: list[dict]) -> None:
    """Raise when some curated id stands for documents with different input ids: quarantining
    one as a `duplicate_id` would drop a distinct document under a wrong reason."""
    if rows:
        r = rows[0]
        raise IdCollisionError(
            f"curated id {r['doc_id']!r} ({r['file']} line {r['line']}) is also the curated id of a document "
            "with another input id (a '<path>:<id>' or '<path>:<line>' form): rename the input ids, or set "
            "input.unique_ids: true when they are unique across files"
        )


def lsh_params(cfg: Config) -> tuple[minhash.LSHParams, str]:
    fz = cfg.curate.fuzzy_dedup
    params, table = minhash.lsh_params(
        fz.threshold, fz.num_perm, fz.bands, fz.rows, fz.false_positive_weight, fz.false_negative_weight
    )
    return params, minhash.format_tradeoff(
        fz.threshold, params, table, fz.false_positive_weight, fz.false_negative_weight
    )


def write_dataset(
    df,
    staging: str,
    prefix: str,
    fields: list[tuple[str, str]],
    key_cols: list[str],
    sort_keys: list[str],
    n_rows: int,
    docs_per_file: int,
    texts_folder: str | None = None,
) -> int:
    """Write `df` as part files under `<staging>/<prefix>/`; returns the rows written. The part
    of a row is xxhash64(key) mod parts, parts = ceil(rows / docs_per_file): independent of how
    Spark partitions the data. Parts that got no row are written empty, so the files are always
    part-00000 .. part-<parts-1>. With `texts_folder`, `df` has (split, pos) for the `text` field
    (`mixture.curate.texts`): read by the writers after the shuffle when the parts are few, else
    before it, split by split."""
    from pyspark.sql import functions as F

    parts = max(1, math.ceil(n_rows / docs_per_file))
    place = [c for c in key_cols if c not in dict(fields)] + ([texts.SPLIT, texts.POS] if texts_folder else [])
    cols = df.select(*[n for n, _ in fields if not (texts_folder and n == texts.TEXT)], *place)
    if texts_folder and not texts.write_after_shuffle(parts):
        cols, texts_folder = texts.with_texts(cols, texts_folder), None
    bucket = F.pmod(F.xxhash64(*key_cols), F.lit(parts)).cast("int")
    bucketed = by_value(cols.withColumn("_bucket", bucket), "_bucket", parts)
    if texts_folder:  # each writer reads the texts files' blocks in order
        bucketed = bucketed.sortWithinPartitions("_bucket", texts.SPLIT, texts.POS)
    write = batches.write_buckets(staging, prefix, fields, sort_keys, texts_folder=texts_folder)
    # Nothing counted, nothing to shuffle: the empty part is written without a Spark job.
    written = map_batches(bucketed, write, "bucket int, rows bigint").collect() if n_rows else []
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


def count_outcomes(
    read: list[tuple[str, str | None, int]], good: list[tuple[str, bool, bool, int]], files: list[ingest.InputFile]
) -> dict[str, Any]:
    """Step 6: read per file, (file, reason, n) counted on the scan before any join, against
    annotated + quarantined + retracted, where the good records' (file, is a duplicate id, is
    retracted, n) come from `identify`."""
    read_per_file: dict[str, int] = {}
    outcomes = []
    for file, reason, n in read:
        read_per_file[file] = read_per_file.get(file, 0) + n
        if reason is not None:
            outcomes.append((file, accounting.QUARANTINE_PREFIX + reason, n))
    for file, dup, retracted, n in good:
        if retracted:
            outcomes.append((file, accounting.RETRACTED, n))
        else:
            outcomes.append((file, accounting.QUARANTINE_PREFIX + "duplicate_id" if dup else accounting.ANNOTATED, n))
    return accounting.build_counts([f.uri for f in files], read_per_file, outcomes)


def split_outputs(scored, meta, broadcast: bool, texts_folder: str):
    """(docs, quarantine) to write: good records with their corrections joined by (file, line),
    a broadcast when `meta` is small; the docs with (split, pos) for their texts, the duplicate
    ids' quarantine records with the start of theirs (read here: `mixture.curate.texts`)."""
    from pyspark.sql import functions as F

    good = scored.where(F.col("reason").isNull()).join(
        F.broadcast(meta) if broadcast else meta, ["file", "line"], "left"
    )
    dup = F.coalesce(F.col("dup"), F.lit(False))
    docs = good.where(~dup).withColumn("id", F.coalesce("doc_id", "id")).withColumn("id_hash", F.xxhash64("id"))
    raw = F.substring(
        F.to_json(F.struct("id", F.substring("text", 1, ingest.RAW_CHARS).alias("text"), "source")), 1, ingest.RAW_CHARS
    )
    dup_id = dup & ~F.coalesce(F.col("retracted"), F.lit(False))  # a retracted document is never written
    dup_rows = texts.with_texts(good.where(dup_id).select("file", "line", "id", "source", "split", "pos"), texts_folder)
    dups = dup_rows.select("file", "line", F.lit("duplicate_id").alias("reason"), raw.alias("raw"))
    bad = scored.where(F.col("reason").isNotNull()).select("file", "line", "reason", "raw").unionByName(dups)
    return docs, bad


def write_outputs(
    docs, bad, state, cfg: Config, staging: str, counts: dict[str, Any], texts_folder: str, tag: str = ""
) -> None:
    """Step 5: `docs/` (every annotated document, its text read from `texts_folder`),
    `quarantine/` and the dedup state (`dedup/`, one row per annotated document: what a later
    refresh deduplicates against), checked against the counts. With `tag` (a refresh: `/v0003`)
    into `docs/v0003/` etc."""
    n_quarantined = sum(counts["quarantined"].values())
    dpf = cfg.curate.docs_per_file
    n_docs = counts["documents_out"]
    state_prefix = prior.STATE.rstrip("/") + tag
    written = {
        "docs": write_dataset(
            docs, staging, "docs" + tag, annotated_fields(cfg), ["id"], ["id"], n_docs, dpf, texts_folder
        ),
        "quarantine": write_dataset(
            bad,
            staging,
            "quarantine" + tag,
            QUARANTINE_FIELDS,
            ["file", "line"],
            ["file", "line", "reason"],
            n_quarantined,
            dpf,
        ),
        "dedup": write_dataset(state, staging, state_prefix, prior.STATE_FIELDS, ["id"], ["id"], n_docs, dpf),
    }
    accounting.check_written({"docs": n_docs, "quarantine": n_quarantined, "dedup": n_docs}, written)


@dataclass
class Earlier:
    """What a refresh reads of the committed `annotated` version (`mixture.curate.prior`): its
    dedup state and document files, less the documents of the `withdrawn` input files."""

    state_uris: list[str]
    docs_uris: list[str]
    withdrawn: list[str]

    def state(self, spark):
        from pyspark.sql import functions as F

        df = prior.read_parquet(spark, self.state_uris, prior.state_ddl(), [n for n, _ in prior.STATE_FIELDS])
        return df.where(~F.col("file").isin(self.withdrawn)) if self.withdrawn else df

    def texts(self, spark):
        return lambda ids: prior.read_parquet(spark, self.docs_uris, "id string, text string", ["id", "text"], ids)


def annotate(
    spark,
    cfg: Config,
    staging: str,
    files: list[ingest.InputFile],
    earlier: Earlier | None = None,
    tag: str = "",
    retracted: list[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, Any]]]:
    """Every step in order over `files`; returns (counts, extra, summary) of the `annotated`
    documents written. With at most `curate.driver_rows` good records, the groups are computed
    on the driver from the small columns (`groups_on_driver`); otherwise on Spark
    (`dedup_groups`). Same dataset. With `earlier` (a refresh) the new documents are also
    deduplicated against the earlier ones, and the files are written under `tag`. A document
    whose id is in `retracted` is counted as such and written nowhere."""
    from pyspark import StorageLevel

    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.curate.partitions))
    timer = _Timer()
    splits = plan(spark, cfg, files)
    params, tradeoff = lsh_params(cfg)
    log.info("%s", tradeoff)
    folder = texts.folder(staging)  # the texts, out of the JVM: `mixture.curate.texts`
    scored = scan(spark, cfg, splits, params, folder).persist(StorageLevel.DISK_ONLY)
    state = earlier.state(spark).persist(StorageLevel.DISK_ONLY) if earlier else None
    try:
        blocked = local_frame(spark, [(i,) for i in retracted], "id string") if retracted else None
        run = _Run(cfg, staging, scored, files, params, timer, earlier, state, tag, folder, blocked)
        counts, stats, linked = run.annotate()
    finally:
        scored.unpersist()
        if state is not None:
            state.unpersist()
        storage.delete(folder)
    extra = _extra(cfg, files, splits, params, stats, timer)
    if earlier is not None:
        extra["earlier"] = linked
    return counts, extra, _summary(counts, files, params, stats, timer, linked)


@dataclass
class _Run:
    cfg: Config
    staging: str
    scored: Any
    files: list[ingest.InputFile]
    params: minhash.LSHParams
    timer: _Timer
    earlier: Earlier | None
    state: Any
    tag: str
    texts_folder: str  # the scan's texts files (`mixture.curate.texts`)
    retracted: Any = None  # DataFrame of ids `climb retract` took out: never annotated again

    def annotate(self):
        """`annotate` on the persisted scan: (counts, dedup stats, links to earlier documents)."""
        cfg, scored = self.cfg, self.scored
        ident = identify(scored, self.files, cfg.input.unique_ids, self.state, self.retracted)
        ident = checkpoint(ident)
        read = [(r["file"], r["reason"], r["count"]) for r in scored.groupBy("file", "reason").count().collect()]
        table = None
        if sum(n for _, reason, n in read if reason is None) <= cfg.curate.driver_rows:
            table = collect_arrow(ident, self.staging)
            check_collisions(
                table.filter(table.column("collides")).select(["doc_id", "file", "line"]).slice(0, 1).to_pylist()
            )
            good = table.group_by(["file", "dup", "retracted"]).aggregate([("line", "count")]).to_pylist()
            dups = [(g["file"], g["dup"], g["retracted"], g["line_count"]) for g in good]
        else:
            check_collisions([r.asDict() for r in ident.where("collides").select("doc_id", "file", "line").take(1)])
            by = ident.groupBy("file", "dup", "retracted").count().collect()
            dups = [(r["file"], r["dup"], r["retracted"], r["count"]) for r in by]
        counts = count_outcomes(read, dups, self.files)
        self.timer.done("read_and_signals")

        meta, stats = dedup_groups.decide(table, ident, cfg, self.params, self.texts_folder)
        meta, linked = self.links(meta, ident)
        broadcast = table is not None or meta.count() <= cfg.curate.driver_rows
        del table  # identify's rows: the driver holds none of them through the write
        give_back_memory()  # them, the candidates' shingles and the groups' work arrays, before the write
        self.timer.done("dedup_groups")

        docs, bad = split_outputs(scored, meta, broadcast, self.texts_folder)
        write_outputs(docs, bad, state_rows(ident), cfg, self.staging, counts, self.texts_folder, self.tag)
        self.timer.done("write")
        return counts, stats, linked

    def links(self, meta, ident):
        """The corrections with each new document's `prior_exact` / `prior_near` (a refresh),
        and how many documents have one. A refresh's join is checkpointed here; without an earlier
        dataset the corrections pass as they came (checkpointed by `decide` or the driver's rows)."""
        from pyspark.sql import functions as F

        if self.earlier is None:
            return meta.select("*", *[F.lit(None).cast(t).alias(n) for n, t in prior.PRIOR_FIELDS]), {}
        fz = self.cfg.curate.fuzzy_dedup
        new = state_rows(ident).select("id", "file", "line", "text_hash", "keys")
        good = self.scored.where(F.col("reason").isNull()).select("file", "line", "split", "pos")

        def new_texts(df):
            return texts.with_texts(good.join(df, ["file", "line"]), self.texts_folder).select("id", "text")

        spark = self.scored.sparkSession
        found = prior.link(new, self.state, self.earlier.texts(spark), new_texts, fz.threshold, fz.ngram, fz.verify)
        found = checkpoint(found)
        n = found.agg(F.count("prior_exact").alias("exact"), F.count("prior_near").alias("near")).first()
        return checkpoint(meta.join(found, ["file", "line"], "full_outer")), {
            "exact_duplicates_of_earlier": n["exact"],
            "near_duplicates_of_earlier": n["near"],
        }


def state_rows(ident):
    """The dedup state of the annotated documents (`prior.STATE_FIELDS`, plus `line`)."""
    from pyspark.sql import functions as F

    return ident.where(~F.col("dup")).select(
        F.col("doc_id").alias("id"), F.col("id").alias("input_id"), "file", "line", "text_hash", "keys"
    )


def _extra(cfg, files, splits, params, stats, timer) -> dict[str, Any]:
    return {
        "signals": stored_signal_names(cfg.curate.filters, cfg.curate.every_signal),
        "fuzzy_dedup": {"lsh": _lsh_dict(params), **stats.as_dict()},
        "input_files": len(files),
        "splits": len(splits),
        "seconds": timer.seconds(),
    }


def _summary(counts, files, params, stats, timer, linked=None) -> list[tuple[str, Any]]:
    earlier = []
    if linked:
        n_exact, n_near = linked["exact_duplicates_of_earlier"], linked["near_duplicates_of_earlier"]
        earlier = [("duplicates of earlier documents", f"{n_exact} exact, {n_near} near")]
    return earlier + [
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
