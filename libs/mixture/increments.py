"""Versions of a committed dataset: its lineage, and the delta a refresh processes (the published
ClimbMix versions are another thing: `mixture.publish`).

A corpus refresh extends the committed versions instead of rebuilding them (`refresh.incremental`,
on by default): curation reads only the input files it has not seen, and every later stage
processes only the documents added since the version it last covered and removes the documents
withdrawn or retracted since. This module holds the rules they share; each stage decides what
its delta means for its files.

Lineage (the manifest's `extra["lineage"]`, and the whole chain in the dataset's `lineage.json`):
- `version`: 1, 2, ... for every commit of the dataset, full or incremental;
- `base`: the version of the last full rebuild; an incremental version extends `base..version`;
- `parent`: the manifest sha256 of the version it extends (null for a full rebuild);
- `mode`: `full`, `incremental`, `retract` or `carried` (kept as it was, with the reason);
- `settings`: the stage's settings hash (its config hash less the input listing): a version
  extends only a version made with the same settings;
- `upstream`: {input dataset: the version of it this one covers};
- `delta`: what this version changed (counts per kind; never a document's text).

Files:
- a file added by version v > base has `v{v:04d}` in its name (followed by `-`, `.` or `/`)
  (`docs/v0003/part-00000.parquet`, `emb-v0003-00000.npy`); a file without a tag belongs to the
  base version. A file whose rows
  are removed is rewritten under its own name; the others are kept (`DatasetWriter.keep`: a hard
  link locally, a server-side copy on S3);
- `removed/v{v:04d}.parquet`: the ids version v removed (`id`, `reason`: `withdrawn` when their
  input file changed or went away, `retracted` by `climb retract`), carried into every later
  version, so a stage downstream removes them too however many versions it skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import storage
from mixture.dataset import Dataset, DatasetWriter

LINEAGE = "lineage"
HISTORY = "lineage.json"
REMOVED = "removed/"
WITHDRAWN, RETRACTED = "withdrawn", "retracted"
REMOVED_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string())])
_TAG = re.compile(r"(?:^|[/_-])v(\d{4,})[-/.]")


def tag(version: int) -> str:
    """The name tag of the files version `version` adds: `v0003`."""
    return f"v{version:04d}"


def version_of(rel: str) -> int | None:
    """The version that added the file `rel` (its `vNNNN-` or `vNNNN/` tag), None for a base file."""
    m = _TAG.search(rel)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Lineage:
    version: int
    base: int
    parent: str | None
    mode: str
    settings: str
    upstream: dict[str, int] = field(default_factory=dict)
    delta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lineage(ds: Dataset | None) -> Lineage | None:
    """The lineage a dataset's manifest records; None for a dataset committed without one."""
    raw = (ds.manifest.extra or {}).get(LINEAGE) if ds is not None else None
    return Lineage(**raw) if raw else None


def version(ds: Dataset | None) -> int:
    """The dataset's version (0 when there is none or it has no lineage)."""
    lin = lineage(ds)
    return lin.version if lin else 0


@dataclass(frozen=True)
class Delta:
    """What an incremental run of a stage processes: for each input, the version its previous
    output covered (`since`) and the one it covers now."""

    previous: Dataset
    since: dict[str, int]

    def added(self, ds: Dataset, name: str, prefix: str) -> list[str]:
        """URIs of the files under `prefix` of input `name` added after the version covered."""
        since = self.since[name]
        return [
            ds.path(f["path"])
            for f in ds.manifest.files
            if f["path"].startswith(prefix) and (version_of(f["path"]) or 0) > since
        ]

    def removed(self, ds: Dataset, name: str) -> pa.Table:
        """(id, reason) of the documents input `name` removed after the version covered."""
        return removed_since(ds, self.since[name])


def plan(
    previous: Dataset | None, inputs: dict[str, Dataset], settings: str, incremental: bool = True
) -> tuple[Delta | None, str]:
    """(the delta to process, why) or (None, why a full run is needed). A stage extends its
    previous version when it was made with the same settings and every input either is the same
    manifest as then or extends, without a full rebuild in between, the version it covered."""
    if not incremental:
        return None, "refresh.incremental is off"
    prev = lineage(previous)
    if previous is None or prev is None:
        return None, "no earlier version to extend"
    if prev.settings != settings:
        return None, "the settings changed since the committed version"
    since: dict[str, int] = {}
    for name, ds in inputs.items():
        now = lineage(ds)
        covered = prev.upstream.get(name)
        if previous.manifest.inputs.get(name) == ds.manifest_sha256:
            since[name] = now.version if now else 0
        elif now is None or covered is None or now.base > covered:
            return None, f"{name} was rebuilt since the committed version"
        else:
            since[name] = covered
    return Delta(previous, since), f"extends version {prev.version}"


def next_lineage(
    previous: Dataset | None,
    mode: str,
    settings: str,
    inputs: dict[str, Dataset],
    delta: dict[str, Any] | None = None,
) -> Lineage:
    """The lineage of the version about to be committed (after `previous`)."""
    prev = lineage(previous)
    number = (prev.version if prev else 0) + 1
    full = mode == "full" or prev is None or previous is None
    return Lineage(
        version=number,
        base=number if full else prev.base,  # type: ignore[union-attr]
        parent=None if full else previous.manifest_sha256,  # type: ignore[union-attr]
        mode="full" if full else mode,
        settings=settings,
        upstream={n: version(d) for n, d in inputs.items()},
        delta=dict(delta or {}),
    )


def record(writer: DatasetWriter, previous: Dataset | None, lin: Lineage, extra: dict[str, Any]) -> dict[str, Any]:
    """Stage `lineage.json` (the previous chain plus this version) and return `extra` with the
    lineage in it, for the manifest."""
    chain = [*history(previous), {**lin.as_dict(), "previous_manifest": previous.manifest_sha256 if previous else None}]
    storage.write_json(writer.path(HISTORY), chain)
    return {**extra, LINEAGE: lin.as_dict()}


def history(ds: Dataset | None) -> list[dict[str, Any]]:
    """Every version's lineage record, oldest first (empty for a dataset without one)."""
    if ds is None or not any(f["path"] == HISTORY for f in ds.manifest.files):
        return []
    return list(storage.read_json(ds.path(HISTORY)))


def removed_since(ds: Dataset, since: int) -> pa.Table:
    """(id, reason) of the ids the versions after `since` removed, from `removed/vNNNN.parquet`."""
    tables = []
    for f in ds.manifest.files:
        rel = f["path"]
        if rel.startswith(REMOVED) and int(rel[len(REMOVED) + 1 : -len(".parquet")]) > since:
            tables.append(pq.read_table(ds.path(rel), schema=REMOVED_SCHEMA))
    if not tables:
        return REMOVED_SCHEMA.empty_table()
    # an id removed by two versions once, `retracted` over `withdrawn` (it sorts before it)
    rows = pa.concat_tables(tables).group_by("id").aggregate([("reason", "min")])
    return rows.rename_columns(["id", "reason"]).select(["id", "reason"]).sort_by("id")


def write_removed(writer: DatasetWriter, number: int, removed: pa.Table) -> None:
    """Stage `removed/vNNNN.parquet` (sorted by id) when version `number` removed anything."""
    if removed.num_rows:
        table = removed.select(["id", "reason"]).cast(REMOVED_SCHEMA).sort_by("id")
        with storage.open_write(writer.path(f"{REMOVED}{tag(number)}.parquet")) as f:
            pq.write_table(table, f)


def keep_removed(writer: DatasetWriter, previous: Dataset) -> None:
    """Carry every earlier version's removal list into the new version."""
    writer.keep_all(previous, REMOVED)


def carry_parquet(
    writer: DatasetWriter, previous: Dataset, prefix: str, drop: pa.Array, column: str = "id"
) -> dict[str, int]:
    """Carry the previous version's Parquet files under `prefix` into the new version without
    the rows whose `column` is in `drop`: a file with none of them is kept (linked), one with
    some is rewritten under its name (row groups and schema as they were). Returns
    {relative path: rows removed} for the rewritten files."""
    rewritten: dict[str, int] = {}
    drop = drop.cast(pa.string()) if len(drop) else pa.array([], pa.string())
    for f in previous.manifest.files:
        rel = f["path"]
        if not rel.startswith(prefix) or not rel.endswith(".parquet"):
            continue
        n = _count_in(previous.path(rel), column, drop) if len(drop) else 0
        if n == 0:
            writer.keep(previous, rel)
        else:
            rewritten[rel] = n
            _rewrite_without(previous.path(rel), writer.path(rel), column, drop)
    return rewritten


def _count_in(uri: str, column: str, values: pa.Array) -> int:
    with storage.open_read(uri) as f:
        ids = pq.read_table(f, columns=[column]).column(column)
    return int(pc.sum(pc.is_in(ids.cast(pa.string()), value_set=values)).as_py() or 0)


def _rewrite_without(src: str, dst: str, column: str, values: pa.Array) -> None:
    with storage.open_read(src) as f:
        pf = pq.ParquetFile(f)
        rows = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else None
        with storage.open_write(dst) as out, pq.ParquetWriter(out, pf.schema_arrow) as w:
            for i in range(pf.metadata.num_row_groups):
                t = pf.read_row_group(i)
                keep = pc.invert(pc.is_in(t.column(column).cast(pa.string()), value_set=values))
                t = t.filter(keep)
                if t.num_rows:
                    w.write_table(t, row_group_size=rows)
            if pf.metadata.num_row_groups == 0:
                w.write_table(pf.schema_arrow.empty_table())


def ids_table(ids: Iterable[str], reason: str) -> pa.Table:
    """A removal list: the ids with one reason."""
    arr = pa.array(sorted(set(ids)), pa.string())
    return pa.table({"id": arr, "reason": pa.array([reason] * len(arr), pa.string())})
