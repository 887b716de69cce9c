"""Accounting: every record read leaves the stage with exactly one outcome, per input file.

    read = kept + quarantined (per reason) + filtered (per filter) + exact dups + near dups
           + retracted (documents `climb retract` took out of `annotated`; only when there are any)

Curation is two stages, and the equation holds across both: `curate` (the `annotated` dataset)
checks read = annotated + quarantined per file (`documents_out` counts the annotated ones); `select`
(the `curated` dataset) takes read and quarantined from the annotated manifest and checks the
whole equation with its own outcomes of the annotated documents.

`read` is counted independently of the outcomes (right after ingest, before any join), so a
record lost or duplicated by a join, a bad filter or a bug in deduplication makes the equation
fail, and the stage fails with it instead of committing a dataset whose counts do not add up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

KEPT = "kept"
ANNOTATED = "annotated"  # a readable document that enters selection (the `curate` stage)
EXACT = "exact_duplicate"
NEAR = "near_duplicate"
RETRACTED = "retracted"  # removed by `climb retract`: counted, no longer in any dataset
QUARANTINE_PREFIX = "quarantine:"
FILTER_PREFIX = "filter:"


class AccountingError(RuntimeError):
    """Counts that do not add up: the stage must not commit."""


def _empty() -> dict[str, Any]:
    return {
        "documents_in": 0,
        "documents_out": 0,
        "quarantined": {},
        "filtered": {},
        "exact_duplicates": 0,
        "near_duplicates": 0,
    }


def _add(bucket: dict[str, Any], outcome: str, n: int) -> None:
    if outcome in (KEPT, ANNOTATED):
        bucket["documents_out"] += n
    elif outcome == EXACT:
        bucket["exact_duplicates"] += n
    elif outcome == NEAR:
        bucket["near_duplicates"] += n
    elif outcome == RETRACTED:
        if n:
            bucket[RETRACTED] = bucket.get(RETRACTED, 0) + n
    elif outcome.startswith(QUARANTINE_PREFIX):
        reason = outcome[len(QUARANTINE_PREFIX) :]
        bucket["quarantined"][reason] = bucket["quarantined"].get(reason, 0) + n
    elif outcome.startswith(FILTER_PREFIX):
        name = outcome[len(FILTER_PREFIX) :].split(":", 1)[0]
        bucket["filtered"][name] = bucket["filtered"].get(name, 0) + n
    else:
        raise AccountingError(f"unknown outcome {outcome!r}")


def accounted(c: dict[str, Any]) -> int:
    """Documents with an outcome; `retracted` ones (`climb retract`) left the datasets."""
    return (
        c.get(RETRACTED, 0)
        + c["documents_out"]
        + sum(c["quarantined"].values())
        + sum(c["filtered"].values())
        + c["exact_duplicates"]
        + c["near_duplicates"]
    )


def build_counts(
    files: Iterable[str], read: dict[str, int], outcomes: Iterable[tuple[str, str, int]]
) -> dict[str, Any]:
    """The stage's counts (DATASETS.md, `curated`) from the records read per file and the
    (file, outcome, n) rows; raises AccountingError when any file's equation fails."""
    per_file: dict[str, dict[str, Any]] = {f: _empty() for f in files}
    for f, n in read.items():
        per_file.setdefault(f, _empty())["documents_in"] = n
    for f, outcome, n in outcomes:
        if f not in per_file:
            raise AccountingError(f"outcomes for {f}, which was never read")
        _add(per_file[f], outcome, n)
    return combine(per_file)


def combine(per_file: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The counts of a stage from its per-file counts (totals + `per_file`); raises
    AccountingError when any file's equation fails. A refresh combines the files it kept from
    the previous version with the ones it read."""
    total = _empty()
    for c in per_file.values():
        for key, value in c.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    total.setdefault(key, {})[k] = total.get(key, {}).get(k, 0) + v
            else:
                total[key] = total.get(key, 0) + value
    for key in ("quarantined", "filtered"):
        total[key] = dict(sorted(total[key].items()))
    check(per_file)
    total["per_file"] = {f: per_file[f] for f in sorted(per_file)}
    return total


def check(per_file: dict[str, dict[str, Any]]) -> None:
    bad = [(f, c["documents_in"], accounted(c)) for f, c in per_file.items() if c["documents_in"] != accounted(c)]
    if bad:
        lines = [f"  {f}: read {n_in}, accounted for {n_out}" for f, n_in, n_out in bad[:20]]
        raise AccountingError("documents read and documents accounted for differ:\n" + "\n".join(lines))


def rule_counts(outcomes: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """{filter: {rule: n}} of the first failing rule of every filtered document."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for _, outcome, n in outcomes:
        if outcome.startswith(FILTER_PREFIX):
            name, rule = outcome[len(FILTER_PREFIX) :].split(":", 1)
            out[name][rule] = out[name].get(rule, 0) + n
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def check_written(expected: dict[str, int], written: dict[str, int]) -> None:
    """Rows written per output (docs, quarantine, rejected) equal the counted outcomes."""
    bad = {k: (expected[k], written.get(k, 0)) for k in expected if expected[k] != written.get(k, 0)}
    if bad:
        raise AccountingError(
            "rows written differ from the counts: "
            + ", ".join(f"{k}: counted {e}, written {w}" for k, (e, w) in bad.items())
        )
