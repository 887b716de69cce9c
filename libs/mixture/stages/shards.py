"""Stage `shards`: ClimbLab-style token shards, one folder of tokens per final cluster.

Reads the curated documents and the cluster assignments, gets a tokenizer (a local one named by
`shards.tokenizer`, or a byte-level BPE trained on a seeded sample of `tokenizer_train_docs` kept
documents), tokenizes every document of every kept cluster and writes per cluster `cNN/tokens.bin`
+ `.idx` (`mixture.tokens`) and `cNN/text.parquet` (id, text in the same order, sorted by id),
with the tokens per cluster in the manifest (`mixture.climblab` reads it). Documents of pruned
clusters (cluster -1) are counted, not written: documents in = written + pruned, or the stage fails.

The work is data-parallel (`mixture.climblab_parts`): parts of `shards.part_docs` curated
documents are tokenized into sorted runs per (part, cluster) in the staging folder, then each
cluster's runs are merged by id into its files. Both steps are idempotent (the stage is registered
resumable: a killed run keeps its finished parts and merged clusters). Locally `shards.workers`
spawned processes run the parts and then the merges; under Airflow `parts` plans them (and stages
the tokenizer), each part and each merge is a mapped task (`tokenize_part`, `merge_cluster`), and
`finish` builds the output for the runner's commit (`dags/climb_corpus_refresh.py`). The committed
files are the same bytes whatever the number of parts or workers.

Bounded memory: a record batch, the tokenizer's training sample, up to `MERGE_IDS` ids of the
runs being merged and each cluster's offsets (8 bytes a document).
"""

from __future__ import annotations

from typing import Any

from mixture import climblab_parts as P
from mixture import documents
from mixture.contract import StageContext, StageOutput
from mixture.tokens import eos_id, token_dtype

BATCH_ROWS = documents.BATCH_ROWS


def _inputs(ctx: StageContext) -> P.Inputs:
    return P.inputs(ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS)


def prepare(ctx: StageContext) -> tuple[P.Inputs, P.Scan, list[P.Part]]:
    """Check the inputs, stage the tokenizer (trained once) and plan the parts."""
    inp = _inputs(ctx)
    scanned = P.scan(inp)
    cfg = ctx.cfg.shards
    P.stage_tokenizer(ctx.writer, inp, scanned, cfg.tokenizer, cfg.vocab_size, cfg.tokenizer_train_docs, ctx.cfg.seed)
    return inp, scanned, P.plan(scanned.documents, cfg.part_docs)


def parts(ctx: StageContext) -> list[P.Part]:
    """The tokenization parts (the tokenizer staged first, so every part uses the same one)."""
    return prepare(ctx)[2]


def tokenize_part(ctx: StageContext, part: P.Part) -> dict[str, Any]:
    """One part's runs into the staging folder (kept when already staged)."""
    return P.tokenize_part(_inputs(ctx), ctx.writer, part, P.staged_tokenizer(ctx.writer))


def clusters(ctx: StageContext) -> list[int]:
    """The final clusters (those with documents), one merge each."""
    return P.scan(_inputs(ctx)).clusters


def merge_cluster(ctx: StageContext, c: int) -> dict[str, Any]:
    """Cluster c's files from every part's runs (kept when already merged)."""
    plan = P.plan(documents.count(ctx.input("curated")), ctx.cfg.shards.part_docs)
    dtype = token_dtype(P.staged_tokenizer(ctx.writer).get_vocab_size())
    return P.merge_cluster(ctx.writer, plan, c, dtype)


def finish(ctx: StageContext, progress: dict[str, int] | None = None) -> StageOutput:
    """The output of a stage whose clusters are all merged (the runs are removed from staging)."""
    scanned = P.scan(_inputs(ctx))
    tok = P.staged_tokenizer(ctx.writer)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    info = P.finish(ctx.writer, scanned.clusters)
    token_info = {"vocab_size": vocab, "eos_id": eos, "dtype": token_dtype(vocab).name}
    out = summarise(scanned.documents, scanned.documents - scanned.kept, info, token_info)
    if progress is not None:
        out.summary.append(
            (
                "parts",
                f"{progress['parts_computed']} tokenized, {progress['parts_reused']} reused; "
                f"{progress['merges_computed']} clusters merged, {progress['merges_reused']} reused",
            )
        )
    return out


def run(ctx: StageContext) -> StageOutput:
    inp, scanned, plan = prepare(ctx)
    dtype = token_dtype(P.staged_tokenizer(ctx.writer).get_vocab_size())
    progress = P.run_local(inp, ctx.writer, plan, scanned.clusters, dtype, ctx.cfg.shards.workers)
    return finish(ctx, progress)


def summarise(n_in: int, pruned: int, info: dict[str, dict], token_info: dict) -> StageOutput:
    """Counts that add up (documents in = written + pruned), or the stage fails."""
    n_out = sum(v["documents"] for v in info.values())
    if n_in != n_out + pruned:
        raise P.ShardsError(f"shards: {n_in} documents in != {n_out} written + {pruned} in pruned clusters")
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
