"""Stage `embed`: one vector per curated document, written in resumable shards.

CLIMB (Diao et al., NVIDIA 2025) embeds every document before clustering; the encoder is
`mixture.encoder` (pooling and normalisation from the model's own configuration, token-budget
batching). This stage streams the curated documents (`mixture.documents`) in groups of
`embed.shard_docs`, and writes each group as one shard of the embeddings dataset
(`mixture.embeddings`: `emb-XXXXX.npy` + `ids-XXXXX.parquet`). A shard is the resume unit: the
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
(`mixture.static_encoder`: cached under `<output_root>/_models/`, provenance in the manifest).

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

from tqdm import tqdm

from mixture import documents
from mixture.config import EmbedConfig
from mixture.contract import StageContext, StageOutput
from mixture.dataset import Dataset
from mixture.embeddings import npy_shape, read_ids, shard_names, write_shard
from mixture.encoder import Embedder, EmbedError, read_model_spec, resolve_model
from mixture.parallel import ShardRange, fan_out, shard_ranges

log = logging.getLogger(__name__)

OnShard = Callable[[int, bool], None]


# ------------------------------------------------------------------------------------- ranges
Range = ShardRange  # a range of embedding shards: one mapped `embed_range` task


def plan(n_docs: int, shard_docs: int, range_shards: int) -> list[Range]:
    """Ranges of `range_shards` shards of `shard_docs` documents covering `n_docs` documents."""
    return shard_ranges(n_docs, shard_docs, range_shards)


def ranges(curated: Dataset, cfg: EmbedConfig) -> list[Range]:
    """The embedding work of the curated dataset, split into ranges (document counts from the
    Parquet footers)."""
    return plan(documents.count(curated), cfg.shard_docs, cfg.range_shards)


def iter_shards(curated: Dataset, shard_docs: int, r: Range | None = None) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of consecutive groups of `shard_docs` documents of the range (default: all)."""
    start, stop = (r.first_doc, r.first_doc + r.docs) if r else (0, documents.count(curated))
    ids: list[str] = []
    texts: list[str] = []
    for batch in documents.iter_range(curated, ["id", "text"], start, stop):
        b_ids, b_texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        for doc_id, text in zip(b_ids, b_texts):
            if doc_id is None or text is None:
                raise EmbedError(f"{curated.uri}: a curated document has a null id or text (id={doc_id!r})")
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
    static: dict | None = None  # the static model's provenance (`mixture.static_encoder`)
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
                from mixture.static_encoder import StaticEmbedder

                self.embedder = StaticEmbedder.load(self.static)
            else:
                self.embedder = Embedder.from_config(self.cfg)
            self.device, self.dtype = self.embedder.device, self.embedder.dtype
        return self.embedder


def staged_done(writer, index: int, ids: list[str]) -> bool:
    """Whether shard `index` is staged and holds exactly these documents."""
    emb_rel, ids_rel = shard_names(index)
    if not (writer.has(emb_rel) and writer.has(ids_rel)):
        return False
    if read_ids(writer.path(ids_rel)) != ids:
        log.warning("staged shard %d holds other documents than the input now; recomputing", index)
        return False
    return True


def compute_shard(writer, index: int, ids: list[str], texts: list[str], p: Progress) -> None:
    encoder = p.encoder()
    t0 = time.perf_counter()
    emb = encoder.encode(texts)
    p.seconds += time.perf_counter() - t0
    write_shard(writer, index, ids, emb)
    p.dim = emb.shape[1]
    p.computed += 1
    p.computed_docs += len(ids)


def embed_range(
    curated: Dataset, writer, r: Range, p: Progress, on_shard: OnShard | None = None, bar: tqdm | None = None
) -> Progress:
    """Stage the shards of range `r` that are not staged yet (idempotent: a rerun resumes)."""
    shards = 0
    for offset, (ids, texts) in enumerate(iter_shards(curated, p.cfg.shard_docs, r)):
        index = r.first_shard + offset
        done = staged_done(writer, index, ids)
        if done:
            p.dim = npy_shape(writer.path(shard_names(index)[0]))[1]
            p.reused += 1
        else:
            compute_shard(writer, index, ids, texts, p)
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


def _worker_range(curated: Dataset, writer, cfg: EmbedConfig, static: dict | None, r: Range) -> Progress:
    p = Progress(cfg, static, embedder=_WORKER.get("encoder"))
    embed_range(curated, writer, r, p)
    _WORKER["encoder"] = p.embedder
    p.embedder = None  # the model stays in the worker
    return p


def run_ranges(ctx: StageContext, rs: list[Range], p: Progress, on_shard: OnShard | None = None) -> None:
    """Every range, here (workers = 1) or in `embed.workers` spawned processes (CUDA and torch
    threads do not survive fork), each worker with its own encoder."""
    curated = ctx.input("curated")
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
    from mixture.static_encoder import ensure_model

    return ensure_model(ctx.cfg.output_root, ctx.cfg.embed)


def embed_corpus(ctx: StageContext, on_shard: OnShard | None = None) -> StageOutput:
    """The stage body. `on_shard(index, computed)` is called after each shard is in place
    (workers = 1 only; used by tests to interrupt a run)."""
    curated = ctx.input("curated")
    rs = ranges(curated, ctx.cfg.embed)
    n_in = sum(r.docs for r in rs)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    run_ranges(ctx, rs, p, on_shard)
    if p.documents != n_in:
        raise EmbedError(f"embedded {p.documents} documents but the curated dataset has {n_in}")
    return output(n_in, p)


def finish(ctx: StageContext) -> StageOutput:
    """The output of a stage whose ranges were embedded by separate tasks: every planned shard
    must be staged (their ids were checked when staged); nothing is computed."""
    curated = ctx.input("curated")
    rs = ranges(curated, ctx.cfg.embed)
    p = Progress(ctx.cfg.embed, static_model(ctx))
    for r in rs:
        for index in range(r.first_shard, r.first_shard + r.shards):
            emb_rel, ids_rel = shard_names(index)
            if not (ctx.writer.has(emb_rel) and ctx.writer.has(ids_rel)):
                raise EmbedError(f"shard {index} of range {r.index} is not staged: run that range first")
            shape = npy_shape(ctx.writer.path(emb_rel))
            p.documents += shape[0]
            p.dim = shape[1]
            p.reused += 1
    n_in = sum(r.docs for r in rs)
    if p.documents != n_in:
        raise EmbedError(f"the staged shards hold {p.documents} documents but the curated dataset has {n_in}")
    return output(n_in, p)


def output(n_in: int, p: Progress) -> StageOutput:
    cfg = p.cfg
    rate = ""
    if p.computed and p.seconds > 0:
        rate = f", {p.computed_docs / p.seconds:.1f} docs/s on {p.device} ({p.dtype})"
    counts = {"documents_in": n_in, "documents_out": p.documents, "dim": int(p.dim)}
    extra: dict[str, Any] = {"model": cfg.model, "model_type": cfg.model_type}
    if p.static is not None:
        extra["static_model"] = {k: v for k, v in p.static.items() if k != "uri"}
        extra.update(pooling="mean (static token vectors)", normalize=True, max_tokens=None)
    else:
        spec = read_model_spec(resolve_model(cfg.model))
        extra.update(pooling="+".join(spec.pooling), normalize=spec.normalize, max_tokens=cfg.max_tokens)
    extra.update(long_documents=cfg.long_documents if p.static is None else "whole", shards=p.computed + p.reused)
    summary = [
        ("embedded", f"{p.documents:,} documents, dim {p.dim}, {p.computed} shards computed, {p.reused} reused{rate}")
    ]
    return StageOutput(counts=counts, extra=extra, summary=summary)


def skipped(ctx: StageContext) -> StageOutput:
    """The empty embeddings dataset of a run whose clusters need none (no model is loaded)."""
    n_in = documents.count(ctx.input("curated"))
    why = f"cluster.method={ctx.cfg.cluster.method}: no embedding needed"
    log.info("embed: skipped (%s)", why)
    return StageOutput(
        counts={"documents_in": n_in, "documents_out": 0},
        extra={"skipped": why},
        summary=[("skipped", f"{why} ({n_in:,} curated documents)")],
    )


def run(ctx: StageContext) -> StageOutput:
    if not ctx.cfg.cluster.needs_embeddings:
        return skipped(ctx)
    return embed_corpus(ctx)
