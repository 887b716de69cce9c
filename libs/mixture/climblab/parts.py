"""The ClimbLab token shards built in parts: documents tokenized in ranges, merged per cluster.

The `shards` stage's work (`mixture.stages.shards`) as pieces that can run in any order, in
parallel and again, like the embed stage's ranges:

1. `plan`: the curated documents cut into parts of `shards.part_docs` consecutive documents
   (pure, from the document count).
2. `tokenize_part`: one part's documents, read with their assignments (the cluster stage writes
   them in the curated order), tokenized record batch by record batch; each batch's documents of
   final cluster c, sorted by id, become one run (an Arrow record batch: id, text, tokens) of the
   part's file `_parts/r<first>-<stop>/c<c>.arrow` in the staging folder, and `done.json` is
   written last. A part whose `done.json` is staged is kept: a killed run resumes.
3. `merge_cluster`: cluster c's runs of every part merged by id (an external merge sort: the runs
   are memory-mapped; at most `MERGE_IDS` ids are held as strings, shared out over the runs) into
   `cNN/tokens.bin` + `.idx` and `cNN/text.parquet` (row groups of 8,192 documents);
   `_parts/merged/cNN.json` is written last, so a merged cluster is kept on a rerun.
4. `finish`: every cluster merged, its counts staged as `clusters.json` (part of the dataset), then
   `_parts/` removed from the staging folder (the runs are not part of the dataset); a retry after a
   failed commit finds `clusters.json` and needs nothing else.

5. Incremental (`Carried`): a merge takes the previous version's cluster, less the removed ids,
   as its first run (`stage_previous`: text row groups with their tokens read from the shard, no
   re-tokenization), so the result is the same bytes as a full build with the same tokenizer.

The merge is stable (equal ids keep the earlier part and batch first), so the files are those of a
stable sort of each cluster by id: the same bytes whatever `part_docs`, the record batch size or
the number of workers. `run_local` runs the parts and then the merges in `workers` spawned
processes (the tokenizer loaded once per process); under Airflow each part and each merge is a
mapped task (`dags/climb_corpus_refresh.py`). What a process holds: a record batch, up to
`MERGE_IDS` ids of the runs of the cluster it merges, each cluster's offsets (8 bytes a document).
"""

from __future__ import annotations

import heapq
import random
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import storage
from mixture.climblab import TOKENIZER, cluster_name, shard_prefix, text_file
from mixture.climblab.tokens import TokenShard, TokenShardWriter, encode, eos_id, load_tokenizer, train_tokenizer
from mixture.cluster.groups import assignment_files
from mixture.curate import documents
from mixture.dataset import Dataset
from mixture.increments import version_of
from mixture.parallel import fan_out

PARTS = "_parts"  # staging only: removed before the commit
MERGED = f"{PARTS}/merged"
COUNTS = "clusters.json"  # {cNN: {documents, tokens}}, part of the dataset, written by `finish`
INCREMENT = ".tmp-increment.json"  # an incremental version's added/removed counts: scratch, not committed
ROW_GROUP = 1 << 13  # rows per text.parquet row group: what a merge holds as Python objects
RUN_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("tokens", pa.list_(pa.uint32()))])
TEXT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
MERGE_IDS = 1 << 18  # ids (Python strings) held at once by a merge, over all its runs together


class ShardsError(RuntimeError):
    """The shards cannot be built from these inputs or this staging folder; one line says why."""


@dataclass(frozen=True)
class Part:
    """Documents `first_doc ..` (`docs` of them) of the curated dataset, in file and row order."""

    index: int
    first_doc: int
    docs: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def folder(self) -> str:
        return f"{PARTS}/r{self.first_doc:012d}-{self.first_doc + self.docs:012d}"

    def describe(self) -> str:
        return f"part {self.index} (documents {self.first_doc}-{self.first_doc + self.docs - 1})"


def plan(n_docs: int, part_docs: int) -> list[Part]:
    """Parts of `part_docs` consecutive documents covering `n_docs` documents."""
    return [Part(i, first, min(part_docs, n_docs - first)) for i, first in enumerate(range(0, n_docs, part_docs))]


@dataclass(frozen=True)
class Inputs:
    """What every piece reads (picklable): curated document files and the assignments files
    whose rows name the same documents in the same order (file after file)."""

    docs: tuple[str, ...]  # URIs of curated `docs/` files
    assignments: tuple[str, ...]  # URIs of the clusters dataset's `assignments*.parquet` files
    batch_rows: int = documents.BATCH_ROWS


def by_version(ds: Dataset, prefix: str, since: int = -1) -> list[str]:
    """URIs of the dataset's Parquet files under `prefix` (a folder or a name's start) that
    versions after `since` added: the base version's files first (no `vNNNN-` tag), then each
    version's, in order (`assignments-v0002.parquet` sorts before `assignments.parquet` by name)."""
    rels = [f["path"] for f in ds.manifest.files if f["path"].startswith(prefix) and f["path"].endswith(".parquet")]
    picked = [r for r in rels if (version_of(r) or 0) > since]
    return [ds.path(r) for r in sorted(picked, key=lambda r: (version_of(r) or 0, r))]


def inputs(curated: Dataset, clusters: Dataset, batch_rows: int = documents.BATCH_ROWS) -> Inputs:
    """Every curated document and every assignment (a full build)."""
    return Inputs(tuple(documents.doc_files(curated)), tuple(assignment_files(clusters)), batch_rows)


def count(inp: Inputs) -> int:
    """Documents in the input's curated files, from the Parquet footers."""
    total = 0
    for uri in inp.docs:
        with storage.open_read(uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _file_batches(uris: tuple[str, ...], columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    for uri in uris:
        with storage.open_read(uri) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


# --------------------------------------------------------------------------------- reading
def _assignment_batches(inp: Inputs, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from _file_batches(inp.assignments, columns, inp.batch_rows)


def missing_error(inp: Inputs) -> ShardsError:
    """The curated documents without an assignment (ids hashed and sorted: 8 bytes a document,
    at most 3 examples kept), or the assignments being in another order than the curated ones."""
    have = np.sort(
        np.concatenate(
            [documents.id_hashes(b.column(0)) for b in _assignment_batches(inp, ["id"])] + [np.zeros(0, np.uint64)]
        )
    )
    examples: list[str] = []
    n_missing = 0
    for batch in _file_batches(inp.docs, ["id"], inp.batch_rows):
        h = documents.id_hashes(batch.column(0))
        at = np.minimum(np.searchsorted(have, h), max(len(have) - 1, 0))
        lost = np.flatnonzero(have[at] != h) if len(have) else np.arange(len(h))
        n_missing += len(lost)
        examples += batch.column(0).take(pa.array(lost[: 3 - len(examples)])).to_pylist()
    if n_missing:
        return ShardsError(f"{n_missing} curated documents have no cluster assignment (e.g. {examples})")
    where = storage.parent(inp.assignments[0]) if inp.assignments else "the clusters dataset"
    return ShardsError(f"{where}: the assignments are not in the curated documents' order: rerun `cluster`")


@dataclass
class Scan:
    """The assignments' cluster column: documents, documents in kept clusters, the final clusters."""

    documents: int
    kept: int
    clusters: list[int]


def scan(inp: Inputs) -> Scan:
    """One pass over the assignments' cluster column, checked against the curated document count."""
    n = kept = 0
    clusters: set[int] = set()
    for b in _assignment_batches(inp, ["cluster"]):
        c = b.column(0).to_numpy(zero_copy_only=False)
        n, kept = n + len(c), kept + int((c >= 0).sum())
        clusters.update(np.unique(c[c >= 0]).tolist())
    if n != count(inp):
        raise missing_error(inp)
    return Scan(n, kept, sorted(clusters))


def part_batches(inp: Inputs, part: Part) -> Iterator[tuple[pa.Array, pa.Array, np.ndarray]]:
    """(ids, texts, final cluster) per record batch of the part's documents, the assignments of
    the same rows read alongside and checked to name the same ids."""
    start, stop = part.first_doc, part.first_doc + part.docs
    assigned = documents.iter_file_rows(list(inp.assignments), ["id", "cluster"], start, stop, inp.batch_rows)
    held: list[pa.RecordBatch] = []
    n = 0
    for batch in documents.iter_file_rows(list(inp.docs), ["id", "text"], start, stop, inp.batch_rows):
        if batch.num_rows == 0:
            continue
        while sum(b.num_rows for b in held) < batch.num_rows:
            nxt = next(assigned, None)
            if nxt is None:
                raise missing_error(inp)
            held.append(nxt)
        table = pa.Table.from_batches(held).combine_chunks()
        rows, held = table.slice(0, batch.num_rows), table.slice(batch.num_rows).to_batches()
        ids = batch.column("id").cast(pa.string())
        if not rows.column("id").combine_chunks().cast(pa.string()).equals(ids):
            raise missing_error(inp)
        n += batch.num_rows
        yield ids, batch.column("text").cast(pa.string()), rows.column("cluster").to_numpy().astype(np.int64)
    if n != part.docs:
        raise ShardsError(f"{part.describe()}: {n} documents read, {part.docs} planned: the curated dataset changed")


# ------------------------------------------------------------------------------- tokenizer
def tokenizer_sample(inp: Inputs, scanned: Scan, k: int, seed: int) -> list[str]:
    """A seeded sample of `k` kept documents' texts: the same documents, in the same order, as
    `random.Random(seed).sample` of the list of kept texts gives; only the sample is held."""
    picks = random.Random(seed).sample(range(scanned.kept), min(k, scanned.kept))
    slot = {pos: i for i, pos in enumerate(picks)}
    wanted = np.array(sorted(picks), dtype=np.int64)
    sample = [""] * len(picks)
    seen = 0
    for _, texts, cluster in part_batches(inp, Part(0, 0, scanned.documents)):
        rows = np.flatnonzero(cluster >= 0)
        pos = seen + np.arange(len(rows))
        hit = np.isin(pos, wanted)
        for p, text in zip(pos[hit].tolist(), texts.take(pa.array(rows[hit])).to_pylist()):
            sample[slot[p]] = text
        seen += len(rows)
    return sample


def stage_tokenizer(writer, inp: Inputs, scanned: Scan, configured: str | None, vocab: int, k: int, seed: int):
    """The tokenizer staged by an earlier attempt, else the configured one or a BPE trained on a
    seeded sample; staged at `tokenizer/tokenizer.json` so every part uses the same one."""
    if writer.has(TOKENIZER):
        return load_tokenizer(writer.path(TOKENIZER))
    tok = load_tokenizer(configured) if configured else train_tokenizer(tokenizer_sample(inp, scanned, k, seed), vocab)
    storage.write_text(writer.path(TOKENIZER), tok.to_str())
    return tok


def staged_tokenizer(writer):
    if not writer.has(TOKENIZER):
        raise ShardsError(f"{writer.staging}: no staged tokenizer: plan the shards first")
    return load_tokenizer(writer.path(TOKENIZER))


def claim_staging(writer, how: dict[str, Any]) -> None:
    """Record how the staged pieces are being built (`_parts/how.json`: full, or incremental
    since which input versions); a staging folder holding pieces built another way (the same
    inputs, `refresh.incremental` toggled) is emptied first: its parts would cover other documents."""
    rel = f"{PARTS}/how.json"
    if writer.has(rel) and storage.read_json(writer.path(rel)) != how:
        writer.reset()
    if not writer.has(rel):
        storage.write_json(writer.path(rel), how)


# --------------------------------------------------------------------------------- a part
def cluster_runs(
    ids: pa.Array, texts: pa.Array, cluster: np.ndarray, tok, eos: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(cluster, run) per kept cluster of one record batch: its documents sorted by id, tokenized."""
    id_list = ids.to_pylist()
    for c in np.unique(cluster[cluster >= 0]).tolist():
        rows = sorted(np.flatnonzero(cluster == c).tolist(), key=lambda r: id_list[r])
        take = pa.array(rows, pa.int64())
        c_texts = texts.take(take)
        toks = encode(tok, c_texts.to_pylist(), eos)
        offsets = np.zeros(len(toks) + 1, dtype=np.int32)
        np.cumsum([len(t) for t in toks], out=offsets[1:])
        flat = pa.array((np.concatenate(toks) if toks else np.zeros(0)).astype(np.uint32))
        cols = [ids.take(take), c_texts, pa.ListArray.from_arrays(pa.array(offsets), flat)]
        yield c, pa.RecordBatch.from_arrays(cols, schema=RUN_SCHEMA)


def part_record(writer, part: Part) -> dict[str, Any] | None:
    """The staged `done.json` of this part (same documents), or None."""
    rel = f"{part.folder}/done.json"
    if not writer.has(rel):
        return None
    rec = storage.read_json(writer.path(rel))
    return rec if (rec["first_doc"], rec["docs"]) == (part.first_doc, part.docs) else None


def tokenize_part(inp: Inputs, writer, part: Part, tok) -> dict[str, Any]:
    """Stage the part's runs unless they are staged already (idempotent); its record:
    documents, pruned documents, runs per cluster, and whether it was computed now."""
    if (rec := part_record(writer, part)) is not None:
        return {**rec, "computed": False}
    eos = eos_id(tok)
    runs: dict[int, int] = {}
    pruned = 0
    with ExitStack() as stack:
        files: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        for ids, texts, cluster in part_batches(inp, part):
            pruned += int((cluster < 0).sum())
            for c, run in cluster_runs(ids, texts, cluster, tok, eos):
                if c not in files:
                    sink = stack.enter_context(storage.open_write(writer.path(f"{part.folder}/c{c}.arrow")))
                    files[c] = stack.enter_context(pa.ipc.new_file(sink, RUN_SCHEMA))
                files[c].write_batch(run)
                runs[c] = runs.get(c, 0) + 1
    rec = {
        "first_doc": part.first_doc,
        "docs": part.docs,
        "pruned": pruned,
        "runs": {str(c): runs[c] for c in sorted(runs)},
    }
    storage.write_json(writer.path(f"{part.folder}/done.json"), rec)
    return {**rec, "computed": True}


# ------------------------------------------------------------------------------ a cluster
def _open_runs(stack: ExitStack, uri: str) -> list[pa.RecordBatch]:
    """The runs of one staged part file, as views of the memory-mapped file (a remote file is
    copied to local disk first)."""
    path = storage.local_path(uri)
    if path is None:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="climb-shards-"))
        path = str(Path(folder) / "runs.arrow")
        with storage.open_read(uri) as src, open(path, "wb") as dst:
            while chunk := src.read(storage.HASH_BLOCK):
                dst.write(chunk)
    reader = pa.ipc.open_file(stack.enter_context(pa.memory_map(path)))
    return [reader.get_batch(r) for r in range(reader.num_record_batches)]


def merged_rows(runs: list[pa.RecordBatch]) -> Iterator[tuple[int, int]]:
    """(run, row) of a cluster's documents in id order (runs are each sorted by id; equal ids
    keep the earlier run first, as a stable sort of the whole cluster does)."""

    at_once = max(16, MERGE_IDS // max(1, len(runs)))  # a cluster of many parts: fewer ids a run

    def rows(r: int) -> Iterator[tuple[str, int, int]]:
        ids = runs[r].column("id")
        for start in range(0, len(ids), at_once):
            for i, v in enumerate(ids.slice(start, at_once).to_pylist(), start):
                yield v, r, i

    for _, r, i in heapq.merge(*(rows(r) for r in range(len(runs)))):
        yield r, i


def _write_chunk(runs: list[pa.RecordBatch], chunk: list[tuple[int, int]], shard, texts) -> None:
    """Append one row group's documents (in merged order) to the token shard and the text file."""
    ids, docs, toks = [], [], []
    for r, i in chunk:
        b = runs[r]
        ids.append(b.column("id")[i].as_py())
        docs.append(b.column("text")[i].as_py())
        toks.append(b.column("tokens")[i].values.to_numpy())
    shard.append(toks)
    texts.write_table(
        pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(docs, pa.string())}, schema=TEXT_SCHEMA)
    )


def write_cluster(writer, name: str, runs: list[pa.RecordBatch], dtype: np.dtype) -> dict[str, int]:
    """One cluster's token shard and texts from its runs, merged by id, in row groups."""
    with (
        TokenShardWriter(writer.path(shard_prefix(name)), dtype) as shard,
        storage.open_write(writer.path(text_file(name))) as f,
        pq.ParquetWriter(f, TEXT_SCHEMA) as texts,
    ):
        chunk: list[tuple[int, int]] = []
        for pair in merged_rows(runs):
            chunk.append(pair)
            if len(chunk) == ROW_GROUP:
                _write_chunk(runs, chunk, shard, texts)
                chunk = []
        if chunk:
            _write_chunk(runs, chunk, shard, texts)
        n_docs, n_tok = shard.close()
    return {"documents": n_docs, "tokens": n_tok}


@dataclass(frozen=True)
class Carried:
    """What an incremental merge extends (picklable): the previous version of the climblab
    dataset, whose cluster files are already sorted by id and tokenized, less the ids `drop`."""

    previous: Dataset
    drop: pa.Array  # ids removed since (withdrawn, retracted, or changed and added again)


def _previous_rows(carried: Carried, name: str, dtype: np.dtype) -> Iterator[tuple[pa.RecordBatch, int]]:
    """The previous version's cluster `name` as runs (one per row group of its text file, in id
    order, its tokens read from the shard by ranged reads: local or S3, a row group at a time),
    less the dropped ids; with the count each batch dropped."""
    ds = carried.previous
    if not any(f["path"] == text_file(name) for f in ds.manifest.files):
        return
    offsets, at = TokenShard(ds.path(shard_prefix(name)), dtype).offsets, 0
    with (
        storage.open_read(ds.path(text_file(name))) as f,
        storage.open_read(ds.path(shard_prefix(name) + ".bin")) as bin_file,
    ):
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            t = pf.read_row_group(g, columns=["id", "text"])
            lo, hi = int(offsets[at]), int(offsets[at + t.num_rows])
            raw = bin_file.read_at((hi - lo) * dtype.itemsize, lo * dtype.itemsize)  # type: ignore[attr-defined]
            flat = pa.array(np.frombuffer(raw, dtype=dtype).astype(np.uint32))
            rel = pa.array((offsets[at : at + t.num_rows + 1] - lo).astype(np.int32))
            at += t.num_rows
            ids = t.column("id").combine_chunks().cast(pa.string())
            batch = pa.RecordBatch.from_arrays(
                [ids, t.column("text").combine_chunks(), pa.ListArray.from_arrays(rel, flat)], schema=RUN_SCHEMA
            )
            kept = batch.filter(pc.invert(pc.is_in(ids, value_set=carried.drop)))
            yield kept, batch.num_rows - kept.num_rows


def clusters_holding(previous: Dataset, ids: pa.Array) -> list[int]:
    """The clusters of a committed climblab version that hold any of `ids` (their id columns read)."""
    found = []
    for name in sorted((previous.manifest.extra or {}).get("clusters", {})):
        with storage.open_read(previous.path(text_file(name))) as f:
            have = pq.read_table(f, columns=["id"]).column("id")
        if pc.any(pc.is_in(have, value_set=ids)).as_py():
            found.append(int(name[1:]))
    return found


def stage_previous(writer, carried: Carried, name: str, dtype: np.dtype) -> tuple[str | None, dict[str, int]]:
    """Stage the previous cluster `name` less the dropped ids as one run file (the earliest run
    of its merge); (its URI or None when it has no documents left, {documents, tokens, removed})."""
    uri = writer.path(f"{PARTS}/previous/{name}.arrow")
    rec = {"documents": 0, "tokens": 0, "removed": 0}
    with storage.open_write(uri) as sink, pa.ipc.new_file(sink, RUN_SCHEMA) as out:
        for batch, dropped in _previous_rows(carried, name, dtype):
            rec["removed"] += dropped
            if batch.num_rows:
                out.write_batch(batch)
                rec["documents"] += batch.num_rows
                rec["tokens"] += int(pc.sum(pc.list_value_length(batch.column("tokens"))).as_py() or 0)
    return (uri if rec["documents"] else None), rec


def merge_cluster(writer, parts: list[Part], c: int, dtype: np.dtype, carried: Carried | None = None) -> dict[str, Any]:
    """Stage cluster c's files from every part's runs unless merged already (idempotent); every
    part must be tokenized. With `carried`, the previous version's cluster (less the dropped ids)
    is the first run: the files are those a full build with the same tokenizer would write.
    {documents, tokens, computed} (+ added/removed documents and tokens with `carried`)."""
    name = cluster_name(c)
    marker = f"{MERGED}/{name}.json"
    if writer.has(marker):
        return {**storage.read_json(writer.path(marker)), "computed": False}
    files = []
    for part in parts:
        rec = part_record(writer, part)
        if rec is None:
            raise ShardsError(f"{part.describe()} is not tokenized: run it before merging {name}")
        if str(c) in rec["runs"]:
            files.append(writer.path(f"{part.folder}/c{c}.arrow"))
    before: dict[str, int] = {}
    if carried is not None:
        first, before = stage_previous(writer, carried, name, dtype)
        files = ([first] if first else []) + files
    with ExitStack() as stack:
        runs = [run for uri in files for run in _open_runs(stack, uri)]
        info: dict[str, Any] = write_cluster(writer, name, runs, dtype)
    if carried is not None:
        info["added_documents"] = info["documents"] - before["documents"]
        info["added_tokens"] = info["tokens"] - before["tokens"]
        info["removed_documents"] = before["removed"]
    storage.write_json(writer.path(marker), info)
    return {**info, "computed": True}


def finish(writer, clusters: list[int], carried: dict[str, dict] | None = None) -> dict[str, dict[str, int]]:
    """{cNN: {documents, tokens}} of every merged cluster (and of the `carried` ones an
    incremental version keeps as they were), staged as `clusters.json` before the runs are removed
    from staging: a retry after a failed commit finds it there (idempotent). A merged cluster
    left without documents (all removed) is dropped with its files. An incremental version also
    stages `INCREMENT` (scratch: not in the manifest) with what its merges added and removed."""
    if writer.has(COUNTS):
        info = storage.read_json(writer.path(COUNTS))
    else:
        info, added = dict(carried or {}), {"documents": 0, "tokens": 0, "removed": 0}
        for c in clusters:
            marker = f"{MERGED}/{cluster_name(c)}.json"
            if not writer.has(marker):
                raise ShardsError(f"cluster {cluster_name(c)} is not merged: run its merge first")
            rec = storage.read_json(writer.path(marker))
            added["documents"] += int(rec.get("added_documents", rec["documents"]))
            added["tokens"] += int(rec.get("added_tokens", rec["tokens"]))
            added["removed"] += int(rec.get("removed_documents", 0))
            if int(rec["documents"]) == 0:
                storage.delete(storage.join(writer.staging, cluster_name(c)))
                continue
            info[cluster_name(c)] = {"documents": int(rec["documents"]), "tokens": int(rec["tokens"])}
        info = dict(sorted(info.items()))
        if carried is not None:
            storage.write_json(writer.path(INCREMENT), added)
        storage.write_json(writer.path(COUNTS), info)
    storage.delete(storage.join(writer.staging, PARTS))
    return info


def increment_record(writer) -> dict[str, int]:
    """What the merges of an incremental version added and removed (staged by `finish`)."""
    return storage.read_json(writer.path(INCREMENT)) if writer.has(INCREMENT) else {}


# ------------------------------------------------------------------------ local processes
_WORKER: dict[str, Any] = {}  # this worker process's tokenizer, loaded once


def _init_worker(tokenizer_uri: str) -> None:
    _WORKER["tok"] = load_tokenizer(tokenizer_uri)


def _worker_part(inp: Inputs, writer, part: Part) -> dict[str, Any]:
    return tokenize_part(inp, writer, part, _WORKER["tok"])


def run_local(
    inp: Inputs,
    writer,
    parts: list[Part],
    clusters: list[int],
    dtype: np.dtype,
    workers: int,
    carried: Carried | None = None,
) -> dict:
    """Every part, then every cluster's merge, here (workers = 1) or in `workers` spawned
    processes (`mixture.parallel`); how many of each were computed and reused."""
    init = (writer.path(TOKENIZER),)
    jobs = [(inp, writer, p) for p in parts]
    part_recs = fan_out(
        _worker_part, jobs, workers, desc="tokenize", unit="part", initializer=_init_worker, initargs=init
    )
    merges = [(writer, parts, c, dtype, carried) for c in clusters]
    merge_recs = fan_out(merge_cluster, merges, workers, desc="merge", unit="cluster")
    computed = sum(r["computed"] for r in part_recs)
    merged = sum(r["computed"] for r in merge_recs)
    return {
        "parts_computed": computed,
        "parts_reused": len(parts) - computed,
        "merges_computed": merged,
        "merges_reused": len(clusters) - merged,
    }
