"""Incremental curation: what a refresh keeps of the corpus curated so far, and the rules that
use it (`annotate.py` runs them on Spark; `select.py` decides with their results).

A refresh (`mixture.increments`) reads only the input files that are new or changed since the
committed `annotated` version; the documents of changed and deleted files are withdrawn. What
deduplicating the new documents against everything already curated needs is kept beside the
dataset, in `dedup/` (`STATE_FIELDS`, one row per annotated document): its curated id, its input
id and file (for the id rules), the exact-dedup hash and the MinHash LSH band keys. The texts of
earlier documents are read again only for the few candidate pairs LSH finds (Parquet row groups
are sorted by id, so a lookup by id reads only the row groups that can hold it).

Rules across versions:
- ids: an id already curated never changes. With `input.unique_ids: false` a new document whose
  input id another file already used (in this refresh or an earlier one) gets the `<path>:<id>`
  form; the earlier document keeps its id. A new document whose curated id an earlier document
  has is a `duplicate_id` when its input id is the same (the same record read again under
  unique ids), else an `IdCollisionError`.
- duplicates: a new document with the text hash of an earlier one has `prior_exact` = the
  smallest such earlier id; else one whose verified MinHash Jaccard similarity with an earlier
  document reaches the threshold has `prior_near` = the smallest such earlier id. `select` makes
  it a duplicate of the survivor of that earlier document's group: a document already curated
  survives over a new duplicate of it, whatever their ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mixture import storage
from mixture.curate import dedup
from mixture.curate.ingest import InputFile
from mixture.spark import checkpoint, local_frame, map_batches

STATE = "dedup/"
STATE_FIELDS = [
    ("id", "string"),
    ("input_id", "string"),
    ("file", "string"),
    ("text_hash", "string"),
    ("keys", "array<bigint>"),
]
PRIOR_FIELDS = [("prior_exact", "string"), ("prior_near", "string")]
INPUTS = "inputs.json"  # the input files a version covers: uri, rel, size, checksum, version
BUCKET_CAP = 4  # earlier documents a new one is paired with per LSH bucket (the smallest ids)


# ---------------------------------------------------------------------- input files
@dataclass
class Changes:
    """The input files of a refresh against the ones the committed version covers."""

    new: list[InputFile]
    changed: list[InputFile]
    deleted: list[str]  # URIs
    unchanged: list[str]
    records: list[dict[str, Any]]  # what the new version covers (INPUTS)

    @property
    def to_read(self) -> list[InputFile]:
        return sorted(self.new + self.changed, key=lambda f: f.uri)

    @property
    def withdrawn(self) -> list[str]:
        return sorted([f.uri for f in self.changed] + self.deleted)

    def counts(self) -> dict[str, int]:
        return {
            "files_new": len(self.new),
            "files_changed": len(self.changed),
            "files_deleted": len(self.deleted),
            "files_unchanged": len(self.unchanged),
        }


def covered(files: list[InputFile], version: int, known: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """The INPUTS records of `files` (their identity now, `storage.identity`)."""
    known = known or {}
    return [
        {"uri": f.uri, "rel": f.rel, **storage.identity(f.uri, known.get(f.uri)), "version": version} for f in files
    ]


def classify(previous: list[dict[str, Any]], files: list[InputFile], version: int) -> Changes:
    """New, changed (same URI, other size or checksum), deleted and unchanged input files. An
    earlier file keeps its relative path (the ids derived from it stay the same); a new file whose
    relative path an earlier file has uses its full URI."""
    before = {r["uri"]: r for r in previous}
    taken = {r["rel"] for r in previous}
    now = covered([_keep_rel(f, before, taken) for f in files], version, before)
    out = Changes([], [], sorted(set(before) - {f.uri for f in files}), [], [])
    for f, rec in zip(files, now):
        old = before.get(f.uri)
        if old is None:
            out.new.append(InputFile(f.uri, rec["rel"]))
        elif (old["size"], old["checksum"]) != (rec["size"], rec["checksum"]):
            out.changed.append(InputFile(f.uri, rec["rel"]))
        else:
            out.unchanged.append(f.uri)
            rec = {**old, "mtime_ns": rec["mtime_ns"]}  # its checksum is reused while size and mtime hold
        out.records.append(rec)
    return out


def _keep_rel(f: InputFile, before: dict[str, dict], taken: set[str]) -> InputFile:
    if f.uri in before:
        return InputFile(f.uri, before[f.uri]["rel"])
    return InputFile(f.uri, f.uri if f.rel in taken else f.rel)


# ---------------------------------------------------------------------- reading on Spark
def read_parquet(spark, uris: list[str], ddl: str, columns: list[str], ids=None):
    """Parquet files (local or S3, through mixture.storage) as a DataFrame, one task per file;
    with `ids` (a set of str, broadcast) only the rows whose `id` is in it (row groups whose id
    range holds none of them are not read)."""
    df = local_frame(spark, [(u,) for u in uris], "uri string", 64)
    wanted = spark.sparkContext.broadcast(sorted(ids)) if ids is not None else None
    return map_batches(df, _reader(columns, wanted), ddl)


def _reader(columns: list[str], wanted):
    def run(batches):
        import pyarrow as pa
        import pyarrow.parquet as pq

        filters = [("id", "in", wanted.value)] if wanted is not None else None
        for batch in batches:
            for uri in batch.column("uri").to_pylist():
                if filters is not None and not wanted.value:
                    continue
                with storage.open_read(uri) as f:
                    table = pq.read_table(f, columns=columns, filters=filters)
                for rb in table.to_batches():
                    yield pa.RecordBatch.from_arrays(list(rb.columns), names=columns)

    return run


def state_ddl() -> str:
    return ", ".join(f"{n} {t}" for n, t in STATE_FIELDS)


# ---------------------------------------------------------------------- links to earlier documents
def link(new, prior, old_texts, new_texts, threshold: float, ngram: int, verify: bool):
    """(file, line, prior_exact, prior_near) of the new documents that duplicate an earlier one.
    `new`: (id, file, line, text_hash, keys) of the new documents (no duplicate ids); `prior`:
    the state of the earlier ones; `old_texts(ids)` / `new_texts(df)`: (id, text) of the earlier
    documents with the given ids / of the new documents in `df` (id, file, line)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    old = prior.select(F.col("id").alias("old"), "text_hash")
    exact = new.join(old, "text_hash").groupBy("file", "line").agg(F.min("old").alias("prior_exact"))
    rest = new.join(exact, ["file", "line"], "left_anti").select("id", "file", "line", F.posexplode("keys"))
    earlier = prior.select(F.col("id").alias("old"), F.posexplode("keys"))
    earlier = earlier.join(rest.select("pos", "col").distinct(), ["pos", "col"], "left_semi")
    bucket = Window.partitionBy("pos", "col").orderBy("old")
    earlier = earlier.withColumn("rank", F.row_number().over(bucket)).where(F.col("rank") <= BUCKET_CAP)
    pairs = rest.join(earlier.drop("rank"), ["pos", "col"]).select("id", "file", "line", "old").distinct()
    pairs = checkpoint(pairs)
    if verify:
        pairs = _verified(pairs, old_texts, new_texts, threshold, ngram)
    near = pairs.groupBy("file", "line").agg(F.min("old").alias("prior_near"))
    return exact.join(near, ["file", "line"], "full_outer")


def _verified(pairs, old_texts, new_texts, threshold: float, ngram: int):
    """The candidate pairs whose exact shingle Jaccard similarity reaches `threshold`."""
    from pyspark.sql import functions as F

    schema = dedup.SHINGLE_SCHEMA
    ids = {r["old"] for r in pairs.select("old").distinct().collect()}
    shingles = dedup.shingle_batches(ngram)
    sh_old = map_batches(old_texts(ids).select("id", "text"), shingles, schema)
    sh_new = map_batches(new_texts(pairs.select("id", "file", "line").distinct()), shingles, schema)
    joined = pairs.join(sh_new.select(F.col("id"), F.col("shingles").alias("sh_u")), "id").join(
        sh_old.select(F.col("id").alias("old"), F.col("shingles").alias("sh_v")), "old"
    )
    checked = map_batches(
        joined.select(F.col("id").alias("u"), F.col("old").alias("v"), "sh_u", "sh_v"),
        dedup.verify_batches(threshold),
        "u string, v string, jaccard double, similar boolean",
    )
    similar = checked.where("similar").select(F.col("u").alias("id"), F.col("v").alias("old"))
    return pairs.join(similar, ["id", "old"], "left_semi")
