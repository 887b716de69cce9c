"""Who survives across versions of the `curated` dataset (`select` in a refresh).

`select` records every annotated document's outcome and the survivor of its group in `state/`
(`STATE_FIELDS`: `id`, `file`, `outcome` (`kept`, `exact_duplicate`, `near_duplicate`,
`filter:<name>:<rule>`), `survivor`: itself when kept, the kept document it duplicates, or for a
filtered document the survivor of its group; null when none). A refresh decides only the new
documents: a new document that `curate` linked to an earlier one (`prior_exact`, `prior_near`,
`mixture.curate.prior`), or whose exact or near group holds such a document, is a duplicate of
that earlier document's survivor, so a document already curated survives over a new duplicate of
it. When the earlier group has no survivor (every member failed a filter, or its survivor was
removed since), the new documents compete as in a full run (the smallest passing id survives).

A survivor a refresh removes (withdrawn: its input file changed or went away; or retracted)
leaves its group's other members rejected as duplicates of a document that no longer exists:
`regroup` decides those
groups again, before the new documents, among their remaining members with the full run's rule
(the passing member with the smallest id survives and is revived, the other passing members
stay exact or near duplicates of it, the filtered members' survivor becomes it, or null when no
member passes), and `load` sees the revived survivors. A full run over the same input keeps the
same member. `climb retract` takes the exact copies of a retracted text out with it (the same
exact-dedup hash), so what a retraction can revive is a near copy under another id, which a full
run would keep too: a near copy is retracted only when named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import storage
from mixture.curate import accounting

STATE = "state/"
STATE_FIELDS = [("id", "string"), ("file", "string"), ("outcome", "string"), ("survivor", "string")]
PRIOR_COLUMNS = ["prior_exact", "prior_near"]
LINK_COLUMNS = ["id", "exact_group", "near_group", *PRIOR_COLUMNS]


class MergedGroups:
    """The dedup groups of annotated parts merged across the curation runs that wrote them.

    Each run labels its groups by their smallest id, and a refresh links a new document to an
    earlier one (`prior_exact`, `prior_near`) without relabelling either: this union-find over the
    small columns (`id`, `exact_group`, `near_group`, the links) gives every document that is in a
    group or linked its merged group, labelled by the smallest id in it, for the exact groups
    (same text: `exact_group`, `prior_exact`) and the near ones (all four). On parts one run
    wrote, the labels are the stored ones. Memory: the documents that are in a group or linked."""

    def __init__(self) -> None:
        self.exact: dict[str, str] = {}
        self.near: dict[str, str] = {}

    @staticmethod
    def _find(parent: dict[str, str], x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent.get(x, root)
        return root

    def _union(self, parent: dict[str, str], a: str, b: str | None) -> None:
        if b is None:
            return
        ra, rb = self._find(parent, a), self._find(parent, b)
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    def add(self, row: dict[str, Any]) -> None:
        i = row["id"]
        for label in (row["exact_group"], row.get("prior_exact")):
            self._union(self.exact, i, label)
        for label in (row["exact_group"], row["near_group"], row.get("prior_exact"), row.get("prior_near")):
            self._union(self.near, i, label)

    def labels(self, ids: list[str]) -> tuple[list[str | None], list[str | None]]:
        """(exact label, near label) of each id: its merged group's smallest id, None alone."""
        ex = [self._find(self.exact, i) if i in self.exact else None for i in ids]
        ne = [self._find(self.near, i) if i in self.near else None for i in ids]
        return ex, ne

    def relabel(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with `exact_group` / `near_group` replaced by the merged labels."""
        ex, ne = self.labels(batch.column("id").to_pylist())
        names = batch.schema.names
        cols = [
            pa.array(ex, pa.string()) if n == "exact_group" else pa.array(ne, pa.string()) if n == "near_group" else c
            for n, c in zip(names, batch.columns)
        ]
        return pa.RecordBatch.from_arrays(cols, names=names)


def merge_groups(parts: list[str]) -> MergedGroups:
    """`MergedGroups` of the annotated parts (one pass over the rows in a group or linked)."""
    out = MergedGroups()
    for uri in parts:
        with storage.open_read(uri) as f:
            names = set(pq.read_schema(f).names)
        cols = [c for c in LINK_COLUMNS if c in names]
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=cols)
        grouped = None
        for c in cols[1:]:
            valid = pc.is_valid(t.column(c))
            grouped = valid if grouped is None else pc.or_(grouped, valid)
        for row in t.filter(grouped).to_pylist() if grouped is not None else []:
            out.add(row)
    return out


@dataclass
class Earlier:
    """The survivors of the earlier groups the new documents are linked to."""

    survivor: dict[str, str] = field(default_factory=dict)  # earlier id -> its group's survivor
    exact: dict[str, str] = field(default_factory=dict)  # new exact group -> survivor (same text)
    exact_near: dict[str, str] = field(default_factory=dict)  # new exact group -> survivor (near)
    near: dict[str, str] = field(default_factory=dict)  # new near group -> survivor

    def of(self, row: dict[str, Any], exact_on: bool, fuzzy_on: bool) -> tuple[str | None, str | None]:
        """(outcome, survivor) of a passing new document linked to an earlier survivor, else
        (None, None)."""
        e, g = row["exact_group"], row["near_group"]
        s = self.survivor.get(row["prior_exact"] or "") or (self.exact.get(e) if e else None)
        if s and exact_on:
            return accounting.EXACT, s
        s = self.survivor.get(row["prior_near"] or "") or self.survivor.get(row["prior_exact"] or "")
        s = s or (self.exact_near.get(e) if e else None) or (self.near.get(g) if g else None)
        if s and fuzzy_on:
            return accounting.NEAR, s
        return None, None


def _take(minima: dict[str, str], key: str | None, value: str | None) -> None:
    if key is not None and value is not None and (key not in minima or value < minima[key]):
        minima[key] = value


@dataclass
class Regrouped:
    """The earlier groups whose survivor a refresh withdrew, decided again (`regroup`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # STATE_FIELDS of the members, now; `was`: outcome before
    moved: dict[str, str | None] = field(default_factory=dict)  # withdrawn survivor -> its group's new one

    @property
    def revived(self) -> list[dict[str, Any]]:
        """The members that survive now (they were duplicates)."""
        return [r for r in self.rows if r["outcome"] == accounting.KEPT]

    @property
    def redirected(self) -> list[dict[str, Any]]:
        """The passing members that stay duplicates, of the revived survivor now."""
        return [r for r in self.rows if r["outcome"] in (accounting.EXACT, accounting.NEAR)]

    @cached_property
    def changed(self) -> dict[str, str | None]:
        """{member id: its survivor now}."""
        return {r["id"]: r["survivor"] for r in self.rows}

    def survivor(self, doc: str, survivor: str) -> str | None:
        """The survivor, after the regrouping, of earlier document `doc` whose survivor was `survivor`."""
        return self.changed[doc] if doc in self.changed else self.moved.get(survivor, survivor)


PASSED = (accounting.KEPT, accounting.EXACT, accounting.NEAR)  # outcomes of documents that passed the filters


def regroup(state_uris: list[str], withdrawn: set[str], removed: set[str]) -> Regrouped:
    """Decide again the groups whose survivor is in `withdrawn`, among their members not in
    `removed` (their `state/` rows; the `survivor` column is scanned only when there are
    withdrawn ids)."""
    out = Regrouped()
    if not withdrawn:
        return out
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    wanted = sorted(withdrawn)
    for uri in state_uris:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=[n for n, _ in STATE_FIELDS], filters=[("survivor", "in", wanted)])
        for r in t.to_pylist():
            if r["id"] not in removed:
                groups[r["survivor"]].append(r)
    for old, members in sorted(groups.items()):
        passing = sorted(r["id"] for r in members if r["outcome"] in PASSED)
        new = passing[0] if passing else None
        out.moved[old] = new
        for r in sorted(members, key=lambda r: r["id"]):
            outcome = accounting.KEPT if r["id"] == new else r["outcome"]
            out.rows.append({**r, "outcome": outcome, "survivor": new, "was": r["outcome"]})
    return out


def load(
    parts: list[str],
    state_uris: list[str],
    removed: set[str],
    regrouped: Regrouped | None = None,
    groups: MergedGroups | None = None,
) -> Earlier:
    """The links of the new annotated `parts` resolved against the earlier `state/` files (less
    the survivors in `removed`; with the groups `regroup` decided again)."""
    rows = []
    for uri in parts:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=LINK_COLUMNS)
        linked = pc.or_(pc.is_valid(t.column("prior_exact")), pc.is_valid(t.column("prior_near")))
        t = t.filter(linked)
        for batch in t.to_batches():
            rows += (groups.relabel(batch) if groups is not None else batch).to_pylist()
    wanted = {r[c] for r in rows for c in PRIOR_COLUMNS if r[c]}
    found = lookup(state_uris, wanted)
    if regrouped is not None and regrouped.rows:
        found = {k: s for k, v in found.items() if (s := regrouped.survivor(k, v))}
    out = Earlier(survivor={k: v for k, v in found.items() if v not in removed})
    for r in rows:
        by_exact = out.survivor.get(r["prior_exact"] or "")
        by_near = out.survivor.get(r["prior_near"] or "")
        _take(out.exact, r["exact_group"], by_exact)
        _take(out.exact_near, r["exact_group"], by_near or by_exact)
        _take(out.near, r["near_group"], by_exact or by_near)
    return out


def lookup(state_uris: list[str], ids: Iterable[str]) -> dict[str, str]:
    """{id: survivor} of the given earlier ids that have a survivor (row groups are sorted by
    id, so only the ones that can hold them are read)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    out: dict[str, str] = {}
    for uri in state_uris:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "survivor"], filters=[("id", "in", wanted)])
        out.update((i, s) for i, s in zip(t.column("id").to_pylist(), t.column("survivor").to_pylist()) if s)
    return out


def outcomes_of(state_uris: list[str], ids: pa.Array) -> list[tuple[str, str]]:
    """(file, outcome) of the given earlier ids (for the counts of a removal)."""
    out: list[tuple[str, str]] = []
    wanted = ids.to_pylist()
    if not wanted:
        return out
    for uri in state_uris:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "file", "outcome"], filters=[("id", "in", wanted)])
        out += list(zip(t.column("file").to_pylist(), t.column("outcome").to_pylist()))
    return out


def remove_from_counts(per_file: dict[str, dict[str, Any]], removed: list[tuple[str, str, str]]) -> None:
    """Take removed documents ((file, outcome, reason) each) out of their file's counts; a
    retracted one is then counted as `retracted` (read = every outcome + retracted)."""
    for file, outcome, reason in removed:
        c = per_file.get(file)
        if c is None:
            continue
        if outcome == accounting.KEPT:
            c["documents_out"] -= 1
        elif outcome in (accounting.EXACT, accounting.NEAR):
            c[outcome + "s"] -= 1
        elif outcome.startswith(accounting.FILTER_PREFIX):
            name = outcome[len(accounting.FILTER_PREFIX) :].split(":", 1)[0]
            c["filtered"][name] -= 1
        if reason == accounting.RETRACTED:
            c[accounting.RETRACTED] = c.get(accounting.RETRACTED, 0) + 1
        else:
            c["documents_in"] -= 1
