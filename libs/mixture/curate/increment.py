"""The `curated` dataset's incremental version (`select` in a refresh, `mixture.increments`).

Only the annotated parts added since the covered version are decided (`select.decide`, against
the earlier survivors: `mixture.curate.survivors`) and written under `docs/vNNNN/`,
`rejected/vNNNN/`, `state/vNNNN/`; the committed version's files are carried over less the
documents the annotated versions removed since (withdrawn or retracted), which are also listed
in `removed/vNNNN.parquet` for the stages downstream. Quarantine parts are the annotated ones
(linked). Counts: the kept files' counts, less retracted documents (counted as `retracted`),
plus the new files' outcomes; the equation holds per file.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pyarrow as pa

from mixture import increments
from mixture.config import Config
from mixture.curate import accounting, refresh, select, survivors
from mixture.dataset import Dataset, DatasetWriter

BY_ID = ("docs/", "rejected/", survivors.STATE)


def extend(
    annotated: Dataset, previous: Dataset, delta: increments.Delta, cfg: Config, writer: DatasetWriter, number: int
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, Any]]]:
    """The new version `number` of `curated`; returns (counts, extra, summary)."""
    t0 = time.time()
    parts = delta.added(annotated, "annotated", "docs/")
    removed = delta.removed(annotated, "annotated")
    gone = set(increments.removed_since(annotated, 0).column("id").to_pylist())
    earlier = survivors.load(parts, previous.files(survivors.STATE), gone)
    sel = select.decide(parts, cfg, writer.staging, earlier, "/" + increments.tag(number))
    retracted = _retracted_rows(previous, removed)
    drop = removed.column("id").combine_chunks() if removed.num_rows else pa.array([], pa.string())
    for prefix in BY_ID:
        increments.carry_parquet(writer, previous, prefix, drop)
    for f in annotated.manifest.files:
        if f["path"].startswith("quarantine/"):
            writer.keep(annotated, f["path"])
    increments.keep_removed(writer, previous)
    increments.write_removed(writer, number, removed)
    counts = _counts(annotated, previous, delta.since["annotated"], sel, retracted)
    seconds = time.time() - t0
    extra = select.statistics(annotated, cfg, sel.dec, sel.outcomes, sel.near_groups, sel.sample, seconds)
    extra["statistics_of"] = "the documents this version added"
    delta_counts = {
        "kept_new": sel.n(True),
        "rejected_new": sel.n(False),
        "exact_duplicates_of_existing": sel.dec.linked.get(accounting.EXACT, 0),
        "near_duplicates_of_existing": sel.dec.linked.get(accounting.NEAR, 0),
        "removed": removed.num_rows,
    }
    lines = select.summary(counts, extra, cfg, seconds)
    return counts, {**extra, "delta": delta_counts}, lines


def _retracted_rows(previous: Dataset, removed: pa.Table) -> list[tuple[str, str, str]]:
    """(file, outcome, reason) of the retracted documents the previous version decided."""
    reasons = dict(zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist()))
    ids = pa.array([i for i, r in reasons.items() if r == increments.RETRACTED], pa.string())
    found = survivors.outcomes_of(previous.files(survivors.STATE), ids)
    return [(f, o, increments.RETRACTED) for f, o in found]


def _counts(
    annotated: Dataset, previous: Dataset, since: int, sel: select.Selection, retracted: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """Per-file counts: the files read before (and not again) as the previous version counted
    them, less retracted documents; the files read since from the annotated counts and the new
    outcomes."""
    ann = annotated.manifest.counts["per_file"]
    reread = {r["uri"] for r in refresh.inputs_of(annotated) if r.get("version", 0) > since}
    before = previous.manifest.counts["per_file"]
    per_file = {f: copy.deepcopy(before[f]) for f in ann if f in before and f not in reread}
    survivors.remove_from_counts(per_file, retracted)
    new_files = [f for f in ann if f not in per_file]
    outcomes = [(f, o, n) for f, o, n in sel.outcomes if f in set(new_files)]
    new = select.build_counts(_only(annotated, new_files), outcomes) if new_files else {"per_file": {}}
    return accounting.combine({**per_file, **new["per_file"]})


def _only(annotated: Dataset, files: list[str]) -> Dataset:
    """The annotated dataset with its per-file counts restricted to `files` (for build_counts)."""
    m = copy.copy(annotated.manifest)
    m.counts = {**m.counts, "per_file": {f: annotated.manifest.counts["per_file"][f] for f in files}}
    return Dataset(annotated.uri, m, annotated.manifest_sha256)
