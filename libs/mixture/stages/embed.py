"""Stage `embed`: one vector per curated document, written in resumable shards.

CLIMB (Diao et al., NVIDIA 2025) embeds every document before clustering; the encoder is
`mixture.cluster.encoder` (pooling and normalisation from the model's own configuration, token-budget
batching). This stage streams the curated documents (`mixture.curate.documents`) in groups of
`embed.shard_docs`, and writes each group as one shard of the embeddings dataset
(`mixture.cluster.embeddings`: `emb-XXXXX.npy` + `ids-XXXXX.parquet`). A shard is the resume unit: the
stage is registered resumable, so the staging folder of a killed run keeps its finished shards
and a rerun computes only the missing ones; a staged shard whose ids differ from the input now is
recomputed. The model is loaded only when some shard must be computed.

The work fans out over ranges of `embed.range_shards` consecutive shards (`ranges`, pure): each
range is embedded into the one staging folder by `embed_range`, idempotently (finished shards are
kept), so ranges can run in any order, in parallel and again. Locally `embed.workers` spawned
processes (`concurrent.futures`, each with its own encoder) take the ranges and the stage commits
when all are staged; under Airflow each range is a mapped task in the `gpu` pool and `finish`
builds the stage's output from the staged shards for the runner's commit
(`dags/climb_corpus_refresh.py`). A shard's vectors depend only on its documents, so the committed
files are the same whatever the number of workers (at the same `embed.threads`).

`embed.model_type: static` embeds with a model2vec model distilled locally from `embed.model`
(`mixture.cluster.static_encoder`: cached under `<output_root>/_models/`, provenance in the manifest).

With the user's own groups (`cluster.method` field or assignments: RegMix-style domain mixing,
Liu et al. 2024) nothing reads the embeddings, so the stage commits an empty dataset that says
why (its hash covers `cluster.needs_embeddings`, so switching back to k-means embeds the corpus).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from mixture import increments, storage
from mixture.cluster import embeddings
from mixture.cluster.embeddings import npy_shape, read_ids, shard_names, write_shard
from mixture.cluster.encoder import Embedder, EmbedError, read_model_spec, resolve_model
from mixture.config import EmbedConfig
from mixture.contract import StageContext, StageOutput
from mixture.curate import documents
from mixture.dataset import Dataset
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


def source(ctx: StageContext) -> Source:
    """What this run embeds: the delta since the committed version when `increments.plan` gives
    one and the shards then line up with curated (kept + added = curated's documents), else
    every document. The same answer in every task of one run (it reads committed datasets only)."""
    curated = ctx.input("curated")
    full = as_source(curated)
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is not None and same_inputs(ctx):
        delta, why = None, "the inputs are those of the committed version (a forced run rebuilds)"
    if delta is None or ctx.previous is None or "skipped" in ctx.previous.manifest.extra:
        return Source(curated, full.files, why=why)
    previous = ctx.previous
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
    n_added, n_curated = _rows(added), documents.count(curated)
    if kept + n_added != n_curated:
        why = f"the committed shards ({kept:,} kept + {n_added:,} added) do not line up with curated ({n_curated:,})"
        log.warning("embed: %s: embedding every document", why)
        return Source(curated, full.files, why=why)
    number = increments.version(previous) + 1
    return Source(curated, added, increments.tag(number), why, removed, tuple(drop), removed_rows)


def same_inputs(ctx: StageContext) -> bool:
    """Whether the committed version was made from these very input manifests: nothing to extend
    it with, so only a forced run gets here, and it rebuilds."""
    prev = ctx.previous
    return prev is not None and prev.manifest.inputs == {n: d.manifest_sha256 for n, d in ctx.inputs.items()}


def _rows(files: tuple[str, ...]) -> int:
    """Rows of Parquet files, from their footers."""
    import pyarrow.parquet as pq

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
    return plan(_rows(as_source(curated).files), cfg.shard_docs, cfg.range_shards)


def iter_shards(
    curated: Dataset | Source, shard_docs: int, r: Range | None = None
) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of consecutive groups of `shard_docs` documents of the range (default: all)."""
    src = as_source(curated)
    start, stop = (r.first_doc, r.first_doc + r.docs) if r else (0, _rows(src.files))
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


def run_ranges(
    ctx: StageContext, rs: list[Range], p: Progress, on_shard: OnShard | None = None, src: Source | None = None
) -> None:
    """Every range, here (workers = 1) or in `embed.workers` spawned processes (CUDA and torch
    threads do not survive fork), each worker with its own encoder."""
    curated = src or as_source(ctx.input("curated"))
    workers = min(p.cfg.workers, len(rs))
    if workers <= 1:  # here, with per-shard progress and the tests' `on_shard`
        with tqdm(total=sum(r.docs for r in rs), desc="embed", unit="doc") as bar:
            for r in rs:
                embed_range(curated, ctx.writer, r, p, on_shard, bar)
        return
    threads = p.cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    cfg = p.cfg.model_copy(update={"threads": threads})
    jobs = [(curated, ctx.writer, cfg, p.static, r) for r in rs]
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


# ---------------------------------------------------------------------------- the stage
def static_model(ctx: StageContext) -> dict | None:
    """The static model's provenance (distilled once, before any worker starts), or None."""
    if ctx.cfg.embed.model_type != "static":
        return None
    if ctx.cfg.cluster.quality.scorer == "classifier":
        # that scorer embeds its reference documents with the transformer encoder
        raise EmbedError("embed.model_type=static does not work with cluster.quality.scorer=classifier yet")
    from mixture.cluster.static_encoder import ensure_model

    return ensure_model(ctx.cfg.output_root, ctx.cfg.embed)


def embed_corpus(ctx: StageContext, on_shard: OnShard | None = None) -> StageOutput:
    """The stage body. `on_shard(index, computed)` is called after each shard is in place
    (workers = 1 only; used by tests to interrupt a run)."""
    src = source(ctx)
    rs = ranges(src, ctx.cfg.embed)
    n_new = sum(r.docs for r in rs)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    run_ranges(ctx, rs, p, on_shard, src)
    if p.documents != n_new:
        raise EmbedError(f"embedded {p.documents} documents but the run has {n_new} to embed")
    return output(ctx, src, p)


def finish(ctx: StageContext) -> StageOutput:
    """The output of a stage whose ranges were embedded by separate tasks: every planned shard
    must be staged (their ids were checked when staged); nothing is computed."""
    src = source(ctx)
    rs = ranges(src, ctx.cfg.embed)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    for r in rs:
        for index in range(r.first_shard, r.first_shard + r.shards):
            emb_rel, ids_rel = shard_names(index, src.tag)
            if not (ctx.writer.has(emb_rel) and ctx.writer.has(ids_rel)):
                raise EmbedError(f"shard {index} of range {r.index} is not staged: run that range first")
            shape = npy_shape(ctx.writer.path(emb_rel))
            p.documents += shape[0]
            p.dim = shape[1]
            p.reused += 1
    n_new = sum(r.docs for r in rs)
    if p.documents != n_new:
        raise EmbedError(f"the staged shards hold {p.documents} documents but the run has {n_new} to embed")
    return output(ctx, src, p)


def carry(ctx: StageContext, src: Source, new: int) -> dict[str, Any]:
    """An incremental version's files besides its new shards: the previous shards kept (linked),
    those holding removed ids rewritten without them, the removal lists carried and this
    version's own written (the curated removals, forwarded to the clustering). Returns the
    delta's counts. Staged shards of another plan (a killed run) are dropped first."""
    previous = ctx.previous
    assert previous is not None and src.removed is not None and src.tag is not None
    ours = {rel for pair in embeddings.pairs(previous) for rel in pair}
    ours |= {rel for i in range(new) for rel in shard_names(i, src.tag)}
    drop_strays(ctx.writer, ours)
    rewritten = {emb_rel for emb_rel, _, _ in src.drop}
    drop_ids = src.removed.column("id").combine_chunks().cast(pa.string()).unique()
    for emb_rel, ids_rel in embeddings.pairs(previous):
        if emb_rel in rewritten:
            embeddings.rewrite_without(previous, ctx.writer, emb_rel, ids_rel, drop_ids)
        else:
            ctx.writer.keep(previous, emb_rel)
            ctx.writer.keep(previous, ids_rel)
    increments.keep_removed(ctx.writer, previous)
    number = increments.version(previous) + 1
    increments.write_removed(ctx.writer, number, src.removed)
    return {
        "embedded": _rows(src.files),
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


def output(ctx: StageContext, src: Source, p: Progress) -> StageOutput:
    """The manifest's counts, extra (with the lineage) and summary; an incremental run's kept
    and rewritten files staged first."""
    cfg = p.cfg
    new_shards = sum(r.shards for r in ranges(src, cfg))
    if src.incremental:
        delta = carry(ctx, src, new_shards)
    else:
        drop_strays(ctx.writer, {rel for i in range(new_shards) for rel in shard_names(i)})
        delta = {"embedded": p.documents}
    files = embeddings.shard_files(_staged(ctx)) if p.documents or src.incremental else []
    n_out = sum(rows for _, _, rows in files)
    n_in = documents.count(src.curated)
    if n_out != n_in:
        raise EmbedError(f"the embeddings hold {n_out} documents but the curated dataset has {n_in}")
    if not p.dim and files:
        p.dim = int(npy_shape(files[0][0])[1])
    mode = "incremental" if src.incremental else "full"
    lin = increments.next_lineage(ctx.previous, mode, ctx.settings_hash, ctx.inputs, delta)
    extra = increments.record(ctx.writer, ctx.previous, lin, model_extra(cfg, p, len(files)))
    rate = ""
    if p.computed and p.seconds > 0:
        rate = f", {p.computed_docs / p.seconds:.1f} docs/s on {p.device} ({p.dtype})"
    summary = [
        (
            "embedded",
            f"{p.documents:,} documents, dim {p.dim}, {p.computed} shards computed, {p.reused} reused{rate}",
        ),
        ("embeddings version", f"{lin.version} ({mode}: {src.why}); {n_out:,} documents, delta {delta}"),
    ]
    log.info("embed: version %d, %s (%s)", lin.version, mode, src.why)
    counts = {"documents_in": n_in, "documents_out": n_out, "dim": int(p.dim)}
    return StageOutput(counts=counts, extra=extra, summary=summary)


def _staged(ctx: StageContext) -> Dataset:
    """The staged shards as a dataset (listing of the staging folder), to count their rows."""
    from mixture.dataset import Manifest

    prefix = ctx.writer.staging.rstrip("/") + "/"
    rels = [u[len(prefix) :] for u in storage.list_files(ctx.writer.staging)]
    files = [{"path": r} for r in rels if r.startswith(("emb-", "ids-")) and ".tmp-" not in r]
    return Dataset(ctx.writer.staging, Manifest("embed", "", {}, {}, files), "")


def model_extra(cfg: EmbedConfig, p: Progress, shards: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"model": cfg.model, "model_type": cfg.model_type}
    if p.static is not None:
        extra["static_model"] = {k: v for k, v in p.static.items() if k != "uri"}
        extra.update(pooling="mean (static token vectors)", normalize=True, max_tokens=None)
    else:
        spec = read_model_spec(resolve_model(cfg.model))
        extra.update(pooling="+".join(spec.pooling), normalize=spec.normalize, max_tokens=cfg.max_tokens)
    extra.update(long_documents=cfg.long_documents if p.static is None else "whole", shards=shards)
    return extra


def skipped(ctx: StageContext) -> StageOutput:
    """The empty embeddings dataset of a run whose clusters need none (no model is loaded); a
    full version in the lineage every time."""
    n_in = documents.count(ctx.input("curated"))
    why = f"cluster.method={ctx.cfg.cluster.method}: no embedding needed"
    log.info("embed: skipped (%s)", why)
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"embedded": 0})
    return StageOutput(
        counts={"documents_in": n_in, "documents_out": 0},
        extra=increments.record(ctx.writer, ctx.previous, lin, {"skipped": why}),
        summary=[("skipped", f"{why} ({n_in:,} curated documents)")],
    )


def run(ctx: StageContext) -> StageOutput:
    if not ctx.cfg.cluster.needs_embeddings:
        return skipped(ctx)
    return embed_corpus(ctx)
