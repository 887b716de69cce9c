"""The embeddings dataset's files: one vector per curated document, in resumable shards.

Format (docs/DATASETS.md, "embeddings"): `emb-XXXXX.npy` (float32 [n, dim]) and
`ids-XXXXX.parquet` (column `id`) per shard of `embed.shard_docs` documents, in the curated
order; an incremental version adds `emb-vNNNN-XXXXX.npy` / `ids-vNNNN-XXXXX.parquet` (the
documents curated since, `mixture.increments`), read after the base shards (sorted names).
`mixture.cluster.embed` writes them (the `embed` stage); the clustering reads them back here.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.dataset import Dataset, DatasetError


def shard_names(i: int, tag: str | None = None) -> tuple[str, str]:
    """(vectors, ids) file names of shard i; with the `tag` of an incremental version
    (`v0003`): `emb-v0003-00000.npy`, which sorts after every base shard and after the shards of
    earlier versions, so emb/ids pairs keep the curated order when read in sorted order."""
    name = f"{tag}-{i:05d}" if tag else f"{i:05d}"
    return f"emb-{name}.npy", f"ids-{name}.parquet"


def write_shard(writer, index: int, ids: list[str], emb: np.ndarray, tag: str | None = None) -> None:
    """Shard `index` into the writer's staging folder: the vectors first, the ids last, so a
    shard counts as done only when both exist (each file is written atomically)."""
    emb_rel, ids_rel = shard_names(index, tag)
    with storage.open_write(writer.path(emb_rel)) as f:
        np.save(f, emb.astype(np.float32, copy=False), allow_pickle=False)
    with storage.open_write(writer.path(ids_rel)) as f:
        pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), f)


def read_ids(uri: str) -> list[str]:
    with storage.open_read(uri) as f:
        return pq.read_table(f, columns=["id"]).column("id").to_pylist()


def npy_shape(uri: str) -> tuple[int, ...]:
    """The shape in a .npy file's header, without reading the array."""
    with storage.open_read(uri) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(f)[0]


def load_embeddings(ds: Dataset) -> tuple[list[str], np.ndarray]:
    """Every document id and its vector (float32 [n, dim]), in shard order."""
    emb_files, id_files = ds.files("emb-"), ds.files("ids-")
    if not emb_files or len(emb_files) != len(id_files):
        raise DatasetError(
            f"{ds.uri}: expected pairs of emb-*.npy and ids-*.parquet, found {len(emb_files)} and {len(id_files)}"
        )
    ids: list[str] = []
    parts = []
    for e_uri, i_uri in zip(emb_files, id_files):
        with storage.open_read(e_uri) as f:
            arr = np.load(f, allow_pickle=False)
        shard_ids = read_ids(i_uri)
        if len(shard_ids) != len(arr):
            raise DatasetError(f"{e_uri}: {len(arr)} vectors but {len(shard_ids)} ids")
        ids += shard_ids
        parts.append(arr.astype(np.float32, copy=False))
    return ids, np.vstack(parts)


# ------------------------------------------------------------------- streaming readers (bounded)
def shard_files(ds: Dataset) -> list[tuple[str, str, int]]:
    """(vectors uri, ids uri, rows) of every shard in order, rows from the .npy headers."""
    emb_files, id_files = ds.files("emb-"), ds.files("ids-")
    if not emb_files or len(emb_files) != len(id_files):
        raise DatasetError(
            f"{ds.uri}: expected pairs of emb-*.npy and ids-*.parquet, found {len(emb_files)} and {len(id_files)}"
        )
    return [(e, i, int(npy_shape(e)[0])) for e, i in zip(emb_files, id_files)]


def dimension(ds: Dataset) -> int:
    """The vectors' dimension, from the first shard's header."""
    return int(npy_shape(shard_files(ds)[0][0])[1])


def iter_shards(ds: Dataset) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """(ids as an Arrow string array, float32 vectors) per shard, in shard order: one shard at a
    time (memory-mapped when local)."""
    for e_uri, i_uri, _ in shard_files(ds):
        arr = storage.load_npy(e_uri)
        with storage.open_read(i_uri) as f:
            ids = pq.read_table(f, columns=["id"]).column("id").combine_chunks().cast(pa.string())
        if len(ids) != len(arr):
            raise DatasetError(f"{e_uri}: {len(arr)} vectors but {len(ids)} ids")
        yield ids, arr


def iter_blocks(ds: Dataset, rows: int) -> Iterator[tuple[int, pa.Array, np.ndarray]]:
    """(first row, ids, float32 vectors) in blocks of `rows` documents across shard boundaries
    (the last block shorter): the same blocks whatever the shard size. The vectors are one buffer
    reused for every block: copy what must outlive the next block."""
    buf: np.ndarray | None = None
    ids: list[pa.Array] = []
    filled = start = 0
    for s_ids, s_vecs in iter_shards(ds):
        if buf is None:
            buf = np.empty((rows, s_vecs.shape[1]), dtype=np.float32)
        pos = 0
        while pos < len(s_vecs):
            take = min(rows - filled, len(s_vecs) - pos)
            buf[filled : filled + take] = s_vecs[pos : pos + take]
            ids.append(s_ids.slice(pos, take))
            filled, pos = filled + take, pos + take
            if filled == rows:
                yield start, pa.concat_arrays(ids), buf
                start, filled, ids = start + rows, 0, []
    if filled and buf is not None:
        yield start, pa.concat_arrays(ids), buf[:filled]


def read_rows(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """The vectors of the given row numbers (sorted ascending), read shard by shard."""
    rows = np.asarray(rows, dtype=np.int64)
    files = shard_files(ds)
    out = np.empty((len(rows), int(npy_shape(files[0][0])[1])), dtype=np.float32)
    start = 0
    for e_uri, _, n in files:
        lo, hi = np.searchsorted(rows, [start, start + n])
        if hi > lo:
            out[lo:hi] = storage.load_npy(e_uri)[rows[lo:hi] - start]
        start += n
    return out


# ------------------------------------------------------------------- incremental versions
def pairs(ds: Dataset) -> list[tuple[str, str]]:
    """(vectors, ids) relative paths of every shard in the manifest, in order."""
    emb = [f["path"] for f in ds.manifest.files if f["path"].startswith("emb-")]
    ids = [f["path"] for f in ds.manifest.files if f["path"].startswith("ids-")]
    if len(emb) != len(ids):
        raise DatasetError(f"{ds.uri}: {len(emb)} emb-*.npy files but {len(ids)} ids-*.parquet files")
    return list(zip(emb, ids))


def count_in(ds: Dataset, ids_rel: str, drop: pa.Array) -> tuple[int, int]:
    """(rows, rows whose id is in `drop`) of one shard's ids file (its footer alone when `drop`
    is empty)."""
    import pyarrow.compute as pc

    with storage.open_read(ds.path(ids_rel)) as f:
        if not len(drop):
            return pq.ParquetFile(f).metadata.num_rows, 0
        ids = pq.read_table(f, columns=["id"]).column("id").cast(pa.string())
    return len(ids), int(pc.sum(pc.is_in(ids, value_set=drop)).as_py() or 0)


def rewrite_without(ds: Dataset, writer, emb_rel: str, ids_rel: str, drop: pa.Array) -> int:
    """Stage shard (emb_rel, ids_rel) of `ds` without the rows whose id is in `drop`, under the
    same names (vectors first, ids last); returns the rows left."""
    import pyarrow.compute as pc

    with storage.open_read(ds.path(ids_rel)) as f:
        ids = pq.read_table(f, columns=["id"]).column("id").combine_chunks().cast(pa.string())
    keep = pc.invert(pc.is_in(ids, value_set=drop)).to_numpy(zero_copy_only=False)
    arr = storage.load_npy(ds.path(emb_rel))
    if len(arr) != len(ids):
        raise DatasetError(f"{ds.path(emb_rel)}: {len(arr)} vectors but {len(ids)} ids")
    with storage.open_write(writer.path(emb_rel)) as f:
        np.save(f, np.ascontiguousarray(arr[keep], dtype=np.float32), allow_pickle=False)
    with storage.open_write(writer.path(ids_rel)) as f:
        pq.write_table(pa.table({"id": ids.filter(pa.array(keep))}), f)
    return int(keep.sum())
