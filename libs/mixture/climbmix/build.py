"""The ClimbMix build's steps: plan, scatter and gather (in local processes), finish.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture the search
found, to a token budget (ClimbMix: 400B tokens). The rules are in `mixture.climbmix`, the
external shuffle in `mixture.climbmix.shuffle`; the stage `mixture.stages.build` says what is read
and committed. The steps, given a ClimbLab reader, the build's staging folder and `build` config:

1. `plan`: normalises the mixture, plans each cluster's tokens (`build.tokens`,
   `build.max_epochs`), holds out the validation split among the distinct documents
   (`mixture.climbmix.holdout`, `build.val_fraction`), samples whole documents per cluster from
   the rest (`sample`) and draws the global order with the run's seed; stages the routes and the
   layout: *parts* (row groups of the clusters' `text.parquet`, `build.part_docs` documents each)
   and *buckets* (contiguous ranges of output shards, `build.bucket_docs` documents each; the
   validation split's after the training ones);
2. scatter per part (`shuffle.scatter_part`): routes each selected document (repeats included)
   to its bucket;
3. gather per bucket (`shuffle.gather_bucket`): writes its shards of `build.shard_docs` documents
   in every format of `build.formats` (`mixture.climbmix.formats`), row i of one being document i
   of another;
4. `finish`: checks that every bucket was written, that what was written is the plan and that
   each format's shard files are exactly the plan's shards, lets a format finish the files that
   span the shards (`megatron/blend.txt`, `nanogpt/`) and writes the tokenizer folder
   (`mixture.climbmix.tokenizer`); then (the stage
   writes the dataset card, `mixture.climbmix.card`) `record` records the output in the staging
   folder and deletes the shuffle's bulky scratch. Once recorded, `finished` returns the record.

Steps 2 and 3 are idempotent per part and per bucket (a killed build keeps what it scattered and
gathered), so they run in any order within a step: here in `build.workers` spawned processes
(`run_steps`), under Airflow as mapped tasks (`dags/climb_mixture_search.py`). Memory: the plan's
per-document arrays in one process, then one record batch and at most `shuffle.BUFFER_BYTES` of
routed rows per scatter and one bucket per gather; no step reads a token shard whole. The same
inputs, config and seed give byte-identical files whatever the workers, parts or buckets, so the
content hash that `climb publish` uses as the default version is stable across rebuilds.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from mixture import storage
from mixture.climblab import ClimbLab
from mixture.climbmix import (
    BuildError,
    ClusterPlan,
    cluster_lengths,
    cluster_rng,
    cluster_sizes,
    holdout,
    load_mixture,
    normalise_mixture,
    per_cluster,
    plan_clusters,
    select_documents,
    shuffle,
    warn_capped,
)
from mixture.climbmix import tokenizer as tokenizer_folder
from mixture.climbmix.formats import VALIDATION
from mixture.climbmix.holdout import HeldOut
from mixture.climbmix.shuffle import Bucket, Part
from mixture.config import BuildConfig
from mixture.contract import StageOutput
from mixture.dataset import Dataset
from mixture.parallel import fan_out
from mixture.registry import OUTPUT_FORMATS


def sample(
    lab: ClimbLab, plans: list[ClusterPlan], seed: int, excluded: dict[str, np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The documents each cluster contributes (with repeats when upsampling), seeded per
    cluster, and their tokens; one cluster's document lengths in memory at a time. The
    `excluded` documents (the validation split and its exact copies) are never selected."""
    selected, taken = {}, {}
    for p in plans:
        lengths = cluster_lengths(lab, p.cluster)
        pool = np.setdiff1d(np.arange(len(lengths)), (excluded or {}).get(p.cluster, []), assume_unique=True)
        chosen = select_documents(lengths[pool], p.target_tokens, cluster_rng(seed, p.cluster))
        selected[p.cluster] = pool[chosen].astype(np.int64)
        taken[p.cluster] = int(lengths[selected[p.cluster]].sum())
    return selected, taken


def select(lab: ClimbLab, cfg: BuildConfig, seed: int, weights: dict[str, float]):
    """The validation split, then the training plan and sample on what it leaves: (plans,
    selected, taken, held). The split's share per cluster is taken of the cluster's target
    before the hold-out; the training plan (its epochs and the cap) counts only what is left."""
    docs, tokens = cluster_sizes(lab)
    first = plan_clusters(weights, tokens, docs, cfg.tokens, cfg.max_epochs)
    held = holdout.split(lab, {p.cluster: p.target_tokens for p in first}, cfg.val_fraction, seed, cfg.workers)
    left_tokens = {c: tokens[c] - held.excluded_tokens.get(c, 0) for c in tokens}
    left_docs = {c: docs[c] - len(held.excluded.get(c, ())) for c in docs}
    emptied = [c for c in held.excluded if left_docs[c] == 0]
    if emptied:
        raise BuildError(
            f"cluster {emptied[0]}: every document is held out for validation or is an exact copy of a "
            "held-out one; lower build.val_fraction"
        )
    plans = plan_clusters(weights, left_tokens, left_docs, cfg.tokens, cfg.max_epochs)
    warn_capped(plans, cfg.tokens, cfg.max_epochs)
    selected, taken = sample(lab, plans, seed, held.excluded)
    return plans, selected, taken, held


# ---------------------------------------------------------------------------------- steps
def plan(lab: ClimbLab, writer, cfg: BuildConfig, seed: int, mixture_uri: str) -> dict[str, Any]:
    """Select the documents, draw the global order and stage the shuffle's plan (kept when the
    same plan is staged already); returns the layout (`parts`, `buckets`: `to_dict()` rows)."""
    if not lab.clusters:
        raise BuildError("the ClimbLab dataset has no clusters")
    weights = normalise_mixture(load_mixture(mixture_uri), lab.clusters)
    plans, selected, taken, held = select(lab, cfg, seed, weights)
    n_docs = sum(len(v) for v in selected.values())
    if n_docs == 0:
        raise BuildError("the mixture and budget select no documents")
    n_val = sum(len(v) for v in held.held.values())
    buckets, val_start = plan_split_buckets(n_docs, n_val, cfg.shard_docs, cfg.bucket_docs)
    routed, where = route(selected, held.held, lab.clusters, seed, val_start)
    documents = {c: int(v["documents"]) for c, v in lab.info["clusters"].items()}  # checked by `select`
    parts = shuffle.plan_parts(lab, routed, cfg.part_docs, documents)
    layout = {
        "clusters": lab.clusters,
        "documents": n_docs,
        "validation": validation_facts(held, n_val, val_start, cfg.val_fraction),
        "shard_docs": cfg.shard_docs,
        "bucket_docs": max(1, cfg.bucket_docs // cfg.shard_docs) * cfg.shard_docs,
        "parts": len(parts),
        "part_list": [p.to_dict() for p in parts],
        "buckets": [b.to_dict() for b in buckets],
        "per_cluster": per_cluster(plans, taken, selected, held),
        "mixture": {"uri": mixture_uri, "weights": weights},
        "seed": seed,
        "selection": shuffle.selection_digest(routed, lab.clusters),
    }
    shuffle.prepare(writer, json_safe(layout), routed, where)
    return shuffle.read_plan(writer)


def plan_split_buckets(n_train: int, n_val: int, shard_docs: int, bucket_docs: int) -> tuple[list[Bucket], int]:
    """The training buckets, then the validation split's (its own shards, numbered from 0, at
    positions from the first bucket after the training ones: a bucket is `position //
    bucket size`); (buckets, the validation split's first position)."""
    train = shuffle.plan_buckets(n_train, shard_docs, bucket_docs)
    start = len(train) * max(1, bucket_docs // shard_docs) * shard_docs
    val = [
        Bucket(b.index + len(train), b.first_shard, b.shards, b.first_doc + start, b.docs)
        for b in shuffle.plan_buckets(n_val, shard_docs, bucket_docs)
    ]
    return train + val, start


def route(
    selected: dict[str, np.ndarray], held: dict[str, np.ndarray], clusters: list[str], seed: int, val_start: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every routed document per cluster (its training selection, then its held-out documents)
    and their positions, in that order: the training documents' global order (`shuffle.positions`), the
    held-out ones' from `val_start` in an order of their own (seed `[seed, 1]`)."""
    empty = np.zeros(0, dtype=np.int64)
    val = {c: held.get(c, empty) for c in clusters}
    train_where = shuffle.positions(selected, clusters, seed)
    val_where = shuffle.positions(val, clusters, [seed, 1]) + val_start
    routed, where, a, b = {}, [], 0, 0
    for c in clusters:
        routed[c] = np.concatenate([selected[c], val[c]]).astype(np.int64)
        where += [train_where[a : a + len(selected[c])], val_where[b : b + len(val[c])]]
        a, b = a + len(selected[c]), b + len(val[c])
    return routed, np.concatenate(where) if where else empty


def validation_facts(held: HeldOut, n_val: int, start: int, fraction: float) -> dict[str, Any]:
    """The validation split in the plan: its documents, tokens, first position and share, and
    the documents kept out of training as exact copies of one of its documents."""
    return {
        "fraction": fraction,
        "documents": n_val,
        "tokens": sum(held.held_tokens.values()),
        "start": start,
        "copies_excluded": sum(held.copies(c) for c in held.held),
    }


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


# ----------------------------------------------------------------------- worker processes
def _scatter_worker(climblab: Dataset, writer, part: Part) -> int:
    return shuffle.scatter_part(ClimbLab(climblab), writer, part)


def _gather_worker(climblab: Dataset, writer, bucket: Bucket, formats: list[type], cfg: BuildConfig) -> dict:
    return shuffle.gather_bucket(ClimbLab(climblab), writer, bucket, formats, cfg)


def run_steps(climblab: Dataset, writer, layout: dict[str, Any], cfg: BuildConfig) -> None:
    """Every part scattered, then every bucket gathered, in `build.workers` processes."""
    scatter = [(climblab, writer, p) for p in parts(layout)]
    fan_out(_scatter_worker, scatter, cfg.workers, desc="climbmix scatter", unit="part")
    formats = format_classes(cfg)
    jobs = [(climblab, writer, b, formats, cfg) for b in buckets(layout)]
    fan_out(_gather_worker, jobs, cfg.workers, desc="climbmix gather", unit="bucket")


# ------------------------------------------------------------------------------ finishing
def split_buckets(layout: dict[str, Any]) -> tuple[list[Bucket], list[Bucket]]:
    """(the training buckets, the validation split's)."""
    every = buckets(layout)
    val = [b for b in every if shuffle.is_validation(layout, b)]
    return [b for b in every if b not in val], val


def check_written(written: dict[str, Any], held: dict[str, Any], layout: dict[str, Any]) -> None:
    """What was written is what the plan selected and held out (documents per cluster, tokens),
    or the build fails."""
    clusters = layout["per_cluster"]
    for split, got, key, n in (
        ("training", written, "", layout["documents"]),
        ("validation", held, "validation_", layout["validation"]["documents"]),
    ):
        planned_docs = {c: v[f"{key}documents"] for c, v in clusters.items() if v[f"{key}documents"]}
        planned_tokens = sum(v[f"{key}tokens"] for v in clusters.values())
        if got["documents"] != n or got["clusters"] != planned_docs or got["tokens"] != planned_tokens:
            raise BuildError(
                f"build: wrote {got['documents']} {split} documents / {got['tokens']} tokens, the plan "
                f"had {n} documents / {planned_tokens} tokens"
            )


def finish_formats(writer, cfg: BuildConfig, seed: int, lab: ClimbLab, written: dict, held: dict) -> None:
    """Each format's optional `finish`, after every shard, for the files that span the shards."""
    facts = {
        "seed": seed,
        "vocab_size": lab.vocab_size,
        "eos_id": lab.eos_id,
        "dtype": lab.dtype.name,
        "shards": written["shards"],
        "validation_shards": held["shards"],
        "train_documents": written["documents"],
        "val_documents": held["documents"],
    }
    for cls in format_classes(cfg):
        fmt = cls()
        if hasattr(fmt, "finish"):
            fmt.finish(writer, cfg, facts)


def check_shard_files(writer, cfg: BuildConfig, shards: int, val_shards: int = 0) -> None:
    """Each format's per-shard files are exactly part-00000 .. part-{shards - 1} (and the same
    under `validation/` for its shards): a file of another plan left in the staging folder fails
    the build instead of being committed."""
    for cls in format_classes(cfg):
        fmt: Any = cls
        for pattern in (p for p in fmt.files if "NNNNN" in p):
            for root, n in (("", shards), (VALIDATION, val_shards)):
                check_pattern(writer, fmt.name, root + pattern, n)


def check_pattern(writer, name: str, pattern: str, shards: int) -> None:
    """The files matching `pattern` (`NNNNN`: a shard) are exactly those of `shards` shards."""
    folder = pattern.rsplit("/", 1)[0]
    regex = re.compile(re.escape(pattern).replace("NNNNN", r"\d+"))
    root = len(writer.staging.rstrip("/")) + 1
    found = {f[root:] for f in storage.list_files(writer.path(folder)) if regex.fullmatch(f[root:])}
    expected = {pattern.replace("NNNNN", f"{s:05d}") for s in range(shards)}
    if found != expected:
        odd = sorted(found ^ expected)
        raise BuildError(
            f"build: {name} files do not match the plan's {shards} shard(s): {', '.join(odd[:3])}"
            f"{' ...' if len(odd) > 3 else ''} (left by another plan? delete {writer.staging} and build again)"
        )


def finish(lab: ClimbLab, writer, cfg: BuildConfig, seed: int) -> tuple[dict, dict, list[tuple[str, str]]]:
    """Once every bucket is written (by `run_steps`, or by separate tasks): the checks, the
    formats' finish hooks and the tokenizer folder; (counts, manifest extra, summary lines)."""
    layout = shuffle.read_plan(writer)
    train_buckets, val_buckets = split_buckets(layout)
    written, held = shuffle.gathered(writer, train_buckets), shuffle.gathered(writer, val_buckets)
    check_written(written, held, layout)
    check_shard_files(writer, cfg, written["shards"], held["shards"])
    finish_formats(writer, cfg, seed, lab, written, held)
    special = tokenizer_folder.write(writer, lab)
    extra = manifest_extra(cfg, seed, lab, layout, written["shards"])
    extra["validation"] = {k: v for k, v in layout["validation"].items() if k != "start"} | {"shards": held["shards"]}
    extra["special_tokens"] = special
    counts = {"documents": written["documents"], "tokens": written["tokens"]}
    counts |= {"validation_documents": held["documents"], "validation_tokens": held["tokens"]}
    return counts, extra, summary(cfg, counts, layout["per_cluster"], written["shards"])


def record(writer, counts: dict, extra: dict, lines: list[tuple[str, str]]) -> StageOutput:
    """Record the finished build's output in the staging folder and delete the shuffle's bulky
    scratch; the output as it reads back (the same for the first call and a retry)."""
    storage.write_json(writer.path(shuffle.FINISHED), {"counts": counts, "extra": extra, "summary": lines})
    shuffle.clear(writer)
    return _output(storage.read_json(writer.path(shuffle.FINISHED)))


def finished(writer) -> StageOutput | None:
    """The output a finished build recorded (a second `finish`: the commit is retried), or None."""
    return _output(storage.read_json(writer.path(shuffle.FINISHED))) if writer.has(shuffle.FINISHED) else None


def _output(rec: dict[str, Any]) -> StageOutput:
    return StageOutput(rec["counts"], rec["extra"], [tuple(line) for line in rec["summary"]])


def manifest_extra(cfg: BuildConfig, seed: int, lab: ClimbLab, layout: dict[str, Any], n_shards: int) -> dict:
    mixture_uri, clusters = layout["mixture"]["uri"], layout["per_cluster"]
    return {
        "mixture": layout["mixture"]["weights"],
        "mixture_source": "build.mixture" if cfg.mixture else "search",
        # the config hash covers the mixture file's path, not its content: record what was read
        "mixture_sha256": storage.sha256(mixture_uri),
        "clusters": clusters,
        "token_budget": cfg.tokens,
        "max_epochs": cfg.max_epochs,
        "capped_clusters": [c for c, v in clusters.items() if v["capped"]],
        "seed": seed,
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
    if counts.get("validation_documents"):
        lines.append(
            (
                "validation",
                f"{counts['validation_tokens']:,} tokens in {counts['validation_documents']:,} held-out documents "
                f"(validation/; {sum(v['copies_excluded'] for v in clusters.values())} exact copies kept out of "
                "training)",
            )
        )
    capped = [c for c, v in clusters.items() if v["capped"]]
    if capped:
        lines.append(("capped at max_epochs", ", ".join(capped)))
    return lines
