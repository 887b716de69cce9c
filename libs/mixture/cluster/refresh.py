"""The incremental refresh of a k-means clustering: documents added since are assigned to the
committed centroids, documents removed since leave, and a drift check says whether the committed
clusters still describe the corpus or it must be re-clustered from scratch.

`extend`: the new documents (the embeddings shards added since, `mixture.increments.Delta`) are
assigned to the committed k-means centroids (`centroids_init.npy`, mapped to the final clusters by
`mapping.json`), scored with the same quality scorers, and staged as
`assignments-vNNNN-00000.parquet`. The committed assignments less the removed ids are streamed
beside the curated documents they must line up with, and the corpus as it is now is measured
against the clustering version's `drift_reference` (`measure`): the share of new documents
farther from every centroid than 95% of the clustered documents were, the total variation of the
final clusters' word (or document) shares, and the largest move of a kept k-means cluster's mean
quality. Any figure above its `refresh.max_*` threshold (`exceeds`), or inputs that do not line
up, give a `Drift`: the stage re-clusters every document instead.

`stage_files`: the rest of the version, the committed assignments files less the removed ids,
the centroids and mapping as they were, the report files with the snippets of removed documents
redacted (a retracted text must leave every dataset: `mixture.curate.retract`), and the removal
lists; `version_facts` gives the counts for the corpus as it is now.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import increments, storage
from mixture.cluster import embeddings
from mixture.cluster.groups import assignment_files
from mixture.cluster.kmeans import assign_nearest, gpu_count, normalize_rows
from mixture.cluster.passes import assignment_schema
from mixture.cluster.scorers import ScoreBatch, ScoreSetup, Scoring, open_scorers
from mixture.cluster.stream import BLOCK_ROWS, Corpus, curated_meta_columns
from mixture.config import ClusterConfig, RefreshConfig
from mixture.curate import documents, retract
from mixture.dataset import Dataset


@dataclass
class Drift:
    """Why an incremental refresh re-clusters instead, with what was measured."""

    reason: str
    figures: dict = field(default_factory=dict)


@dataclass
class Tally:
    """Per-cluster sums of a set of documents: words (or documents) and documents per final
    cluster, quality sum and documents per k-means cluster."""

    words: np.ndarray
    docs: np.ndarray
    q_sum: np.ndarray
    q_n: np.ndarray
    n: int = 0
    far: int = 0

    @classmethod
    def empty(cls, k: int, f: int) -> Tally:
        return cls(np.zeros(f), np.zeros(f, np.int64), np.zeros(k), np.zeros(k, np.int64))

    def add(self, init: np.ndarray, cluster: np.ndarray, quality: np.ndarray, words: np.ndarray) -> None:
        kept = cluster >= 0
        f, k = len(self.words), len(self.q_sum)
        self.words += np.bincount(cluster[kept], weights=words[kept], minlength=f)[:f]
        self.docs += np.bincount(cluster[kept], minlength=f)[:f]
        self.q_sum += np.bincount(init, weights=quality.astype(np.float64), minlength=k)[:k]
        self.q_n += np.bincount(init, minlength=k)[:k]
        self.n += len(init)


@dataclass
class Extension:
    """An incremental version within the drift thresholds: the new documents' assignments are
    staged; what `stage_files` and `version_facts` need for the rest."""

    drop: pa.Table  # (id, reason) removed since the covered versions
    old: Tally  # the committed documents still in the corpus
    new: Tally  # the documents added since
    figures: dict  # the drift figures (`measure`)


def view(ds: Dataset, rels: set[str]) -> Dataset:
    """The dataset with only the files `rels` in its manifest (the added or the kept ones)."""
    files = [f for f in ds.manifest.files if f["path"] in rels]
    return Dataset(ds.uri, replace(ds.manifest, files=files), ds.manifest_sha256)


def _rels(ds: Dataset, uris: list[str]) -> set[str]:
    return {u[len(ds.uri.rstrip("/")) + 1 :] for u in uris}


def words_of(meta: pa.Table, by_words: bool) -> np.ndarray:
    """Each document's words (n_words; missing: 0), or ones when shares are of documents."""
    if not by_words or "n_words" not in meta.column_names:
        return np.ones(meta.num_rows)
    return np.nan_to_num(meta.column("n_words").to_numpy(zero_copy_only=False).astype(np.float64))


def extend(
    w,
    delta: increments.Delta,
    emb: Dataset,
    curated: Dataset,
    cfg: ClusterConfig,
    limits: RefreshConfig,
    seed: int,
) -> Extension | Drift:
    """The incremental path: the new documents (embeddings shards added since) assigned to the
    committed k-means centroids, scored and staged as `assignments-vNNNN-00000.parquet`; then
    the drift check on the whole corpus as it is now. Returns the extension, or why to re-cluster."""
    prev = delta.previous
    ref = prev.manifest.extra.get("drift_reference") or {}
    if not np.isfinite(ref.get("far_distance_p95", float("nan"))):
        return Drift("the committed clustering records no distance percentile (drift_reference)")
    n_total = documents.count(curated)
    if "skipped" in emb.manifest.extra or sum(r for _, _, r in embeddings.shard_files(emb)) != n_total:
        return Drift("the embeddings do not match the curated documents")
    setup = ScoreSetup(cfg.quality, seed, n_total, documents.column_names(curated), curated, emb, None)
    setup.sample = lambda rows: normalize_rows(embeddings.read_rows(emb, rows))
    scoring = open_scorers(cfg, setup)
    if scoring.names != prev.manifest.extra.get("scorers"):
        return Drift(f"the quality scorers changed ({prev.manifest.extra.get('scorers')} -> {scoring.names})")
    number = increments.version(prev) + 1
    new_rel = f"assignments-{increments.tag(number)}-00000.parquet"  # `vNNNN-`: increments.version_of
    k, f = int(prev.manifest.counts["k_init"]), int(prev.manifest.counts["clusters"])
    by_words = ref.get("shares_of") == "words"
    shape = (k, f, n_total, by_words, float(ref["far_distance_p95"]))
    new = assign_new(w, delta, (emb, curated), scoring, new_rel, shape)
    if isinstance(new, Drift):
        return new
    drop = removed_ids(delta, curated, emb)
    kept_files = _rels(curated, documents.doc_files(curated)) - _rels(curated, delta.added(curated, "curated", "docs/"))
    old = tally_kept(prev, view(curated, kept_files), drop.column("id"), Tally.empty(k, f), by_words)
    if old is None or old.n + new.n != n_total:
        return Drift("the committed assignments do not line up with the curated documents")
    figures = measure(ref, old, new)
    reason = exceeds(limits, figures)
    if reason:
        return Drift(reason, figures)
    return Extension(drop, old, new, figures)


def assign_new(w, delta: increments.Delta, inputs: tuple[Dataset, Dataset], scoring: Scoring, rel: str, shape: tuple):
    """Assign, score and stage the new documents (block by block); their tally, or Drift when
    they do not line up with the curated documents added since."""
    k, f, n_total, by_words, far_at = shape
    (emb, curated), prev = inputs, delta.previous
    new_emb = view(emb, _rels(emb, delta.added(emb, "embeddings", "emb-") + delta.added(emb, "embeddings", "ids-")))
    new_cur = view(curated, _rels(curated, delta.added(curated, "curated", "docs/")))
    n_new = sum(r for _, _, r in embeddings.shard_files(new_emb)) if new_emb.manifest.files else 0
    tally = Tally.empty(k, f)
    if n_new == 0:
        return tally if not new_cur.manifest.files or documents.count(new_cur) == 0 else Drift("no new embeddings")
    if not new_cur.manifest.files or documents.count(new_cur) != n_new:
        return Drift("the new embeddings do not match the curated documents added since")
    centroids = storage.load_npy(prev.path("centroids_init.npy")).astype(np.float32)
    mapping_raw = storage.read_json(prev.path("mapping.json"))
    mapping = np.array([mapping_raw[str(c)] for c in range(len(centroids))], dtype=np.int64)
    corpus = Corpus(
        new_emb, new_cur, n_new, embeddings.dimension(new_emb), curated_meta_columns(documents.column_names(curated))
    )
    schema, gpu = assignment_schema(scoring.names), gpu_count() > 0
    with storage.open_write(w.path(rel)) as fh, pq.ParquetWriter(fh, schema) as out:
        for start, ids, x, meta in corpus.blocks(scoring.needs_text):
            sims, assign = assign_nearest(x, centroids, gpu)
            scores = scoring.score(ScoreBatch(n_total - n_new + start, x, meta))
            cluster = mapping[assign]
            cols = [ids, pa.array(assign.astype(np.int32)), pa.array(cluster.astype(np.int32))]
            cols.append(pa.array(scores[scoring.chosen].astype(np.float32)))
            cols += [pa.array(scores[n].astype(np.float32)) for n in scoring.names]
            out.write_table(pa.Table.from_arrays(cols, schema=schema))
            tally.add(assign, cluster, scores[scoring.chosen], words_of(meta, by_words))
            tally.far += int(((1.0 - sims) > far_at).sum())
    return tally


def removed_ids(delta: increments.Delta, curated: Dataset, emb: Dataset) -> pa.Table:
    """(id, reason) removed since the covered versions: curated's and the embeddings' lists, one
    row per id (forwarded to the datasets downstream)."""
    table = pa.concat_tables([delta.removed(curated, "curated"), delta.removed(emb, "embeddings")])
    if not table.num_rows:
        return table
    first = table.group_by("id", use_threads=False).aggregate([("reason", "first")])
    return first.rename_columns(["id", "reason"]).sort_by("id")


def _rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last shorter) from a stream of tables."""
    held: list[pa.Table] = []
    n = 0
    for t in tables:
        held.append(t)
        n += t.num_rows
        while n >= rows:
            table = pa.concat_tables(held)
            yield table.slice(0, rows).combine_chunks()
            held, n = [table.slice(rows)], n - rows
    if n:
        yield pa.concat_tables(held).combine_chunks()


def tally_kept(prev: Dataset, kept: Dataset, drop: pa.ChunkedArray, tally: Tally, by_words: bool) -> Tally | None:
    """The committed assignments less the removed ids, streamed beside the curated documents
    they must line up with (ids compared block by block; None when they do not)."""
    drop_ids = drop.combine_chunks().cast(pa.string())

    def assigned() -> Iterator[pa.Table]:
        for uri in assignment_files(prev):
            with storage.open_read(uri) as fh:
                for b in pq.ParquetFile(fh).iter_batches(columns=["id", "cluster_init", "cluster", "quality"]):
                    t = pa.Table.from_batches([b])
                    yield t.filter(pc.invert(pc.is_in(t.column("id"), value_set=drop_ids))) if len(drop_ids) else t

    cols = ["id"] + (["n_words"] if "n_words" in documents.column_names(kept) else [])
    blocks = documents.iter_blocks(kept, cols, BLOCK_ROWS) if kept.manifest.files else iter(())
    for a, c in itertools.zip_longest(_rechunk(assigned(), BLOCK_ROWS), blocks):
        if a is None or c is None or not a.column("id").equals(c.column("id").cast(pa.string())):
            return None
        init = a.column("cluster_init").to_numpy().astype(np.int64)
        cluster = a.column("cluster").to_numpy().astype(np.int64)
        tally.add(init, cluster, a.column("quality").to_numpy(), words_of(c, by_words))
    return tally


def measure(ref: dict, old: Tally, new: Tally) -> dict:
    """The drift figures: share of new documents far from every centroid, total variation of the
    final clusters' word shares against the clustering version's, largest move of a kept k-means
    cluster's mean quality against the clustering version's (a cluster emptied is left out)."""
    words = old.words + new.words
    now = words / max(words.sum(), 1e-12)
    then = np.zeros(len(now))
    for c, share in ref["shares"].items():
        then[int(c)] = share
    q_n = old.q_n + new.q_n
    shifts = [
        abs((old.q_sum[int(c)] + new.q_sum[int(c)]) / q_n[int(c)] - q)
        for c, q in ref["mean_quality_init"].items()
        if q_n[int(c)] > 0
    ]
    return {
        "far_share": round(new.far / new.n, 6) if new.n else 0.0,
        "far_documents": new.far,
        "share_shift": round(float(0.5 * np.abs(now - then).sum()), 6),
        "quality_shift": round(float(max(shifts, default=0.0)), 6),
        "shares_of": ref.get("shares_of", "words"),
    }


def exceeds(rc: RefreshConfig, figures: dict) -> str:
    """Why the figures call for a re-clustering ('' when they do not)."""
    why = []
    if figures["far_share"] > rc.max_far_share:
        why.append(
            f"{figures['far_share']:.1%} of the new documents are farther from every centroid than 95% of "
            f"the clustered documents (refresh.max_far_share {rc.max_far_share})"
        )
    if figures["share_shift"] > rc.max_share_shift:
        why.append(
            f"the clusters' {figures['shares_of']} shares moved by {figures['share_shift']:.4f} "
            f"(total variation; refresh.max_share_shift {rc.max_share_shift})"
        )
    if figures["quality_shift"] > rc.max_quality_shift:
        why.append(
            f"a kept cluster's mean quality moved by {figures['quality_shift']:.3f} "
            f"(refresh.max_quality_shift {rc.max_quality_shift})"
        )
    return "; ".join(why)


def _redacted_report(prev: Dataset, w, rel: str, gone: set[str]) -> bool:
    """Stage the report file of the clustering version with the snippets of removed documents (a
    retracted text must leave every dataset) replaced by `[retracted]`; False (nothing staged)
    when it quotes none of them."""
    text = storage.read_text(prev.path(rel))
    if rel.endswith(".json"):
        obj, n = retract.redact_json(json.loads(text), gone)
        text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    else:
        text, n = retract.redact_markdown(text, gone)
    if n:
        storage.write_text(w.path(rel), text)
    return n > 0


def stage_files(w, prev: Dataset, drop: pa.Table) -> int:
    """Stage the rest of the incremental version: the committed assignments files less the
    removed ids, the centroids, mapping and report files as they were (the report redacted), the
    removal lists. Returns the assignments' rows removed."""
    rewritten = increments.carry_parquet(w, prev, "assignments", drop.column("id").combine_chunks())
    gone = set(drop.column("id").to_pylist())
    for entry in prev.manifest.files:
        rel = entry["path"]
        if rel in retract.REPORT_FILES and gone and _redacted_report(prev, w, rel, gone):
            continue
        if not rel.startswith(("assignments", increments.REMOVED)) and rel != increments.HISTORY:
            w.keep(prev, rel)
    increments.keep_removed(w, prev)
    number = increments.version(prev) + 1
    increments.write_removed(w, number, drop)
    return int(sum(rewritten.values()))


def version_facts(prev: Dataset, ext: Extension, removed: int) -> tuple[dict, dict, dict]:
    """(counts, extra, delta) of the incremental version: the counts for the corpus as it is
    now, the clustering version's extra with each cluster's size now, the lineage's delta."""
    old, new, figures = ext.old, ext.new, ext.figures
    n, kept = old.n + new.n, int(old.docs.sum() + new.docs.sum())
    counts = {**prev.manifest.counts, "documents_in": n, "documents_out": kept, "pruned_documents": n - kept}
    extra = {k: v for k, v in prev.manifest.extra.items() if k != increments.LINEAGE}
    extra["clusters_now"] = {
        str(c): {"documents": int(d), figures["shares_of"]: int(x)}
        for c, (d, x) in enumerate(zip(old.docs + new.docs, old.words + new.words))
    }
    extra["report_version"] = extra["drift_reference"]["version"]
    return counts, extra, {"assigned": new.n, "removed": removed, **figures}


def summary(counts: dict, extra: dict, delta: dict, version: int) -> list[tuple[str, str]]:
    """The summary lines of an incremental version."""
    return [
        (
            "clusters",
            f"{delta['assigned']:,} new documents assigned to the {counts['clusters']} clusters of version "
            f"{extra['report_version']}, {delta['removed']:,} removed; {counts['documents_out']:,} of "
            f"{counts['documents_in']:,} in kept clusters",
        ),
        (
            "drift",
            f"far {delta['far_share']:.1%}, share shift {delta['share_shift']:.4f}, "
            f"quality shift {delta['quality_shift']:.3f} (within refresh thresholds)",
        ),
        ("clusters version", f"{version} (incremental: report.* as of version {extra['report_version']})"),
    ]
