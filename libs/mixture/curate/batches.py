"""The per-batch functions the `curate` stage runs inside Spark executors (`mapInArrow`).

Each is built by a factory that takes plain picklable settings and returns a function from an
iterator of Arrow record batches to an iterator of record batches, so the same code runs in
`local[*]` and on a cluster, and can be called on plain lists of batches in tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from mixture import storage
from mixture.config import FiltersConfig
from mixture.curate.filters import batch_signals, signal_functions, stored_signal_names
from mixture.curate.ingest import ReadOptions, Split, read_split

INGEST_COLUMNS = ["file", "line", "id", "text", "source", "reason", "raw"]
INGEST_SCHEMA = "file string, line bigint, id string, text string, source string, reason string, raw string"


def ingest_batches(opts: ReadOptions, batch_rows: int = 2000, batch_bytes: int = 32 << 20):
    """Batches of `split` (a Split as JSON) -> batches of records (INGEST_COLUMNS)."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        schema = pa.schema(
            [
                ("file", pa.string()),
                ("line", pa.int64()),
                ("id", pa.string()),
                ("text", pa.string()),
                ("source", pa.string()),
                ("reason", pa.string()),
                ("raw", pa.string()),
            ]
        )
        cols: dict[str, list] = {c: [] for c in INGEST_COLUMNS}
        size = 0
        for batch in batches:
            for split_json in batch.column("split").to_pylist():
                for rec in read_split(Split.from_json(split_json), opts):
                    for name, value in zip(INGEST_COLUMNS, rec):
                        cols[name].append(value)
                    size += len(rec.text or "") + len(rec.raw or "")
                    if len(cols["file"]) >= batch_rows or size >= batch_bytes:
                        yield pa.RecordBatch.from_pydict(cols, schema=schema)
                        cols = {c: [] for c in INGEST_COLUMNS}
                        size = 0
        if cols["file"]:
            yield pa.RecordBatch.from_pydict(cols, schema=schema)

    return run


def normalized_hash(text: str) -> str:
    """SHA-1 of the text lowercased with whitespace runs collapsed: the exact-dedup key."""
    return hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def signal_columns(filters: FiltersConfig, every: bool = False) -> list[tuple[str, str]]:
    """The columns `signal_batches` adds: n_words, the stored filters' signals (float64, so a
    stored value replays a rule exactly; `filters.signal_filters`) and the exact-dedup key."""
    signals = [(n, "double") for n in stored_signal_names(filters, every)]
    return [("n_words", "int"), *signals, ("text_hash", "string")]


def signal_schema(input_schema: str, filters: FiltersConfig, every: bool = False) -> str:
    return input_schema + ", " + ", ".join(f"{n} {t}" for n, t in signal_columns(filters, every))


def signal_batches(filters: dict[str, Any], every: bool = False):
    """Batches with `text` and `reason` -> the same batches plus n_words, the stored signals
    (those of the enabled filters; every registered filter's with `every`) and the exact-dedup
    hash. Rows already quarantined (`reason` set) get nulls. No decision is taken here: that is
    the `select` stage's (`mixture.curate.select`)."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        cfg = FiltersConfig.model_validate(filters)
        functions = signal_functions(cfg, every)
        names = list(functions)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            texts = batch.column("text").to_pylist()
            valid = np.asarray(batch.column("reason").is_null(), dtype=bool) & np.asarray(
                batch.column("text").is_valid(), dtype=bool
            )
            n = len(texts)
            good = [texts[i] for i in np.flatnonzero(valid)]
            n_words = np.zeros(n, dtype=np.int32)
            sig = np.zeros((n, len(names)), dtype=np.float64)
            n_words[valid], sig[valid] = batch_signals(good, functions)  # the same values as TextStats
            hashes: list[str | None] = [None] * n
            for i, text in zip(np.flatnonzero(valid).tolist(), good):
                hashes[i] = normalized_hash(text)
            mask = ~valid
            arrays = list(batch.columns) + [pa.array(n_words, pa.int32(), mask=mask)]
            arrays += [pa.array(sig[:, j], pa.float64(), mask=mask) for j in range(len(names))]
            arrays += [pa.array(hashes, pa.string())]
            out_names = list(batch.schema.names) + ["n_words"] + names + ["text_hash"]
            yield pa.RecordBatch.from_arrays(arrays, names=out_names)

    return run


KEYS_COLUMN = ("keys", "array<bigint>")


def key_batches(ngram: int, num_perm: int, bands: int, rows: int, seed: int):
    """Batches with `text` and `reason` -> the same batches plus `keys`, the MinHash LSH band
    keys of every good record (`minhash.py`); empty for a record without words or quarantined."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa
        import pyarrow.compute as pc

        from mixture.curate import minhash

        hasher = minhash.MinHasher(num_perm, seed)
        for batch in batches:
            good = pa.array(np.asarray(batch.column("reason").is_null(), dtype=bool))
            texts = pc.if_else(good, batch.column("text"), pa.scalar(None, pa.string()))
            hashes, offsets = minhash.shingle_batch(texts, ngram)
            keys = minhash.band_keys(hasher.signatures_flat(hashes, offsets), bands, rows)
            has = np.diff(offsets) > 0
            key_off = np.zeros(batch.num_rows + 1, dtype=np.int32)
            np.cumsum(np.where(has, bands, 0), out=key_off[1:])
            key_list = pa.ListArray.from_arrays(pa.array(key_off, pa.int32()), pa.array(keys[has].ravel(), pa.int64()))
            yield pa.RecordBatch.from_arrays(
                list(batch.columns) + [key_list], names=list(batch.schema.names) + [KEYS_COLUMN[0]]
            )

    return run


def scan_schema(filters: FiltersConfig, every: bool = False) -> str:
    return signal_schema(INGEST_SCHEMA, filters, every) + f", {KEYS_COLUMN[0]} {KEYS_COLUMN[1]}"


def scan_batches(opts: ReadOptions, filters: dict[str, Any], lsh: tuple[int, int, int, int, int], every: bool = False):
    """The one Python pass of `curate` over the input: batches of `split` (a Split as JSON) ->
    every record read (INGEST_COLUMNS) with its signals, exact-dedup hash and LSH band keys
    (`scan_schema`). `lsh` is (ngram, num_perm, bands, rows, seed)."""
    read, signals, keys = ingest_batches(opts), signal_batches(filters, every), key_batches(*lsh)

    def run(batches: Iterator) -> Iterator:
        return keys(signals(read(batches)))

    return run


def write_buckets(
    base_uri: str, prefix: str, fields: list[tuple[str, str]], sort_keys: list[str], row_group_size: int = 20_000
):
    """Batches with a `_bucket` column -> one Parquet file `<prefix>/part-<bucket>.parquet` per
    bucket, rows sorted by `sort_keys`, written through mixture.storage from the executor that holds
    the bucket (every bucket lives in exactly one partition: the caller partitions by it).
    Yields (bucket, rows) per file written."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        schema = arrow_schema(fields)
        parts: dict[int, list] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            buckets = batch.column("_bucket").to_numpy(zero_copy_only=False)
            for b in np.unique(buckets):
                parts.setdefault(int(b), []).append(batch.filter(pa.array(buckets == b)))
        for b, batches_of_b in sorted(parts.items()):
            table = pa.Table.from_batches(batches_of_b).select([n for n, _ in fields])
            rows = write_table(table, schema, sort_keys, part_uri(base_uri, prefix, b), row_group_size)
            yield pa.RecordBatch.from_pydict(
                {"bucket": [b], "rows": [rows]}, schema=pa.schema([("bucket", pa.int32()), ("rows", pa.int64())])
            )

    return run


_ARROW_TYPES = {"string": "string", "bigint": "int64", "int": "int32", "float": "float32", "double": "float64"}


def arrow_schema(fields: list[tuple[str, str]]):
    import pyarrow as pa

    def arrow_type(t: str):
        if t.startswith("array<") and t.endswith(">"):
            return pa.list_(arrow_type(t[len("array<") : -1]))
        return pa.type_for_alias(_ARROW_TYPES[t])

    return pa.schema([(n, arrow_type(t)) for n, t in fields])


def part_uri(base_uri: str, prefix: str, bucket: int) -> str:
    return storage.join(base_uri, prefix, f"part-{bucket:05d}.parquet")


def write_table(table, schema, sort_keys: list[str], uri: str, row_group_size: int = 20_000) -> int:
    """Write one part file deterministically: same rows -> same bytes, whatever the batches."""
    import pyarrow.parquet as pq

    # one chunk before the sort: sorting the chunks of Arrow IPC files as read (select's spill files)
    # took up to ~30x longer; the same rows, the same bytes
    table = table.cast(schema).combine_chunks().sort_by([(k, "ascending") for k in sort_keys])
    with storage.open_write(uri) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=row_group_size)
    return table.num_rows
