"""The `curated` dataset's versions: what `select` adds in a refresh (rules: `mixture.increments`).

Only the annotated parts added since the covered version are decided (`select.decide`, against
the earlier survivors: `mixture.curate.survivors`) and written under `docs/vNNNN/`,
`rejected/vNNNN/`, `state/vNNNN/`; the committed version's files are carried over less the
documents the annotated versions removed since (withdrawn or retracted), which are also listed
in `removed/vNNNN.parquet` for the stages downstream. Quarantine parts are the annotated ones
(linked). Counts: the kept files' counts, less retracted documents (counted as `retracted`),
plus the new files' outcomes; the equation holds per file.

When the documents removed since include the survivor of an earlier group, the group is
decided again first (`survivors.regroup`; not for a survivor this version adds again with the
same text, its input file changed elsewhere): the revived
survivor is written to `docs/vNNNN/revived.parquet` (so the stages downstream see it as added by
this version) and leaves `rejected/`; the members whose outcome or survivor changed leave their
`state/` (and `rejected/`) files, which are rewritten under their names, and are written again
to `state/vNNNN/regrouped.parquet` (`rejected/vNNNN/regrouped.parquet`): every id stays in
exactly one file per prefix. Their files' counts move from duplicates to kept; `lineage.delta`
says `revived`. The new documents are then decided against the regrouped survivors.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mixture import increments, storage
from mixture.config import Config
from mixture.curate import accounting, annotated_versions, batches, select, statistics, survivors
from mixture.dataset import Dataset, DatasetWriter


def extend(
    annotated: Dataset, previous: Dataset, delta: increments.Delta, cfg: Config, writer: DatasetWriter, number: int
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, Any]]]:
    """The new version `number` of `curated`; returns (counts, extra, summary)."""
    t0 = time.time()
    parts = delta.added(annotated, "annotated", "docs/")
    removed = delta.removed(annotated, "annotated")
    gone = set(removed.column("id").to_pylist())  # earlier removals left the carried state already
    state = previous.files(survivors.STATE)
    regrouped = _regroup(state, parts, previous, removed)
    groups = survivors.merge_groups(parts)  # the versions' parts, linked across curation runs
    earlier = survivors.load(parts, state, gone, regrouped, groups)
    sel = select.decide(parts, cfg, writer.staging, earlier, "/" + increments.tag(number), groups)
    retracted = _retracted_rows(previous, removed)
    _carry(writer, annotated, previous, removed, regrouped, cfg, number)
    counts = _counts(annotated, previous, delta.since["annotated"], sel, retracted, regrouped)
    seconds = time.time() - t0
    extra = statistics.extra(annotated, cfg, sel.dec, sel.outcomes, sel.near_groups, sel.sample, seconds)
    extra["statistics_of"] = "the documents this version added"
    delta_counts = {
        "kept_new": sel.n(True),
        "rejected_new": sel.n(False),
        "exact_duplicates_of_existing": sel.dec.linked.get(accounting.EXACT, 0),
        "near_duplicates_of_existing": sel.dec.linked.get(accounting.NEAR, 0),
        "removed": removed.num_rows,
        "revived": len(regrouped.revived),
    }
    lines = statistics.summary(counts, extra, cfg, seconds)
    return counts, {**extra, "delta": delta_counts}, lines


def _regroup(state: list[str], parts: list[str], previous: Dataset, removed: pa.Table) -> survivors.Regrouped:
    """The groups whose survivor was withdrawn, decided again, but for a survivor this version
    adds again with the same text (its input file changed elsewhere): its group stays as it was."""
    withdrawn, gone = _withdrawn(removed), set(removed.column("id").to_pylist())
    regrouped = survivors.regroup(state, withdrawn, gone)
    back = _same_text(parts, previous, set(regrouped.moved))
    return survivors.regroup(state, withdrawn - back, gone) if back else regrouped


def _same_text(parts: list[str], previous: Dataset, ids: set[str]) -> set[str]:
    """The `ids` the new annotated `parts` hold with the text the previous version kept."""
    if not ids:
        return set()
    new, old = _texts(parts, sorted(ids)), _texts(previous.files("docs/"), sorted(ids))
    return {i for i, t in new.items() if old.get(i) == t}


def _texts(uris: list[str], ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for uri in uris:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "text"], filters=[("id", "in", ids)])
        out.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    return out


def _withdrawn(removed: pa.Table) -> set[str]:
    """The removed ids whose groups are decided again: withdrawn and retracted alike (a full run
    keeps the next member too; `climb retract` takes exact copies out with the document, so
    what can come back is a near copy under another id, as in a full run)."""
    return set(removed.column("id").to_pylist())


def _carry(
    writer: DatasetWriter,
    annotated: Dataset,
    previous: Dataset,
    removed: pa.Table,
    regrouped: survivors.Regrouped,
    cfg: Config,
    number: int,
) -> None:
    """The previous version's files less the removed documents and the regrouped rows (written
    again under this version's tag), the quarantine parts, and the removal lists."""
    drop = removed.column("id").to_pylist()
    moved = [r["id"] for r in regrouped.rows if r["was"] in survivors.PASSED]  # their rejected/ row changes
    tag = increments.tag(number)
    increments.carry_parquet(writer, previous, "docs/", pa.array(drop, pa.string()))
    increments.carry_parquet(writer, previous, "rejected/", pa.array(drop + moved, pa.string()))
    increments.carry_parquet(writer, previous, survivors.STATE, pa.array(drop + list(regrouped.changed), pa.string()))
    if regrouped.rows:
        revived = [r["id"] for r in regrouped.revived]
        _write(writer, f"docs/{tag}/revived.parquet", select.docs_rows(annotated.files("docs/"), revived, cfg))
        state = pa.Table.from_pylist(regrouped.rows).select([n for n, _ in survivors.STATE_FIELDS])
        _write(writer, f"{survivors.STATE}{tag}/regrouped.parquet", state)
        if cfg.curate.keep_rejected:
            _write(writer, f"rejected/{tag}/regrouped.parquet", _redirected(previous, regrouped))
    for f in annotated.manifest.files:
        if f["path"].startswith("quarantine/"):
            writer.keep(annotated, f["path"])
    increments.keep_removed(writer, previous)
    increments.write_removed(writer, number, removed)


def _redirected(previous: Dataset, regrouped: survivors.Regrouped) -> pa.Table:
    """The `rejected/` rows of the members that stay duplicates, of their new survivor."""
    schema = batches.arrow_schema(select.REJECTED_FIELDS)
    now = {r["id"]: r["survivor"] for r in regrouped.redirected}
    tables = [schema.empty_table()]
    for uri in previous.files("rejected/") if now else []:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, filters=[("id", "in", sorted(now))])
        tables.append(t.select(schema.names).cast(schema))
    t = pa.concat_tables(tables)
    dup_of = pa.array([now[i] for i in t.column("id").to_pylist()], pa.string())
    return t.set_column(t.schema.get_field_index("duplicate_of"), "duplicate_of", dup_of)


def _write(writer: DatasetWriter, rel: str, table: pa.Table) -> None:
    """One Parquet file of the new version (sorted by id, as the parts are); none when empty."""
    if table.num_rows:
        batches.write_table(table, table.schema, ["id"], writer.path(rel))


def _retracted_rows(previous: Dataset, removed: pa.Table) -> list[tuple[str, str, str]]:
    """(file, outcome, reason) of the retracted documents the previous version decided."""
    reasons = dict(zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist()))
    ids = pa.array([i for i, r in reasons.items() if r == increments.RETRACTED], pa.string())
    found = survivors.outcomes_of(previous.files(survivors.STATE), ids)
    return [(f, o, increments.RETRACTED) for f, o in found]


def _counts(
    annotated: Dataset,
    previous: Dataset,
    since: int,
    sel: select.Selection,
    retracted: list[tuple[str, str, str]],
    regrouped: survivors.Regrouped,
) -> dict[str, Any]:
    """Per-file counts: the files read before (and not again) as the previous version counted
    them, less retracted documents, with the revived survivors moved from duplicates to kept;
    the files read since from the annotated counts and the new outcomes."""
    ann = annotated.manifest.counts["per_file"]
    reread = {r["uri"] for r in annotated_versions.inputs_of(annotated) if r.get("version", 0) > since}
    before = previous.manifest.counts["per_file"]
    per_file = {f: copy.deepcopy(before[f]) for f in ann if f in before and f not in reread}
    survivors.remove_from_counts(per_file, retracted)
    for r in regrouped.revived:
        if (c := per_file.get(r["file"])) is not None:
            c[r["was"] + "s"] -= 1
            c["documents_out"] += 1
    new_files = [f for f in ann if f not in per_file]
    outcomes = [(f, o, n) for f, o, n in sel.outcomes if f in set(new_files)]
    new = select.build_counts(_only(annotated, new_files), outcomes) if new_files else {"per_file": {}}
    return accounting.combine({**per_file, **new["per_file"]})


def _only(annotated: Dataset, files: list[str]) -> Dataset:
    """The annotated dataset with its per-file counts restricted to `files` (for build_counts)."""
    m = copy.copy(annotated.manifest)
    m.counts = {**m.counts, "per_file": {f: annotated.manifest.counts["per_file"][f] for f in files}}
    return Dataset(annotated.uri, m, annotated.manifest_sha256)
