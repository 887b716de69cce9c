"""The one reader of curated documents: the `docs/` Parquet files of a committed curated dataset.

Every stage that needs the curated corpus (embed, cluster, shards, the cluster report, the
quality scorers) reads it here, as a stream of Arrow record batches of the columns it asks for,
so that no reader holds the corpus unless its caller collects it. The curated format (one row per
kept document: `id`, `text`, `source`, `n_words`, `q_*` signals...; docs/DATASETS.md) is owned by
the curation stage; this module only reads it, in file and row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.dataset import Dataset, DatasetError

DOCS = "docs/"
BATCH_ROWS = 8192
# Columns wanted: a fixed list, or a function of the file's column names (for optional columns).
Columns = Sequence[str] | Callable[[list[str]], list[str]]


def doc_files(curated: Dataset) -> list[str]:
    """URIs of the curated dataset's document files; DatasetError when it lists none."""
    files = curated.files(DOCS)
    if not files:
        raise DatasetError(f"{curated.uri}: the curated dataset lists no {DOCS} files")
    return files


def count(curated: Dataset) -> int:
    """Documents in the curated dataset, from the Parquet footers (no data read)."""
    total = 0
    for uri in doc_files(curated):
        with storage.open_read(uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def iter_batches(curated: Dataset, columns: Columns, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of the chosen columns, file by file, in row order."""
    for uri in doc_files(curated):
        with storage.open_read(uri) as f:
            pf = pq.ParquetFile(f)
            cols = list(columns(pf.schema_arrow.names) if callable(columns) else columns)
            yield from pf.iter_batches(batch_size=batch_rows, columns=cols)


def read_table(curated: Dataset, columns: Columns) -> pa.Table:
    """The chosen columns of every document as one table (files whose optional columns differ
    are merged, missing values null). For columns that fit in memory: not the texts at scale."""
    tables = [pa.Table.from_batches([b]) for b in iter_batches(curated, columns)]
    if not tables:
        cols = [] if callable(columns) else list(columns)
        return pa.table({c: pa.array([], pa.string()) for c in cols})
    return pa.concat_tables(tables, promote_options="default")


def iter_texts(curated: Dataset, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) per record batch, in file and row order."""
    for batch in iter_batches(curated, ["id", "text"], batch_rows):
        yield batch.column("id").to_pylist(), batch.column("text").to_pylist()


def texts_by_id(curated: Dataset, wanted: Iterable[str]) -> dict[str, str]:
    """id -> text of the `wanted` documents, streamed: only those texts are kept."""
    wanted = set(wanted)
    out: dict[str, str] = {}
    for ids, texts in iter_texts(curated):
        out.update((i, t) for i, t in zip(ids, texts) if i in wanted)
    return out


def column_names(curated: Dataset) -> list[str]:
    """Every column name of the document files (their union, first-seen order), from the footers."""
    names: dict[str, None] = {}
    for uri in doc_files(curated):
        with storage.open_read(uri) as f:
            names.update(dict.fromkeys(pq.ParquetFile(f).schema_arrow.names))
    return list(names)


def iter_blocks(curated: Dataset, columns: Columns, rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` documents (the last shorter) across file boundaries, in file and
    row order; files whose optional columns differ are merged, missing values null."""
    held: list[pa.Table] = []
    n = 0
    for batch in iter_batches(curated, columns, min(rows, BATCH_ROWS)):
        held.append(pa.Table.from_batches([batch]))
        n += batch.num_rows
        while n >= rows:
            table = pa.concat_tables(held, promote_options="default")
            yield table.slice(0, rows).combine_chunks()
            held, n = [table.slice(rows)], n - rows
    if n:
        yield pa.concat_tables(held, promote_options="default").combine_chunks()


def iter_file_rows(
    uris: list[str], columns: Sequence[str], start: int, stop: int, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Record batches of rows `start` to `stop` of Parquet files read one after the other (file
    and row order); files and row groups before `start` are skipped by their footers."""
    offset = 0
    for uri in uris:
        if offset >= stop:
            return
        with storage.open_read(uri) as f:
            pf = pq.ParquetFile(f)
            meta = pf.metadata
            spans, pos = [], offset  # (row group, its first row) of the groups overlapping the range
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if pos + n > start and pos < stop:
                    spans.append((g, pos))
                pos += n
            if spans:
                at = spans[0][1]
                groups = [g for g, _ in spans]
                for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns), row_groups=groups):
                    lo, hi = max(start - at, 0), min(stop - at, batch.num_rows)
                    at += batch.num_rows
                    if hi > lo:
                        yield batch.slice(lo, hi - lo)
                    if at >= stop:
                        break
            offset += meta.num_rows


def id_hashes(ids: pa.Array | pa.ChunkedArray, chunk: int = 1 << 16) -> np.ndarray:
    """64-bit blake2b hashes of ids as strings (8 bytes a document), `chunk` ids at a time."""
    out = np.empty(len(ids), dtype=np.uint64)
    for start in range(0, len(ids), chunk):
        part = ids.slice(start, chunk).to_pylist()
        out[start : start + len(part)] = np.fromiter(
            (int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in part),
            dtype=np.uint64,
            count=len(part),
        )
    return out
