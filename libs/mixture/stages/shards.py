"""Stage `shards`: ClimbLab-style token shards, one folder of tokens per final cluster.

Reads the curated documents and the cluster assignments, gets a tokenizer (a local one named by
`shards.tokenizer`, or a byte-level BPE trained on a seeded sample of `tokenizer_train_docs` kept
documents), tokenizes every document of every kept cluster and writes per cluster `cNN/tokens.bin`
+ `.idx` (`mixture.tokens`) and `cNN/text.parquet` (id, text in the same order, sorted by id),
with the tokens per cluster in the manifest (`mixture.climblab` reads it). Documents of pruned
clusters (cluster -1) are counted, not written: documents in = written + pruned, or the stage fails.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import documents, storage
from mixture.climblab import TOKENIZER, cluster_name, shard_prefix, text_file
from mixture.contract import StageContext, StageOutput
from mixture.tokens import encode, eos_id, load_tokenizer, token_dtype, train_tokenizer, write_token_shard


def read_inputs(ctx: StageContext) -> tuple[list[str], list[str], dict[str, int]]:
    """(ids, texts) of the curated documents and each id's final cluster; every document must
    have one."""
    docs = documents.read_table(ctx.input("curated"), ["id", "text"])
    fs, path = storage.filesystem(ctx.input("clusters").path("assignments.parquet"))
    assign = pq.read_table(path, filesystem=fs, columns=["id", "cluster"])
    cluster_of = dict(zip(assign.column("id").to_pylist(), assign.column("cluster").to_pylist()))
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    missing = [i for i in ids if i not in cluster_of]
    if missing:
        raise RuntimeError(f"{len(missing)} curated documents have no cluster assignment (e.g. {missing[:3]})")
    return ids, texts, cluster_of


def get_tokenizer(ctx: StageContext, ids: list[str], texts: list[str], cluster_of: dict[str, int]):
    """The configured tokenizer, or a BPE trained on a seeded sample of the kept documents."""
    cfg = ctx.cfg.shards
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    kept = [t for i, t in zip(ids, texts) if cluster_of[i] >= 0]
    sample = random.Random(ctx.cfg.seed).sample(kept, min(cfg.tokenizer_train_docs, len(kept)))
    return train_tokenizer(sample, cfg.vocab_size)


def rows_by_cluster(ids: list[str], cluster_of: dict[str, int]) -> dict[int, list[int]]:
    """Row numbers per cluster id (pruned documents under -1), each cluster's rows sorted by
    document id so the shards do not depend on the curated file order."""
    by_cluster: dict[int, list[int]] = {}
    for row, i in enumerate(ids):
        by_cluster.setdefault(cluster_of[i], []).append(row)
    return {c: sorted(rows, key=lambda r: ids[r]) for c, rows in by_cluster.items()}


def write_cluster(
    ctx: StageContext, name: str, c_ids: list[str], c_texts: list[str], tok, eos: int, dtype
) -> dict[str, int]:
    """One cluster's token shard and texts; its documents and tokens."""
    n_docs, n_tok = write_token_shard(ctx.writer.path(shard_prefix(name)), encode(tok, c_texts, eos), dtype)
    with storage.open_write(ctx.writer.path(text_file(name))) as f:
        pq.write_table(pa.table({"id": c_ids, "text": c_texts}), f)
    return {"documents": n_docs, "tokens": n_tok}


def run(ctx: StageContext) -> StageOutput:
    ids, texts, cluster_of = read_inputs(ctx)
    tok = get_tokenizer(ctx, ids, texts, cluster_of)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    dtype = token_dtype(vocab)
    storage.write_text(ctx.writer.path(TOKENIZER), tok.to_str())

    by_cluster = rows_by_cluster(ids, cluster_of)
    info: dict[str, dict] = {}
    for c in tqdm(sorted(k for k in by_cluster if k >= 0), desc="shards", unit="cluster"):
        rows = by_cluster[c]
        info[cluster_name(c)] = write_cluster(
            ctx, cluster_name(c), [ids[r] for r in rows], [texts[r] for r in rows], tok, eos, dtype
        )
    return summarise(
        len(ids), len(by_cluster.get(-1, [])), info, {"vocab_size": vocab, "eos_id": eos, "dtype": dtype.name}
    )


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
