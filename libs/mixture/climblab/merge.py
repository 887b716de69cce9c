"""The ClimbLab token shards built in parts, second half: each cluster's runs merged into its files.

After the parts are tokenized (`mixture.climblab.parts`), the `shards` stage
(`mixture.stages.shards`) merges each final cluster and finishes the dataset:

3. `merge_cluster`: cluster c's runs of every part merged by id (an external merge sort: the runs
   are memory-mapped; at most `MERGE_IDS` ids are held as strings, shared out over the runs) into
   `cNN/tokens.bin` + `.idx` and `cNN/text.parquet` (row groups of 8,192 documents);
   `_parts/merged/cNN.json` is written last, so a merged cluster is kept on a rerun.
4. `finish`: every cluster merged, its counts staged as `clusters.json` (part of the dataset), then
   `_parts/` removed from the staging folder (the runs are not part of the dataset); a retry after a
   failed commit finds `clusters.json` and needs nothing else. `output` is the stage's counts,
   which add up (documents in = written + pruned) or the stage fails.
5. Incremental (`Carried`): a merge takes the previous version's cluster, less the removed ids,
   as its first run (`stage_previous`: text row groups with their tokens read from the shard, no
   re-tokenization), so the result is the same bytes as a full build with the same tokenizer.

The merge is stable (equal ids keep the earlier part and batch first), so the files are those of a
stable sort of each cluster by id: the same bytes whatever `part_docs`, the record batch size or
the number of workers. `run_local` runs the parts and then the merges in `workers` spawned
processes; under Airflow each merge is a mapped task (`dags/climb_corpus_refresh.py`). What a
process holds: up to `MERGE_IDS` ids of the runs of the cluster it merges, each cluster's offsets
(8 bytes a document).
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import storage
from mixture.climblab import TOKENIZER, cluster_name, shard_prefix, text_file
from mixture.climblab.parts import (
    PARTS,
    RUN_SCHEMA,
    Inputs,
    Part,
    Scan,
    ShardsError,
    init_worker,
    part_record,
    staged_tokenizer,
    tokenize_in_worker,
)
from mixture.climblab.tokens import TokenShard, TokenShardWriter, eos_id, token_dtype
from mixture.contract import StageOutput
from mixture.dataset import Dataset
from mixture.parallel import fan_out

MERGED = f"{PARTS}/merged"
COUNTS = "clusters.json"  # {cNN: {documents, tokens}}, part of the dataset, written by `finish`
INCREMENT = ".tmp-increment.json"  # an incremental version's added/removed counts: scratch, not committed
ROW_GROUP = 1 << 13  # rows per text.parquet row group: what a merge holds as Python objects
TEXT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
MERGE_IDS = 1 << 18  # ids (Python strings) held at once by a merge, over all its runs together


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


def output(writer, scanned: Scan, info: dict[str, dict]) -> StageOutput:
    """The finished dataset's counts, extra (the clusters' counts, the staged tokenizer's
    vocabulary size, end-of-document id and token dtype) and summary."""
    tok = staged_tokenizer(writer)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    token_info = {"vocab_size": vocab, "eos_id": eos, "dtype": token_dtype(vocab).name}
    return summarise(scanned.documents, scanned.documents - scanned.kept, info, token_info)


def summarise(n_in: int, pruned: int, info: dict[str, dict], token_info: dict) -> StageOutput:
    """Counts that add up (documents in = written + pruned), or the stage fails."""
    n_out = sum(v["documents"] for v in info.values())
    if n_in != n_out + pruned:
        raise ShardsError(f"shards: {n_in} documents in != {n_out} written + {pruned} in pruned clusters")
    counts = {
        "documents_in": n_in,
        "documents_out": n_out,
        "pruned_documents": pruned,
        "tokens": sum(v["tokens"] for v in info.values()),
        "clusters": len(info),
    }
    extra = {"clusters": info, **token_info}
    summary = [("tokens per cluster", ", ".join(f"{k}={v['tokens']:,}" for k, v in info.items()))]
    return StageOutput(counts, extra, summary)


# ------------------------------------------------------------------------ local processes
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
        tokenize_in_worker, jobs, workers, desc="tokenize", unit="part", initializer=init_worker, initargs=init
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


def progress_line(progress: dict[str, int]) -> str:
    """What `run_local` computed and reused, in one summary line."""
    return (
        f"{progress['parts_computed']} tokenized, {progress['parts_reused']} reused; "
        f"{progress['merges_computed']} clusters merged, {progress['merges_reused']} reused"
    )
