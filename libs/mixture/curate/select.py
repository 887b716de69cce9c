"""Selection: the `annotated` dataset -> the `curated` dataset, without Spark.

The mixer half of Dolma's tagger/mixer split ("score once, decide many times"): the signals and
dedup groups were computed once by `annotate.py`; this applies the configured filters (enabled
flags, thresholds, `exempt_if`) to the stored signals and the dedup switches to the stored groups,
streaming the annotated part files in record batches (memory: one batch, one small integer per
document, the minima of the dedup groups, and one output part at a time).

1. filters: each document's first failing rule, `filter:<name>:<rule>` (`FilterChain.decide`),
   every rule that would reject it alone, and the filters it is exempt from;
2. dedup, as the single-stage curation did: only documents that pass the filters take part; an
   exact group's survivor is its smallest passing id (the others are `exact_duplicate`s of the
   survivor of its near group), a near group's survivor is its smallest passing id (the other
   representatives are `near_duplicate`s of it);
3. accounting: per input file, read (from the annotated manifest) = kept + quarantined +
   filtered + exact + near, or the stage fails;
4. write: `docs/` and `rejected/` in the format and part layout the Spark stage wrote (a row's
   part is xxhash64(id) mod parts, stored as `id_hash` by `annotate.py`; rows sorted by id), and
   `quarantine/` copied from the annotated dataset.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.config import Config
from mixture.curate import accounting, batches, statistics, survivors
from mixture.curate.filters import (
    FilterChain,
    Signal,
    TextStats,
    signal_functions,
    signal_names,
)
from mixture.dataset import Dataset

log = logging.getLogger(__name__)

REJECTED_FIELDS = [
    ("id", "string"),
    ("text", "string"),
    ("source", "string"),
    ("reason", "string"),
    ("duplicate_of", "string"),
]
GROUP_COLUMNS = ["id", "file", "exact_group", "near_group"]
PASS = 0  # reason code of a document that passes every filter
MAX_OPEN_PARTS = 256  # spill files open at once while routing rows to output parts
QUANTILE_SAMPLE = 100_000  # kept documents the signal quantiles are computed from (at most)


def docs_fields(cfg: Config) -> list[tuple[str, str]]:
    """Columns of `curated/docs/`: the document, n_words and the q_* signals (float32)."""
    return [("id", "string"), ("text", "string"), ("source", "string"), ("n_words", "int")] + [
        (n, "float") for n in signal_names(cfg.curate.filters, cfg.curate.every_signal)
    ]


@dataclass
class Decisions:
    """What pass 1 found: a reason code per document (per part file), the dedup groups' minima
    over passing documents, and the filter statistics."""

    reasons: list[str] = field(default_factory=lambda: [""])  # code -> "filter:<name>:<rule>"
    codes: list[np.ndarray] = field(default_factory=list)  # per part file
    exact_min: dict[str, str] = field(default_factory=dict)
    near_min: dict[str, str] = field(default_factory=dict)
    alone: Counter = field(default_factory=Counter)  # "<filter>:<rule>" -> n
    exempted: Counter = field(default_factory=Counter)
    earlier: survivors.Earlier | None = None  # a refresh: the earlier groups' survivors
    groups: survivors.MergedGroups | None = None  # the groups merged across curation runs
    linked: Counter = field(default_factory=Counter)  # outcome -> new duplicates of earlier documents

    def code(self, reason: str | None) -> int:
        if reason is None:
            return PASS
        if reason not in self.reasons:
            self.reasons.append(reason)
        return self.reasons.index(reason)


# ------------------------------------------------------------------------------ reading
def _iter_batches(
    uri: str, columns: list[str] | None, groups: survivors.MergedGroups | None = None, batch_size: int = 4096
) -> Iterator[pa.RecordBatch]:
    """Record batches of a part, with the merged group labels when `groups` is given."""
    with storage.open_read(uri) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns):
            yield groups.relabel(batch) if groups is not None else batch


def _group_columns(uri: str) -> list[str]:
    """The columns the dedup decision reads: the groups, and the links to earlier documents
    when the part has them (an annotated dataset written before refreshes existed has not)."""
    with storage.open_read(uri) as f:
        names = set(pq.read_schema(f).names)
    return GROUP_COLUMNS + [c for c in survivors.PRIOR_COLUMNS if c in names]


def needed_signals(chain: FilterChain) -> dict[str, Signal]:
    """The signals the enabled filters' decisions read."""
    out: dict[str, Signal] = {}
    for _, flt, sub, _ in chain.filters:
        for name, fn in flt.signals(sub).items():
            out.setdefault(name, fn)
    return out


def _signals(batch: pa.RecordBatch, functions: dict[str, Signal], stored: set[str]) -> dict[str, list[float]]:
    """Signal values per column: stored ones as read; one a filter registered after the
    annotation needs is computed here from the text (slow; re-annotating stores it)."""
    out = {n: batch.column(n).to_pylist() for n in ["n_words", *functions] if n in stored}
    missing = {n: fn for n, fn in functions.items() if n not in stored}
    if missing:
        rows = [TextStats(t) for t in batch.column("text").to_pylist()]
        out.update({n: [float(fn(s)) for s in rows] for n, fn in missing.items()})
    return out


def _with_missing(batch: pa.RecordBatch, functions: dict[str, Signal], stored: set[str]) -> pa.RecordBatch:
    """The batch with any q_* signal the annotation lacks computed from the text."""
    missing = {n: fn for n, fn in functions.items() if n.startswith("q_") and n not in stored}
    if not missing:
        return batch
    values = _signals(batch, missing, stored)
    arrays = list(batch.columns) + [pa.array(values[n], pa.float64()) for n in missing]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names + list(missing))


# ------------------------------------------------------------------------ 1. filters
def decide_filters(
    parts: list[str], chain: FilterChain, stored: set[str], groups: survivors.MergedGroups | None = None
) -> Decisions:
    """Pass 1: every document's first failing rule, and the dedup minima over passing ones (of
    the groups merged across curation runs, `survivors.MergedGroups`)."""
    dec = Decisions(groups=groups)
    functions = needed_signals(chain)
    # the text only for an `exempt_if` or a signal the annotation lacks (not with the filters off)
    text = any(f[3] is not None for f in chain.filters) or any(n not in stored for n in functions)
    columns = ["text"] * text + ["n_words", *[n for n in functions if n in stored], *GROUP_COLUMNS]  # links: pass 2
    for uri in parts:
        codes: list[int] = []
        for batch in _iter_batches(uri, columns, dec.groups):
            sig = _signals(batch, functions, stored)
            names = list(sig)
            texts = batch.column("text").to_pylist() if text else [""] * batch.num_rows
            ids, exact, near = (batch.column(c).to_pylist() for c in ("id", "exact_group", "near_group"))
            for i, values in enumerate(zip(*sig.values())):
                verdict = chain.decide(dict(zip(names, values)), texts[i])
                dec.alone.update(f"{k}:{r}" for k, r in verdict.failed.items())
                dec.exempted.update(verdict.exempt)
                codes.append(dec.code(verdict.reason))
                if verdict.reason is None:
                    _take_min(dec.exact_min, exact[i], ids[i])
                    _take_min(dec.near_min, near[i], ids[i])
        dec.codes.append(np.asarray(codes, dtype=np.int32))
    return dec


def _take_min(minima: dict[str, str], group: str | None, doc_id: str) -> None:
    if group is not None and (group not in minima or doc_id < minima[group]):
        minima[group] = doc_id


# -------------------------------------------------------------------------- 2. dedup
def outcomes(
    batch: pa.RecordBatch, codes: np.ndarray, dec: Decisions, exact_on: bool, fuzzy_on: bool
) -> tuple[list[str], list[str | None], list[str | None]]:
    """(outcome, duplicate_of, survivor of its group) of every row of a batch, from its filter
    code, its groups and (a refresh) its links to earlier documents (`survivors`)."""
    rows = batch.select([c for c in survivors.LINK_COLUMNS if c in batch.schema.names]).to_pylist()
    out: list[str] = []
    dup_of: list[str | None] = []
    group_survivor: list[str | None] = []
    for row, code in zip(rows, codes.tolist()):
        old, s = dec.earlier.of(row, exact_on, fuzzy_on) if dec.earlier and "prior_exact" in row else (None, None)
        near, exact, doc = row["near_group"], row["exact_group"], row["id"]
        survivor = dec.near_min.get(near) if fuzzy_on and near is not None else None
        rep = dec.exact_min.get(exact) if exact_on and exact is not None else None
        if code != PASS:
            out.append(dec.reasons[code])
            dup_of.append(None)
            group_survivor.append(s or survivor or rep)
        elif old is not None:
            out.append(old)
            dup_of.append(s)
            group_survivor.append(s)
        elif rep is not None and rep != doc:
            out.append(accounting.EXACT)
            dup_of.append(survivor or rep)
            group_survivor.append(survivor or rep)
        elif survivor is not None and survivor != doc:
            out.append(accounting.NEAR)
            dup_of.append(survivor)
            group_survivor.append(survivor)
        else:
            out.append(accounting.KEPT)
            dup_of.append(None)
            group_survivor.append(doc)
    return out, dup_of, group_survivor


def count_outcomes(
    parts: list[str], dec: Decisions, exact_on: bool, fuzzy_on: bool
) -> tuple[list[tuple[str, str, int]], int]:
    """Pass 2 (ids and groups only): (file, outcome, n) rows and the number of near groups
    that lost a member."""
    counts: Counter = Counter()
    groups: set[str | None] = set()
    for uri, codes in zip(parts, dec.codes):
        offset = 0
        for batch in _iter_batches(uri, _group_columns(uri), dec.groups):
            outs, dup_of, _ = outcomes(batch, codes[offset : offset + batch.num_rows], dec, exact_on, fuzzy_on)
            offset += batch.num_rows
            if dec.earlier is not None:
                earlier = set(dec.earlier.survivor.values())
                dec.linked.update(o for o, d in zip(outs, dup_of) if d in earlier)
            counts.update(zip(batch.column("file").to_pylist(), outs))
            groups.update(d for o, d in zip(outs, dup_of) if o == accounting.NEAR)
    return [(f, o, n) for (f, o), n in sorted(counts.items())], len(groups)


# -------------------------------------------------------------------------- 3. accounting
def build_counts(annotated: Dataset, select_outcomes: list[tuple[str, str, int]]) -> dict[str, Any]:
    """The curated counts: read and quarantined per file from the annotated manifest, the rest
    from this stage's outcomes; raises AccountingError when a file's equation fails."""
    per_file = annotated.manifest.counts["per_file"]
    read = {f: c["documents_in"] for f, c in per_file.items()}
    quarantined = [
        (f, accounting.QUARANTINE_PREFIX + reason, n)
        for f, c in per_file.items()
        for reason, n in c["quarantined"].items()
    ]
    retracted = [(f, accounting.RETRACTED, n) for f, c in per_file.items() if (n := c.get(accounting.RETRACTED))]
    counts = accounting.build_counts(list(per_file), read, quarantined + retracted + select_outcomes)
    seen: Counter[str] = Counter()
    for f, _, n in select_outcomes:
        seen[f] += n
    lost = {f: (c["documents_out"], seen[f]) for f, c in per_file.items() if c["documents_out"] != seen[f]}
    if lost:
        raise accounting.AccountingError(f"annotated documents and selected outcomes differ per file: {lost}")
    return counts


# ------------------------------------------------------------------------------- 4. write
class PartWriter:
    """Rows routed to output parts by `id_hash mod parts`, spilled to local Arrow files, then
    each part sorted by id (in runs of `run_rows` rows or `run_bytes` bytes, merged) and written
    like the Spark stage's parts (`batches.SortedPart`, the bytes of `batches.write_table`)."""

    def __init__(
        self,
        staging: str,
        prefix: str,
        fields: list[tuple[str, str]],
        n_rows: int,
        docs_per_file: int,
        spill_dir: str,
        run_rows: int = batches.RUN_ROWS,
        run_bytes: int = batches.RUN_BYTES,
    ):
        self.staging, self.prefix = staging, prefix
        self.run_rows, self.run_bytes = run_rows, run_bytes
        self.schema = batches.arrow_schema(fields)
        self.parts = max(1, math.ceil(n_rows / docs_per_file))
        self.spill_dir = spill_dir
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        self.written = 0

    def add(self, table: pa.Table, id_hash: np.ndarray, lo: int, hi: int) -> None:
        """Spill the rows whose part is in [lo, hi)."""
        part = np.mod(id_hash, self.parts)
        for b in np.unique(part[(part >= lo) & (part < hi)]).tolist():
            rows = table.filter(pa.array(part == b)).select(self.schema.names).cast(self.schema)
            if b not in self.writers:
                self.writers[b] = pa.ipc.new_file(self._spill(b), self.schema)
            self.writers[b].write_table(rows)

    def _spill(self, b: int) -> str:
        return f"{self.spill_dir}/{self.prefix.replace('/', '-')}-{b}.arrow"

    def flush(self, lo: int, hi: int) -> None:
        """Write parts [lo, hi) (empty ones too) and drop their spill files. A part's spilled
        rows are read a batch at a time into sorted runs and merged (`batches.SortedPart`):
        memory is one run and one row group, not the part."""
        for b in range(lo, min(hi, self.parts)):
            part = batches.SortedPart(self.schema, ["id"], self.spill_dir, self.run_rows, self.run_bytes)
            if b in self.writers:
                self.writers.pop(b).close()
                path = self._spill(b)
                with pa.OSFile(path, "rb") as src:
                    reader = pa.ipc.open_file(src)
                    for i in range(reader.num_record_batches):
                        part.add(reader.get_batch(i))
                storage.delete(path)
            self.written += part.write(batches.part_uri(self.staging, self.prefix, b))


def write_outputs(
    parts: list[str],
    dec: Decisions,
    cfg: Config,
    staging: str,
    n_kept: int,
    n_rejected: int,
    sample_every: int,
    stored: set[str],
    tag: str = "",
) -> tuple[dict[str, int], dict[str, list[np.ndarray]]]:
    """Pass 3: kept rows to `docs/`, the others to `rejected/` (when kept), every row's outcome
    and survivor to `state/`, in rounds of at most MAX_OPEN_PARTS parts per output (under
    `<output>/<tag>/` in a refresh). Returns rows written and a sample of kept signals."""
    cur = cfg.curate
    q_names = ["n_words"] + signal_names(cur.filters, cur.every_signal)
    functions = signal_functions(cur.filters, cur.every_signal)
    sample: dict[str, list[np.ndarray]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="climb-select-") as spill:
        docs = PartWriter(staging, "docs" + tag, docs_fields(cfg), n_kept, cur.docs_per_file, spill)
        rejected = PartWriter(staging, "rejected" + tag, REJECTED_FIELDS, n_rejected, cur.docs_per_file, spill)
        state_prefix = survivors.STATE.rstrip("/") + tag
        state = PartWriter(staging, state_prefix, survivors.STATE_FIELDS, n_kept + n_rejected, cur.docs_per_file, spill)
        outputs = [docs, state] + ([rejected] if cur.keep_rejected else [])
        for lo in range(0, max(w.parts for w in outputs), MAX_OPEN_PARTS):
            hi = lo + MAX_OPEN_PARTS
            for uri, codes in zip(parts, dec.codes):
                offset = 0
                for batch in _iter_batches(uri, None, dec.groups):
                    batch = _with_missing(batch, functions, stored)
                    decided = outcomes(
                        batch, codes[offset : offset + batch.num_rows], dec, cur.exact_dedup, cur.fuzzy_dedup.enabled
                    )
                    offset += batch.num_rows
                    routes = Routes(docs, rejected if cur.keep_rejected else None, state, lo, hi)
                    routes.route(batch, decided, sample if lo == 0 else None, q_names, sample_every)
            for w in outputs:
                w.flush(lo, hi)
    return {w.prefix.split("/")[0]: w.written for w in outputs}, sample


def docs_rows(parts: list[str], ids: list[str], cfg: Config) -> pa.Table:
    """The curated `docs/` rows (`docs_fields`, sorted by id) of the annotated documents `ids`
    (a refresh's revived survivors), read from the annotated `parts`."""
    schema = batches.arrow_schema(docs_fields(cfg))
    functions = signal_functions(cfg.curate.filters, cfg.curate.every_signal)
    tables = [schema.empty_table()]
    for uri in parts if ids else []:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, filters=[("id", "in", ids)])
        for b in t.to_batches():
            b = _with_missing(b, functions, set(t.schema.names))
            tables.append(pa.Table.from_batches([b]).select(schema.names).cast(schema))
    return pa.concat_tables(tables).sort_by("id")


@dataclass
class Routes:
    """Where pass 3 sends a batch's rows: kept ones to `docs`, the others to `rejected` (when
    kept), all to `state`; only the parts in [lo, hi) this round."""

    docs: PartWriter
    rejected: PartWriter | None
    state: PartWriter
    lo: int
    hi: int

    def route(self, batch: pa.RecordBatch, decided, sample: dict | None, q_names: list[str], every: int) -> None:
        outs, dup_of, group_survivor = decided
        kept = np.array([o == accounting.KEPT for o in outs], dtype=bool)
        id_hash = batch.column("id_hash").to_numpy(zero_copy_only=False)
        table = pa.Table.from_batches([batch])
        self.docs.add(table.filter(pa.array(kept)), id_hash[kept], self.lo, self.hi)
        if self.rejected is not None and (~kept).any():
            rej = (
                table.filter(pa.array(~kept))
                .append_column("reason", pa.array([o for o, k in zip(outs, kept) if not k], pa.string()))
                .append_column("duplicate_of", pa.array([d for d, k in zip(dup_of, kept) if not k], pa.string()))
            )
            self.rejected.add(rej, id_hash[~kept], self.lo, self.hi)
        state = pa.table(
            {
                "id": batch.column("id"),
                "file": batch.column("file"),
                "outcome": pa.array(outs, pa.string()),
                "survivor": pa.array(group_survivor, pa.string()),
            }
        )
        self.state.add(state, id_hash, self.lo, self.hi)
        if sample is not None:
            pick = kept & (np.mod(id_hash, every) == 0)
            for n in q_names:
                sample[n].append(batch.column(n).to_numpy(zero_copy_only=False)[pick].astype(np.float32))


def copy_quarantine(annotated: Dataset, staging: str) -> int:
    """The quarantine side set is the annotation's, byte for byte."""
    rows = 0
    for uri in annotated.files("quarantine/"):
        rel = uri[len(annotated.uri.rstrip("/")) + 1 :]
        with storage.open_read(uri) as src, storage.open_write(storage.join(staging, rel)) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        rows += pq.read_metadata(storage.local_path(uri) or pa.BufferReader(storage.read_bytes(uri))).num_rows
    return rows


# -------------------------------------------------------------------------- the selection
@dataclass
class Selection:
    """What deciding some annotated parts gave: (file, outcome, n) rows, rows written per
    output, the decisions, a sample of kept signals, and the near groups that lost a member."""

    outcomes: list[tuple[str, str, int]]
    written: dict[str, int]
    dec: Decisions
    sample: dict[str, list[np.ndarray]]
    near_groups: int

    def n(self, kept: bool) -> int:
        return sum(n for _, o, n in self.outcomes if (o == accounting.KEPT) == kept)


def decide(
    parts: list[str],
    cfg: Config,
    staging: str,
    earlier: survivors.Earlier | None = None,
    tag: str = "",
    groups: survivors.MergedGroups | None = None,
) -> Selection:
    """Filters, dedup and the write of the given annotated parts (all of them, or a refresh's
    new ones, decided against the `earlier` survivors and written under `tag`), with their dedup
    groups merged across the curation runs that wrote them (`groups`, else computed here)."""
    cur = cfg.curate
    if not parts:
        return Selection([], {}, Decisions(), {}, 0)
    stored = set(pq.read_schema(storage.local_path(parts[0]) or pa.BufferReader(storage.read_bytes(parts[0]))).names)
    groups = groups if groups is not None else survivors.merge_groups(parts)
    dec = decide_filters(parts, FilterChain(cur.filters), stored, groups)
    dec.earlier = earlier
    rows, near_groups = count_outcomes(parts, dec, cur.exact_dedup, cur.fuzzy_dedup.enabled)
    sel = Selection(rows, {}, dec, {}, near_groups)
    n_kept, n_rejected = sel.n(True), sel.n(False)
    every = max(1, math.ceil(n_kept / QUANTILE_SAMPLE))
    sel.written, sel.sample = write_outputs(parts, dec, cfg, staging, n_kept, n_rejected, every, stored, tag)
    expected = {"docs": n_kept, "state": n_kept + n_rejected}
    if cur.keep_rejected:
        expected["rejected"] = n_rejected
    accounting.check_written(expected, sel.written)
    return sel


def select(annotated: Dataset, cfg: Config, staging: str) -> tuple[dict[str, Any], dict[str, Any], list]:
    """Every step in order over every annotated part; returns (counts, extra, summary) of the
    `curated` dataset."""
    t0 = time.time()
    sel = decide(annotated.files("docs/"), cfg, staging)
    counts = build_counts(annotated, sel.outcomes)
    n_quarantined = sum(counts["quarantined"].values())
    accounting.check_written({"quarantine": n_quarantined}, {"quarantine": copy_quarantine(annotated, staging)})
    seconds = time.time() - t0
    extra = statistics.extra(annotated, cfg, sel.dec, sel.outcomes, sel.near_groups, sel.sample, seconds)
    return counts, extra, statistics.summary(counts, extra, cfg, seconds)
