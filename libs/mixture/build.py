"""Stage `build`: ClimbMix-style training shards from the ClimbLab clusters and a mixture.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture weights
the search found, to a token budget (ClimbMix: 400B tokens from ClimbLab's 20 clusters, 1.2T
tokens). This stage does the same at any budget:

1. the mixture: `build.mixture` (a JSON file) or the search's `mixture.json`; weights over the
   ClimbLab clusters, normalised to sum to 1;
2. each cluster's target is `weight * build.tokens`. A cluster smaller than its target is
   upsampled (whole passes, then a random part of one more pass) up to `build.max_epochs` passes
   (default 15, the paper's per-cluster epoch cap in the search); when the cap binds the cluster
   gets fewer tokens than its share, a warning names it, and the manifest records it. The
   shortfall is not moved to other clusters: the other clusters keep exactly their share of the
   budget, and the dataset is that much smaller than the budget;
3. documents are whole: a cluster's last pass takes documents of a seeded random order until its
   target is reached (it overshoots by less than one document);
4. every selected document is shuffled globally with the run's seed and written in fixed-size
   shards of `build.shard_docs` documents: `parquet/part-NNNNN.parquet` (text, cluster, id) and
   `tokens/part-NNNNN.bin/.idx` in the ClimbLab token shard format (docs/DATASETS.md), row i of
   one equal to document i of the other;
5. the tokenizer is copied and a dataset card `README.md` is written (`mixture.card`).

Memory: the token shards are memory-mapped; the text of the clusters that are sampled is held as
Arrow tables (about the size of the ClimbLab text), one output shard at a time besides.
The same climblab, mixture, config and seed give byte-identical files, so the content hash that
`climb publish` uses as the default version is stable across rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import storage

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The mixture or the cluster shards cannot make a ClimbMix dataset."""


# ------------------------------------------------------------------------------ the mixture
def load_mixture(uri: str) -> dict[str, float]:
    """Weights from a mixture JSON: `{"weights": {cluster: w}, ...}` (the search's mixture.json)
    or a plain `{cluster: w}` mapping."""
    try:
        data = storage.read_json(uri)
    except FileNotFoundError:
        raise BuildError(f"mixture file not found: {uri}") from None
    except json.JSONDecodeError as err:
        raise BuildError(f"mixture file {uri} is not valid JSON: {err}") from None
    weights = data.get("weights", data) if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise BuildError(f"mixture file {uri} has no weights (expected {{\"weights\": {{cluster: w}}}})")
    return weights


def normalise_mixture(weights: dict, clusters: list[str]) -> dict[str, float]:
    """Validated weights over exactly `clusters` (absent ones get 0), summing to 1."""
    unknown = sorted(set(weights) - set(clusters))
    if unknown:
        raise BuildError(f"the mixture names clusters that the ClimbLab shards do not have: {unknown}; "
                         f"known clusters: {clusters}")
    out: dict[str, float] = {}
    for c in clusters:
        w = weights.get(c, 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise BuildError(f"mixture weight of cluster {c} must be a finite number >= 0, got {w!r}")
        out[c] = float(w)
    total = sum(out.values())
    if total <= 0:
        raise BuildError("every mixture weight is 0: nothing to sample")
    if abs(total - 1.0) > 1e-6:
        log.info("mixture weights sum to %.6f; normalised to 1", total)
    return {c: w / total for c, w in out.items()}


# ---------------------------------------------------------------------------- the sampling
@dataclass
class ClusterPlan:
    cluster: str
    weight: float
    available_tokens: int
    available_documents: int
    target_tokens: int          # after the epoch cap
    wanted_epochs: float        # weight * budget / available tokens, before the cap
    capped: bool


def plan_clusters(weights: dict[str, float], available_tokens: dict[str, int],
                  available_documents: dict[str, int], budget: int, max_epochs: float) -> list[ClusterPlan]:
    """Each cluster's token target: its share of the budget, at most `max_epochs` passes."""
    plans = []
    for c, w in weights.items():
        have = int(available_tokens[c])
        want = w * budget
        if w > 0 and have == 0:
            raise BuildError(f"cluster {c} has weight {w:.4g} but no tokens in the ClimbLab shards")
        epochs = want / have if have else 0.0
        capped = epochs > max_epochs
        target = int(math.floor(max_epochs * have)) if capped else int(round(want))
        plans.append(ClusterPlan(c, w, have, int(available_documents[c]), target, epochs, capped))
    return plans


def select_documents(lengths: np.ndarray, target_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the documents (with repeats when upsampling) whose tokens reach `target_tokens`:
    as many whole passes as fit, then documents in a random order until the target is reached.
    Overshoots by less than one document; 0 tokens gives no documents."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if target_tokens <= 0 or total == 0:
        return np.zeros(0, dtype=np.int64)
    full_passes, remainder = divmod(int(target_tokens), total)
    parts = [np.arange(len(lengths), dtype=np.int64)] * full_passes
    if remainder:
        order = rng.permutation(len(lengths))
        cumulative = np.cumsum(lengths[order])
        take = int(np.searchsorted(cumulative, remainder, side="left")) + 1
        parts.append(order[:take].astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def cluster_rng(seed: int, cluster: str) -> np.random.Generator:
    """One stream per cluster, so a cluster's sample does not change when another is added."""
    return np.random.default_rng([seed, zlib.crc32(cluster.encode())])


def content_hash(manifest_files: list[dict]) -> str:
    """sha256 of the files' paths, sizes and checksums: the same data gives the same hash whatever
    the manifest's timestamps (the default published version)."""
    rows = sorted((f["path"], int(f["bytes"]), f["sha256"]) for f in manifest_files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


# -------------------------------------------------------------------------------- the stage
def _write_parquet(uri: str, table: pa.Table, compression: str) -> None:
    with storage.open_write(uri) as f:
        pq.write_table(table, f, compression=None if compression == "none" else compression)


def run(ctx):
    from mixture.card import render_card
    from mixture.contract import StageOutput
    from mixture.climblab import ClimbLab
    from mixture.tokens import write_token_shard

    cfg = ctx.cfg.build
    lab = ClimbLab(ctx.input("climblab"))
    clusters = lab.clusters
    if not clusters:
        raise BuildError("the ClimbLab dataset has no clusters")
    mixture_uri = cfg.mixture or ctx.input("search").path("mixture.json")
    weights = normalise_mixture(load_mixture(mixture_uri), clusters)

    # what each cluster holds, checked against its manifest (counts add up or the stage fails)
    shards = {c: lab.shard(c) for c in clusters}
    lengths = {c: np.diff(shards[c].offsets) for c in clusters}
    declared = lab.info["clusters"]
    for c in clusters:
        if int(lengths[c].sum()) != int(declared[c]["tokens"]) or len(lengths[c]) != int(declared[c]["documents"]):
            raise BuildError(f"cluster {c}: its token shard holds {len(lengths[c])} documents and "
                             f"{int(lengths[c].sum())} tokens, its manifest says {declared[c]}")

    plans = plan_clusters(weights, {c: int(lengths[c].sum()) for c in clusters},
                          {c: len(lengths[c]) for c in clusters}, cfg.tokens, cfg.max_epochs)
    for p in plans:
        if p.capped:
            log.warning("cluster %s: its mixture share needs %.1f epochs (%s of its %s tokens); capped "
                        "at build.max_epochs=%g, so it contributes %s tokens instead of %s",
                        p.cluster, p.wanted_epochs, f"{round(p.weight * cfg.tokens):,}",
                        f"{p.available_tokens:,}", cfg.max_epochs, f"{p.target_tokens:,}",
                        f"{round(p.weight * cfg.tokens):,}")

    # sample per cluster, then one global shuffle of (cluster, document) pairs
    selected = {p.cluster: select_documents(lengths[p.cluster], p.target_tokens, cluster_rng(ctx.cfg.seed, p.cluster))
                for p in plans}
    cluster_index = np.concatenate([np.full(len(selected[c]), i, dtype=np.int32) for i, c in enumerate(clusters)])
    doc_index = np.concatenate([selected[c] for c in clusters])
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(doc_index))
    cluster_index, doc_index = cluster_index[order], doc_index[order]
    n_docs = len(doc_index)
    if n_docs == 0:
        raise BuildError("the mixture and budget select no documents")

    texts: dict[str, pa.Table] = {}
    for c in clusters:
        if len(selected[c]):
            t = lab.texts(c).select(["id", "text"])
            if t.num_rows != len(lengths[c]):
                raise BuildError(f"cluster {c}: text.parquet has {t.num_rows} rows, its token shard "
                                 f"{len(lengths[c])} documents")
            texts[c] = t
    names = np.array(clusters)
    # plain ndarray views of the memory maps: slicing a np.memmap per document costs ~5 us more
    flat = [np.asarray(shards[c].tokens) for c in clusters]
    offsets = [shards[c].offsets for c in clusters]

    n_shards = (n_docs + cfg.shard_docs - 1) // cfg.shard_docs
    written_docs = written_tokens = 0
    for s in tqdm(range(n_shards), desc="climbmix shards", unit="shard"):
        lo, hi = s * cfg.shard_docs, min((s + 1) * cfg.shard_docs, n_docs)
        sc, sd = cluster_index[lo:hi], doc_index[lo:hi]
        # per cluster present in this shard: its rows' positions, texts and token spans
        pieces, positions = [], []
        starts, ends = np.empty(len(sd), dtype=np.int64), np.empty(len(sd), dtype=np.int64)
        for ci in np.unique(sc):
            pos = np.nonzero(sc == ci)[0]
            pieces.append(texts[clusters[ci]].take(pa.array(sd[pos])))
            positions.append(pos)
            starts[pos] = offsets[ci][sd[pos]]
            ends[pos] = offsets[ci][sd[pos] + 1]
        back = np.argsort(np.concatenate(positions), kind="stable")   # restore the shuffled order
        gathered = pa.concat_tables(pieces).take(pa.array(back))
        table = pa.table({"text": gathered.column("text"),
                          "cluster": pa.array(names[sc].tolist(), type=pa.string()),
                          "id": gathered.column("id")})
        _write_parquet(ctx.writer.path(f"parquet/part-{s:05d}.parquet"), table, cfg.compression)
        docs = [flat[c][a:b] for c, a, b in zip(sc.tolist(), starts.tolist(), ends.tolist())]
        nd, nt = write_token_shard(ctx.writer.path(f"tokens/part-{s:05d}"), docs, lab.dtype)
        written_docs += nd
        written_tokens += nt

    per_cluster: dict[str, dict] = {}
    for p in plans:
        tok = int(lengths[p.cluster][selected[p.cluster]].sum())
        per_cluster[p.cluster] = {
            "weight": p.weight, "documents": int(len(selected[p.cluster])), "tokens": tok,
            "target_tokens": p.target_tokens, "available_tokens": p.available_tokens,
            "available_documents": p.available_documents,
            "epochs": tok / p.available_tokens if p.available_tokens else 0.0,
            "wanted_epochs": p.wanted_epochs, "capped": p.capped}
    if written_docs != n_docs or written_docs != sum(v["documents"] for v in per_cluster.values()) \
            or written_tokens != sum(v["tokens"] for v in per_cluster.values()):
        raise BuildError(f"build: wrote {written_docs} documents / {written_tokens} tokens, the plan "
                         f"had {n_docs} documents / {sum(v['tokens'] for v in per_cluster.values())} tokens")

    storage.write_bytes(ctx.writer.path("tokenizer/tokenizer.json"), storage.read_bytes(lab.tokenizer_path))
    capped = [p.cluster for p in plans if p.capped]
    extra = {
        "mixture": weights, "mixture_source": "build.mixture" if cfg.mixture else "search",
        # the config hash covers the mixture file's path, not its content: record what was read
        "mixture_sha256": storage.sha256(mixture_uri),
        "clusters": per_cluster, "token_budget": cfg.tokens, "max_epochs": cfg.max_epochs,
        "capped_clusters": capped, "seed": ctx.cfg.seed, "shard_docs": cfg.shard_docs, "shards": n_shards,
        "dtype": lab.dtype.name, "eos_id": lab.eos_id, "vocab_size": lab.vocab_size,
    }
    counts = {"documents": written_docs, "tokens": written_tokens}
    storage.write_text(ctx.writer.path("README.md"), render_card(ctx.cfg, counts, extra, ctx.input("climblab")))

    summary = [
        ("tokens", f"{written_tokens:,} of a {cfg.tokens:,} budget in {written_docs:,} documents, {n_shards} shard(s)"),
        ("epochs per cluster", ", ".join(f"{c}={v['epochs']:.2f}" for c, v in per_cluster.items() if v["tokens"])),
    ]
    if capped:
        summary.append(("capped at max_epochs", ", ".join(capped)))
    return StageOutput(counts, extra, summary)
