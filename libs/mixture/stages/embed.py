"""Stage `embed`: one vector per curated document, written in resumable shards.

CLIMB (Diao et al., NVIDIA 2025) embeds every document before clustering; the encoder is
`mixture.encoder` (pooling and normalisation from the model's own configuration, token-budget
batching). This stage streams the curated documents (`mixture.documents`) in groups of
`embed.shard_docs`, and writes each group as one shard of the embeddings dataset
(`mixture.embeddings`: `emb-XXXXX.npy` + `ids-XXXXX.parquet`). A shard is the resume unit: the
stage is registered resumable, so the staging folder of a killed run keeps its finished shards
and a rerun computes only the missing ones; a staged shard whose ids differ from the input now is
recomputed. The model is loaded only when some shard must be computed.

With the user's own groups (`cluster.method` field or assignments: RegMix-style domain mixing,
Liu et al. 2024) nothing reads the embeddings, so the stage commits an empty dataset that says
why (its hash covers `cluster.needs_embeddings`, so switching back to k-means embeds the corpus).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tqdm import tqdm

from mixture import documents
from mixture.config import EmbedConfig
from mixture.contract import StageContext, StageOutput
from mixture.dataset import Dataset
from mixture.embeddings import npy_shape, read_ids, shard_names, write_shard
from mixture.encoder import Embedder, EmbedError, read_model_spec, resolve_model

log = logging.getLogger(__name__)


def iter_shards(curated: Dataset, shard_docs: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of consecutive groups of `shard_docs` documents, in file and row order."""
    ids: list[str] = []
    texts: list[str] = []
    for b_ids, b_texts in documents.iter_texts(curated, min(shard_docs, documents.BATCH_ROWS)):
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


@dataclass
class Progress:
    """What the run did so far, and the encoder once it is loaded."""

    cfg: EmbedConfig
    embedder: Embedder | None = None
    computed: int = 0
    reused: int = 0
    documents: int = 0
    computed_docs: int = 0
    dim: int = 0
    seconds: float = 0.0


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
    if p.embedder is None:
        p.embedder = Embedder.from_config(p.cfg)
    t0 = time.perf_counter()
    emb = p.embedder.encode(texts)
    p.seconds += time.perf_counter() - t0
    write_shard(writer, index, ids, emb)
    p.dim = emb.shape[1]
    p.computed += 1
    p.computed_docs += len(ids)


def embed_corpus(ctx: StageContext, on_shard: Callable[[int, bool], None] | None = None) -> StageOutput:
    """The stage body. `on_shard(index, computed)` is called after each shard is in place
    (used by tests to interrupt a run)."""
    curated = ctx.input("curated")
    n_in = documents.count(curated)
    p = Progress(ctx.cfg.embed)
    bar = tqdm(total=n_in, desc="embed", unit="doc")
    for index, (ids, texts) in enumerate(iter_shards(curated, p.cfg.shard_docs)):
        done = staged_done(ctx.writer, index, ids)
        if done:
            p.dim = npy_shape(ctx.writer.path(shard_names(index)[0]))[1]
            p.reused += 1
        else:
            compute_shard(ctx.writer, index, ids, texts, p)
        p.documents += len(ids)
        bar.update(len(ids))
        if on_shard is not None:
            on_shard(index, not done)
    bar.close()
    if p.documents != n_in:
        raise EmbedError(f"embedded {p.documents} documents but the curated dataset has {n_in}")
    return output(n_in, p)


def output(n_in: int, p: Progress) -> StageOutput:
    cfg, e = p.cfg, p.embedder
    spec = e.spec if e else read_model_spec(resolve_model(cfg.model))
    rate = ""
    if e is not None and p.computed and p.seconds > 0:
        rate = f", {p.computed_docs / p.seconds:.1f} docs/s on {e.device} ({e.dtype})"
    counts = {"documents_in": n_in, "documents_out": p.documents, "dim": int(p.dim)}
    extra = {
        "model": cfg.model,
        "pooling": "+".join(spec.pooling),
        "normalize": spec.normalize,
        "max_tokens": e.max_tokens if e else cfg.max_tokens,
        "long_documents": cfg.long_documents,
        "shards": p.computed + p.reused,
    }
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
