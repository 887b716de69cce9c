"""`climb retract`: take documents out of the corpus and out of every dataset made from it.

A retraction names documents (an ids file: one entry per line, a document id, an id pattern with
`*` / `?`, or `source:<name>` for every document of that source; blank lines and `#` comments
are skipped) and a reason. This module holds the steps that need no runner; `climb retract`
(`mixture.cli.retract`, callable from a job or a DAG task) runs them in order:

1. `resolve`: the entries matched against the committed `annotated` dataset's `id` and `source`
   columns, streamed in record batches (the texts are never read); an entry that matches
   nothing is counted, not an error;
2. `commit` (the caller holds the `annotated` lease): a new version of `annotated` without those
   documents, made with the committed manifest's config hash and inputs, so the dataset stays
   up to date: every Parquet file under `docs/` and `dedup/` that held one of them rewritten
   without it, every other file kept, `removed/vNNNN.parquet` (reason `retracted`) for the
   stages downstream, the counts adjusted (per input file: read = annotated + quarantined +
   retracted), lineage mode `retract`. The manifest records the reason and the number of
   documents, never a text; the ids are only in `removed/`;
3. the runner rebuilds or extends every later dataset (`pipeline.run_all`), publishing makes a
   new version, and `published_ids_absent` reads it back;
4. `scrub_tracking`: earlier MLflow cluster reports quoted documents as snippets; a retracted
   document's snippet is replaced by `[retracted]` in every run's `report.json` / `report.md`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import increments, storage
from mixture.config import Config
from mixture.dataset import Dataset, DatasetError, DatasetWriter

log = logging.getLogger(__name__)

SOURCE_PREFIX = "source:"
REDACTED = "[retracted]"
BATCH_ROWS = 65_536
REWRITTEN_PREFIXES = ("docs/", "dedup/")  # Parquet files with an `id` column, one row per document
REPORT_FILES = ("report.json", "report.md")  # the artifacts that quote documents (cluster reports)


class RetractError(DatasetError):
    """A retraction that cannot be done (nothing matched, a bad ids file, a version left dirty)."""


# ------------------------------------------------------------------------------ the entries
@dataclass(frozen=True)
class Entries:
    """An ids file's entries by kind, each in file order (duplicates dropped)."""

    ids: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids) + len(self.patterns) + len(self.sources)


def parse_entries(lines: Iterable[str]) -> Entries:
    """An ids file's lines as entries: `source:<name>`, a pattern (holds `*` or `?`), else an id."""
    ids: dict[str, None] = {}
    patterns: dict[str, None] = {}
    sources: dict[str, None] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(SOURCE_PREFIX):
            sources[line[len(SOURCE_PREFIX) :].strip()] = None
        elif "*" in line or "?" in line:
            patterns[line] = None
        else:
            ids[line] = None
    return Entries(tuple(ids), tuple(patterns), tuple(sources))


def read_entries(uri: str) -> Entries:
    """The entries of an ids file (local or S3); RetractError when it is missing or empty."""
    if not storage.exists(uri):
        raise RetractError(f"ids file not found: {uri}")
    entries = parse_entries(storage.read_text(uri).splitlines())
    if not len(entries):
        raise RetractError(f"{uri}: no entries (one document id, id pattern or source:<name> per line)")
    return entries


def pattern_regex(pattern: str) -> str:
    """A glob over a whole id (`*` any characters, `?` one) as an anchored RE2 expression."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return f"(?s)^{body}$"


# ------------------------------------------------------------------------------ 1. resolve
@dataclass
class Match:
    """What the entries matched: {id: its input file}, and the entries that matched nothing."""

    files: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return sorted(self.files)


def _batches(ds: Dataset, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for uri in ds.files("docs/"):
        if not uri.endswith(".parquet"):
            continue
        with storage.open_read(uri) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _masks(batch: pa.RecordBatch, entries: Entries, id_set: pa.Array) -> Iterator[tuple[str, pa.Array]]:
    """(entry, rows it matches) for the batch's id and pattern and source entries."""
    ids = pc.cast(batch.column("id"), pa.string())
    if len(id_set):
        yield "", pc.is_in(ids, value_set=id_set)  # the ids, counted apart by value
    for p in entries.patterns:
        yield p, pc.fill_null(pc.match_substring_regex(ids, pattern_regex(p)), False)
    if entries.sources:
        source = pc.cast(batch.column("source"), pa.string())
        for s in entries.sources:
            yield SOURCE_PREFIX + s, pc.fill_null(pc.equal(source, s), False)


def resolve(annotated: Dataset, entries: Entries) -> Match:
    """Match the entries against the annotated documents' ids and sources (streamed; no text)."""
    id_set = pa.array(entries.ids, pa.string())
    hits: Counter[str] = Counter()
    found_ids: set[str] = set()
    match = Match()
    for batch in _batches(annotated, ["id", "source", "file"] if entries.sources else ["id", "file"]):
        for entry, mask in _masks(batch, entries, id_set):
            n = int(pc.sum(mask).as_py() or 0)
            if not n:
                continue
            rows = batch.filter(mask)
            ids = pc.cast(rows.column("id"), pa.string()).to_pylist()
            match.files.update(zip(ids, rows.column("file").to_pylist()))
            if entry:
                hits[entry] += n
            else:
                found_ids.update(ids)
    match.unmatched = [i for i in entries.ids if i not in found_ids]
    match.unmatched += [e for e in entries.patterns if not hits[e]]
    match.unmatched += [SOURCE_PREFIX + s for s in entries.sources if not hits[SOURCE_PREFIX + s]]
    return match


def with_exact_copies(annotated: Dataset, match: Match) -> int:
    """Add to `match` every annotated document with the same text as a matched one (the same
    exact-dedup hash, `dedup/`): a copy of a retracted text under another id is retracted with
    it. Returns how many were added. Two passes over the small `dedup/` columns, no text read."""
    if not match.files:
        return 0
    hashes: set[str] = set()
    wanted = match.ids
    for uri in annotated.files("dedup/"):
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "text_hash"], filters=[("id", "in", wanted)])
        hashes.update(t.column("text_hash").to_pylist())
    before = len(match.files)
    for uri in annotated.files("dedup/") if hashes else []:
        with storage.open_read(uri) as f:
            t = pq.read_table(f, columns=["id", "file", "text_hash"], filters=[("text_hash", "in", sorted(hashes))])
        match.files.update(zip(t.column("id").to_pylist(), t.column("file").to_pylist()))
    return len(match.files) - before


def already_retracted(annotated: Dataset, entries: Entries) -> list[str]:
    """The ids an earlier retraction removed that the id and pattern entries name (a retraction
    run again after its commit: nothing is left to remove, the rest of it still runs)."""
    removed = increments.removed_since(annotated, 0)
    ids = removed.filter(pc.equal(removed.column("reason"), increments.RETRACTED)).column("id")
    found = pc.is_in(ids, value_set=pa.array(entries.ids, pa.string()))
    for p in entries.patterns:
        found = pc.or_(found, pc.match_substring_regex(ids, pattern_regex(p)))
    return sorted(set(ids.filter(found).to_pylist()))


# ------------------------------------------------------------------------------- 2. commit
def retracted_counts(counts: dict[str, Any], match: Match) -> dict[str, Any]:
    """The annotated counts less the retracted documents, which are counted as `retracted` per
    input file and in total (read = annotated + quarantined + retracted per file)."""
    out = json.loads(json.dumps(counts))
    per_file = out.get("per_file", {})
    for f, n in Counter(match.files.values()).items():
        if f not in per_file or per_file[f]["documents_out"] < n:
            raise RetractError(f"the annotated counts do not cover the documents retracted from {f}")
        per_file[f]["documents_out"] -= n
        per_file[f]["retracted"] = per_file[f].get("retracted", 0) + n
    out["documents_out"] -= len(match.files)
    out["retracted"] = out.get("retracted", 0) + len(match.files)
    return out


def _carry(writer: DatasetWriter, previous: Dataset, ids: list[str]) -> dict[str, int]:
    """Every file of the previous version into the new one: the Parquet files under `docs/` and
    `dedup/` without the ids, the others kept. {rewritten file: rows removed}."""
    drop = pa.array(ids, pa.string())
    rewritten: dict[str, int] = {}
    for prefix in REWRITTEN_PREFIXES:
        rewritten.update(increments.carry_parquet(writer, previous, prefix, drop))
    for f in previous.manifest.files:
        rel = f["path"]
        carried = rel.startswith(REWRITTEN_PREFIXES) and rel.endswith(".parquet")
        if not carried and rel != increments.HISTORY:
            writer.keep(previous, rel)  # removed/ lists included: carried into every version
    return rewritten


def commit(
    cfg: Config, previous: Dataset, match: Match, reason: str, settings: str, staging_root: str | None = None
) -> Dataset:
    """Commit the version of `annotated` without the matched documents. The caller holds the
    dataset's lease (`pipeline.exclusive(cfg, "curate")`). `settings`: the curate stage's
    settings hash, for a dataset committed before versions had a lineage."""
    ids = match.ids
    writer = DatasetWriter(
        previous.uri,
        previous.manifest.stage,
        previous.manifest.config_hash,
        previous.manifest.inputs,
        staging_root=staging_root or storage.join(cfg.output_root, "_staging"),
    )
    rewritten = _carry(writer, previous, ids)
    in_docs = sum(n for rel, n in rewritten.items() if rel.startswith("docs/"))
    if in_docs != len(ids):
        raise RetractError(f"{len(ids)} documents matched but {in_docs} rows left docs/: run the retraction again")
    prev = increments.lineage(previous)
    delta = {"retracted": len(ids), "reason": reason, "files_rewritten": len(rewritten)}
    lin = increments.next_lineage(previous, "retract", prev.settings if prev else settings, {}, delta)
    if lin.mode != "retract":  # a dataset without a lineage: this version still only retracts
        lin = dataclasses.replace(lin, mode="retract", parent=previous.manifest_sha256)
    increments.write_removed(writer, lin.version, increments.ids_table(ids, increments.RETRACTED))
    extra = {k: v for k, v in previous.manifest.extra.items() if k != increments.LINEAGE}
    extra["retraction"] = {"reason": reason, "documents": len(ids), "files_rewritten": len(rewritten)}
    extra = increments.record(writer, previous, lin, extra)
    ds = writer.commit(retracted_counts(previous.manifest.counts, match), extra)
    log.info("annotated v%d: %d documents retracted, %d files rewritten", lin.version, len(ids), len(rewritten))
    return ds


# ------------------------------------------------------------------------------- 3. verify
def ids_present(ids: Iterable[str], found: pa.Array | pa.ChunkedArray) -> list[str]:
    """The ids of `ids` that occur in `found` (each once, sorted)."""
    present = pc.cast(found, pa.string())
    mask = pc.is_in(present, value_set=pa.array(sorted(set(ids)), pa.string()))
    return sorted(set(present.filter(mask).to_pylist()))


def published_ids_absent(mix: Any, ids: list[str]) -> Any:
    """Check that none of `ids` is in a ClimbMix dataset read back (`mixture.publish.reader.ClimbMix`:
    a published one through its `latest` pointer, or a local build); RetractError naming how many
    are. Returns the reader (its `version`, its counts)."""
    left = ids_present(ids, mix.read_table(columns=["id"]).column("id"))
    if left:
        raise RetractError(f"{len(left)} retracted document(s) are still in the ClimbMix dataset at {mix.uri}")
    return mix


# --------------------------------------------------------------------------------- 4. MLflow
def redact_json(obj: Any, ids: set[str]) -> tuple[Any, int]:
    """`obj` with the `text` of every {"id", "text"} entry whose id is retracted replaced."""
    if isinstance(obj, dict):
        n = 0
        out = {}
        for k, v in obj.items():
            out[k], m = redact_json(v, ids)
            n += m
        if "text" in out and str(out.get("id")) in ids and out["text"] != REDACTED:
            out["text"] = REDACTED
            n += 1
        return out, n
    if isinstance(obj, list):
        items = [redact_json(v, ids) for v in obj]
        return [v for v, _ in items], sum(m for _, m in items)
    return obj, 0


_QUOTE = re.compile(r"^> `(?P<id>[^`]+)`: (?P<text>.*)$")


def redact_markdown(text: str, ids: set[str]) -> tuple[str, int]:
    """A report's Markdown with the quoted snippet of every retracted id replaced."""
    lines, n = [], 0
    for line in text.split("\n"):
        m = _QUOTE.match(line)
        if m and m["id"] in ids and m["text"] != REDACTED:
            line = f"> `{m['id']}`: {REDACTED}"
            n += 1
        lines.append(line)
    return "\n".join(lines), n


def _redact_file(path: str, ids: set[str]) -> int:
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.endswith(".json"):
        obj, n = redact_json(json.loads(raw), ids)
        new = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    else:
        new, n = redact_markdown(raw, ids)
    if n:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return n


def scrub_tracking(cfg: Config, ids: list[str]) -> int:
    """Replace the retracted documents' snippets in the report artifacts of every MLflow run of
    the config's store (cluster reports quote documents). Returns the number of snippets
    replaced; 0 without a reachable store."""
    from mixture import tracking

    try:
        uri = tracking.tracking_uri(cfg)
    except ValueError:
        return 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    wanted = set(ids)
    total = 0
    for run_id in _run_ids(client):
        total += _scrub_run(client, run_id, wanted)
    if total:
        log.info("MLflow: %d snippet(s) of retracted documents replaced in run reports", total)
    return total


def _run_ids(client: Any) -> Iterator[str]:
    """Every run of every experiment (deleted ones too: their artifacts stay), page by page."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    token = None
    while experiments:
        page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        yield from (r.info.run_id for r in page)
        token = page.token
        if not token:
            return


def _scrub_run(client: Any, run_id: str, ids: set[str]) -> int:
    names = [a.path for a in client.list_artifacts(run_id) if not a.is_dir and a.path in REPORT_FILES]
    n = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, name, tmp)
            m = _redact_file(local, ids)
            if m:
                client.log_artifact(run_id, local)  # the same name: replaces the artifact
                n += m
            os.remove(local)
    return n
