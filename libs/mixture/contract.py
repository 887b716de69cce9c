"""The stage contract: what a stage is, what it is given and what it returns.

A stage is a function `run(ctx: StageContext) -> StageOutput` in its own module under
`mixture.stages`. The runner (`mixture.pipeline`) builds the context (the validated config, the
committed datasets the stage declares as inputs, and a `DatasetWriter` for the one dataset it
writes), skips the stage when its committed output is up to date, and commits what the stage
staged with the manifest written last. Only the runner and the entry points (CLI, jobs, DAG tasks)
open a stage; stages and libraries never import the runner.

This module sits below every stage and library (with `config`, `storage` and `dataset`); it
imports nothing of theirs, so the import graph has no cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixture.config import Config
    from mixture.dataset import Dataset, DatasetWriter


@dataclass(frozen=True)
class Stage:
    """One stage: the one name it goes by (CLI verb, module `mixture.stages.<name>`, Airflow task),
    the dataset it writes, the datasets it reads, and what its output depends on."""

    name: str  # CLI verb and module name
    dataset: str  # the dataset's folder under output_root
    inputs: tuple[str, ...]  # upstream datasets (folder names); the runner opens them
    sections: tuple[str, ...]  # config sections whose values change the output
    resumable: bool = False  # keep staged pieces of a killed run
    files: tuple[str, ...] = ()  # config keys naming files whose content changes the output
    unhashed: tuple[str, ...] = ()  # "section.key" fields of `sections` that do not change it
    requires: tuple[str, ...] = ()  # "section.key" fields that must be set for the stage to run
    target: str = ""  # "module:function"; default mixture.stages.<name>:run

    def func(self) -> Callable[[StageContext], StageOutput]:
        module, fn = (self.target or f"mixture.stages.{self.name}:run").split(":")
        return getattr(importlib.import_module(module), fn)


@dataclass
class StageOutput:
    """What a stage returns: the manifest's counts and extra fields, and summary lines."""

    counts: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    summary: list[tuple[str, Any]] = field(default_factory=list)  # lines for the final table


@dataclass
class StageContext:
    """What the runner gives a stage: the config, its committed inputs and its writer."""

    cfg: Config
    stage: Stage
    inputs: dict[str, Dataset]
    writer: DatasetWriter
    # The stage's committed dataset, up to date or not: what an incremental run extends
    # (`mixture.increments`); None when there is none.
    previous: Dataset | None = None
    # The stage's config hash less the input listing: the same settings, perhaps other input files.
    settings_hash: str = ""

    def input(self, name: str) -> Dataset:
        return self.inputs[name]
