"""Stage `build`: ClimbMix-style training shards from the ClimbLab clusters and a mixture.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture the search
found, to a token budget (ClimbMix: 400B tokens). The rules are in `mixture.climbmix`, the steps
in `mixture.climbmix.build`, the external shuffle in `mixture.climbmix.shuffle`. This stage reads
its declared inputs (`climblab`, `search` for its mixture.json unless `build.mixture` names a
file, and `curated` / `clusters` for the dataset card), then runs the steps: `plan` (the held-out
validation split, selection, global order, the shuffle's layout), `scatter` per part, `gather`
per bucket (every format of `build.formats`, the validation split's under `validation/`),
`finish` (checks, the formats' finish hooks, the tokenizer folder and the dataset card,
`mixture.climbmix.card`; a second `finish`, the commit retried, returns the recorded output).

Scatter and gather are idempotent per part and per bucket (the stage is resumable: a killed build
keeps what it scattered and gathered): here they run in `build.workers` spawned processes
(`run`), under Airflow as mapped tasks (`dags/climb_mixture_search.py`: `build_plan` ->
`build_scatter` -> `build_gather` -> `build`, which runs `finish` and commits). The same inputs,
config and seed give byte-identical files whatever the workers, parts or buckets, so the content
hash that `climb publish` uses as the default version is stable across rebuilds.
"""

from __future__ import annotations

from typing import Any

from mixture import faults, storage
from mixture.climblab import ClimbLab
from mixture.climbmix import build as climbmix_build
from mixture.climbmix import shuffle
from mixture.climbmix.card import render_card
from mixture.climbmix.shuffle import Bucket, Part
from mixture.contract import StageContext, StageOutput


def mixture_uri(ctx: StageContext) -> str:
    """The mixture file the build reads: `build.mixture`, else the search's mixture.json."""
    return ctx.cfg.build.mixture or ctx.input("search").path("mixture.json")


def plan(ctx: StageContext) -> dict[str, Any]:
    """Select the documents, draw the global order and stage the shuffle's plan (kept when the
    same plan is staged already); returns the layout (`parts`, `buckets`: `to_dict()` rows). A
    disk with less free space than the scatter and gather will surely write is refused here."""
    lab = ClimbLab(ctx.input("climblab"))
    layout = climbmix_build.plan(lab, ctx.writer, ctx.cfg.build, ctx.cfg.seed, mixture_uri(ctx))
    if (local := storage.local_path(ctx.writer.staging)) is not None:  # S3 does not fill up
        staged = sum(storage.size(f) for f in storage.list_files(ctx.writer.staging))
        faults.check_free(local, space_needed(layout, ctx.cfg.build.formats, lab.dtype.itemsize) - staged, "build")
    return layout


TOKEN_FORMATS = {"tokens", "megatron", "nanogpt"}  # the built-in formats that write every token


def space_needed(layout: dict[str, Any], formats: list[str], itemsize: int) -> int:
    """A lower bound of the bytes a build writes: its tokens once in the shuffle's routed rows and
    once per format that writes tokens (texts, indexes and the card come on top)."""
    tokens = sum(int(c["tokens"]) for c in layout["per_cluster"].values())
    return tokens * itemsize * (1 + len(TOKEN_FORMATS & set(formats)))


def scatter(ctx: StageContext, part: Part) -> int:
    """Scatter one part (idempotent); the rows it routed."""
    return shuffle.scatter_part(ClimbLab(ctx.input("climblab")), ctx.writer, part)


def gather(ctx: StageContext, bucket: Bucket) -> dict[str, Any]:
    """Write one bucket's shards (idempotent); its record (documents, tokens, shards)."""
    cfg = ctx.cfg.build
    lab = ClimbLab(ctx.input("climblab"))
    return shuffle.gather_bucket(lab, ctx.writer, bucket, climbmix_build.format_classes(cfg), cfg)


def run_steps(ctx: StageContext, layout: dict[str, Any]) -> None:
    """Every part scattered, then every bucket gathered, in `build.workers` processes."""
    climbmix_build.run_steps(ctx.input("climblab"), ctx.writer, layout, ctx.cfg.build)


def finish(ctx: StageContext) -> StageOutput:
    """The stage's output once every bucket is written (by `run`, or by separate tasks): checks,
    the formats' finish hooks, tokenizer and card; then the output is recorded in the staging
    folder and the shuffle's bulky scratch deleted. Idempotent: once recorded, a second call (a
    retried commit) returns the record."""
    if (done := climbmix_build.finished(ctx.writer)) is not None:
        return done
    lab = ClimbLab(ctx.input("climblab"))
    counts, extra, lines = climbmix_build.finish(lab, ctx.writer, ctx.cfg.build, ctx.cfg.seed)
    storage.write_text(
        ctx.writer.path("README.md"),
        render_card(ctx.cfg, counts, extra, ctx.input("climblab"), ctx.input("curated"), ctx.input("clusters")),
    )
    return climbmix_build.record(ctx.writer, counts, extra, lines)


def run(ctx: StageContext) -> StageOutput:
    layout = plan(ctx)
    run_steps(ctx, layout)
    return finish(ctx)
