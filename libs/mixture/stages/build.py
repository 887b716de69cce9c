"""Stage `build`: ClimbMix-style training shards from the ClimbLab clusters and a mixture.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture the search
found, to a token budget (ClimbMix: 400B tokens). The rules are in `mixture.climbmix`, the
shuffle in `mixture.climbmix.shuffle`; this stage reads its declared inputs (`climblab`, `search` for its
mixture.json unless `build.mixture` names a file, and `curated` / `clusters` for the dataset
card), then:

1. `plan`: normalises the mixture, plans each cluster's tokens (`build.tokens`,
   `build.max_epochs`), samples whole documents per cluster and draws the global order with the
   run's seed; stages the routes and the layout: *parts* (row groups of the clusters'
   `text.parquet`, `build.part_docs` documents each) and *buckets* (contiguous ranges of output
   shards, `build.bucket_docs` documents each);
2. `scatter` per part: routes each selected document (repeats included) to its bucket;
3. `gather` per bucket: writes its shards of `build.shard_docs` documents in every format of
   `build.formats` (`mixture.climbmix.formats`), row i of one being document i of another;
4. `finish`: checks that every bucket was written, that what was written is the plan and that
   each format's shard files are exactly the plan's shards, lets a format finish the files that
   span the shards (`megatron/blend.txt`, `nanogpt/`), copies the tokenizer, writes the dataset
   card (`mixture.climbmix.card`), records its output in the staging folder and deletes the shuffle's
   bulky scratch. A second `finish` (the commit failed and is retried) returns the record.

Steps 2 and 3 are idempotent per part and per bucket (the stage is resumable: a killed build
keeps what it scattered and gathered), so they run in any order within a step: here in
`build.workers` spawned processes (`run`), under Airflow as mapped tasks
(`dags/climb_mixture_search.py`: `build_plan` -> `build_scatter` -> `build_gather` -> `build`,
which runs `finish` and commits). Memory: the plan's per-document arrays in one process, then
one record batch and at most `shuffle.BUFFER_BYTES` of routed rows per scatter and one bucket
per gather (`mixture.climbmix.shuffle`); no step reads a token shard whole. The
same inputs, config and seed give byte-identical files whatever the workers, parts or buckets,
so the content hash that `climb publish` uses as the default version is stable across rebuilds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from mixture import storage
from mixture.climblab import TOKENIZER, ClimbLab
from mixture.climbmix import (
    BuildError,
    ClusterPlan,
    cluster_lengths,
    cluster_rng,
    cluster_sizes,
    load_mixture,
    normalise_mixture,
    per_cluster,
    plan_clusters,
    select_documents,
    shuffle,
    warn_capped,
)
from mixture.climbmix.card import render_card
from mixture.climbmix.shuffle import Bucket, Part
from mixture.config import BuildConfig
from mixture.contract import StageContext, StageOutput
from mixture.dataset import Dataset
from mixture.parallel import fan_out
from mixture.registry import OUTPUT_FORMATS


def read_mixture(ctx: StageContext, clusters: list[str]) -> tuple[str, dict[str, float]]:
    """(the mixture file read, its weights normalised over the ClimbLab clusters)."""
    uri = ctx.cfg.build.mixture or ctx.input("search").path("mixture.json")
    return uri, normalise_mixture(load_mixture(uri), clusters)


def sample(ctx: StageContext, lab: ClimbLab, plans: list[ClusterPlan]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The documents each cluster contributes (with repeats when upsampling), seeded per
    cluster, and their tokens; one cluster's document lengths in memory at a time."""
    selected, taken = {}, {}
    for p in plans:
        lengths = cluster_lengths(lab, p.cluster)
        selected[p.cluster] = select_documents(lengths, p.target_tokens, cluster_rng(ctx.cfg.seed, p.cluster))
        taken[p.cluster] = int(lengths[selected[p.cluster]].sum())
    return selected, taken


# ---------------------------------------------------------------------------------- steps
def plan(ctx: StageContext) -> dict[str, Any]:
    """Select the documents, draw the global order and stage the shuffle's plan (kept when the
    same plan is staged already); returns the layout (`parts`, `buckets`: `to_dict()` rows)."""
    cfg: BuildConfig = ctx.cfg.build
    lab = ClimbLab(ctx.input("climblab"))
    if not lab.clusters:
        raise BuildError("the ClimbLab dataset has no clusters")
    mixture_uri, weights = read_mixture(ctx, lab.clusters)
    docs, tokens = cluster_sizes(lab)
    plans = plan_clusters(weights, tokens, docs, cfg.tokens, cfg.max_epochs)
    warn_capped(plans, cfg.tokens, cfg.max_epochs)
    selected, taken = sample(ctx, lab, plans)
    n_docs = sum(len(v) for v in selected.values())
    if n_docs == 0:
        raise BuildError("the mixture and budget select no documents")
    parts = shuffle.plan_parts(lab, selected, cfg.part_docs, docs)
    buckets = shuffle.plan_buckets(n_docs, cfg.shard_docs, cfg.bucket_docs)
    layout = {
        "clusters": lab.clusters,
        "documents": n_docs,
        "shard_docs": cfg.shard_docs,
        "bucket_docs": max(1, cfg.bucket_docs // cfg.shard_docs) * cfg.shard_docs,
        "parts": len(parts),
        "part_list": [p.to_dict() for p in parts],
        "buckets": [b.to_dict() for b in buckets],
        "per_cluster": per_cluster(plans, taken, selected),
        "mixture": {"uri": mixture_uri, "weights": weights},
        "seed": ctx.cfg.seed,
        "selection": shuffle.selection_digest(selected, lab.clusters),
    }
    shuffle.prepare(ctx.writer, json_safe(layout), selected, ctx.cfg.seed)
    return shuffle.read_plan(ctx.writer)


def json_safe(obj: Any) -> Any:
    """The layout as it reads back from plan.json (tuples as lists), so staged plans compare."""
    return json.loads(json.dumps(obj))


def parts(layout: dict[str, Any]) -> list[Part]:
    return [Part(**p) for p in layout["part_list"]]


def buckets(layout: dict[str, Any]) -> list[Bucket]:
    return [Bucket(**b) for b in layout["buckets"]]


def format_classes(cfg: BuildConfig) -> list[type]:
    """The configured formats' classes (sent to worker processes by reference: a format
    registered by a module of its own is registered there when its module is imported)."""
    return [OUTPUT_FORMATS.get(name) for name in cfg.formats]


def scatter(ctx: StageContext, part: Part) -> int:
    """Scatter one part (idempotent); the rows it routed."""
    return shuffle.scatter_part(ClimbLab(ctx.input("climblab")), ctx.writer, part)


def gather(ctx: StageContext, bucket: Bucket) -> dict[str, Any]:
    """Write one bucket's shards (idempotent); its record (documents, tokens, shards)."""
    cfg: BuildConfig = ctx.cfg.build
    return shuffle.gather_bucket(ClimbLab(ctx.input("climblab")), ctx.writer, bucket, format_classes(cfg), cfg)


# ----------------------------------------------------------------------- worker processes
def _scatter_worker(climblab: Dataset, writer, part: Part) -> int:
    return shuffle.scatter_part(ClimbLab(climblab), writer, part)


def _gather_worker(climblab: Dataset, writer, bucket: Bucket, formats: list[type], cfg: BuildConfig) -> dict:
    return shuffle.gather_bucket(ClimbLab(climblab), writer, bucket, formats, cfg)


def run_steps(ctx: StageContext, layout: dict[str, Any]) -> None:
    """Every part scattered, then every bucket gathered, in `build.workers` processes."""
    cfg: BuildConfig = ctx.cfg.build
    lab = ctx.input("climblab")
    scatter = [(lab, ctx.writer, p) for p in parts(layout)]
    fan_out(_scatter_worker, scatter, cfg.workers, desc="climbmix scatter", unit="part")
    formats = format_classes(cfg)
    jobs = [(lab, ctx.writer, b, formats, cfg) for b in buckets(layout)]
    fan_out(_gather_worker, jobs, cfg.workers, desc="climbmix gather", unit="bucket")


# ------------------------------------------------------------------------------ finishing
def check_written(written: dict[str, Any], layout: dict[str, Any]) -> None:
    """What was written is what the plan selected (documents per cluster, tokens), or the build fails."""
    clusters = layout["per_cluster"]
    planned_docs = {c: v["documents"] for c, v in clusters.items() if v["documents"]}
    planned_tokens = sum(v["tokens"] for v in clusters.values())
    if (
        written["documents"] != layout["documents"]
        or written["clusters"] != planned_docs
        or written["tokens"] != planned_tokens
    ):
        raise BuildError(
            f"build: wrote {written['documents']} documents / {written['tokens']} tokens, the plan "
            f"had {layout['documents']} documents / {planned_tokens} tokens"
        )


def finish_formats(ctx: StageContext, lab: ClimbLab, shards: int) -> None:
    """Each format's optional `finish`, after every shard, for the files that span the shards."""
    cfg: BuildConfig = ctx.cfg.build
    facts = {
        "seed": ctx.cfg.seed,
        "vocab_size": lab.vocab_size,
        "eos_id": lab.eos_id,
        "dtype": lab.dtype.name,
        "shards": shards,
    }
    for cls in format_classes(cfg):
        fmt = cls()
        if hasattr(fmt, "finish"):
            fmt.finish(ctx.writer, cfg, facts)


def finish(ctx: StageContext) -> StageOutput:
    """The stage's output once every bucket is written (by `run`, or by separate tasks): checks,
    the formats' finish hooks, tokenizer and card; then the output is recorded in the staging
    folder and the shuffle's bulky scratch deleted. Idempotent: once recorded, a second call (a
    retried commit) returns the record."""
    if ctx.writer.has(shuffle.FINISHED):
        return finished_output(storage.read_json(ctx.writer.path(shuffle.FINISHED)))
    cfg: BuildConfig = ctx.cfg.build
    lab = ClimbLab(ctx.input("climblab"))
    layout = shuffle.read_plan(ctx.writer)
    written = shuffle.gathered(ctx.writer, buckets(layout))
    check_written(written, layout)
    check_shard_files(ctx.writer, cfg, written["shards"])
    finish_formats(ctx, lab, written["shards"])
    storage.write_bytes(ctx.writer.path(TOKENIZER), storage.read_bytes(lab.tokenizer_path))
    mix = layout["mixture"]
    extra = manifest_extra(ctx, lab, mix["weights"], mix["uri"], layout["per_cluster"], written["shards"])
    counts = {"documents": written["documents"], "tokens": written["tokens"]}
    storage.write_text(
        ctx.writer.path("README.md"),
        render_card(ctx.cfg, counts, extra, ctx.input("climblab"), ctx.input("curated"), ctx.input("clusters")),
    )
    lines = summary(cfg, counts, layout["per_cluster"], written["shards"])
    storage.write_json(ctx.writer.path(shuffle.FINISHED), {"counts": counts, "extra": extra, "summary": lines})
    shuffle.clear(ctx.writer)
    return finished_output(storage.read_json(ctx.writer.path(shuffle.FINISHED)))


def finished_output(record: dict[str, Any]) -> StageOutput:
    """The StageOutput a finished build recorded (the same for the first call and a retry)."""
    return StageOutput(record["counts"], record["extra"], [tuple(line) for line in record["summary"]])


def check_shard_files(writer, cfg: BuildConfig, shards: int) -> None:
    """Each format's per-shard files are exactly part-00000 .. part-{shards - 1}: a file of
    another plan left in the staging folder fails the build instead of being committed."""
    for cls in format_classes(cfg):
        fmt: Any = cls
        for pattern in fmt.files:
            if "NNNNN" not in pattern:
                continue
            folder = pattern.rsplit("/", 1)[0]
            regex = re.compile(re.escape(pattern).replace("NNNNN", r"\d+"))
            root = len(writer.staging.rstrip("/")) + 1
            found = {f[root:] for f in storage.list_files(writer.path(folder)) if regex.fullmatch(f[root:])}
            expected = {pattern.replace("NNNNN", f"{s:05d}") for s in range(shards)}
            if found != expected:
                odd = sorted(found ^ expected)
                raise BuildError(
                    f"build: {fmt.name} files do not match the plan's {shards} shard(s): {', '.join(odd[:3])}"
                    f"{' ...' if len(odd) > 3 else ''} (left by another plan? delete {writer.staging} and build again)"
                )


def run(ctx: StageContext) -> StageOutput:
    layout = plan(ctx)
    run_steps(ctx, layout)
    return finish(ctx)


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
