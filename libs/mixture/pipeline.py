"""The stages in data-flow order and the one runner that applies the dataset contract to each.

A stage is a function `run(ctx) -> StageOutput` (`mixture.contract`). The runner gives it the
validated config, its committed inputs and a `DatasetWriter`; it skips the stage when the
committed output was made from the same config and inputs ("up to date"), and commits the output
with its manifest afterwards. The same function runs from the CLI and from an Airflow task.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from mixture import storage
from mixture.config import Config
from mixture.contract import Stage, StageContext, StageOutput
from mixture.dataset import Dataset, DatasetError, DatasetWriter, open_dataset, up_to_date

log = logging.getLogger(__name__)


STAGES: tuple[Stage, ...] = (
    Stage("curate", "annotated", (), ("input", "curate.annotation"), files=("input.uris",)),
    Stage("select", "curated", ("annotated",), ("curate.selection",)),
    Stage("embed", "embeddings", ("curated",), ("embed",), resumable=True, target="mixture.embed:run"),
    Stage("cluster", "clusters", ("curated", "embeddings"), ("cluster",),
          files=("cluster.quality.reference_uris", "cluster.quality.fasttext_model"),
          target="mixture.cluster:run"),
    Stage("shards", "climblab", ("curated", "clusters"), ("shards",), files=("shards.tokenizer",),
          target="mixture.shards:run"),
    Stage("search", "search", ("climblab",), ("search",), resumable=True,
          files=("search.target.val_uris", "search.target.tasks"), target="mixture.search.stage:run"),
    Stage("build", "climbmix", ("climblab", "search"), ("build",), files=("build.mixture",),
          target="mixture.build:run"),
)
BY_NAME = {s.name: s for s in STAGES}
BY_DATASET = {s.dataset: s for s in STAGES}


def stage(name: str) -> Stage:
    """A stage by its name (`curate`) or by the dataset it writes (`curated`)."""
    found = BY_NAME.get(name) or BY_DATASET.get(name)
    if found is None:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}")
    return found


@dataclass
class StageResult:
    stage: str
    dataset: Dataset
    skipped: bool
    seconds: float
    summary: list[tuple[str, Any]]


def dataset_uri(cfg: Config, name: str) -> str:
    return storage.join(cfg.output_root, name)


def files_fingerprint(uris: list[str]) -> list[list]:
    """Path and size of every file the URIs name: a corpus refresh that adds, drops or rewrites
    input files changes the fingerprint (cheap: one listing, no reads)."""
    return [[f, storage.size(f)] for f in storage.expand(uris)]


def config_hash(cfg: Config, st: Stage) -> str:
    """The stage's config sections, plus what the files named in its config hold: editing a
    mixture file or a target set in place makes the stage run again."""
    parts = [cfg.section_hash(*st.sections)]
    for key in st.files:
        value = cfg
        for k in key.split("."):
            value = getattr(value, k)
        uris = [value] if isinstance(value, str) else list(value or [])
        if key == "input.uris":
            parts.append(json.dumps(files_fingerprint(uris)))
        else:
            parts += [storage.sha256(f) for u in uris for f in (storage.expand([u]) or [u])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def open_stage(cfg: Config, name: str) -> StageContext:
    """The stage's context: its committed inputs and a writer for its staging folder. The staging
    folder is the same for the same config and inputs, so steps of one stage that run as separate
    tasks (the search's proxy runs under Airflow) share it, and a resumable stage finds its pieces.
    Entry points (CLI, jobs, DAG tasks) open a stage; stages receive the context."""
    st = stage(name)
    inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in st.inputs}
    writer = DatasetWriter(dataset_uri(cfg, st.dataset), st.name, config_hash(cfg, st),
                           {n: d.manifest_sha256 for n, d in inputs.items()},
                           staging_root=storage.join(cfg.output_root, "_staging"), resume=True)
    return StageContext(cfg, st, inputs, writer)


def commit(ctx: StageContext, out: StageOutput) -> Dataset:
    """Commit what the stage staged, with its manifest written last."""
    return ctx.writer.commit(out.counts, out.extra)


def current(cfg: Config, name: str) -> Dataset | None:
    """The committed dataset of stage `name` if it is up to date with the config and its inputs."""
    st = stage(name)
    try:
        inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in st.inputs}
    except DatasetError:
        return None
    return up_to_date(dataset_uri(cfg, st.dataset), config_hash(cfg, st),
                      {n: d.manifest_sha256 for n, d in inputs.items()})


def run_stage(cfg: Config, name: str, force: bool = False) -> StageResult:
    """Run one stage under the contract: skip when up to date, else run it and commit."""
    st = stage(name)
    t0 = time.time()
    if not force and (done := current(cfg, st.name)):
        log.info("%s: up to date (%s)", st.name, done.uri)
        return StageResult(st.name, done, True, 0.0, [("up to date", done.uri)])
    ctx = open_stage(cfg, st.name)
    if not st.resumable:
        ctx.writer.reset()
    out = st.func()(ctx)
    ds = commit(ctx, out)
    secs = time.time() - t0
    log.info("%s: committed %s in %.1f s", st.name, ds.uri, secs)
    return StageResult(st.name, ds, False, secs, out.summary)


def run_all(cfg: Config, force: bool = False, until: str | None = None) -> list[StageResult]:
    last = stage(until).name if until else None
    results = []
    for st in STAGES:
        results.append(run_stage(cfg, st.name, force=force))
        if st.name == last:
            break
    return results
