"""Stage `build`: ClimbMix-style training shards from the ClimbLab clusters and a mixture.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture the search
found, to a token budget (ClimbMix: 400B tokens). The rules are in `mixture.climbmix`; this stage
reads its declared inputs (`climblab`, `search` for its mixture.json unless `build.mixture` names
a file, and `curated` / `clusters` for the dataset card), then:

1. normalises the mixture and plans each cluster's tokens (`build.tokens`, `build.max_epochs`);
2. samples whole documents per cluster and shuffles all of them with the run's seed;
3. writes fixed-size shards of `build.shard_docs` documents in every format of `build.formats`
   (`mixture.formats`: `parquet`, `tokens` by default), row i of one being document i of another,
   then lets a format finish the files that span the shards (`megatron/blend.txt`, `nanogpt/`);
4. copies the tokenizer and writes the dataset card `README.md` (`mixture.card`).

Memory: the token shards are memory-mapped; the text of the clusters that are sampled is held as
Arrow tables (about the size of the ClimbLab text), one output shard at a time besides. The same
inputs, config and seed give byte-identical files, so the content hash that `climb publish` uses
as the default version is stable across rebuilds.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from mixture import storage
from mixture.card import render_card
from mixture.climblab import TOKENIZER, ClimbLab
from mixture.climbmix import (
    BuildError,
    ClusterPlan,
    Sources,
    cluster_lengths,
    cluster_rng,
    gather_shard,
    global_order,
    load_mixture,
    normalise_mixture,
    open_sources,
    per_cluster,
    plan_clusters,
    select_documents,
    shard_slices,
    warn_capped,
)
from mixture.config import BuildConfig
from mixture.contract import StageContext, StageOutput
from mixture.registry import OUTPUT_FORMATS


def read_mixture(ctx: StageContext, clusters: list[str]) -> tuple[str, dict[str, float]]:
    """(the mixture file read, its weights normalised over the ClimbLab clusters)."""
    uri = ctx.cfg.build.mixture or ctx.input("search").path("mixture.json")
    return uri, normalise_mixture(load_mixture(uri), clusters)


def sample(ctx: StageContext, plans: list[ClusterPlan], lengths: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The documents each cluster contributes (with repeats when upsampling), seeded per cluster."""
    return {
        p.cluster: select_documents(lengths[p.cluster], p.target_tokens, cluster_rng(ctx.cfg.seed, p.cluster))
        for p in plans
    }


def write_shards(
    ctx: StageContext, src: Sources, cluster_index: np.ndarray, doc_index: np.ndarray, facts: dict
) -> tuple[int, int, int]:
    """Every shard in every configured format, then each format's optional `finish` (for files
    that span the shards); (shards, documents, tokens) written."""
    cfg: BuildConfig = ctx.cfg.build
    formats = [OUTPUT_FORMATS.get(name)() for name in cfg.formats]
    n_shards = docs = tokens = 0
    slices = list(shard_slices(len(doc_index), cfg.shard_docs))
    for s, rows in tqdm(slices, desc="climbmix shards", unit="shard"):
        shard = gather_shard(src, s, cluster_index[rows], doc_index[rows])
        for fmt in formats:
            fmt.write_shard(ctx.writer, shard, cfg)
        n_shards += 1
        docs += shard.table.num_rows
        tokens += sum(len(d) for d in shard.tokens)
    for fmt in formats:
        if hasattr(fmt, "finish"):
            fmt.finish(ctx.writer, cfg, facts)
    return n_shards, docs, tokens


def check_written(docs: int, tokens: int, n_planned: int, clusters: dict[str, dict]) -> None:
    """What was written is what the plan selected, or the build fails."""
    planned_tokens = sum(v["tokens"] for v in clusters.values())
    if docs != n_planned or docs != sum(v["documents"] for v in clusters.values()) or tokens != planned_tokens:
        raise BuildError(
            f"build: wrote {docs} documents / {tokens} tokens, the plan "
            f"had {n_planned} documents / {planned_tokens} tokens"
        )


def run(ctx: StageContext) -> StageOutput:
    cfg: BuildConfig = ctx.cfg.build
    lab = ClimbLab(ctx.input("climblab"))
    if not lab.clusters:
        raise BuildError("the ClimbLab dataset has no clusters")
    mixture_uri, weights = read_mixture(ctx, lab.clusters)
    lengths = cluster_lengths(lab)
    plans = plan_clusters(
        weights,
        {c: int(n.sum()) for c, n in lengths.items()},
        {c: len(n) for c, n in lengths.items()},
        cfg.tokens,
        cfg.max_epochs,
    )
    warn_capped(plans, cfg.tokens, cfg.max_epochs)
    selected = sample(ctx, plans, lengths)
    cluster_index, doc_index = global_order(selected, lab.clusters, ctx.cfg.seed)
    if len(doc_index) == 0:
        raise BuildError("the mixture and budget select no documents")
    facts = {"seed": ctx.cfg.seed, "vocab_size": lab.vocab_size, "eos_id": lab.eos_id, "dtype": lab.dtype.name}
    n_shards, docs, tokens = write_shards(ctx, open_sources(lab, selected), cluster_index, doc_index, facts)
    clusters = per_cluster(plans, lengths, selected)
    check_written(docs, tokens, len(doc_index), clusters)
    storage.write_bytes(ctx.writer.path(TOKENIZER), storage.read_bytes(lab.tokenizer_path))
    extra = manifest_extra(ctx, lab, weights, mixture_uri, clusters, n_shards)
    counts = {"documents": docs, "tokens": tokens}
    storage.write_text(
        ctx.writer.path("README.md"),
        render_card(ctx.cfg, counts, extra, ctx.input("climblab"), ctx.input("curated"), ctx.input("clusters")),
    )
    return StageOutput(counts, extra, summary(cfg, counts, clusters, n_shards))


def manifest_extra(
    ctx: StageContext,
    lab: ClimbLab,
    weights: dict[str, float],
    mixture_uri: str,
    clusters: dict[str, dict],
    n_shards: int,
) -> dict:
    cfg: BuildConfig = ctx.cfg.build
    return {
        "mixture": weights,
        "mixture_source": "build.mixture" if cfg.mixture else "search",
        # the config hash covers the mixture file's path, not its content: record what was read
        "mixture_sha256": storage.sha256(mixture_uri),
        "clusters": clusters,
        "token_budget": cfg.tokens,
        "max_epochs": cfg.max_epochs,
        "capped_clusters": [c for c, v in clusters.items() if v["capped"]],
        "seed": ctx.cfg.seed,
        "shard_docs": cfg.shard_docs,
        "shards": n_shards,
        "formats": list(cfg.formats),
        "dtype": lab.dtype.name,
        "eos_id": lab.eos_id,
        "vocab_size": lab.vocab_size,
    }


def summary(cfg: BuildConfig, counts: dict, clusters: dict[str, dict], n_shards: int) -> list[tuple[str, str]]:
    lines = [
        (
            "tokens",
            f"{counts['tokens']:,} of a {cfg.tokens:,} budget in {counts['documents']:,} documents, "
            f"{n_shards} shard(s)",
        ),
        ("epochs per cluster", ", ".join(f"{c}={v['epochs']:.2f}" for c, v in clusters.items() if v["tokens"])),
    ]
    capped = [c for c, v in clusters.items() if v["capped"]]
    if capped:
        lines.append(("capped at max_epochs", ", ".join(capped)))
    return lines
