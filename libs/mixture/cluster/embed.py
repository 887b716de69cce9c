"""Embedding a corpus in resumable shards: what a run embeds, its ranges of shards, and the
workers that embed them (the `embed` stage, `mixture.stages.embed`, orchestrates this).

CLIMB (Diao et al., NVIDIA 2025) embeds every document before clustering; the encoder is
`mixture.cluster.encoder` (pooling and normalisation from the model's own configuration,
token-budget batching), or with `embed.model_type: static` a model2vec model distilled locally
(`mixture.cluster.static_encoder`). The curated documents (`mixture.curate.documents`) are read
in groups of `embed.shard_docs`, each written as one shard of the embeddings dataset
(`mixture.cluster.embeddings`: `emb-XXXXX.npy` + `ids-XXXXX.parquet`). A shard is the resume
unit: a staged shard that holds exactly its documents is kept (`staged_done`), one whose ids
differ from the input now is recomputed, and the model is loaded only when some shard must be
computed.

`Source`: every document file (a full run), or only the files added since the version the
embeddings cover (an incremental run, `mixture.increments`; its shards carry the version's tag,
`emb-v0003-00000.npy`; the shards that hold removed documents are rewritten without them,
`carry`). The work splits into ranges of `embed.range_shards` consecutive shards (`ranges`,
pure); `embed_range` stages one range idempotently, so ranges run in any order, in parallel
and again: locally in `embed.workers` spawned processes (`run_ranges`, each with its own
encoder), under Airflow as mapped tasks. A shard's vectors depend only on its documents, so the
committed files are the same whatever the number of workers (at the same `embed.threads`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import increments, storage
from mixture.cluster import embeddings
from mixture.cluster.embeddings import npy_shape, read_ids, shard_names, write_shard
from mixture.cluster.encoder import Embedder, EmbedError, read_model_spec, resolve_model
from mixture.config import EmbedConfig
from mixture.curate import documents
from mixture.dataset import Dataset, Manifest
from mixture.parallel import ShardRange, fan_out, shard_ranges

log = logging.getLogger(__name__)

OnShard = Callable[[int, bool], None]


# ------------------------------------------------------------------------------ what to embed
@dataclass(frozen=True)
class Source:
    """The curated documents a run embeds and how its shards are named: every document file
    (a full run), or only the files added since the version the embeddings cover (an incremental
    run, `mixture.increments`: its shards carry the version's tag, `emb-v0003-00000.npy`).
    Picklable: the ranges' worker processes and mapped tasks get it."""

    curated: Dataset
    files: tuple[str, ...]
    tag: str | None = None  # the shards' name tag (incremental), None for base shards
    why: str = "every document"
    removed: pa.Table | None = None  # (id, reason) removed from curated since (incremental)
    drop: tuple[tuple[str, str, int], ...] = ()  # (emb, ids, rows removed) of the shards that lose rows
    removed_rows: int = 0

    @property
    def incremental(self) -> bool:
        return self.tag is not None


def as_source(curated: Dataset | Source) -> Source:
    """A Source as it is; a curated dataset: all its documents (a full run)."""
    if isinstance(curated, Source):
        return curated
    return Source(curated, tuple(documents.doc_files(curated)))


def source_of(curated: Dataset, delta: increments.Delta | None, why: str) -> Source:
    """What this run embeds: the delta since the committed version (`increments.plan`) when the
    shards then line up with curated (kept + added = curated's documents), else every document.
    The same answer in every task of one run (it reads committed datasets only)."""
    full = as_source(curated)
    if delta is None or "skipped" in delta.previous.manifest.extra:
        return Source(curated, full.files, why=why)
    previous = delta.previous
    removed = delta.removed(curated, "curated")
    drop_ids = removed.column("id").combine_chunks().cast(pa.string()).unique()
    kept = removed_rows = 0
    drop = []
    for emb_rel, ids_rel in embeddings.pairs(previous):
        rows, hit = embeddings.count_in(previous, ids_rel, drop_ids)
        kept, removed_rows = kept + rows - hit, removed_rows + hit
        if hit:
            drop.append((emb_rel, ids_rel, hit))
    added = tuple(delta.added(curated, "curated", documents.DOCS))
    n_added, n_curated = count_rows(added), documents.count(curated)
    if kept + n_added != n_curated:
        why = f"the committed shards ({kept:,} kept + {n_added:,} added) do not line up with curated ({n_curated:,})"
        log.warning("embed: %s: embedding every document", why)
        return Source(curated, full.files, why=why)
    number = increments.version(previous) + 1
    return Source(curated, added, increments.tag(number), why, removed, tuple(drop), removed_rows)


def count_rows(files: tuple[str, ...]) -> int:
    """Rows of Parquet files, from their footers."""
    total = 0
    for uri in files:
        with storage.open_read(uri) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


# ------------------------------------------------------------------------------------- ranges
Range = ShardRange  # a range of embedding shards: one mapped `embed_range` task


def plan(n_docs: int, shard_docs: int, range_shards: int) -> list[Range]:
    """Ranges of `range_shards` shards of `shard_docs` documents covering `n_docs` documents."""
    return shard_ranges(n_docs, shard_docs, range_shards)


def ranges(curated: Dataset | Source, cfg: EmbedConfig) -> list[Range]:
    """The embedding work of the run (a `Source`; a curated dataset: all of it), split into
    ranges (document counts from the Parquet footers)."""
    return plan(count_rows(as_source(curated).files), cfg.shard_docs, cfg.range_shards)


def iter_shards(
    curated: Dataset | Source, shard_docs: int, r: Range | None = None
) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of consecutive groups of `shard_docs` documents of the range (default: all)."""
    src = as_source(curated)
    start, stop = (r.first_doc, r.first_doc + r.docs) if r else (0, count_rows(src.files))
    ids: list[str] = []
    texts: list[str] = []
    for batch in documents.iter_file_rows(list(src.files), ["id", "text"], start, stop):
        b_ids, b_texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        for doc_id, text in zip(b_ids, b_texts):
            if doc_id is None or text is None:
                raise EmbedError(f"{src.curated.uri}: a curated document has a null id or text (id={doc_id!r})")
        ids += b_ids
        texts += b_texts
        while len(ids) >= shard_docs:
            yield ids[:shard_docs], texts[:shard_docs]
            ids, texts = ids[shard_docs:], texts[shard_docs:]
    if ids:
        yield ids, texts


# ------------------------------------------------------------------------------ one range
@dataclass
class Progress:
    """What the run did so far, and the encoder once it is loaded (never sent between processes)."""

    cfg: EmbedConfig
    static: dict | None = None  # the static model's provenance (`mixture.cluster.static_encoder`)
    embedder: Any = field(default=None, repr=False)
    computed: int = 0
    reused: int = 0
    documents: int = 0
    computed_docs: int = 0
    dim: int = 0
    seconds: float = 0.0
    device: str = ""
    dtype: str = ""

    def add(self, other: Progress) -> None:
        for name in ("computed", "reused", "documents", "computed_docs", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dim = self.dim or other.dim
        self.device, self.dtype = self.device or other.device, self.dtype or other.dtype

    def encoder(self):
        if self.embedder is None:
            if self.static is not None:
                from mixture.cluster.static_encoder import StaticEmbedder

                self.embedder = StaticEmbedder.load(self.static)
            else:
                self.embedder = Embedder.from_config(self.cfg)
            self.device, self.dtype = self.embedder.device, self.embedder.dtype
        return self.embedder


def staged_done(writer, index: int, ids: list[str], tag: str | None = None) -> bool:
    """Whether shard `index` is staged and holds exactly these documents."""
    emb_rel, ids_rel = shard_names(index, tag)
    if not (writer.has(emb_rel) and writer.has(ids_rel)):
        return False
    if read_ids(writer.path(ids_rel)) != ids:
        log.warning("staged shard %d holds other documents than the input now; recomputing", index)
        return False
    return True


def compute_shard(writer, index: int, ids: list[str], texts: list[str], p: Progress, tag: str | None = None) -> None:
    encoder = p.encoder()
    t0 = time.perf_counter()
    emb = encoder.encode(texts)
    p.seconds += time.perf_counter() - t0
    write_shard(writer, index, ids, emb, tag)
    p.dim = emb.shape[1]
    p.computed += 1
    p.computed_docs += len(ids)


def embed_range(
    curated: Dataset | Source,
    writer,
    r: Range,
    p: Progress,
    on_shard: OnShard | None = None,
    bar: tqdm | None = None,
) -> Progress:
    """Stage the shards of range `r` of the run's documents (a `Source`; a curated dataset: all
    of it) that are not staged yet (idempotent: a rerun resumes)."""
    src = as_source(curated)
    shards = 0
    for offset, (ids, texts) in enumerate(iter_shards(src, p.cfg.shard_docs, r)):
        index = r.first_shard + offset
        done = staged_done(writer, index, ids, src.tag)
        if done:
            p.dim = npy_shape(storage.join(writer.staging, shard_names(index, src.tag)[0]))[1]
            p.reused += 1
        else:
            compute_shard(writer, index, ids, texts, p, src.tag)
        p.documents += len(ids)
        shards += 1
        if bar is not None:
            bar.update(len(ids))
        if on_shard is not None:
            on_shard(index, not done)
    if shards != r.shards:
        raise EmbedError(f"range {r.index}: {shards} shards read, {r.shards} planned: the curated dataset changed")
    return p


# ----------------------------------------------------------------------- worker processes
_WORKER: dict[str, Any] = {}  # this worker process's encoder, loaded on its first computed shard


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_range(curated: Source, writer, cfg: EmbedConfig, static: dict | None, r: Range) -> Progress:
    p = Progress(cfg, static, embedder=_WORKER.get("encoder"))
    embed_range(curated, writer, r, p)
    _WORKER["encoder"] = p.embedder
    p.embedder = None  # the model stays in the worker
    return p


def run_ranges(writer, curated: Source, rs: list[Range], p: Progress, on_shard: OnShard | None = None) -> None:
    """Every range, here (workers = 1) or in `embed.workers` spawned processes (CUDA and torch
    threads do not survive fork), each worker with its own encoder."""
    workers = min(p.cfg.workers, len(rs))
    if workers <= 1:  # here, with per-shard progress and the tests' `on_shard`
        with tqdm(total=sum(r.docs for r in rs), desc="embed", unit="doc") as bar:
            for r in rs:
                embed_range(curated, writer, r, p, on_shard, bar)
        return
    threads = p.cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    cfg = p.cfg.model_copy(update={"threads": threads})
    jobs = [(curated, writer, cfg, p.static, r) for r in rs]
    fan_out(
        _worker_range,
        jobs,
        workers,
        desc="embed",
        unit="doc",
        weights=[r.docs for r in rs],
        initializer=_init_worker,
        initargs=(threads,),
        on_result=p.add,
    )


# ------------------------------------------------------------------------ the model, the version
def static_provenance(cfg: EmbedConfig, scorer: str, output_root: str) -> dict | None:
    """The static model's provenance (distilled once under `output_root`, before any worker
    starts), or None with `embed.model_type: transformer`."""
    if cfg.model_type != "static":
        return None
    if scorer == "classifier":
        # that scorer embeds its reference documents with the transformer encoder
        raise EmbedError("embed.model_type=static does not work with cluster.quality.scorer=classifier yet")
    from mixture.cluster.static_encoder import ensure_model

    return ensure_model(output_root, cfg)


def count_staged(writer, src: Source, p: Progress) -> None:
    """Count every planned shard of the run into `p` (reused: the ranges were embedded by other
    tasks, their ids checked when staged); fails when one is missing."""
    rs = ranges(src, p.cfg)
    for r in rs:
        for index in range(r.first_shard, r.first_shard + r.shards):
            emb_rel, ids_rel = shard_names(index, src.tag)
            if not (writer.has(emb_rel) and writer.has(ids_rel)):
                raise EmbedError(f"shard {index} of range {r.index} is not staged: run that range first")
            shape = npy_shape(writer.path(emb_rel))
            p.documents += shape[0]
            p.dim = shape[1]
            p.reused += 1
    n_new = sum(r.docs for r in rs)
    if p.documents != n_new:
        raise EmbedError(f"the staged shards hold {p.documents} documents but the run has {n_new} to embed")


def carry(writer, previous: Dataset, src: Source, new: int) -> dict[str, Any]:
    """An incremental version's files besides its new shards: the previous shards kept (linked),
    those holding removed ids rewritten without them, the removal lists carried and this
    version's own written (the curated removals, forwarded to the clustering). Returns the
    delta's counts. Staged shards of another plan (a killed run) are dropped first."""
    assert src.removed is not None and src.tag is not None
    ours = {rel for pair in embeddings.pairs(previous) for rel in pair}
    ours |= {rel for i in range(new) for rel in shard_names(i, src.tag)}
    drop_strays(writer, ours)
    rewritten = {emb_rel for emb_rel, _, _ in src.drop}
    drop_ids = src.removed.column("id").combine_chunks().cast(pa.string()).unique()
    for emb_rel, ids_rel in embeddings.pairs(previous):
        if emb_rel in rewritten:
            embeddings.rewrite_without(previous, writer, emb_rel, ids_rel, drop_ids)
        else:
            writer.keep(previous, emb_rel)
            writer.keep(previous, ids_rel)
    increments.keep_removed(writer, previous)
    number = increments.version(previous) + 1
    increments.write_removed(writer, number, src.removed)
    return {
        "embedded": count_rows(src.files),
        "removed": src.removed_rows,
        "removed_listed": src.removed.num_rows,
        "shards_added": new,
        "shards_rewritten": len(rewritten),
        "shards_kept": len(embeddings.pairs(previous)) - len(rewritten),
    }


def drop_strays(writer, wanted: set[str]) -> None:
    """Delete staged emb-/ids- files that this run does not write or keep (a killed run of
    another plan left them in the same staging folder)."""
    prefix = writer.staging.rstrip("/") + "/"
    for uri in storage.list_files(writer.staging):
        rel = uri[len(prefix) :]
        if rel.startswith(("emb-", "ids-")) and ".tmp-" not in rel and rel not in wanted:
            storage.delete(uri)


def stage_version(writer, previous: Dataset | None, src: Source, p: Progress) -> tuple[dict[str, Any], int, int]:
    """Stage the version's files besides the run's shards (incremental: `carry`; full: staged
    shards of another plan dropped) and check that the shards hold every curated document;
    (the lineage's delta, documents, shards)."""
    new_shards = sum(r.shards for r in ranges(src, p.cfg))
    if src.incremental:
        assert previous is not None
        delta = carry(writer, previous, src, new_shards)
    else:
        drop_strays(writer, {rel for i in range(new_shards) for rel in shard_names(i)})
        delta = {"embedded": p.documents}
    files = embeddings.shard_files(staged(writer)) if p.documents or src.incremental else []
    n_out = sum(rows for _, _, rows in files)
    n_in = documents.count(src.curated)
    if n_out != n_in:
        raise EmbedError(f"the embeddings hold {n_out} documents but the curated dataset has {n_in}")
    if not p.dim and files:
        p.dim = int(npy_shape(files[0][0])[1])
    return delta, n_out, len(files)


def progress_line(p: Progress) -> str:
    """The summary's line on what was embedded, with the rate of the shards computed."""
    rate = ""
    if p.computed and p.seconds > 0:
        rate = f", {p.computed_docs / p.seconds:.1f} docs/s on {p.device} ({p.dtype})"
    return f"{p.documents:,} documents, dim {p.dim}, {p.computed} shards computed, {p.reused} reused{rate}"


def staged(writer) -> Dataset:
    """The staged shards as a dataset (listing of the staging folder), to count their rows."""
    prefix = writer.staging.rstrip("/") + "/"
    rels = [u[len(prefix) :] for u in storage.list_files(writer.staging)]
    files = [{"path": r} for r in rels if r.startswith(("emb-", "ids-")) and ".tmp-" not in r]
    return Dataset(writer.staging, Manifest("embed", "", {}, {}, files), "")


def model_extra(cfg: EmbedConfig, p: Progress, shards: int) -> dict[str, Any]:
    """The manifest's facts about the model: name, type, pooling, normalisation, long documents."""
    extra: dict[str, Any] = {"model": cfg.model, "model_type": cfg.model_type}
    if p.static is not None:
        extra["static_model"] = {k: v for k, v in p.static.items() if k != "uri"}
        extra.update(pooling="mean (static token vectors)", normalize=True, max_tokens=None)
    else:
        spec = read_model_spec(resolve_model(cfg.model))
        extra.update(pooling="+".join(spec.pooling), normalize=spec.normalize, max_tokens=cfg.max_tokens)
    extra.update(long_documents=cfg.long_documents if p.static is None else "whole", shards=shards)
    return extra
