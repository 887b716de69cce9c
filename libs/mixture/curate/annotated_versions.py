"""The `annotated` dataset's versions: what a refresh keeps, withdraws and records.

A refresh (`mixture.increments`, `mixture.curate.prior`) annotates only the new and changed
input files (`annotate.annotate` with the earlier state, into `docs/vNNNN/`, `quarantine/vNNNN/`,
`dedup/vNNNN/`); this module carries the rest of the committed version into the new one: its
files are kept (linked) except those holding documents of withdrawn input files (changed or
deleted), which are rewritten without them; the withdrawn ids are listed in
`removed/vNNNN.parquet` for the stages downstream; the counts are the kept files' counts plus
the new ones; `inputs.json` lists every input file the version covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import increments, storage
from mixture.config import CurateConfig
from mixture.curate import accounting, annotate, ingest, prior
from mixture.curate.filters import missing_signals, stored_signal_names
from mixture.curate.prior import INPUTS, STATE, Changes
from mixture.dataset import Dataset, DatasetWriter

BY_FILE = ("docs/", "quarantine/", STATE)  # what the annotated dataset holds per input file
RUN_FACTS = ("fuzzy_dedup", "seconds", "splits", "retraction", "earlier")  # of one run: not carried


def inputs_of(ds: Dataset | None) -> list[dict[str, Any]]:
    """The input files a committed `annotated` version covers (empty when it lists none)."""
    if ds is None or not any(f["path"] == INPUTS for f in ds.manifest.files):
        return []
    return list(storage.read_json(ds.path(INPUTS)))


def write_inputs(writer: DatasetWriter, changes: Changes) -> dict[str, Any]:
    """Stage `inputs.json` (path, relative path, size, checksum and the version that read it, per
    input file); returns what the manifest says of it."""
    storage.write_json(writer.path(INPUTS), changes.records)
    return {"files": len(changes.records), "listing": INPUTS}


def withdrawn_ids(previous: Dataset, files: list[str]) -> pa.Table:
    """(id, reason) of the annotated documents of the withdrawn input files."""
    ids: list[pa.Array] = []
    wanted = pa.array(files, pa.string())
    for uri in previous.files("docs/"):
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "file"])
        ids.append(t.filter(pc.is_in(t.column("file"), value_set=wanted)).column("id").combine_chunks())
    found = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    return increments.ids_table(found.to_pylist(), increments.WITHDRAWN)


def carry(
    writer: DatasetWriter, previous: Dataset, changes: Changes, new_counts: dict[str, Any] | None, number: int
) -> tuple[dict[str, Any], int]:
    """Carry the committed version into the new one (number `number`) less the withdrawn
    files' documents; returns (the combined counts, documents withdrawn)."""
    withdrawn = changes.withdrawn
    removed = withdrawn_ids(previous, withdrawn) if withdrawn else increments.ids_table([], increments.WITHDRAWN)
    drop = pa.array(withdrawn, pa.string())
    for prefix in BY_FILE:
        increments.carry_parquet(writer, previous, prefix, drop, column="file")
    increments.keep_removed(writer, previous)
    increments.write_removed(writer, number, removed)
    per_file = {f: c for f, c in previous.manifest.counts["per_file"].items() if f not in set(withdrawn)}
    per_file.update((new_counts or {}).get("per_file", {}))
    return accounting.combine(per_file), removed.num_rows


def delta_counts(changes: Changes, new_counts: dict[str, Any] | None, withdrawn: int, linked: dict) -> dict[str, Any]:
    """`lineage.delta` of an annotated version."""
    return {
        **changes.counts(),
        "documents_read": (new_counts or {}).get("documents_in", 0),
        "documents_new": (new_counts or {}).get("documents_out", 0),
        "withdrawn": withdrawn,
        "retracted": 0,
        **(linked or {}),
    }


@dataclass
class Version:
    """What a curate run makes: version `number`, extending `previous` (None: a full run, for
    the reason `why`), from the input files' `changes`; `retracted`: ids never annotated again."""

    number: int
    previous: Dataset | None
    why: str
    changes: Changes
    retracted: set[str]

    @property
    def earlier(self) -> annotate.Earlier | None:
        """What the new documents are deduplicated against (a refresh), else None."""
        if self.previous is None:
            return None
        docs, state = self.previous.files("docs/"), self.previous.files(STATE)
        return annotate.Earlier(state, docs, self.changes.withdrawn)

    @property
    def tag(self) -> str:
        return "/" + increments.tag(self.number) if self.previous is not None else ""


def plan_version(
    committed: Dataset | None, files: list[ingest.InputFile], settings: str, incremental: bool, config_hash: str
) -> Version:
    """A refresh of the committed version when it was made with the same settings (and lists its
    input files and dedup state), else a full run; a forced run over the committed version's very
    input listing (`config_hash` the same) rebuilds."""
    delta, why = increments.plan(committed, {}, settings, incremental)
    if delta is not None and committed is not None:
        paths = {f["path"] for f in committed.manifest.files}
        if INPUTS not in paths or not any(p.startswith(STATE) for p in paths):
            delta, why = None, "the committed version lists no input files or dedup state"
        elif committed.manifest.config_hash == config_hash:
            delta, why = None, "the input files are those of the committed version (a forced run rebuilds)"
    number = increments.version(committed) + 1
    changes = prior.classify(inputs_of(committed) if delta else [], files, number)
    return Version(number, committed if delta else None, why, changes, retracted_ids(committed))


def signals_change(committed: Dataset | None, cur: CurateConfig) -> str | None:
    """Why the committed annotation's signals do not fit the config (None when they do or there
    is none): an enabled filter whose signals it lacks, or stored signals no filter reads now."""
    if committed is None or "signals" not in committed.manifest.extra:
        return None
    held = list(committed.manifest.extra["signals"])
    lacking = missing_signals(held, cur.filters)
    if lacking:
        named = "; ".join(f"{name} reads {', '.join(sigs)}" for name, sigs in lacking.items())
        return f"the committed annotation lacks the signals of enabled filter(s): {named}"
    unread = [n for n in held if n not in stored_signal_names(cur.filters, cur.every_signal)]
    if unread:
        return (
            f"no enabled filter reads the stored signal(s) {', '.join(unread)} (curate.signals: all keeps every "
            "filter's, so that switching filters reruns only select)"
        )
    return None


def finish_version(
    writer: DatasetWriter,
    v: Version,
    committed: Dataset | None,
    settings: str,
    new: tuple[dict[str, Any] | None, dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], increments.Lineage]:
    """Stage the rest of version `v` after the new files were annotated (`new`: their counts or
    None when none was read, and the annotation's extra): the carried files of a refresh, the
    retraction list of a full run, `inputs.json`, the lineage. Returns (counts, extra, lineage)."""
    new_counts, extra = new
    counts, withdrawn = new_counts, 0
    if v.previous is not None:
        counts, withdrawn = carry(writer, v.previous, v.changes, new_counts, v.number)
        kept = {k: x for k, x in v.previous.manifest.extra.items() if k not in RUN_FACTS}
        extra = {**kept, **extra}
    else:
        increments.write_removed(writer, v.number, increments.ids_table(v.retracted, increments.RETRACTED))
    if counts is None:
        raise RuntimeError("curate: nothing was read and there is no earlier version to extend")
    extra = {**extra, "inputs": write_inputs(writer, v.changes)}
    linked = extra.pop("earlier", {})
    mode = "full" if v.previous is None else "incremental"
    lin = increments.next_lineage(committed, mode, settings, {}, delta_counts(v.changes, new_counts, withdrawn, linked))
    return counts, increments.record(writer, committed, lin, extra), lin


def retracted_ids(committed: Dataset | None) -> set[str]:
    """Every id `climb retract` took out of earlier versions: never annotated again, even by a
    full run over input files that still hold them (the lists are carried into every version)."""
    if committed is None:
        return set()
    return {r["id"] for r in increments.removed_since(committed, 0).to_pylist() if r["reason"] == increments.RETRACTED}
