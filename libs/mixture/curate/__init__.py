"""Curation: raw text files -> the `curated` dataset (clean, deduplicated documents with quality
signals, plus quarantine and rejected side sets), on Spark.

Modules in the order the data flows: `ingest` (read JSONL/JSONL.gz/JSONL.zst/Parquet, local or
S3, quarantine bad records), `filters` (Gopher quality and repetition, C4, FineWeb heuristics and
q_* signals), `minhash` and `dedup` (exact and MinHash-LSH fuzzy deduplication), `accounting`
(every record read has one outcome), `steps` (per-batch executor functions) and `stage` (the
pipeline stage `mixture.curate.stage:run`).
"""
