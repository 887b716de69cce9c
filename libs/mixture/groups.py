"""Groups the user already has, as the clusters the search mixes (no embedding, no k-means).

RegMix (Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model Pre-training")
mixes by domain: the Pile's 17 domains, not clusters of embeddings. Users with known domains,
sources, licence classes or an earlier clustering want that: `cluster.method: field` groups the
curated documents by one of their columns (`cluster.field`, e.g. `source`), optionally merging
values with a mapping file (`cluster.mapping`, YAML or JSON `{value: group}`; `cluster.unmapped`
says whether a value without an entry keeps its own group or is dropped); `cluster.method:
assignments` reads an `id -> group` file (`cluster.assignments`, Parquet or CSV with columns `id`,
`group`). Every curated document without a group is counted by reason and gets cluster -1, like a
pruned one: accounted, never silently lost. An id of the file that is not a curated document is
counted and reported (curation may have filtered it). Pruning by size and quality applies to the
groups as it does to k-means clusters (`mixture.kmeans.prune_reasons`), and the final ids are
ordered by size like CLIMB's (`mixture.kmeans.final_ids`: c00 is the largest group).

This is the only place where a label such as `source` decides anything, and only because the
config names it as the grouping field. Pure functions on lists and arrays, plus the two readers.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from mixture import storage
from mixture.kmeans import final_ids, prune_reasons

# why a curated document has no group (the accounting keys)
NO_VALUE = "no_value"  # method field: the field is null or empty
UNMAPPED = "unmapped"  # method field, unmapped: drop: the mapping lacks its value
NOT_IN_ASSIGNMENTS = "not_in_assignments"
EXAMPLES = 5


class GroupError(RuntimeError):
    """The user's groups cannot be read or used; the message names the file or the field."""


@dataclass
class Grouping:
    """Per curated document its user group (None: none), and what the grouping counted."""

    group: list[str | None]
    ungrouped: dict[str, int] = field(default_factory=dict)  # reason -> documents
    unknown_ids: int = 0  # assignment rows whose id is not a curated document
    unknown_examples: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)  # method field: group -> its values


# ------------------------------------------------------------------------------------ readers
def read_mapping(uri: str) -> dict[str, str]:
    """A YAML or JSON mapping {value: group name}; keys are compared as strings."""
    try:
        data = yaml.safe_load(storage.read_text(uri))  # JSON is YAML
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise GroupError(f"cluster.mapping {uri}: not a readable YAML or JSON file ({err})") from None
    if not isinstance(data, dict) or not data:
        raise GroupError(f"cluster.mapping {uri}: must be a non-empty mapping {{value: group name}}")
    bad = [k for k, v in data.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise GroupError(f"cluster.mapping {uri}: value {bad[0]!r} maps to {data[bad[0]]!r}, not a group name")
    return {str(k): v.strip() for k, v in data.items()}


def _read_table(uri: str) -> pa.Table:
    """One Parquet or CSV file, by its name."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    name = uri.lower()
    if name.endswith((".csv", ".csv.gz")):
        opts = pcsv.ConvertOptions(column_types={"id": pa.string(), "group": pa.string()})
        with storage.open_read(uri) as f:
            data = f.read()
        stream = pa.input_stream(io.BytesIO(data), compression="gzip" if name.endswith(".gz") else None)
        return pcsv.read_csv(stream, convert_options=opts)
    if name.endswith((".parquet", ".pq")):
        with storage.open_read(uri) as f:
            return pq.read_table(f)
    raise GroupError(f"cluster.assignments {uri}: must be a .parquet or .csv file")


def _files(uri: str) -> list[str]:
    try:
        files = storage.expand([uri])
    except (OSError, ValueError):
        files = []
    if not files:
        raise GroupError(f"cluster.assignments {uri}: no such file")
    return files


def read_assignments(uri: str) -> dict[str, str]:
    """{id: group} from a Parquet or CSV file (or a folder / glob of them) with columns id, group;
    any other shape (unreadable, a column missing, a null or empty value, an id twice) is one
    GroupError naming the file."""
    out: dict[str, str] = {}
    for f in _files(uri):
        try:
            t = _read_table(f)
        except pa.ArrowException as err:
            raise GroupError(f"cluster.assignments {f}: not a readable file ({str(err).splitlines()[0]})") from None
        missing = [c for c in ("id", "group") if c not in t.column_names]
        if missing:
            raise GroupError(
                f"cluster.assignments {f}: no column {missing[0]!r} (columns: "
                f"{', '.join(t.column_names) or 'none'}); it needs id and group"
            )
        ids = [None if v is None else str(v) for v in t.column("id").to_pylist()]
        groups = [None if v is None else str(v).strip() for v in t.column("group").to_pylist()]
        for row, (i, g) in enumerate(zip(ids, groups)):
            if not i or not g:
                raise GroupError(f"cluster.assignments {f}: row {row + 1} has an empty id or group")
            if i in out:
                raise GroupError(f"cluster.assignments {f}: id {i!r} appears twice")
            out[i] = g
    return out


# ----------------------------------------------------------------------------------- grouping
def by_field(values: list[Any], mapping: dict[str, str] | None = None, unmapped: str = "keep") -> Grouping:
    """Group per document: its field value (as a string), through `mapping` when given; a value
    the mapping lacks keeps its own group (`unmapped: keep`) or has none (`drop`)."""
    group: list[str | None] = []
    ungrouped: Counter[str] = Counter()
    members: dict[str, set[str]] = {}
    for v in values:
        value = None if v is None else str(v)
        if not value:
            g, reason = None, NO_VALUE
        elif mapping is not None and value in mapping:
            g, reason = mapping[value], None
        else:
            g, reason = (value, None) if unmapped == "keep" else (None, UNMAPPED)
        group.append(g)
        if g is None:
            ungrouped[str(reason)] += 1
        else:
            members.setdefault(g, set()).add(value or "")
    return Grouping(group, dict(ungrouped), values={g: sorted(v) for g, v in sorted(members.items())})


def by_assignments(ids: list[str], assigned: dict[str, str]) -> Grouping:
    """Group per document from the assignments; curated ids the file lacks have none, ids of the
    file that are not curated documents are counted."""
    group = [assigned.get(i) for i in ids]
    missing = sum(g is None for g in group)
    curated = set(ids)
    unknown = sorted(i for i in assigned if i not in curated)
    return Grouping(group, {NOT_IN_ASSIGNMENTS: missing} if missing else {}, len(unknown), unknown[:EXAMPLES])


# ----------------------------------------------------------------------------------- numbering
@dataclass
class NumberedGroups:
    """The user groups as clusters: `names` sorted (a document's `init` is its group's position,
    -1 without one), pruning per group, and the final cluster ids ordered by size."""

    names: list[str]
    init: np.ndarray  # int64 [n]: index into names, -1 without a group
    sizes: np.ndarray  # documents per group
    reasons: list[str | None]  # per group: None (kept) or why it was pruned
    mean_quality: np.ndarray  # per group
    mapping: np.ndarray  # group -> final cluster, -1 when pruned
    cluster: np.ndarray  # final cluster per document, -1 without a group or pruned

    def final_names(self) -> list[str]:
        """The user group of each final cluster, in final id order."""
        by_final = {int(f): self.names[g] for g, f in enumerate(self.mapping) if f >= 0}
        return [by_final[f] for f in range(len(by_final))]


def number_groups(
    group: list[str | None], quality: np.ndarray, min_cluster_size: int, min_cluster_quality: float
) -> NumberedGroups:
    """Prune groups (size, mean quality) and number the kept ones by size, largest first (ties:
    by name). Fails when no document has a group or every group is pruned."""
    names = sorted({g for g in group if g is not None})
    if not names:
        raise GroupError(
            "no curated document has a group: check cluster.field / cluster.mapping / "
            "cluster.assignments against the curated documents"
        )
    pos = {g: i for i, g in enumerate(names)}
    init = np.array([pos[g] if g is not None else -1 for g in group], dtype=np.int64)
    has = init >= 0
    sizes = np.bincount(init[has], minlength=len(names))
    mean_q = np.bincount(init[has], weights=quality[has], minlength=len(names)) / np.maximum(sizes, 1)
    reasons = prune_reasons(sizes, mean_q, min_cluster_size, min_cluster_quality)
    kept = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    if len(kept) == 0:
        raise GroupError(
            f"all {len(names)} groups were pruned (group mean quality {mean_q.min():.2f}.."
            f"{mean_q.max():.2f} vs min_cluster_quality {min_cluster_quality}, min_cluster_size "
            f"{min_cluster_size}): lower the thresholds"
        )
    mapping = np.full(len(names), -1, dtype=np.int64)
    mapping[kept] = final_ids(np.arange(len(kept)), kept, sizes)
    cluster = np.where(has, mapping[np.maximum(init, 0)], -1)
    return NumberedGroups(names, init, sizes, reasons, mean_q, mapping, cluster)
