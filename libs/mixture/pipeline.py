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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mixture import faults, lease, storage
from mixture.config import Config, ConfigError
from mixture.contract import Stage, StageContext, StageOutput
from mixture.dataset import Dataset, DatasetError, DatasetWriter, open_dataset, recover, try_open, up_to_date

log = logging.getLogger(__name__)


STAGES: tuple[Stage, ...] = (
    Stage("curate", "annotated", (), ("input", "curate.annotation"), files=("input.uris",), requires=("input.uris",)),
    Stage("select", "curated", ("annotated",), ("curate.selection",)),
    # with the user's own groups (cluster.method field / assignments) embed commits an empty dataset
    Stage("embed", "embeddings", ("curated",), ("embed", "cluster.needs_embeddings"), resumable=True),
    # embed.model: its tokenizer estimates the report's tokens when no embeddings manifest names it
    Stage(
        "cluster",
        "clusters",
        ("curated", "embeddings"),
        ("cluster", "embed.model"),
        files=(
            "cluster.quality.reference_uris",
            "cluster.quality.fasttext_model",
            "cluster.mapping",
            "cluster.assignments",
        ),
    ),
    Stage("shards", "climblab", ("curated", "clusters"), ("shards",), files=("shards.tokenizer",), resumable=True),
    Stage(
        "search",
        "search",
        ("climblab",),
        ("search", "search.playoff_proxy"),
        resumable=True,
        files=("search.target.val_uris", "search.target.tasks"),
        unhashed=("search.transfer_proxy", "search.transfer_seeds"),
    ),  # only the baselines use them, and the playoff the transfer proxy when tokens_factor is null (playoff_proxy)
    # resumable: a killed build keeps the parts it scattered and the buckets it wrote (mixture.climbmix.shuffle)
    Stage(
        "build",
        "climbmix",
        ("climblab", "search", "curated", "clusters"),
        ("build",),
        resumable=True,
        files=("build.mixture",),
    ),
)
# Stages that `climb run` does not run: each has its own command.
ON_REQUEST: tuple[Stage, ...] = (
    Stage(
        "baselines",
        "baselines",
        ("climblab", "search"),
        ("search", "tracking"),
        resumable=True,
        files=("search.target.val_uris", "search.target.tasks"),
    ),
)
BY_NAME = {s.name: s for s in STAGES + ON_REQUEST}
BY_DATASET = {s.dataset: s for s in STAGES + ON_REQUEST}


def stage(name: str | Stage) -> Stage:
    """A stage by its name (`curate`) or by the dataset it writes (`curated`); a `Stage` that is
    not in the table (an extension's, a test's) is taken as it is."""
    if isinstance(name, Stage):
        return name
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
    """Path, size and modification time of every file the URIs name: a corpus refresh that
    adds, drops or rewrites input files changes the fingerprint (cheap: no reads). Whether a
    rewritten file's content changed is the curate stage's to tell (`curate.prior.classify`)."""
    return [[f, storage.size(f), storage.modified(f)] for f in storage.expand(uris)]


def config_hash(cfg: Config, st: Stage, listing: bool = True) -> str:
    """The stage's config sections, plus what the files named in its config hold: editing a
    mixture file or a target set in place makes the stage run again. Without `listing`, the
    input files' listing is left out: the hash of the settings alone (an incremental curation
    extends a version made with the same settings from fewer files)."""
    # the settings alone: not which input files (a refresh may name a new dump by its own URI)
    listed = () if listing or "input.uris" not in st.files else ("input.uris",)
    parts = [cfg.section_hash(*st.sections, exclude=st.unhashed + listed)]
    for key in st.files:
        uris = cfg.uris(key)
        if key == "input.uris":
            if listing:
                parts.append(json.dumps(files_fingerprint(uris)))
        else:
            parts += [storage.sha256(f) for u in uris for f in (storage.expand([u]) or [u])]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def open_stage(cfg: Config, name: str | Stage) -> StageContext:
    """The stage's context: its committed inputs and a writer for its staging folder. The staging
    folder is the same for the same config and inputs, so steps of one stage that run as separate
    tasks (the search's proxy runs under Airflow) share it, and a resumable stage finds its pieces.
    Entry points (CLI, jobs, DAG tasks) open a stage; stages receive the context."""
    st = stage(name)
    inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in st.inputs}
    writer = DatasetWriter(
        dataset_uri(cfg, st.dataset),
        st.name,
        config_hash(cfg, st),
        {n: d.manifest_sha256 for n, d in inputs.items()},
        staging_root=storage.join(cfg.output_root, "_staging"),
        resume=True,
    )
    previous = try_open(dataset_uri(cfg, st.dataset))
    return StageContext(cfg, st, inputs, writer, previous, config_hash(cfg, st, listing=False))


@contextmanager
def exclusive(cfg: Config, name: str | Stage) -> Iterator[None]:
    """Hold the lease of the stage's dataset: one writer at a time (`mixture.lease`). A killed
    commit of an earlier writer is undone first, so its previous dataset is visible again."""
    st = stage(name)
    c = cfg.concurrency
    with lease.hold(cfg.output_root, st.dataset, wait=c.on_busy == "wait", timeout=c.wait_timeout_s, ttl=c.lease_ttl_s):
        recover(dataset_uri(cfg, st.dataset))
        yield


def commit(ctx: StageContext, out: StageOutput) -> Dataset:
    """Commit what the stage staged, with its manifest written last, holding the lease."""
    with exclusive(ctx.cfg, ctx.stage), faults.translated(ctx.stage.name, ctx.writer.staging):
        return ctx.writer.commit(out.counts, out.extra)


def current(cfg: Config, name: str | Stage) -> Dataset | None:
    """The committed dataset of stage `name` if it is up to date with the config and its inputs."""
    st = stage(name)
    try:
        inputs = {n: open_dataset(dataset_uri(cfg, n)) for n in st.inputs}
    except DatasetError:
        return None
    return up_to_date(
        dataset_uri(cfg, st.dataset), config_hash(cfg, st), {n: d.manifest_sha256 for n, d in inputs.items()}
    )


def run_stage(cfg: Config, name: str | Stage, force: bool = False) -> StageResult:
    """Run one stage under the contract: skip when up to date, else run it and commit. The lease
    is held from the up-to-date check to the commit, so a second run of the same stage waits and
    then finds the first one's dataset up to date, instead of deleting it."""
    st = stage(name)
    t0 = time.time()
    if not force and (done := current(cfg, st)):
        return _skipped(st, done)
    check_requires(cfg, st)
    with exclusive(cfg, st):
        if not force and (done := current(cfg, st)):
            return _skipped(st, done)
        ctx = open_stage(cfg, st)
        # a full disk, a file it may not read...: one line naming the stage (`mixture.faults`)
        with faults.translated(st.name, ctx.writer.staging):
            if not st.resumable:
                ctx.writer.reset()
            out = st.func()(ctx)
            ds = ctx.writer.commit(out.counts, out.extra)
    secs = time.time() - t0
    log.info("%s: committed %s in %.1f s", st.name, ds.uri, secs)
    return StageResult(st.name, ds, False, secs, out.summary)


def check_requires(cfg: Config, st: Stage) -> None:
    """A stage asks only for the config it reads: ConfigError naming a required key left empty."""
    for dotted in st.requires:
        if cfg.value(dotted) in (None, "", [], {}):
            raise ConfigError(f"{dotted}: required by the {st.name} stage (climb {st.name}) and not set")


def _skipped(st: Stage, done: Dataset) -> StageResult:
    log.info("%s: up to date (%s)", st.name, done.uri)
    return StageResult(st.name, done, True, 0.0, [("up to date", done.uri)])


def run_all(cfg: Config, force: bool = False, until: str | None = None) -> list[StageResult]:
    last = stage(until).name if until else None
    results = []
    for st in STAGES:
        results.append(run_stage(cfg, st.name, force=force))
        if st.name == last:
            break
    return results


def publish(cfg: Config, version: str | None = None) -> str:
    """Publish the committed, up-to-date ClimbMix dataset to `publish.uri`; returns the version's
    URI. Two publishers of one version take turns on its lease (an S3 lease object under
    `<publish.uri>/_leases/`): the second then finds it published (same content: no-op) or is
    refused (different content); neither writes or deletes objects while the other holds it."""
    from mixture.publish import publisher
    from mixture.publish.s3 import PublishError, check_target

    target = check_target(cfg)
    ds = current(cfg, "build")
    if ds is None:
        raise PublishError(
            f"the ClimbMix dataset at {dataset_uri(cfg, stage('build').dataset)} is "
            "missing or was built from another config or other inputs: run `climb build` first"
        )
    version = publisher.resolve_version(ds, cfg, version)
    c = cfg.concurrency
    try:
        with lease.hold(
            target.uri(), f"version-{version}", wait=c.on_busy == "wait", timeout=c.wait_timeout_s, ttl=c.lease_ttl_s
        ):
            rep = publisher.publish_dataset(ds, cfg, version)
    except lease.LeaseError as err:
        raise PublishError(str(err)) from None
    if cfg.publish.track:
        publisher.track(cfg, rep)
    return rep.uri
