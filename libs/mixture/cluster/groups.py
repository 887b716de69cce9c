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
groups as it does to k-means clusters (`mixture.cluster.kmeans.prune_reasons`), and the final ids are
ordered by size like CLIMB's (`mixture.cluster.kmeans.final_ids`: c00 is the largest group).

This is the only place where a label such as `source` decides anything, and only because the
config names it as the grouping field. Pure functions on Arrow and numpy arrays (ids stay Arrow
arrays, groups are integer codes, uniqueness is checked on 64-bit hashes with an exact check of
the colliding ones: no Python object per document), plus the two readers.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from mixture import storage
from mixture.cluster.kmeans import final_ids, prune_reasons
from mixture.curate import documents
from mixture.dataset import Dataset
from mixture.increments import version_of

# why a curated document has no group (the accounting keys)
NO_VALUE = "no_value"  # method field: the field is null or empty
UNMAPPED = "unmapped"  # method field, unmapped: drop: the mapping lacks its value
NOT_IN_ASSIGNMENTS = "not_in_assignments"
EXAMPLES = 5


def cluster_name(i: int) -> str:
    """The name of final cluster `i` (its folder in ClimbLab, its key in a mixture): c00, c01, ..."""
    return f"c{i:02d}"


class GroupError(RuntimeError):
    """The user's groups cannot be read or used; the message names the file or the field."""


@dataclass
class Grouping:
    """Per curated document its user group as a code (`codes[i]` indexes `names`, -1: none), and
    what the grouping counted. Codes in a numpy array: no Python object per document."""

    names: list[str]  # the user groups with at least one curated document, sorted
    codes: np.ndarray  # int64 [n]
    ungrouped: dict[str, int] = field(default_factory=dict)  # reason -> documents
    unknown_ids: int = 0  # assignment rows whose id is not a curated document
    unknown_examples: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)  # method field: group -> its values

    @property
    def group(self) -> list[str | None]:
        """Each document's group name (None: none); for small inputs (tests, examples)."""
        return [self.names[c] if c >= 0 else None for c in self.codes.tolist()]


def compact(names: list[str], codes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Only the groups that some document has (sorted names stay sorted), codes renumbered."""
    present = np.unique(codes[codes >= 0])
    lookup = np.full(len(names) + 1, -1, dtype=np.int64)
    lookup[present] = np.arange(len(present))
    return [names[i] for i in present.tolist()], lookup[codes]


def first_duplicate(ids: pa.Array | pa.ChunkedArray) -> int | None:
    """The position of the first id that appeared before, or None when all are unique: hashes
    sorted, and only the ids whose hashes collide compared exactly."""
    h = documents.id_hashes(ids)
    order = np.argsort(h, kind="stable")
    same = np.flatnonzero(h[order][1:] == h[order][:-1])
    if not len(same):
        return None
    candidates = np.unique(np.concatenate([order[same], order[same + 1]]))
    seen: set[str] = set()
    for pos, i in zip(candidates.tolist(), ids.take(pa.array(candidates)).to_pylist()):
        if i in seen:
            return pos
        seen.add(i)
    return None


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


def _checked(f: str, t: pa.Table) -> pa.Table:
    """The file's id and group columns as trimmed strings; GroupError on a missing column or an
    empty value."""
    missing = [c for c in ("id", "group") if c not in t.column_names]
    if missing:
        raise GroupError(
            f"cluster.assignments {f}: no column {missing[0]!r} (columns: "
            f"{', '.join(t.column_names) or 'none'}); it needs id and group"
        )
    ids = t.column("id").cast(pa.string())
    groups = pc.utf8_trim_whitespace(t.column("group").cast(pa.string()))
    bad = pc.or_(pc.or_(pc.is_null(ids), pc.equal(ids, "")), pc.or_(pc.is_null(groups), pc.equal(groups, "")))
    rows = np.flatnonzero(bad.fill_null(True).to_numpy(zero_copy_only=False))
    if len(rows):
        raise GroupError(f"cluster.assignments {f}: row {rows[0] + 1} has an empty id or group")
    return pa.table({"id": ids, "group": groups})


def read_assignments(uri: str) -> pa.Table:
    """Columns id, group (strings, in file and row order) from a Parquet or CSV file (or a folder /
    glob of them); any other shape (unreadable, a column missing, a null or empty value, an id
    twice) is one GroupError naming the file. Ids are checked unique by their hashes."""
    tables, files = [], _files(uri)
    for f in files:
        try:
            tables.append(_checked(f, _read_table(f)))
        except pa.ArrowException as err:
            raise GroupError(f"cluster.assignments {f}: not a readable file ({str(err).splitlines()[0]})") from None
    table = pa.concat_tables(tables).combine_chunks()  # (the assignments file: ids and groups only)
    dup = first_duplicate(table.column("id"))
    if dup is not None:
        ends = np.cumsum([t.num_rows for t in tables])
        f = files[int(np.searchsorted(ends, dup, side="right"))]
        raise GroupError(f"cluster.assignments {f}: id {table.column('id')[dup].as_py()!r} appears twice")
    return table


# ----------------------------------------------------------------------------------- grouping
def by_field(
    values: pa.Array | pa.ChunkedArray | list, mapping: dict[str, str] | None = None, unmapped: str = "keep"
) -> Grouping:
    """Group per document: its field value (as a string), through `mapping` when given; a value
    the mapping lacks keeps its own group (`unmapped: keep`) or has none (`drop`). Works on the
    distinct values (Arrow `unique` + `index_in`, chunk by chunk): one Python object per value,
    not per document."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    uniq = pc.unique(arr).drop_null()
    distinct = [str(v) for v in uniq.to_pylist()]
    group_of: list[str | None] = []
    reason_of: list[str | None] = []
    for value in distinct:
        if not value:
            g, reason = None, NO_VALUE
        elif mapping is not None and value in mapping:
            g, reason = mapping[value], None
        else:
            g, reason = (value, None) if unmapped == "keep" else (None, UNMAPPED)
        group_of.append(g)
        reason_of.append(reason)
    idx = np.asarray(pc.index_in(arr, value_set=uniq).fill_null(len(distinct)).to_numpy(zero_copy_only=False))
    counts = np.bincount(idx, minlength=len(distinct) + 1)
    names = sorted({g for g, n in zip(group_of, counts) if g is not None and n})
    pos = {g: i for i, g in enumerate(names)}
    lookup = np.array([pos[g] if g is not None and g in pos else -1 for g in group_of] + [-1], dtype=np.int64)
    ungrouped: Counter[str] = Counter({NO_VALUE: int(counts[-1])} if counts[-1] else {})
    members: dict[str, set[str]] = {}
    for value, g, reason, n in zip(distinct, group_of, reason_of, counts[:-1].tolist()):
        if n and g is None:
            ungrouped[str(reason)] += n
        elif n and g is not None:
            members.setdefault(g, set()).add(value or "")
    values_of = {g: sorted(v) for g, v in sorted(members.items())}
    return Grouping(names, lookup[idx], dict(ungrouped), values=values_of)


def by_assignments(ids: pa.Array | pa.ChunkedArray, assigned: pa.Table) -> Grouping:
    """Group per document from the assignments (columns id, group); curated ids the file lacks
    have none, ids of the file that are not curated documents are counted. Arrow hash lookups:
    no Python object per document."""
    ids = ids.cast(pa.string())
    all_names = sorted(pc.unique(assigned.column("group")).to_pylist())
    group_code = pc.index_in(assigned.column("group"), value_set=pa.array(all_names, pa.string()))
    row = pc.index_in(ids, value_set=assigned.column("id"))
    has = pc.is_valid(row).to_numpy(zero_copy_only=False)
    codes = np.full(len(ids), -1, dtype=np.int64)
    rows = row.to_numpy(zero_copy_only=False)[has] if has.any() else np.zeros(0, np.int64)
    codes[has] = group_code.to_numpy(zero_copy_only=False)[rows.astype(np.int64)]
    names, codes = compact(all_names, codes)
    missing = int((~has).sum())
    unknown = assigned.column("id").filter(pc.invert(pc.is_in(assigned.column("id"), value_set=ids)))
    examples = pc.take(unknown, pc.array_sort_indices(unknown)[:EXAMPLES]).to_pylist()
    return Grouping(names, codes, {NOT_IN_ASSIGNMENTS: missing} if missing else {}, len(unknown), examples)


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
    grouping: Grouping, quality: np.ndarray, min_cluster_size: int, min_cluster_quality: float
) -> NumberedGroups:
    """Prune groups (size, mean quality) and number the kept ones by size, largest first (ties:
    by name). Fails when no document has a group or every group is pruned."""
    names, init = grouping.names, grouping.codes.astype(np.int64)
    if not names:
        raise GroupError(
            "no curated document has a group: check cluster.field / cluster.mapping / "
            "cluster.assignments against the curated documents"
        )
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
    return NumberedGroups(list(names), init, sizes, reasons, mean_q, mapping, cluster)


# ---------------------------------------------------------- the clusters dataset's assignments
ASSIGNMENTS = "assignments"


def assignment_files(clusters: Dataset, since: int = -1) -> list[str]:
    """URIs of a committed clusters dataset's assignment files in document (curated) order:
    `assignments.parquet` (the clustering version's documents, less those removed since), then
    `assignments-vNNNN-00000.parquet` of each incremental version in version order (the
    documents it assigned to the existing clusters; `mixture.cluster.refresh`). Every reader of
    the assignments reads all of them, e.g. `documents.iter_file_rows(assignment_files(ds), ...)`
    (sorted names would not do: `-` sorts before `.`). With `since`, only the files versions after
    it added (a refresh's new assignments)."""
    rels = [
        f["path"]
        for f in clusters.manifest.files
        if f["path"].startswith(ASSIGNMENTS)
        and f["path"].endswith(".parquet")
        and "/" not in f["path"]
        and (version_of(f["path"]) or 0) > since
    ]
    return [clusters.path(rel) for rel in sorted(rels, key=lambda r: (version_of(r) or 0, r))]
