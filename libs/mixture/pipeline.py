"""The stages in data-flow order and the one runner that applies the dataset contract to each.

A stage is a function `run(ctx) -> StageOutput` in its own module. The runner gives it the
validated config, its committed inputs and a `DatasetWriter`; it skips the stage when the
committed output was made from the same config and inputs ("up to date"), and commits the output
with its manifest afterwards. The same function runs from the CLI and from an Airflow task.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mixture import io
from mixture.config import Config
from mixture.dataset import Dataset, DatasetError, DatasetWriter, open_dataset, up_to_date

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str                       # also the dataset's folder under output_root
    inputs: tuple[str, ...]         # upstream datasets
    sections: tuple[str, ...]       # config sections whose values change the output
    target: str                     # "module:function", imported only when the stage runs
    resumable: bool = False         # keep staged pieces of a killed run
    files: tuple[str, ...] = ()     # config keys naming files whose content changes the output

    def func(self) -> Callable[["StageContext"], "StageOutput"]:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)


STAGES: tuple[Stage, ...] = (
    Stage("curated", (), ("input", "curate"), "mixture.curate.stage:run", files=("input.uris",)),
    Stage("embeddings", ("curated",), ("embed",), "mixture.embed:run", resumable=True),
    Stage("clusters", ("curated", "embeddings"), ("cluster",), "mixture.cluster:run",
          files=("cluster.quality.reference_uris", "cluster.quality.fasttext_model")),
    Stage("climblab", ("curated", "clusters"), ("shards",), "mixture.shards:run", files=("shards.tokenizer",)),
    Stage("search", ("climblab",), ("search",), "mixture.search.stage:run", resumable=True,
          files=("search.target.val_uris", "search.target.tasks")),
    Stage("climbmix", ("climblab", "search"), ("build",), "mixture.build:run", files=("build.mixture",)),
)
# CLI names of the stages (verbs) -> dataset names
COMMANDS = {"curate": "curated", "embed": "embeddings", "cluster": "clusters",
            "shards": "climblab", "search": "search", "build": "climbmix"}
BY_NAME = {s.name: s for s in STAGES}


@dataclass
class StageOutput:
    counts: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    summary: list[tuple[str, Any]] = field(default_factory=list)   # lines for the final table


@dataclass
class StageContext:
    cfg: Config
    stage: Stage
    inputs: dict[str, Dataset]
    writer: DatasetWriter

    def input(self, name: str) -> Dataset:
        return self.inputs[name]


@dataclass
class StageResult:
    stage: str
    dataset: Dataset
    skipped: bool
    seconds: float
    summary: list[tuple[str, Any]]


def dataset_uri(cfg: Config, name: str) -> str:
    return io.join(cfg.output_root, name)


def files_fingerprint(uris: list[str]) -> list[list]:
    """Path and size of every file the URIs name: a corpus refresh that adds, drops or rewrites
    input files changes the fingerprint (cheap: one listing, no reads)."""
    return [[f, io.size(f)] for f in io.expand(uris)]


def config_hash(cfg: Config, stage: Stage) -> str:
    """The stage's config sections, plus what the files named in its config hold: editing a
    mixture file or a target set in place makes the stage run again."""
    parts = [cfg.section_hash(*stage.sections)]
    for key in stage.files:
        value = cfg
        for k in key.split("."):
            value = getattr(value, k)
        uris = [value] if isinstance(value, str) else list(value or [])
        if key == "input.uris":
            parts.append(json.dumps(files_fingerprint(uris)))
        else:
            parts += [io.sha256(f) for u in uris for f in (io.expand([u]) or [u])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def prepare(cfg: Config, name: str) -> tuple[Stage, dict[str, Dataset], DatasetWriter]:
    """The stage, its committed inputs and a writer for its staging folder. The staging folder
    is the same for the same config and inputs, so steps of one stage that run as separate tasks
    (the search's proxy runs under Airflow) share it, and a resumable stage finds its pieces."""
    stage = BY_NAME[name]
    inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in stage.inputs}
    writer = DatasetWriter(dataset_uri(cfg, stage.name), stage.name, config_hash(cfg, stage),
                           {n: d.manifest_sha256 for n, d in inputs.items()},
                           staging_root=io.join(cfg.output_root, "_staging"), resume=True)
    return stage, inputs, writer


def current(cfg: Config, name: str) -> Dataset | None:
    """The committed dataset `name` if it is up to date with the config and its inputs."""
    stage = BY_NAME[name]
    try:
        inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in stage.inputs}
    except DatasetError:
        return None
    return up_to_date(dataset_uri(cfg, name), config_hash(cfg, stage),
                      {n: d.manifest_sha256 for n, d in inputs.items()})


def run_stage(cfg: Config, name: str, force: bool = False) -> StageResult:
    t0 = time.time()
    if not force and (done := current(cfg, name)):
        log.info("%s: up to date (%s)", name, done.uri)
        return StageResult(name, done, True, 0.0, [("up to date", done.uri)])
    stage, inputs, writer = prepare(cfg, name)
    if not stage.resumable:
        writer.reset()
    out = stage.func()(StageContext(cfg, stage, inputs, writer))
    ds = writer.commit(out.counts, out.extra)
    secs = time.time() - t0
    log.info("%s: committed %s in %.1f s", stage.name, ds.uri, secs)
    return StageResult(stage.name, ds, False, secs, out.summary)


def run_all(cfg: Config, force: bool = False, until: str | None = None) -> list[StageResult]:
    results = []
    for stage in STAGES:
        results.append(run_stage(cfg, stage.name, force=force))
        if stage.name == until:
            break
    return results
