"""The per-batch functions the `curate` stage runs inside Spark executors (`mapInArrow`).

Each is built by a factory that takes plain picklable settings and returns a function from an
iterator of Arrow record batches to an iterator of record batches, so the same code runs in
`local[*]` and on a cluster, and can be called on plain lists of batches in tests.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from mixture import storage
from mixture.config import FiltersConfig
from mixture.curate import texts
from mixture.curate.filters import batch_signals, signal_functions, stored_signal_names
from mixture.curate.ingest import ReadOptions, Split, count_newlines, read_split

INGEST_COLUMNS = ["file", "line", "id", "text", "source", "reason", "raw"]
# the scan's columns, in the batches' order: the records without their text (`mixture.curate.texts`), with its place
SCAN_SCHEMA = "file string, line bigint, id string, source string, reason string, raw string, split int, pos bigint"


def newline_batches(batches: Iterator) -> Iterator:
    """Batches of (`i`, `split`: a byte-range Split as JSON) -> (`i`, `n`: the newlines in its
    range), the pass that numbers the next range's lines (`ingest.resolve_line_numbers`)."""
    import pyarrow as pa

    for batch in batches:
        counts = [count_newlines(Split.from_json(s)) for s in batch.column("split").to_pylist()]
        yield pa.RecordBatch.from_arrays([batch.column("i"), pa.array(counts, pa.int64())], names=["i", "n"])


def ingest_batches(opts: ReadOptions, batch_rows: int = 2000, batch_bytes: int = 32 << 20):
    """Batches of (`n`, `split`: a Split as JSON) -> batches of records (INGEST_COLUMNS) plus
    `split` (= n) and `pos` (the record's position in the split); a batch holds one split's."""

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
                ("split", pa.int32()),
                ("pos", pa.int64()),
            ]
        )
        names = [*INGEST_COLUMNS, "split", "pos"]
        cols: dict[str, list] = {c: [] for c in names}
        size = 0
        for batch in batches:
            for n, split_json in zip(batch.column("n").to_pylist(), batch.column("split").to_pylist()):
                for pos, rec in enumerate(read_split(Split.from_json(split_json), opts)):
                    for name, value in zip(names, (*rec, n, pos)):
                        cols[name].append(value)
                    size += len(rec.text or "") + len(rec.raw or "")
                    if len(cols["file"]) >= batch_rows or size >= batch_bytes:
                        yield pa.RecordBatch.from_pydict(cols, schema=schema)
                        cols = {c: [] for c in names}
                        size = 0
                if cols["file"]:  # the split's last records: a batch never holds two splits'
                    yield pa.RecordBatch.from_pydict(cols, schema=schema)
                    cols = {c: [] for c in names}
                    size = 0

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
            docs = batch.column("text").to_pylist()
            valid = np.asarray(batch.column("reason").is_null(), dtype=bool) & np.asarray(
                batch.column("text").is_valid(), dtype=bool
            )
            n = len(docs)
            good = [docs[i] for i in np.flatnonzero(valid)]
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
RUN_ROWS = 20_000  # rows of one part held in memory before they are sorted and spilled as a run
RUN_BYTES = 64 << 20  # ... or bytes
MERGE_ROWS = 2048  # rows of all the runs held at a time while merging (RUN_CHUNK per run at least)
RUN_CHUNK = 256  # rows of a run file's record batches
# A row group is handed to the Parquet writer as chunks of this many rows from its start (the last
# one shorter), not as one copy of the whole group: the writer encodes a column 1,024 rows at a
# time from each chunk's start, so chunks of a multiple of 1,024 give the same pages, the same bytes
GROUP_CHUNK = 4096


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
            good_texts = pc.if_else(good, batch.column("text"), pa.scalar(None, pa.string()))
            hashes, offsets = minhash.shingle_batch(good_texts, ngram, distinct=False)
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
    return signal_schema(SCAN_SCHEMA, filters, every) + f", {KEYS_COLUMN[0]} {KEYS_COLUMN[1]}"


def scan_batches(
    opts: ReadOptions,
    filters: dict[str, Any],
    lsh: tuple[int, int, int, int, int],
    texts_folder: str,
    every: bool = False,
):
    """The one Python pass of `curate` over the input: batches of (`n`, `split`: a Split as
    JSON) -> every record read with its signals, exact-dedup hash and LSH band keys
    (`scan_schema`); the texts go to the split's file under `texts_folder`, not into the
    batches (`mixture.curate.texts`). `lsh` is (ngram, num_perm, bands, rows, seed)."""
    read, signals, keys = ingest_batches(opts), signal_batches(filters, every), key_batches(*lsh)

    def run(batches: Iterator) -> Iterator:
        return texts.write_texts(keys(signals(read(batches))), texts_folder)

    return run


def write_buckets(
    base_uri: str,
    prefix: str,
    fields: list[tuple[str, str]],
    sort_keys: list[str],
    row_group_size: int = 20_000,
    run_rows: int = RUN_ROWS,
    run_bytes: int = RUN_BYTES,
    texts_folder: str | None = None,
):
    """Batches with a `_bucket` column -> one Parquet file `<prefix>/part-<bucket>.parquet` per
    bucket, rows sorted by `sort_keys`, written through mixture.storage from the executor that holds
    the bucket (every bucket lives in exactly one partition: the caller partitions by it). The
    rows wait in sorted runs (`SortedPart`): memory is one run and one row group, not the part.
    With `texts_folder` the batches have `split` and `pos` instead of `text`, which is read from
    the run's texts files (`mixture.curate.texts`; fewest reads when the rows come in (split, pos)
    order). Yields (bucket, rows) per file written."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        schema = arrow_schema(fields)
        reader = texts.TextReader(texts_folder) if texts_folder else None
        with tempfile.TemporaryDirectory(prefix="climb-runs-") as spill:
            parts: dict[int, SortedPart] = {}
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                if reader is not None:
                    split = batch.column(texts.SPLIT).to_numpy(zero_copy_only=False)
                    text = reader.take(split, batch.column(texts.POS).to_numpy(zero_copy_only=False))
                    batch = batch.append_column(texts.TEXT, text)
                buckets = batch.column("_bucket").to_numpy(zero_copy_only=False)
                values = np.unique(buckets).tolist()
                for b in values:
                    if b not in parts:
                        parts[b] = SortedPart(schema, sort_keys, spill, run_rows, run_bytes)
                    parts[b].add(batch if len(values) == 1 else batch.filter(pa.array(buckets == b)))
                spill_largest(list(parts.values()), run_rows, run_bytes)
            for b, part in sorted(parts.items()):
                rows = part.write(part_uri(base_uri, prefix, b), row_group_size)
                yield pa.RecordBatch.from_pydict(
                    {"bucket": [b], "rows": [rows]}, schema=pa.schema([("bucket", pa.int32()), ("rows", pa.int64())])
                )
        if reader is not None:
            reader.close()

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
    """Write one part file deterministically: same rows -> same bytes, whatever the batches. The
    rows are held once, taken in sorted order a chunk at a time (`write_groups`), not copied whole."""
    import pyarrow.parquet as pq

    # one chunk before the sort: sorting the chunks of Arrow IPC files as read (select's spill files)
    # took up to ~30x longer; the same rows, the same bytes
    table = table.cast(schema).combine_chunks()
    order = _sort_indices(table, sort_keys)
    with storage.open_write(uri) as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
        return write_groups(w, schema, _taken(table, order, GROUP_CHUNK), row_group_size)


# -------------------------------------------------------------- external sort of one part
class SortedPart:
    """The rows of one part file, added in their input order, held until `run_rows` rows or
    `run_bytes` bytes and then sorted and spilled as a run (a local Arrow file under `spill_dir`);
    `write` merges the runs (`merge_runs`) into row groups: memory is one run and one row group,
    not the part, and the file has the bytes `write_table` gives the same rows in the same order."""

    def __init__(
        self, schema, sort_keys: list[str], spill_dir: str, run_rows: int = RUN_ROWS, run_bytes: int = RUN_BYTES
    ):
        self.schema, self.sort_keys, self.spill_dir = schema, sort_keys, spill_dir
        self.run_rows, self.run_bytes = run_rows, run_bytes
        self.pending: list = []
        self.pending_rows = self.pending_bytes = 0
        self.runs: list[str] = []

    def add(self, rows) -> None:
        """Rows (a record batch or table with the schema's columns, perhaps more) after those added."""
        import pyarrow as pa

        if rows.num_rows == 0:
            return
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        rows = rows.select(self.schema.names).cast(self.schema)
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        self.pending_bytes += rows.nbytes
        if self.pending_rows >= self.run_rows or self.pending_bytes >= self.run_bytes:
            self.spill()

    def spill(self) -> None:
        """The rows held, sorted, to a new run file."""
        import pyarrow as pa

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        table = table.combine_chunks()  # the held batches freed: the rows are held once
        fd, path = tempfile.mkstemp(suffix=".arrow", dir=self.spill_dir)
        os.close(fd)
        with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, self.schema) as w:
            for rows in _taken(table, _sort_indices(table, self.sort_keys), GROUP_CHUNK):
                w.write_table(rows, max_chunksize=RUN_CHUNK)
        self.runs.append(path)

    def write(self, uri: str, row_group_size: int = 20_000) -> int:
        """Write the part (`write_table`'s bytes); returns its rows. The run files are deleted."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.runs:  # it fits in one run: sorted in memory
            table = pa.concat_tables([self.schema.empty_table(), *self.pending]).combine_chunks()
            self.pending = []  # the held batches freed: the rows are held once
            return write_table(table, self.schema, self.sort_keys, uri, row_group_size)
        self.spill()
        try:
            with storage.open_write(uri) as f, pq.ParquetWriter(f, self.schema, compression="zstd") as w:
                block = max(RUN_CHUNK, MERGE_ROWS // len(self.runs))
                merged = merge_runs([_read_run(p, block) for p in self.runs], self.sort_keys)
                return write_groups(w, self.schema, merged, row_group_size)
        finally:
            for path in self.runs:
                os.remove(path)
            self.runs = []


def spill_largest(parts: list[SortedPart], run_rows: int, run_bytes: int) -> None:
    """Spill the largest held rows of `parts` until all they hold fits in one run."""
    while parts and (
        sum(p.pending_rows for p in parts) >= run_rows or sum(p.pending_bytes for p in parts) >= run_bytes
    ):
        max(parts, key=lambda p: p.pending_bytes).spill()


def _sort_indices(table, sort_keys: list[str]):
    """Arrow's stable sort (`Table.sort_by`'s order): rows with equal keys keep their input order."""
    import pyarrow.compute as pc

    return pc.sort_indices(table, sort_keys=[(k, "ascending") for k in sort_keys])


def _taken(table, order, rows: int) -> Iterator:
    """`table.take(order)` in tables of `rows` rows: one piece at a time beside the table."""
    for start in range(0, len(order), rows):
        yield table.take(order.slice(start, rows))


def _read_run(path: str, rows: int) -> Iterator:
    """A run file in tables of about `rows` rows, read one at a time (not memory-mapped: what is
    read is freed once merged)."""
    import pyarrow as pa

    with pa.OSFile(path, "rb") as f:
        reader = pa.ipc.open_file(f)
        held: list = []
        for i in range(reader.num_record_batches):
            held.append(reader.get_batch(i))
            if sum(b.num_rows for b in held) >= rows:
                yield pa.Table.from_batches(held)
                held = []
        if any(b.num_rows for b in held):
            yield pa.Table.from_batches(held)


_RUN, _POS = "__merge_run", "__merge_pos"


def merge_runs(runs: list[Iterator], sort_keys: list[str]) -> Iterator:
    """k-way merge of sorted runs (iterators of sorted tables, the runs in input order) into
    sorted tables: the order `_sort_indices` gives the runs concatenated. The rows held, tagged with
    (run, position), are sorted by (keys, run, position); every row up to the first that is the
    last one held of a run not yet exhausted precedes every row not yet read, so it is emitted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    last = np.full(len(runs), -1, dtype=np.int64)  # position of the last row read per live run
    read = np.zeros(len(runs), dtype=np.int64)
    held = None
    todo = list(range(len(runs)))
    while True:
        pieces = [] if held is None else [held]
        for r in todo:
            block = next(runs[r], None)
            if block is None:
                last[r] = -1
                continue
            pos = np.arange(read[r], read[r] + block.num_rows, dtype=np.int64)
            read[r] += block.num_rows
            last[r] = read[r] - 1
            pieces.append(
                block.append_column(_RUN, pa.array(np.full(block.num_rows, r, dtype=np.int64))).append_column(
                    _POS, pa.array(pos)
                )
            )
        if not pieces:
            return
        table = pa.concat_tables(pieces)
        order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in [*sort_keys, _RUN, _POS]])
        run = table.column(_RUN).take(order).to_numpy()
        at_last = table.column(_POS).take(order).to_numpy() == last[run]
        cut = int(np.argmax(at_last)) + 1 if at_last.any() else table.num_rows
        if cut:  # taken, not sliced: what is emitted holds none of the rows kept back, nor they it
            yield table.take(order.slice(0, cut)).drop_columns([_RUN, _POS])
        todo = [int(run[cut - 1])] if at_last.any() else []
        held = table.take(order.slice(cut))
        if not todo and held.num_rows == 0:
            return


def write_groups(writer, schema, tables: Iterator, row_group_size: int) -> int:
    """Sorted tables -> row groups of `row_group_size` rows (the last one shorter) through a
    ParquetWriter, the bytes `pq.write_table` gives the rows as one table; returns the rows
    written. A group is held as chunks of `GROUP_CHUNK` rows from its start (`_group_chunks`)."""
    import pyarrow as pa

    group: list = []
    n = rows = 0
    for chunk in _group_chunks(tables, row_group_size):
        group.append(chunk)
        n += chunk.num_rows
        if n == row_group_size:
            writer.write_table(pa.concat_tables(group), row_group_size=row_group_size)
            group, n, rows = [], 0, rows + row_group_size
    if n or not rows:
        writer.write_table(pa.concat_tables([schema.empty_table(), *group]), row_group_size=row_group_size)
    return rows + n


def _group_chunks(tables: Iterator, row_group_size: int) -> Iterator:
    """Tables -> the same rows as one-chunk tables of `GROUP_CHUNK` rows, restarting at every
    `row_group_size` rows (a group's last chunk shorter) and the last one shorter."""
    import pyarrow as pa

    held: list = []
    n = in_group = 0
    for t in tables:
        held.append(t)
        n += t.num_rows
        while n >= min(GROUP_CHUNK, row_group_size - in_group):
            size = min(GROUP_CHUNK, row_group_size - in_group)
            all_held = pa.concat_tables(held)
            yield all_held.slice(0, size).combine_chunks()
            rest = all_held.slice(size)
            held, n, in_group = [rest], rest.num_rows, (in_group + size) % row_group_size
    if n:
        yield pa.concat_tables(held).combine_chunks()
