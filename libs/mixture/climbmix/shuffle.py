"""The global shuffle of a ClimbMix build, external and bounded in memory: plan, scatter, gather.

A ClimbMix build (`mixture.climbmix` has the rules, `mixture.climbmix.build` the steps) writes
every selected document at a seeded random position. ClimbMix is 400B tokens: its text does not
fit in memory, so the shuffle goes through the build's staging folder in three steps, each a
pure function of the plan, so they can run in any order within a step, in parallel and again:

1. **plan** (one process): the selection and the global order as numpy arrays (the per-document
   arrays that must be whole: about 24 bytes a selected document at the peak, the same
   permutation `climbmix.global_order` draws; the document lengths it samples by are read one
   cluster at a time). The held-out validation split (`mixture.climbmix.holdout`) is routed
   the same way, behind the training documents: its positions start at the first bucket after
   theirs (`mixture.climbmix.build.route`), in an order of its own seed, so its buckets and shards are its own. The
   parts (below) are the runs of row groups that hold a routed document. It writes per part a
   *route*: the part's routed documents' indices, ascending,
   and their output positions (`routes/pNNNNN.doc.npy`, `.pos.npy`), then `plan.json` last (the
   layout: shards, buckets, parts, per-cluster counts, the mixture, seed and a digest of the
   selection). A staging folder that holds another plan (or a plan not finished writing) is
   dropped whole first, format files included: nothing of an older plan is ever committed.
2. **scatter**, per *part* (consecutive row groups of one cluster's `text.parquet`, at most
   `build.part_docs` documents, at least one row group): reads its route, its slice of the
   cluster's token offsets (one ranged read of `.idx`), streams the part in record batches of
   CHUNK_ROWS documents (a buffered stream: never a whole column chunk) with each batch's tokens
   (one ranged read of `.bin`), and routes each selected document, once per time it was
   selected (upsampling repeats), as a row (position, cluster, doc, id, text, tokens) to its
   bucket. Rows are held per bucket up to BUFFER_BYTES for the part, then the largest buckets'
   rows are written until half the cap is held, and the rest at the end: one Arrow IPC file per part
   (`rows/pNNNNN.arrow`), each batch one bucket's rows by position (one batch per bucket
   unless the part passes the cap). The sidecar `parts/pNNNNN.json` (written last: the part is
   done) lists each bucket's batches. One file per part, not per (bucket, part): at ClimbMix
   scale that would be millions of files; batches of an IPC file are read one by one, so a
   bucket reads only its own.
3. **gather**, per *bucket* (a contiguous range of output shards, `build.bucket_docs`
   documents rounded down to whole shards, at least one shard): reads its batches from every
   part, checks they are exactly the bucket's positions, and per shard takes its rows from them
   in position order (a copy of one shard at a time), with their tokens (the token shards are
   never opened: on S3 that would read a cluster's tokens whole), and writes the bucket's
   shards through the output formats (`mixture.climbmix.formats`; a validation bucket's into
   `validation/`); `buckets/bNNNNN.json` (written last: the bucket is done) records its split,
   documents and tokens.

Memory: the plan's arrays (driver only); per scatter process one record batch and at most
BUFFER_BYTES of routed rows; per gather process one bucket's rows, text and tokens (memory-mapped
from a local staging folder, read from S3) and one shard's copy. Everything lives under
`.tmp-shuffle/` in the staging folder (`.tmp-`: never in a manifest). Once the build is finished
(`mixture.climbmix.build.record` records its output in `finished.json`), `clear` deletes the
bulky routes and rows; the small records stay, so every step is a no-op if it runs again (a
retried commit), and the commit deletes them. The output depends only on the plan, so the
committed files are the same for any number of workers, parts or buckets.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.climblab import ClimbLab, text_file
from mixture.climblab.tokens import read_offsets
from mixture.climbmix import BuildError, shard_slices
from mixture.climbmix.formats import VALIDATION, Shard, Subfolder
from mixture.parallel import ShardRange, shard_ranges

log = logging.getLogger(__name__)

SCRATCH = ".tmp-shuffle"  # under the staging folder; `.tmp-` keeps it out of every manifest
PLAN = f"{SCRATCH}/plan.json"
FINISHED = f"{SCRATCH}/finished.json"  # what the build's finish returns, for a retried commit
CHUNK_ROWS = 1 << 12  # documents of text.parquet read at once by the scatter, and rows routed at once
READ_BUFFER = 1 << 22  # bytes of a column chunk the scatter reads at once
ROW_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("cluster", pa.int32()),
        ("doc", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("tokens", pa.large_binary()),  # the document's token ids, little-endian, EOS last
    ]
)
BUFFER_BYTES = 256 << 20  # routed rows a scatter holds before it writes the largest buckets' batches


# ------------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class Part:
    """Row groups `first_group ..` (`groups` of them) of cluster `cluster` (its position in
    ClimbLab order): its documents `first_row ..` (`rows` of them)."""

    index: int
    cluster: int
    first_group: int
    groups: int
    first_row: int
    rows: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


Bucket = ShardRange  # output shards `first_shard ..`: positions `first_doc ..`; one gather job


def plan_buckets(n_docs: int, shard_docs: int, bucket_docs: int) -> list[Bucket]:
    """Contiguous ranges of whole shards of at most `bucket_docs` documents (at least one shard)."""
    return shard_ranges(n_docs, shard_docs, max(1, bucket_docs // shard_docs))


def group_rows(lab: ClimbLab, name: str, documents: int) -> list[int]:
    """Rows per row group of a cluster's text.parquet (its footer), checked against the
    `documents` of its token shard."""
    with storage.open_read(lab.dataset.path(text_file(name))) as f:
        meta = pq.ParquetFile(f).metadata
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    if sum(rows) != documents:
        raise BuildError(f"cluster {name}: text.parquet has {sum(rows)} rows, its token shard {documents} documents")
    return rows


def group_runs(rows: list[int], part_docs: int) -> Iterator[tuple[int, int, int, int]]:
    """(first group, groups, first row, rows) of consecutive row groups of at most `part_docs`
    rows (a larger row group is a run of its own)."""
    first_group = first_row = n_rows = groups = 0
    for g, n in enumerate(rows):
        if groups and n_rows + n > part_docs:
            yield first_group, groups, first_row, n_rows
            first_group, first_row, n_rows, groups = g, first_row + n_rows, 0, 0
        n_rows, groups = n_rows + n, groups + 1
    if groups:
        yield first_group, groups, first_row, n_rows


def plan_parts(lab: ClimbLab, selected: dict[str, np.ndarray], part_docs: int, documents: dict[str, int]) -> list[Part]:
    """The row groups of the clusters (`documents`: each one's count), in runs of at most
    `part_docs` documents, that hold a selected document: a part never reads text for nothing."""
    parts: list[Part] = []
    for ci, name in enumerate(lab.clusters):
        if not len(selected[name]):
            continue
        chosen = np.sort(selected[name])
        for first_group, groups, first_row, rows in group_runs(group_rows(lab, name, documents[name]), part_docs):
            a, b = np.searchsorted(chosen, [first_row, first_row + rows])
            if b > a:
                parts.append(Part(len(parts), ci, first_group, groups, first_row, rows))
    return parts


# -------------------------------------------------------------------------------- the plan
def positions(selected: dict[str, np.ndarray], clusters: list[str], seed: int | list[int]) -> np.ndarray:
    """The output position of every selected document, in cluster order then selection order:
    the inverse of `climbmix.global_order`'s permutation (so the order is the same)."""
    n = sum(len(selected[c]) for c in clusters)
    order = np.random.default_rng(seed).permutation(n)
    inverse = np.empty(n, dtype=np.int64)
    step = 1 << 24
    for a in range(0, n, step):  # no n-long arange besides the two arrays
        inverse[order[a : a + step]] = np.arange(a, min(a + step, n), dtype=np.int64)
    return inverse


def selection_digest(selected: dict[str, np.ndarray], clusters: list[str]) -> str:
    """sha256 of the selected documents, cluster by cluster: part of the plan a staging folder is
    compared by."""
    h = hashlib.sha256()
    for name in clusters:
        h.update(f"{name}:{len(selected[name])}:".encode())
        h.update(np.ascontiguousarray(selected[name], dtype="<i8").data)
    return h.hexdigest()


def route_names(index: int) -> tuple[str, str]:
    """A part's route: its selected documents ascending (repeats adjacent) and their positions."""
    return f"{SCRATCH}/routes/p{index:05d}.doc.npy", f"{SCRATCH}/routes/p{index:05d}.pos.npy"


def save_npy(uri: str, array: np.ndarray) -> None:
    with storage.open_write(uri) as f:
        np.save(f, array, allow_pickle=False)


def write_routes(writer, selected: dict[str, np.ndarray], layout: dict[str, Any], where: np.ndarray) -> None:
    """Per part (`layout["part_list"]`): its selected documents ascending and their positions."""
    start = 0
    for ci, name in enumerate(layout["clusters"]):
        sel = selected[name]
        order = np.argsort(sel, kind="stable")
        docs, pos = sel[order].astype(np.int64), where[start : start + len(sel)][order]
        for part in (p for p in layout["part_list"] if p["cluster"] == ci):
            a, b = np.searchsorted(docs, [part["first_row"], part["first_row"] + part["rows"]])
            doc_rel, pos_rel = route_names(part["index"])
            save_npy(writer.path(doc_rel), docs[a:b])
            save_npy(writer.path(pos_rel), pos[a:b])
        start += len(sel)


def prepare(writer, layout: dict[str, Any], routed: dict[str, np.ndarray], where: np.ndarray) -> bool:
    """Stage the plan (routes of the `routed` documents at positions `where`, as `route` gives
    them; then `plan.json`) unless the same plan is staged already. Any
    other staging (another plan: mixture, selection or layout; or none) is dropped whole first,
    shards and format pieces included, so nothing of an older plan is ever committed. True when
    written."""
    uri = writer.path(PLAN)
    if storage.exists(uri) and storage.read_json(uri) == layout:
        return False
    if storage.exists(uri):
        log.info("build: the staging folder holds another plan; starting the build again")
    writer.reset()
    write_routes(writer, routed, layout, where)
    storage.write_json(writer.path(PLAN), layout)
    return True


def read_plan(writer) -> dict[str, Any]:
    uri = writer.path(PLAN)
    if not storage.exists(uri):
        raise BuildError("the build's shuffle is not planned: run its plan step first")
    return storage.read_json(uri)


# ----------------------------------------------------------------------------- the scatter
def part_names(index: int) -> tuple[str, str]:
    """(the part's routed rows, its sidecar): the rows are bulky scratch, the sidecar is kept."""
    return f"{SCRATCH}/rows/p{index:05d}.arrow", f"{SCRATCH}/parts/p{index:05d}.json"


def part_route(writer, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """(document, position) of the part's selected documents, by document (repeats adjacent)."""
    doc_rel, pos_rel = route_names(part.index)
    return np.asarray(storage.load_npy(writer.path(doc_rel))), np.asarray(storage.load_npy(writer.path(pos_rel)))


def token_values(bin_file, offsets: np.ndarray, local: np.ndarray, itemsize: int) -> pa.Array:
    """The token bytes of documents `local` (ascending indices into `offsets`, repeats allowed),
    from one ranged read of the `.bin` span they cover."""
    first, last = int(local[0]), int(local[-1])
    span = (offsets[first : last + 2] - offsets[first]) * itemsize
    data = bin_file.read_at(int(span[-1]), int(offsets[first]) * itemsize)
    if len(data) != int(span[-1]):
        raise BuildError(f"a token shard ends before the tokens of its document {last}")
    whole = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), last - first + 1, [None, pa.py_buffer(span.astype(np.int64)), pa.py_buffer(data)]
    )
    return whole.take(pa.array(local - first))


def iter_routed(lab: ClimbLab, name: str, part: Part, docs: np.ndarray, where: np.ndarray) -> Iterator[pa.Table]:
    """The part's routed rows (a document selected k times gives k rows), at most CHUNK_ROWS at
    a time, with their tokens; its row groups are read in record batches of CHUNK_ROWS documents
    through a buffered stream (never a whole column chunk at once), the part's offsets in one
    ranged read of the cluster's `.idx` and each batch's tokens in one of its `.bin`."""
    prefix = lab.shard(name).prefix
    with (
        storage.open_read(lab.dataset.path(text_file(name))) as f,
        storage.open_read(prefix + ".idx") as fidx,
        storage.open_read(prefix + ".bin") as fbin,
    ):
        offsets = read_offsets(fidx, part.first_row, part.first_row + part.rows)
        pf = pq.ParquetFile(f, buffer_size=READ_BUFFER)
        groups = list(range(part.first_group, part.first_group + part.groups))
        row = part.first_row
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS, row_groups=groups, columns=["id", "text"]):
            a, b = np.searchsorted(docs, [row, row + batch.num_rows])
            for lo in range(int(a), int(b), CHUNK_ROWS):
                hi = min(lo + CHUNK_ROWS, int(b))
                take = pa.array(docs[lo:hi] - row)
                yield pa.table(
                    [
                        pa.array(where[lo:hi]),
                        pa.array(np.full(hi - lo, part.cluster, dtype=np.int32)),
                        pa.array(docs[lo:hi]),
                        batch.column("id").take(take).cast(pa.string()),
                        batch.column("text").take(take).cast(pa.string()),
                        token_values(fbin, offsets, docs[lo:hi] - part.first_row, lab.dtype.itemsize),
                    ],
                    schema=ROW_SCHEMA,
                )
            row += batch.num_rows


class BucketBuffers:
    """Routed rows of one part held per bucket, up to BUFFER_BYTES in all; past it the largest
    buckets' rows are written, each as one batch by position, until half the cap is left
    (`flush` writes the rest). Each
    bucket's rows are copied out of the chunk, so what is held is what is counted."""

    def __init__(self, out, bucket_docs: int):
        self.out, self.bucket_docs = out, bucket_docs
        self.held: dict[int, list[pa.Table]] = {}
        self.size: dict[int, int] = {}
        self.total = 0
        self.batches: dict[str, list[int]] = {}
        self.count = 0

    def add(self, chunk: pa.Table) -> None:
        bucket = chunk.column("position").to_numpy() // self.bucket_docs
        order = np.argsort(bucket, kind="stable")
        cuts = np.flatnonzero(np.diff(bucket[order])) + 1
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist()):
            piece, b = chunk.take(pa.array(order[lo:hi])), int(bucket[order[lo]])
            self.held.setdefault(b, []).append(piece)
            self.size[b] = self.size.get(b, 0) + piece.nbytes
            self.total += piece.nbytes
        if self.total > BUFFER_BYTES:  # down to half the cap: batches of a useful size
            while self.total > BUFFER_BYTES // 2:
                self.write(max(self.size, key=lambda k: self.size[k]))

    def write(self, b: int) -> None:
        table = pa.concat_tables(self.held.pop(b)).combine_chunks()  # take on chunked columns is slow
        self.total -= self.size.pop(b)
        table = table.take(pa.array(np.argsort(table.column("position").to_numpy(), kind="stable")))
        self.out.write_batch(table.to_batches()[0])
        self.batches.setdefault(str(b), []).append(self.count)
        self.count += 1

    def flush(self) -> None:
        for b in sorted(self.held):
            self.write(b)


def scatter_part(lab: ClimbLab, writer, part: Part) -> int:
    """Route the part's selected documents into its IPC file: per bucket one batch by position
    (more when the part's routed rows pass BUFFER_BYTES); the sidecar index is written last.
    Idempotent: a scattered part is kept. Rows routed."""
    arrow_rel, index_rel = part_names(part.index)
    if writer.has(index_rel):
        return int(storage.read_json(writer.path(index_rel))["rows"])
    plan = read_plan(writer)
    name = plan["clusters"][part.cluster]
    docs, where = part_route(writer, part)
    rows = 0
    batches: dict[str, list[int]] = {}
    if len(docs):  # no selected document: no text read
        with storage.open_write(writer.path(arrow_rel)) as f, pa.ipc.new_file(f, ROW_SCHEMA) as out:
            held = BucketBuffers(out, plan["bucket_docs"])
            for chunk in iter_routed(lab, name, part, docs, where):
                held.add(chunk)
                rows += chunk.num_rows
            held.flush()
            batches = held.batches
    if rows != len(docs):
        raise BuildError(f"part {part.index}: {rows} rows routed, its route has {len(docs)} documents")
    storage.write_json(writer.path(index_rel), {"rows": rows, "batches": batches})
    return rows


# ------------------------------------------------------------------------------ the gather
def bucket_name(index: int) -> str:
    return f"{SCRATCH}/buckets/b{index:05d}.json"


def read_batches(uri: str, wanted: list[int]) -> list[pa.RecordBatch]:
    """Batches of an IPC file: memory-mapped locally (the bucket's text stays in the page cache,
    not in the process's own memory), read one by one from S3."""
    local = storage.local_path(uri)
    if local is not None:
        reader = pa.ipc.open_file(pa.memory_map(local))
        return [reader.get_batch(i) for i in wanted]
    with storage.open_read(uri) as f:
        reader = pa.ipc.open_file(f)
        return [reader.get_batch(i) for i in wanted]


def bucket_rows(writer, plan: dict[str, Any], bucket: Bucket) -> list[pa.RecordBatch]:
    """The bucket's routed rows from every part: batches, each by position; together they must
    be exactly the bucket's positions."""
    batches: list[pa.RecordBatch] = []
    for p in range(plan["parts"]):
        arrow_rel, index_rel = part_names(p)
        if not writer.has(index_rel):
            raise BuildError(f"build: part {p} is not scattered yet: run it before gathering bucket {bucket.index}")
        wanted = storage.read_json(writer.path(index_rel))["batches"].get(str(bucket.index), [])
        if wanted:
            batches += read_batches(writer.path(arrow_rel), wanted)
    where = np.sort(np.concatenate([b.column("position").to_numpy() for b in batches] or [np.zeros(0, np.int64)]))
    if not np.array_equal(where, np.arange(bucket.first_doc, bucket.first_doc + bucket.docs)):
        raise BuildError(
            f"build: bucket {bucket.index} gathered {len(where)} documents, not exactly its positions "
            f"{bucket.first_doc}..{bucket.first_doc + bucket.docs - 1}: the scattered parts are incomplete"
        )
    return batches


def shard_rows(batches: list[pa.RecordBatch], lo: int, hi: int) -> pa.Table:
    """The rows of positions lo .. hi - 1, by position (a copy of these rows only)."""
    pieces = []
    for b in batches:
        a, z = np.searchsorted(b.column("position").to_numpy(), [lo, hi])
        if z > a:
            pieces.append(b.slice(int(a), int(z - a)))
    table = pa.Table.from_batches(pieces, schema=ROW_SCHEMA).combine_chunks()
    return table.take(pa.array(np.argsort(table.column("position").to_numpy())))


def row_tokens(rows: pa.Table, dtype: np.dtype) -> list[np.ndarray]:
    """Each row's tokens (its `tokens` bytes) as arrays of `dtype`: views, no copy."""
    col = rows.column("tokens").combine_chunks()
    if len(col) == 0:
        return []
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int64)[col.offset : col.offset + len(col) + 1]
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)
    itemsize = np.dtype(dtype).itemsize
    flat = data[offsets[0] : offsets[-1]].view(np.dtype(dtype).newbyteorder("<"))
    starts = ((offsets - offsets[0]) // itemsize).tolist()
    return [flat[a:z] for a, z in zip(starts[:-1], starts[1:])]


def is_validation(plan: dict[str, Any], bucket: Bucket) -> bool:
    """Whether the bucket holds shards of the held-out validation split."""
    return plan["validation"]["documents"] > 0 and bucket.first_doc >= plan["validation"]["start"]


def make_shard(rows: pa.Table, index: int, names: np.ndarray, dtype: np.dtype) -> Shard:
    """Output shard `index` of these rows (position order): text, cluster, id and the tokens."""
    clusters = rows.column("cluster").to_numpy()
    table = pa.table(
        {
            "text": rows.column("text"),
            "cluster": pa.array(names[clusters].tolist(), type=pa.string()),
            "id": rows.column("id"),
        }
    )
    return Shard(index, table, row_tokens(rows, dtype), dtype)


def gather_bucket(lab: ClimbLab, writer, bucket: Bucket, formats: list, cfg) -> dict[str, Any]:
    """Write the bucket's shards in every format (`formats`: the format classes; `cfg` the build
    section); its record is written last. Idempotent: a gathered bucket is kept."""
    done = bucket_name(bucket.index)
    if writer.has(done):
        return storage.read_json(writer.path(done))
    plan = read_plan(writer)
    batches = bucket_rows(writer, plan, bucket)
    names = np.array(plan["clusters"])
    writers = [cls() for cls in formats]
    validation = is_validation(plan, bucket)
    into = Subfolder(writer, VALIDATION) if validation else writer
    record: dict[str, Any] = {"split": "validation" if validation else "train", "documents": 0, "tokens": 0}
    record.update(shards=0, clusters={})
    counts = np.zeros(len(names), dtype=np.int64)
    for s, span in shard_slices(bucket.docs, plan["shard_docs"]):
        rows = shard_rows(batches, bucket.first_doc + span.start, bucket.first_doc + span.stop)
        counts += np.bincount(rows.column("cluster").to_numpy(), minlength=len(names))
        shard = make_shard(rows, bucket.first_shard + s, names, lab.dtype)
        for fmt in writers:
            fmt.write_shard(into, shard, cfg)
        record["shards"] += 1
        record["documents"] += shard.table.num_rows
        record["tokens"] += sum(len(d) for d in shard.tokens)
    record["clusters"] = {str(names[i]): int(n) for i, n in enumerate(counts) if n}
    storage.write_json(writer.path(done), record)
    return record


def gathered(writer, buckets: list[Bucket]) -> dict[str, Any]:
    """The records of every bucket summed; a bucket not gathered yet is an error naming it."""
    total: dict[str, Any] = {"documents": 0, "tokens": 0, "shards": 0, "clusters": {}}
    for b in buckets:
        if not writer.has(bucket_name(b.index)):
            raise BuildError(f"build: bucket {b.index} (shards {b.first_shard}..) is not written yet: run it first")
        record = storage.read_json(writer.path(bucket_name(b.index)))
        for key in ("documents", "tokens", "shards"):
            total[key] += record[key]
        for c, n in record["clusters"].items():
            total["clusters"][c] = total["clusters"].get(c, 0) + n
    return total


def clear(writer) -> None:
    """Delete the shuffle's bulky scratch (routes and routed rows) once the build is finished;
    the small records (plan, sidecars, buckets, the finished record) stay until the commit, so
    every step stays a no-op if it runs again (a retried commit)."""
    storage.delete(writer.path(f"{SCRATCH}/routes"))
    storage.delete(writer.path(f"{SCRATCH}/rows"))
