"""Curation: raw text files -> `annotated` (Spark: every document with its signals and dedup
groups) -> `curated` (no Spark: clean, deduplicated documents with quality signals, plus
quarantine and rejected side sets). "Score once, decide many times" (Dolma, DataTrove).

Modules in the order the data flows: `ingest` (read JSONL/JSONL.gz/JSONL.zst/Parquet, local or
S3, quarantine bad records), `filters` (one module per filter: config, signals, decision),
`minhash` and `dedup` (exact and MinHash-LSH fuzzy dedup groups), `batches` (per-batch executor
functions), `annotate` (the Spark steps of stage `curate`), `select` (the streaming selection of
stage `select`), `accounting` (every record read has one outcome) and `track` (MLflow records).
The stages themselves are `mixture.stages.curate` and `mixture.stages.select`.
"""
