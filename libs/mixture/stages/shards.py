"""Stage `shards`: ClimbLab-style token shards, one folder of tokens per final cluster.

Reads the curated documents and the cluster assignments, gets a tokenizer (a local one named by
`shards.tokenizer`, or a byte-level BPE trained on a seeded sample of `tokenizer_train_docs` kept
documents), tokenizes every document of every kept cluster and writes per cluster `cNN/tokens.bin`
+ `.idx` (`mixture.climblab.tokens`) and `cNN/text.parquet` (id, text in the same order, sorted by id),
with the tokens per cluster in the manifest (`mixture.climblab` reads it). Documents of pruned
clusters (cluster -1) are counted, not written: documents in = written + pruned, or the stage fails.

The work is data-parallel (`mixture.climblab.parts`): parts of `shards.part_docs` curated
documents are tokenized into sorted runs per (part, cluster) in the staging folder, then each
cluster's runs are merged by id into its files. Both steps are idempotent (the stage is registered
resumable: a killed run keeps its finished parts and merged clusters). Locally `shards.workers`
spawned processes run the parts and then the merges; under Airflow `parts` plans them (and stages
the tokenizer), each part and each merge is a mapped task (`tokenize_part`, `merge_cluster`), and
`finish` builds the output for the runner's commit (`dags/climb_corpus_refresh.py`). The committed
files are the same bytes whatever the number of parts or workers.

Incremental versions (`increment`, the one decision every step takes: `increments.plan`): when
the clusters were not rebuilt since the version this dataset covers, the previous version's
tokenizer is kept, the parts cover only the curated files added since (with their rows of the
`assignments-vNNNN.parquet` files), and only the touched clusters (new or removed documents) are
merged: the previous cluster less the removed ids is the first sorted run of its merge, so the
files are those a full build with the same tokenizer writes. Untouched clusters are kept as
they were (hard links); the removal lists are carried and forwarded.

Bounded memory: a record batch, the tokenizer's training sample, up to `MERGE_IDS` ids of the
runs being merged and each cluster's offsets (8 bytes a document).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mixture import increments
from mixture.climblab import TOKENIZER, shard_prefix, text_file
from mixture.climblab import parts as climblab_parts
from mixture.climblab.tokens import eos_id, token_dtype
from mixture.cluster.groups import assignment_files
from mixture.contract import StageContext, StageOutput
from mixture.curate import documents
from mixture.dataset import Dataset

BATCH_ROWS = documents.BATCH_ROWS


@dataclass(frozen=True)
class Increment:
    """An incremental run: the new documents with their assignments, and what it carries."""

    why: str
    since: dict[str, int]  # the input versions the previous climblab version covered
    inputs: climblab_parts.Inputs  # the curated files added since the version covered, and their assignments
    removed: pa.Table  # (id, reason) the curated dataset removed since
    carried: climblab_parts.Carried  # the previous climblab version, less the removed ids

    @property
    def previous(self) -> Dataset:
        return self.carried.previous


def increment(ctx: StageContext) -> tuple[Increment | None, str]:
    """(the increment to process, why) or (None, why a full build is needed): the one decision
    every step of the stage takes alike (`increments.plan`): the clusters rebuilt, other settings,
    `refresh.incremental` off or no earlier version with a lineage mean a full build."""
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is None:
        return None, why
    curated, clusters = ctx.input("curated"), ctx.input("clusters")
    docs = climblab_parts.by_version(curated, documents.DOCS, delta.since["curated"])
    assigned = assignment_files(clusters, delta.since["clusters"])
    removed = delta.removed(curated, "curated")
    carried = climblab_parts.Carried(delta.previous, removed.column("id").combine_chunks().cast(pa.string()))
    return Increment(
        why, delta.since, climblab_parts.Inputs(tuple(docs), tuple(assigned), BATCH_ROWS), removed, carried
    ), why


def _inputs(ctx: StageContext) -> climblab_parts.Inputs:
    inc, _ = increment(ctx)
    return inc.inputs if inc else climblab_parts.inputs(ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS)


def prepare(ctx: StageContext) -> tuple[climblab_parts.Inputs, climblab_parts.Scan, list[climblab_parts.Part]]:
    """Check the inputs, stage the tokenizer (trained once; an incremental run keeps the previous
    version's) and plan the parts (over the new documents only when incremental)."""
    inc, _ = increment(ctx)
    cfg = ctx.cfg.shards
    climblab_parts.claim_staging(ctx.writer, {"mode": "incremental", "since": inc.since} if inc else {"mode": "full"})
    if inc is not None:
        ctx.writer.keep(inc.previous, TOKENIZER)
        scanned = climblab_parts.scan(inc.inputs)
        return inc.inputs, scanned, climblab_parts.plan(scanned.documents, cfg.part_docs)
    inp = _inputs(ctx)
    scanned = climblab_parts.scan(inp)
    climblab_parts.stage_tokenizer(
        ctx.writer, inp, scanned, cfg.tokenizer, cfg.vocab_size, cfg.tokenizer_train_docs, ctx.cfg.seed
    )
    return inp, scanned, climblab_parts.plan(scanned.documents, cfg.part_docs)


def parts(ctx: StageContext) -> list[climblab_parts.Part]:
    """The tokenization parts (the tokenizer staged first, so every part uses the same one)."""
    return prepare(ctx)[2]


def tokenize_part(ctx: StageContext, part: climblab_parts.Part) -> dict[str, Any]:
    """One part's runs into the staging folder (kept when already staged)."""
    return climblab_parts.tokenize_part(_inputs(ctx), ctx.writer, part, climblab_parts.staged_tokenizer(ctx.writer))


def touched(inc: Increment) -> list[int]:
    """The clusters an increment rewrites: those with new documents or with removed ones."""
    new = set(climblab_parts.scan(inc.inputs).clusters)
    if len(inc.carried.drop):
        new |= set(climblab_parts.clusters_holding(inc.previous, inc.carried.drop))
    return sorted(new)


def clusters(ctx: StageContext) -> list[int]:
    """The clusters to merge, one merge each: every final cluster, or the touched ones."""
    inc, _ = increment(ctx)
    return touched(inc) if inc else climblab_parts.scan(_inputs(ctx)).clusters


def merge_cluster(ctx: StageContext, c: int) -> dict[str, Any]:
    """Cluster c's files from every part's runs (kept when already merged); incremental: merged
    with the previous version's cluster less the removed ids."""
    inc, _ = increment(ctx)
    inp = inc.inputs if inc else climblab_parts.inputs(ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS)
    plan = climblab_parts.plan(climblab_parts.count(inp), ctx.cfg.shards.part_docs)
    dtype = token_dtype(climblab_parts.staged_tokenizer(ctx.writer).get_vocab_size())
    return climblab_parts.merge_cluster(ctx.writer, plan, c, dtype, inc.carried if inc else None)


def finish(ctx: StageContext, progress: dict[str, int] | None = None) -> StageOutput:
    """The output of a stage whose clusters are all merged (the runs are removed from staging),
    with its lineage; an incremental version keeps the untouched clusters' files as they were."""
    inc, why = increment(ctx)
    scanned = climblab_parts.scan(climblab_parts.inputs(ctx.input("curated"), ctx.input("clusters"), BATCH_ROWS))
    if inc is None:
        info = climblab_parts.finish(ctx.writer, scanned.clusters)
    else:
        info, delta = _finish_increment(ctx, inc)
    tok = climblab_parts.staged_tokenizer(ctx.writer)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    token_info = {"vocab_size": vocab, "eos_id": eos, "dtype": token_dtype(vocab).name}
    out = summarise(scanned.documents, scanned.documents - scanned.kept, info, token_info)
    if inc is None:
        delta = {k: out.counts[k] for k in ("clusters", "documents_out", "tokens")}
        line = f"full build: {why}"
    else:
        line = (
            f"incremental ({why}): {delta['clusters_touched']} clusters rewritten, {delta['clusters_kept']} kept; "
            f"{delta['documents_added']:,} documents added, {delta['documents_removed']:,} removed, "
            f"{delta['tokens_added']:,} tokens added"
        )
    mode = "incremental" if inc else "full"
    lin = increments.next_lineage(ctx.previous, mode, ctx.settings_hash, ctx.inputs, delta)
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    out.summary.insert(0, ("mode", line))
    if progress is not None:
        out.summary.append(
            (
                "parts",
                f"{progress['parts_computed']} tokenized, {progress['parts_reused']} reused; "
                f"{progress['merges_computed']} clusters merged, {progress['merges_reused']} reused",
            )
        )
    return out


def _finish_increment(ctx: StageContext, inc: Increment) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Keep the tokenizer and the untouched clusters' files (hard links), finish the touched
    ones, carry the removal lists and add this version's (the curated dataset's removed ids,
    forwarded downstream). (clusters' counts, the lineage delta)."""
    ctx.writer.keep(inc.previous, TOKENIZER)
    names = {climblab_parts.cluster_name(c) for c in touched(inc)}
    kept = {n: v for n, v in inc.previous.manifest.extra["clusters"].items() if n not in names}
    for n in kept:
        for rel in (shard_prefix(n) + ".bin", shard_prefix(n) + ".idx", text_file(n)):
            ctx.writer.keep(inc.previous, rel)
    info = climblab_parts.finish(ctx.writer, sorted(int(n[1:]) for n in names), carried=kept)
    increments.keep_removed(ctx.writer, inc.previous)
    increments.write_removed(ctx.writer, increments.version(inc.previous) + 1, inc.removed)
    added = climblab_parts.increment_record(ctx.writer)
    delta = {
        "clusters_touched": len(names),
        "clusters_kept": len(kept),
        "documents_added": int(added.get("documents", 0)),
        "documents_removed": int(added.get("removed", 0)),
        "tokens_added": int(added.get("tokens", 0)),
    }
    return info, delta


def run(ctx: StageContext) -> StageOutput:
    inp, scanned, plan = prepare(ctx)
    inc, _ = increment(ctx)
    cs = touched(inc) if inc else scanned.clusters
    dtype = token_dtype(climblab_parts.staged_tokenizer(ctx.writer).get_vocab_size())
    progress = climblab_parts.run_local(
        inp, ctx.writer, plan, cs, dtype, ctx.cfg.shards.workers, inc.carried if inc else None
    )
    return finish(ctx, progress)


def summarise(n_in: int, pruned: int, info: dict[str, dict], token_info: dict) -> StageOutput:
    """Counts that add up (documents in = written + pruned), or the stage fails."""
    n_out = sum(v["documents"] for v in info.values())
    if n_in != n_out + pruned:
        raise climblab_parts.ShardsError(
            f"shards: {n_in} documents in != {n_out} written + {pruned} in pruned clusters"
        )
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
