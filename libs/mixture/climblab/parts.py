"""The ClimbLab token shards built in parts, first half: documents planned in parts and tokenized.

The `shards` stage's work (`mixture.stages.shards`) as pieces that can run in any order, in
parallel and again, like the embed stage's ranges; the merge per cluster that follows is
`mixture.climblab.merge`:

1. `plan`: the curated documents cut into parts of `shards.part_docs` consecutive documents
   (pure, from the document count); `prepare` first claims the staging folder, checks the inputs
   (`scan`: every curated document has its assignment, in the same order) and stages the
   tokenizer (`stage_tokenizer`: the configured one, or a byte-level BPE trained on a seeded
   sample of kept documents; an incremental version keeps the previous version's).
2. `tokenize_part`: one part's documents, read with their assignments (the cluster stage writes
   them in the curated order), tokenized record batch by record batch; each batch's documents of
   final cluster c, sorted by id, become one run (an Arrow record batch: id, text, tokens) of the
   part's file `_parts/r<first>-<stop>/c<c>.arrow` in the staging folder, and `done.json` is
   written last. A part whose `done.json` is staged is kept: a killed run resumes.

A run is sorted by id and the merge is stable, so the files are the same bytes whatever
`part_docs`, the record batch size or the number of workers. Locally the parts run in spawned
processes (`merge.run_local`; the tokenizer loaded once per process: `init_worker`); under
Airflow each part is a mapped task (`dags/climb_corpus_refresh.py`). What a process holds: a
record batch, and the tokenizer's training sample while it is trained.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.climblab import TOKENIZER
from mixture.climblab.tokens import encode, eos_id, load_tokenizer, token_dtype, train_tokenizer
from mixture.cluster.groups import assignment_files
from mixture.config import ShardsConfig
from mixture.curate import documents
from mixture.dataset import Dataset
from mixture.increments import version_of

PARTS = "_parts"  # staging only: removed before the commit
RUN_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("tokens", pa.list_(pa.uint32()))])


class ShardsError(RuntimeError):
    """The shards cannot be built from these inputs or this staging folder; one line says why."""


@dataclass(frozen=True)
class Part:
    """Documents `first_doc ..` (`docs` of them) of the curated dataset, in file and row order."""

    index: int
    first_doc: int
    docs: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def folder(self) -> str:
        return f"{PARTS}/r{self.first_doc:012d}-{self.first_doc + self.docs:012d}"

    def describe(self) -> str:
        return f"part {self.index} (documents {self.first_doc}-{self.first_doc + self.docs - 1})"


def plan(n_docs: int, part_docs: int) -> list[Part]:
    """Parts of `part_docs` consecutive documents covering `n_docs` documents."""
    return [Part(i, first, min(part_docs, n_docs - first)) for i, first in enumerate(range(0, n_docs, part_docs))]


@dataclass(frozen=True)
class Inputs:
    """What every piece reads (picklable): curated document files and the assignments files
    whose rows name the same documents in the same order (file after file)."""

    docs: tuple[str, ...]  # URIs of curated `docs/` files
    assignments: tuple[str, ...]  # URIs of the clusters dataset's `assignments*.parquet` files
    batch_rows: int = documents.BATCH_ROWS


def by_version(ds: Dataset, prefix: str, since: int = -1) -> list[str]:
    """URIs of the dataset's Parquet files under `prefix` (a folder or a name's start) that
    versions after `since` added: the base version's files first (no `vNNNN-` tag), then each
    version's, in order (`assignments-v0002.parquet` sorts before `assignments.parquet` by name)."""
    rels = [f["path"] for f in ds.manifest.files if f["path"].startswith(prefix) and f["path"].endswith(".parquet")]
    picked = [r for r in rels if (version_of(r) or 0) > since]
    return [ds.path(r) for r in sorted(picked, key=lambda r: (version_of(r) or 0, r))]


def inputs(curated: Dataset, clusters: Dataset, batch_rows: int = documents.BATCH_ROWS) -> Inputs:
    """Every curated document and every assignment (a full build)."""
    return Inputs(tuple(documents.doc_files(curated)), tuple(assignment_files(clusters)), batch_rows)


def count(inp: Inputs) -> int:
    """Documents in the input's curated files, from the Parquet footers."""
    total = 0
    for uri in inp.docs:
        with storage.open_read(uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _file_batches(uris: tuple[str, ...], columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    for uri in uris:
        with storage.open_read(uri) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)


# --------------------------------------------------------------------------------- reading
def _assignment_batches(inp: Inputs, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from _file_batches(inp.assignments, columns, inp.batch_rows)


def missing_error(inp: Inputs) -> ShardsError:
    """The curated documents without an assignment (ids hashed and sorted: 8 bytes a document,
    at most 3 examples kept), or the assignments being in another order than the curated ones."""
    have = np.sort(
        np.concatenate(
            [documents.id_hashes(b.column(0)) for b in _assignment_batches(inp, ["id"])] + [np.zeros(0, np.uint64)]
        )
    )
    examples: list[str] = []
    n_missing = 0
    for batch in _file_batches(inp.docs, ["id"], inp.batch_rows):
        h = documents.id_hashes(batch.column(0))
        at = np.minimum(np.searchsorted(have, h), max(len(have) - 1, 0))
        lost = np.flatnonzero(have[at] != h) if len(have) else np.arange(len(h))
        n_missing += len(lost)
        examples += batch.column(0).take(pa.array(lost[: 3 - len(examples)])).to_pylist()
    if n_missing:
        return ShardsError(f"{n_missing} curated documents have no cluster assignment (e.g. {examples})")
    where = storage.parent(inp.assignments[0]) if inp.assignments else "the clusters dataset"
    return ShardsError(f"{where}: the assignments are not in the curated documents' order: rerun `cluster`")


@dataclass
class Scan:
    """The assignments' cluster column: documents, documents in kept clusters, the final clusters."""

    documents: int
    kept: int
    clusters: list[int]


def scan(inp: Inputs) -> Scan:
    """One pass over the assignments' cluster column, checked against the curated document count."""
    n = kept = 0
    clusters: set[int] = set()
    for b in _assignment_batches(inp, ["cluster"]):
        c = b.column(0).to_numpy(zero_copy_only=False)
        n, kept = n + len(c), kept + int((c >= 0).sum())
        clusters.update(np.unique(c[c >= 0]).tolist())
    if n != count(inp):
        raise missing_error(inp)
    return Scan(n, kept, sorted(clusters))


def part_batches(inp: Inputs, part: Part) -> Iterator[tuple[pa.Array, pa.Array, np.ndarray]]:
    """(ids, texts, final cluster) per record batch of the part's documents, the assignments of
    the same rows read alongside and checked to name the same ids."""
    start, stop = part.first_doc, part.first_doc + part.docs
    assigned = documents.iter_file_rows(list(inp.assignments), ["id", "cluster"], start, stop, inp.batch_rows)
    held: list[pa.RecordBatch] = []
    n = 0
    for batch in documents.iter_file_rows(list(inp.docs), ["id", "text"], start, stop, inp.batch_rows):
        if batch.num_rows == 0:
            continue
        while sum(b.num_rows for b in held) < batch.num_rows:
            nxt = next(assigned, None)
            if nxt is None:
                raise missing_error(inp)
            held.append(nxt)
        table = pa.Table.from_batches(held).combine_chunks()
        rows, held = table.slice(0, batch.num_rows), table.slice(batch.num_rows).to_batches()
        ids = batch.column("id").cast(pa.string())
        if not rows.column("id").combine_chunks().cast(pa.string()).equals(ids):
            raise missing_error(inp)
        n += batch.num_rows
        yield ids, batch.column("text").cast(pa.string()), rows.column("cluster").to_numpy().astype(np.int64)
    if n != part.docs:
        raise ShardsError(f"{part.describe()}: {n} documents read, {part.docs} planned: the curated dataset changed")


# ------------------------------------------------------------------------------- tokenizer
def tokenizer_sample(inp: Inputs, scanned: Scan, k: int, seed: int) -> list[str]:
    """A seeded sample of `k` kept documents' texts: the same documents, in the same order, as
    `random.Random(seed).sample` of the list of kept texts gives; only the sample is held."""
    picks = random.Random(seed).sample(range(scanned.kept), min(k, scanned.kept))
    slot = {pos: i for i, pos in enumerate(picks)}
    wanted = np.array(sorted(picks), dtype=np.int64)
    sample = [""] * len(picks)
    seen = 0
    for _, texts, cluster in part_batches(inp, Part(0, 0, scanned.documents)):
        rows = np.flatnonzero(cluster >= 0)
        pos = seen + np.arange(len(rows))
        hit = np.isin(pos, wanted)
        for p, text in zip(pos[hit].tolist(), texts.take(pa.array(rows[hit])).to_pylist()):
            sample[slot[p]] = text
        seen += len(rows)
    return sample


def stage_tokenizer(writer, inp: Inputs, scanned: Scan, configured: str | None, vocab: int, k: int, seed: int):
    """The tokenizer staged by an earlier attempt, else the configured one or a BPE trained on a
    seeded sample; staged at `tokenizer/tokenizer.json` so every part uses the same one."""
    if writer.has(TOKENIZER):
        return load_tokenizer(writer.path(TOKENIZER))
    tok = load_tokenizer(configured) if configured else train_tokenizer(tokenizer_sample(inp, scanned, k, seed), vocab)
    storage.write_text(writer.path(TOKENIZER), tok.to_str())
    return tok


def staged_tokenizer(writer):
    if not writer.has(TOKENIZER):
        raise ShardsError(f"{writer.staging}: no staged tokenizer: plan the shards first")
    return load_tokenizer(writer.path(TOKENIZER))


def claim_staging(writer, how: dict[str, Any]) -> None:
    """Record how the staged pieces are being built (`_parts/how.json`: full, or incremental
    since which input versions); a staging folder holding pieces built another way (the same
    inputs, `refresh.incremental` toggled) is emptied first: its parts would cover other documents."""
    rel = f"{PARTS}/how.json"
    if writer.has(rel) and storage.read_json(writer.path(rel)) != how:
        writer.reset()
    if not writer.has(rel):
        storage.write_json(writer.path(rel), how)


def prepare(
    writer, inp: Inputs, cfg: ShardsConfig, seed: int, previous: Dataset | None = None, since: dict | None = None
) -> tuple[Scan, list[Part]]:
    """Claim the staging folder, check the inputs, stage the tokenizer (trained once; an
    incremental version, `previous` covering the input versions `since`, keeps the previous
    version's) and plan the parts: (the scan of the inputs, the parts)."""
    claim_staging(writer, {"mode": "incremental", "since": since} if previous is not None else {"mode": "full"})
    if previous is not None:
        writer.keep(previous, TOKENIZER)
    scanned = scan(inp)
    if previous is None:
        stage_tokenizer(writer, inp, scanned, cfg.tokenizer, cfg.vocab_size, cfg.tokenizer_train_docs, seed)
    return scanned, plan(scanned.documents, cfg.part_docs)


def staged_dtype(writer) -> np.dtype:
    """The token dtype of the staged tokenizer's vocabulary."""
    return token_dtype(staged_tokenizer(writer).get_vocab_size())


# --------------------------------------------------------------------------------- a part
def cluster_runs(
    ids: pa.Array, texts: pa.Array, cluster: np.ndarray, tok, eos: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(cluster, run) per kept cluster of one record batch: its documents sorted by id, tokenized."""
    id_list = ids.to_pylist()
    for c in np.unique(cluster[cluster >= 0]).tolist():
        rows = sorted(np.flatnonzero(cluster == c).tolist(), key=lambda r: id_list[r])
        take = pa.array(rows, pa.int64())
        c_texts = texts.take(take)
        toks = encode(tok, c_texts.to_pylist(), eos)
        offsets = np.zeros(len(toks) + 1, dtype=np.int32)
        np.cumsum([len(t) for t in toks], out=offsets[1:])
        flat = pa.array((np.concatenate(toks) if toks else np.zeros(0)).astype(np.uint32))
        cols = [ids.take(take), c_texts, pa.ListArray.from_arrays(pa.array(offsets), flat)]
        yield c, pa.RecordBatch.from_arrays(cols, schema=RUN_SCHEMA)


def part_record(writer, part: Part) -> dict[str, Any] | None:
    """The staged `done.json` of this part (same documents), or None."""
    rel = f"{part.folder}/done.json"
    if not writer.has(rel):
        return None
    rec = storage.read_json(writer.path(rel))
    return rec if (rec["first_doc"], rec["docs"]) == (part.first_doc, part.docs) else None


def tokenize_part(inp: Inputs, writer, part: Part, tok) -> dict[str, Any]:
    """Stage the part's runs unless they are staged already (idempotent); its record:
    documents, pruned documents, runs per cluster, and whether it was computed now."""
    if (rec := part_record(writer, part)) is not None:
        return {**rec, "computed": False}
    eos = eos_id(tok)
    runs: dict[int, int] = {}
    pruned = 0
    with ExitStack() as stack:
        files: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        for ids, texts, cluster in part_batches(inp, part):
            pruned += int((cluster < 0).sum())
            for c, run in cluster_runs(ids, texts, cluster, tok, eos):
                if c not in files:
                    sink = stack.enter_context(storage.open_write(writer.path(f"{part.folder}/c{c}.arrow")))
                    files[c] = stack.enter_context(pa.ipc.new_file(sink, RUN_SCHEMA))
                files[c].write_batch(run)
                runs[c] = runs.get(c, 0) + 1
    rec = {
        "first_doc": part.first_doc,
        "docs": part.docs,
        "pruned": pruned,
        "runs": {str(c): runs[c] for c in sorted(runs)},
    }
    storage.write_json(writer.path(f"{part.folder}/done.json"), rec)
    return {**rec, "computed": True}


# ------------------------------------------------------------------------ local processes
_WORKER: dict[str, Any] = {}  # this worker process's tokenizer, loaded once


def init_worker(tokenizer_uri: str) -> None:
    """Load the staged tokenizer once in a process that tokenizes parts (`merge.run_local`)."""
    _WORKER["tok"] = load_tokenizer(tokenizer_uri)


def tokenize_in_worker(inp: Inputs, writer, part: Part) -> dict[str, Any]:
    """`tokenize_part` with the process's tokenizer (`init_worker`)."""
    return tokenize_part(inp, writer, part, _WORKER["tok"])
