"""Curation: raw text files -> `annotated` (Spark: every document with its signals and dedup
groups) -> `curated` (no Spark: clean, deduplicated documents with quality signals, plus
quarantine and rejected side sets). "Score once, decide many times" (Dolma, DataTrove).

Modules, in the order the data flows:

- `ingest`: read JSONL/JSONL.gz/JSONL.zst/Parquet, local or S3, quarantine bad records;
- `filters/`: one module per filter (config, signals, decision);
- `minhash`, `dedup`, `dedup_groups`: exact and MinHash-LSH fuzzy dedup groups;
- `batches`: the per-batch functions Spark's executors run; `texts`: the scan's texts files, out
  of the JVM, read back by (split, pos);
- `annotate`: the Spark steps of the curate stage (raw files -> annotated);
- `select`: the streaming selection of the select stage (annotated -> curated); `statistics`:
  the curated dataset's statistics and summary;
- `accounting`: every record read has one outcome, per input file;
- `prior`, `annotated_versions`: a refresh of annotated (new and changed files only, deduplicated
  against the corpus so far); `survivors`, `curated_versions`: a refresh of curated;
- `documents`: the one reader of curated documents, for every family downstream;
- `retract`: `climb retract`, documents out of every dataset;
- `track`: the MLflow records of both stages.

The stages themselves are `mixture.stages.curate` and `mixture.stages.select`.
"""
