"""Stage `shards`: ClimbLab-style token shards, one folder of tokens per final cluster.

Reads the curated documents and the cluster assignments, gets a tokenizer (a local one named by
`shards.tokenizer`, or a byte-level BPE trained on a seeded sample of `tokenizer_train_docs` kept
documents), tokenizes every document of every kept cluster and writes per cluster `cNN/tokens.bin`
+ `.idx` (`mixture.tokens`) and `cNN/text.parquet` (id, text in the same order, sorted by id),
with the tokens per cluster in the manifest (`mixture.climblab` reads it). Documents of pruned
clusters (cluster -1) are counted, not written: documents in = written + pruned, or the stage fails.

Bounded memory: the curated documents and the assignments (written by `cluster` in the curated
order) are streamed together in record batches; each batch is tokenized once and its documents
go, sorted by id, as one run into their cluster's spill file (Arrow IPC on local disk); then each
cluster's runs are merged by id (an external merge sort) and appended to its token shard and text
file. What is held: a batch, the tokenizer's training sample, one run-head per spilled batch and
each cluster's offsets (8 bytes a document).
"""

from __future__ import annotations

import hashlib
import heapq
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import documents, storage
from mixture.climblab import TOKENIZER, cluster_name, shard_prefix, text_file
from mixture.contract import StageContext, StageOutput
from mixture.dataset import Dataset
from mixture.tokens import TokenShardWriter, encode, eos_id, load_tokenizer, token_dtype, train_tokenizer

BATCH_ROWS = documents.BATCH_ROWS
ROW_GROUP = 1 << 16  # rows per text.parquet row group (one row group, as before, up to this size)
RUN_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("tokens", pa.list_(pa.int64()))])


def _assignments(clusters: Dataset) -> pq.ParquetFile:
    fs, path = storage.filesystem(clusters.path("assignments.parquet"))
    return pq.ParquetFile(fs.open_input_file(path))


def _hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids), dtype=np.uint64
    )


def missing_error(curated: Dataset, clusters: Dataset) -> RuntimeError:
    """The curated documents without an assignment (ids hashed: 8 bytes a document), or the
    assignments being in another order than the curated documents."""
    have = np.concatenate(
        [_hashes(b.column("id").to_pylist()) for b in _assignments(clusters).iter_batches(columns=["id"])]
    )
    missing: list[str] = []
    n_missing = 0
    for ids, _ in documents.iter_texts(curated):
        lost = [i for i, ok in zip(ids, np.isin(_hashes(ids), have)) if not ok]
        n_missing += len(lost)
        missing += lost[: 3 - len(missing)]
    if n_missing:
        return RuntimeError(f"{n_missing} curated documents have no cluster assignment (e.g. {missing})")
    return RuntimeError(f"{clusters.uri}: the assignments are not in the curated documents' order: rerun `cluster`")


def stream(ctx: StageContext) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, texts, final cluster) per curated record batch, the assignments read alongside."""
    curated, clusters = ctx.input("curated"), ctx.input("clusters")
    assigned = _assignments(clusters).iter_batches(batch_size=BATCH_ROWS, columns=["id", "cluster"])
    held: list[pa.RecordBatch] = []
    for batch in documents.iter_batches(curated, ["id", "text"], BATCH_ROWS):
        while sum(b.num_rows for b in held) < batch.num_rows:
            nxt = next(assigned, None)
            if nxt is None:
                raise missing_error(curated, clusters)
            held.append(nxt)
        table = pa.Table.from_batches(held).combine_chunks()
        part, rest = table.slice(0, batch.num_rows), table.slice(batch.num_rows)
        held = rest.to_batches()
        if not part.column("id").combine_chunks().cast(pa.string()).equals(batch.column("id").cast(pa.string())):
            raise missing_error(curated, clusters)
        cluster = part.column("cluster").to_numpy().astype(np.int64)
        yield batch.column("id").to_pylist(), batch.column("text").to_pylist(), cluster


def get_tokenizer(ctx: StageContext, n_kept: int):
    """The configured tokenizer, or a BPE trained on a seeded sample of the kept documents (the
    same documents, in the same order, as `random.sample` of the list of kept texts would give)."""
    cfg = ctx.cfg.shards
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    picks = random.Random(ctx.cfg.seed).sample(range(n_kept), min(cfg.tokenizer_train_docs, n_kept))
    order = {pos: i for i, pos in enumerate(picks)}
    sample: list[str] = [""] * len(picks)
    seen = 0
    for _, texts, cluster in stream(ctx):
        for text, c in zip(texts, cluster):
            if c >= 0:
                if seen in order:
                    sample[order[seen]] = text
                seen += 1
    return train_tokenizer(sample, cfg.vocab_size)


def count_kept(ctx: StageContext) -> tuple[int, int]:
    """(documents, documents in kept clusters) from the assignments' cluster column."""
    n = kept = 0
    for b in _assignments(ctx.input("clusters")).iter_batches(columns=["cluster"]):
        c = b.column(0).to_numpy()
        n, kept = n + len(c), kept + int((c >= 0).sum())
    return n, kept


def spill_runs(ctx: StageContext, tok, eos: int, folder: Path) -> tuple[dict[int, int], int, int]:
    """Tokenize batch by batch; each batch's documents of cluster c, sorted by id, become one
    run (record batch) of c's spill file. ({cluster: runs}, documents in, pruned)."""
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    runs: dict[int, int] = {}
    n_in = pruned = 0
    for ids, texts, cluster in tqdm(stream(ctx), desc="tokenize", unit="batch"):
        n_in += len(ids)
        pruned += int((cluster < 0).sum())
        for c in np.unique(cluster[cluster >= 0]).tolist():
            rows = sorted(np.flatnonzero(cluster == c).tolist(), key=lambda r: ids[r])
            c_texts = [texts[r] for r in rows]
            toks = encode(tok, c_texts, eos)
            offsets = np.zeros(len(toks) + 1, dtype=np.int32)
            np.cumsum([len(t) for t in toks], out=offsets[1:])
            flat = pa.array(np.concatenate(toks) if toks else np.zeros(0, np.int64))
            cols = [pa.array([ids[r] for r in rows], pa.string()), pa.array(c_texts, pa.string())]
            batch = pa.RecordBatch.from_arrays(
                cols + [pa.ListArray.from_arrays(pa.array(offsets), flat)], schema=RUN_SCHEMA
            )
            if c not in writers:
                writers[c] = pa.ipc.new_file(str(folder / f"{c}.arrow"), RUN_SCHEMA)
            writers[c].write_batch(batch)
            runs[c] = runs.get(c, 0) + 1
    for w in writers.values():
        w.close()
    return runs, n_in, pruned


def merged_rows(runs: list[pa.RecordBatch]) -> Iterator[tuple[int, int]]:
    """(run, row) of a cluster's documents in id order (runs are each sorted by id; equal ids
    keep the earlier run first, as a stable sort of the whole cluster does)."""

    def rows(r: int) -> Iterator[tuple[str, int, int]]:
        ids = runs[r].column("id")
        return ((ids[i].as_py(), r, i) for i in range(len(ids)))

    for _, r, i in heapq.merge(*(rows(r) for r in range(len(runs)))):
        yield r, i


def write_cluster(ctx: StageContext, name: str, spill: Path, dtype: np.dtype) -> dict[str, int]:
    """One cluster's token shard and texts from its spill file, merged by id, in row groups."""
    with pa.memory_map(str(spill)) as source:
        reader = pa.ipc.open_file(source)
        runs = [reader.get_batch(r) for r in range(reader.num_record_batches)]  # views of the mapped file
        schema = pa.schema([("id", pa.string()), ("text", pa.string())])
        with (
            TokenShardWriter(ctx.writer.path(shard_prefix(name)), dtype) as shard,
            storage.open_write(ctx.writer.path(text_file(name))) as f,
            pq.ParquetWriter(f, schema) as texts,
        ):
            chunk: list[tuple[int, int]] = []
            for pair in merged_rows(runs):
                chunk.append(pair)
                if len(chunk) == ROW_GROUP:
                    _write_chunk(runs, chunk, shard, texts, schema)
                    chunk = []
            if chunk:
                _write_chunk(runs, chunk, shard, texts, schema)
            n_docs, n_tok = shard.close()
    return {"documents": n_docs, "tokens": n_tok}


def _write_chunk(runs: list[pa.RecordBatch], chunk: list[tuple[int, int]], shard, texts, schema: pa.Schema) -> None:
    """Append one row group's documents (in merged order) to the token shard and the text file."""
    ids, docs, toks = [], [], []
    for r, i in chunk:
        b = runs[r]
        ids.append(b.column("id")[i].as_py())
        docs.append(b.column("text")[i].as_py())
        toks.append(b.column("tokens")[i].values.to_numpy())
    shard.append(toks)
    texts.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(docs, pa.string())}, schema=schema))


def run(ctx: StageContext) -> StageOutput:
    _, n_kept = count_kept(ctx)
    tok = get_tokenizer(ctx, n_kept)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    dtype = token_dtype(vocab)
    storage.write_text(ctx.writer.path(TOKENIZER), tok.to_str())
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="climb-shards-") as tmp:
        runs, n_in, pruned = spill_runs(ctx, tok, eos, Path(tmp))
        for c in tqdm(sorted(runs), desc="shards", unit="cluster"):
            info[cluster_name(c)] = write_cluster(ctx, cluster_name(c), Path(tmp) / f"{c}.arrow", dtype)
    return summarise(n_in, pruned, info, {"vocab_size": vocab, "eos_id": eos, "dtype": dtype.name})


def summarise(n_in: int, pruned: int, info: dict[str, dict], token_info: dict) -> StageOutput:
    """Counts that add up (documents in = written + pruned), or the stage fails."""
    n_out = sum(v["documents"] for v in info.values())
    if n_in != n_out + pruned:
        raise RuntimeError(f"shards: {n_in} documents in != {n_out} written + {pruned} in pruned clusters")
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
