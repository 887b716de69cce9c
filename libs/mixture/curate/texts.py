"""The documents' texts kept out of Spark's JVM during `curate` (`mixture.curate.annotate`).

The scan's Python pass writes the texts of each split to one Arrow IPC file in the stage's staging
folder (`<staging>/texts.tmp-<run>/split-<n>.arrow`, through mixture.storage: local or S3, where
every executor can read it), in record order; the DataFrames carry, cache and shuffle only small
columns, among them `split` (the split's number) and `pos` (the record's position in the split).
The steps that need a text read it back in Python by (split, pos): the near-duplicate candidates'
verification, the duplicate ids' quarantine records and the `docs/` write.

A file holds one string column, `text` (null for a quarantined record), in record batches of
exactly `BLOCK` rows (the last one shorter): the batch of a position is `pos // BLOCK`, so a
reader reads the batches it needs, not the whole file (read, not memory-mapped: a batch's buffer
is freed once its rows are taken, where a mapping's pages stay resident in each process that
read them). The folder's name holds `.tmp-`, which a commit never takes (`mixture.dataset`);
`annotate` deletes it when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from mixture import storage
from mixture.spark import map_batches

BLOCK = 256  # rows per record batch of a texts file
SPLIT, POS, TEXT = "split", "pos", "text"
OPEN_FILES = 16  # texts files a reader keeps open
# A `docs/` write of at most this many parts reads the texts in its writers, after the shuffle
# (each writer reads the blocks that hold one of its rows: at most this many reads of the texts
# in all); with more parts they are read once, split by split, before
# the shuffle, which then moves them (`write_texts_after_shuffle`).
AFTER_SHUFFLE_PARTS = 8


def folder(staging: str) -> str:
    """A new folder for one run's texts under the staging folder."""
    return storage.join(staging, f"texts.tmp-{uuid.uuid4().hex[:12]}")


def split_uri(texts_folder: str, split: int) -> str:
    return storage.join(texts_folder, f"split-{split:06d}.arrow")


def write_after_shuffle(parts: int) -> bool:
    """Whether a write of `parts` part files reads the texts in its writers (after the shuffle)."""
    return parts <= AFTER_SHUFFLE_PARTS


def _schema():
    import pyarrow as pa

    return pa.schema([(TEXT, pa.string())])


class SplitWriter:
    """The texts of one split, added in record order, to its file in batches of `BLOCK` rows.
    `close()` commits the file (`storage.open_write`: whole or not at all); `close(error)` drops it."""

    def __init__(self, uri: str):
        import pyarrow as pa

        self._stack = ExitStack()
        f = self._stack.enter_context(storage.open_write(uri))
        self._writer = self._stack.enter_context(pa.ipc.new_file(f, _schema()))
        self._held: list = []
        self._n = 0

    def add(self, texts) -> None:
        import pyarrow as pa

        self._held.append(texts)
        self._n += len(texts)
        if self._n >= BLOCK:
            rows = pa.concat_arrays(self._held)
            full = len(rows) - len(rows) % BLOCK
            for start in range(0, full, BLOCK):
                self._write(rows.slice(start, BLOCK))
            self._held, self._n = [rows.slice(full)], len(rows) - full

    def close(self, error: BaseException | None = None) -> None:
        import pyarrow as pa

        if error is None and self._n:
            self._write(pa.concat_arrays(self._held))
        if error is None:
            self._stack.close()
        else:
            self._stack.__exit__(type(error), error, error.__traceback__)

    def _write(self, rows) -> None:
        import pyarrow as pa

        self._writer.write_batch(pa.RecordBatch.from_arrays([rows], schema=_schema()))


def write_texts(batches: Iterator, texts_folder: str) -> Iterator:
    """Batches with `split`, `pos` and `text` (each batch of one split, a split's batches in a
    row, in record order) -> the same batches without `text`, which goes to the split's file."""
    writer: SplitWriter | None = None
    current = None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            split = batch.column(SPLIT)[0].as_py()
            if writer is None or split != current:
                done, writer = writer, None
                if done is not None:
                    done.close()
                writer, current = SplitWriter(split_uri(texts_folder, split)), split
            writer.add(batch.column(TEXT))
            yield batch.drop_columns([TEXT])
    except BaseException as err:
        if writer is not None:
            failed, writer = writer, None  # closed once: an error of this close is the one raised
            failed.close(err)
        raise
    finally:
        if writer is not None:
            writer.close()


class TextReader:
    """Texts by (split, pos) from a run's texts files; a few files kept open."""

    def __init__(self, texts_folder: str):
        self.folder = texts_folder
        self._open: dict[int, tuple] = {}

    def take(self, split, pos):
        """The texts of the records at (split[i], pos[i]), in that order (numpy arrays)."""
        import pyarrow as pa

        split, pos = np.asarray(split, dtype=np.int64), np.asarray(pos, dtype=np.int64)
        if len(split) == 0:
            return pa.array([], pa.string())
        order = np.lexsort((pos, split))
        s, p = split[order], pos[order]
        block = p // BLOCK
        starts = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (block[1:] != block[:-1])])
        ends = np.r_[starts[1:], len(s)].astype(np.int64)
        pieces = []
        for a, b in zip(starts.tolist(), ends.tolist()):
            batch = self._reader(int(s[a])).get_batch(int(block[a]))
            pieces.append(batch.column(0).take(pa.array(p[a:b] - block[a] * BLOCK)))
        texts = pa.concat_arrays(pieces)
        if np.array_equal(order, np.arange(len(order))):
            return texts
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        return texts.take(pa.array(inverse))

    def _reader(self, split: int):
        import pyarrow as pa

        if split not in self._open:
            if len(self._open) >= OPEN_FILES:
                self._open.pop(next(iter(self._open)))[0].close()
            uri = split_uri(self.folder, split)
            path = storage.local_path(uri)
            if path is not None:
                f = pa.OSFile(path, "rb")
            else:
                fs, key = storage.filesystem(uri)
                f = fs.open_input_file(key)
            self._open[split] = (f, pa.ipc.open_file(f))
        return self._open[split][1]

    def close(self) -> None:
        for f, _ in self._open.values():
            f.close()
        self._open = {}


def attach_batches(texts_folder: str):
    """A `mapInArrow` function: batches with `split` and `pos` -> the same plus `text`."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        reader = TextReader(texts_folder)
        try:
            for batch in batches:
                split = batch.column(SPLIT).to_numpy(zero_copy_only=False)
                texts = reader.take(split, batch.column(POS).to_numpy(zero_copy_only=False))
                yield pa.RecordBatch.from_arrays([*batch.columns, texts], names=[*batch.schema.names, TEXT])
        finally:
            reader.close()

    return run


def with_texts(df, texts_folder: str):
    """`df` (with `split` and `pos`) plus the records' `text`: the rows grouped by split (in
    `spark.sql.shuffle.partitions` partitions) and in record order in each partition, so each task
    reads the blocks of its splits once, in order."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([*df.schema.fields, StructField(TEXT, StringType())])
    partitions = int(df.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    grouped = df.repartition(partitions, SPLIT).sortWithinPartitions(SPLIT, POS)
    return map_batches(grouped, attach_batches(texts_folder), schema)
