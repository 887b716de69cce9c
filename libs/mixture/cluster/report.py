"""The cluster report: what each final cluster holds, for people deciding what to train on.

Per final cluster: size in documents, words and estimated tokens (words x the encoder
tokenizer's tokens-per-word on a sample of the cluster), mean quality (every scorer), the top
TF-IDF terms and three snippets (the documents closest to the cluster centroid;
`mixture.cluster.terms`) and, for evaluation only, the mix of `source` labels with the cluster's
purity. Overall: purity and NMI of the k-means and of the final clusters against the source
labels (`mixture.cluster.evaluation`). The labels never influence any clustering decision (the
project contract: a label never drives a decision unless the config names it as the grouping field).

With k-means the statistics are gathered while the corpus streams by (`Collector`: bounded, per
final cluster counts and sums, a seeded sample of ids, the snippet candidates). With the user's
own groups (`cluster.method` field or assignments, `mixture.cluster.groups`; RegMix-style domain
mixing, Liu et al. 2024) the report has the same per-cluster entries plus the user group each
final cluster is; there are no embeddings, so the snippets are the sampled documents nearest
their cluster's mean TF-IDF vector and there is no map.

The result is a JSON-ready dict; `mixture.cluster.render` writes report.md, report.json and map.png.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mixture.cluster.evaluation import evaluation, evaluation_from_counts
from mixture.cluster.groups import Grouping, NumberedGroups, cluster_name
from mixture.cluster.kmeans import MergeResult
from mixture.cluster.terms import SNIPPETS, snippet, terms_and_typical, tokens_per_word, top_terms
from mixture.config import ClusterConfig
from mixture.curate.documents import texts_by_id
from mixture.dataset import Dataset

if TYPE_CHECKING:
    from mixture.cluster.scorers import Scores

TFIDF_DOCS_PER_CLUSTER = 200
MAP_POINTS = 5000


@dataclass
class Central:
    """A final cluster's documents nearest its centroid so far (most central first)."""

    sims: np.ndarray
    rows: np.ndarray
    ids: list[str]


class Collector:
    """What the k-means report needs, gathered while the stage streams the corpus block by block
    (bounded: per final cluster counts and sums, a sample of ids, the snippet candidates).

    The TF-IDF sample takes the same seeded positions in each cluster's member list (in document
    order) as a draw from the whole list would, the map the same seeded rows; the source counts
    keep the row where each label was first seen in each cluster, so ties order as Counter's."""

    def __init__(self, seed: int, n: int, mapping: np.ndarray, sizes: np.ndarray, sources: list[str], names: list[str]):
        self.mapping, self.sizes, self.sources = mapping, sizes, sources
        f, k, s = len(sizes), len(mapping), len(sources)
        rng = np.random.default_rng(seed)
        self.sample_pos = [
            np.sort(rng.choice(int(m), min(int(m), TFIDF_DOCS_PER_CLUSTER), replace=False)) for m in sizes
        ]
        self.seen = np.zeros(f, dtype=np.int64)
        self.sample_ids: list[list[str]] = [[] for _ in range(f)]
        self.map_rows = map_rows(n, seed)
        self.map_x: list[np.ndarray] = []
        self.map_labels: list[np.ndarray] = []
        self.words: np.ndarray | None = None
        self.score_sums = {name: np.zeros(f) for name in names}
        self.score_totals = dict.fromkeys(names, 0.0)
        self.init_counts = np.zeros((k, s), dtype=np.int64)
        self.final_counts = np.zeros((f, s), dtype=np.int64)
        self.first = np.full((f, s), np.iinfo(np.int64).max, dtype=np.int64)
        self.central = [Central(np.zeros(0, np.float32), np.zeros(0, np.int64), []) for _ in range(f)]

    def add(self, start: int, ids: pa.Array, x: np.ndarray, part: dict[str, np.ndarray], cluster: np.ndarray) -> None:
        """One block: its documents' k-means (`part["assign"]`) and final clusters, scores,
        words and source codes."""
        rows = start + np.arange(len(cluster), dtype=np.int64)
        lo, hi = np.searchsorted(self.map_rows, [start, start + len(cluster)])
        self.map_x.append(x[self.map_rows[lo:hi] - start])
        self.map_labels.append(cluster[self.map_rows[lo:hi] - start])
        kept = cluster >= 0
        if "words" in part:
            self.words = np.zeros(len(self.sizes), dtype=np.int64) if self.words is None else self.words
            np.add.at(self.words, cluster[kept], part["words"][kept])
        for name in self.score_sums:
            values = part[f"score_{name}"].astype(np.float64)
            np.add.at(self.score_sums[name], cluster[kept], values[kept])
            self.score_totals[name] += float(values.sum())
        src = part["source"]
        lab = src >= 0
        np.add.at(self.init_counts, (part["assign"][lab], src[lab]), 1)
        kl = kept & lab
        np.add.at(self.final_counts, (cluster[kl], src[kl]), 1)
        np.minimum.at(self.first, (cluster[kl], src[kl]), rows[kl])
        for c in np.unique(cluster[kept]):
            members = np.flatnonzero(cluster == c)
            ranks = self.seen[c] + np.arange(len(members))
            self.sample_ids[c] += ids.take(pa.array(members[np.isin(ranks, self.sample_pos[c])])).to_pylist()
            self.seen[c] += len(members)

    def add_central(self, start: int, ids: pa.Array, x: np.ndarray, cluster: np.ndarray, centroids: np.ndarray) -> None:
        """One block's candidates for each cluster's snippets: highest cosine to the final
        centroid, ties to the earlier document."""
        for c in np.unique(cluster[cluster >= 0]):
            members = np.flatnonzero(cluster == c)
            sims = x[members] @ centroids[c]
            best = np.lexsort((members, -sims))[:SNIPPETS]
            old = self.central[c]
            all_sims, all_rows = np.r_[old.sims, sims[best]], np.r_[old.rows, start + members[best]]
            all_ids = old.ids + ids.take(pa.array(members[best])).to_pylist()
            keep = np.lexsort((all_rows, -all_sims))[:SNIPPETS]
            self.central[c] = Central(all_sims[keep], all_rows[keep], [all_ids[i] for i in keep])

    def map_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, final cluster) of the map's sampled documents."""
        return np.concatenate(self.map_x), np.concatenate(self.map_labels)

    def source_mix(self, c: int) -> list[tuple[str, int]]:
        """(label, documents) of final cluster c, most common first, ties by first seen."""
        has = np.flatnonzero(self.final_counts[c])
        order = has[np.lexsort((self.first[c, has], -self.final_counts[c, has]))]
        return [(self.sources[s], int(self.final_counts[c, s])) for s in order]


@dataclass
class ReportInputs:
    """What the cluster stage knows once it has clustered and streamed: the report is a function of it."""

    cfg: ClusterConfig
    seed: int
    n: int  # documents
    km: Any  # the k-means model: centroids, objective, train_points, seconds, gpu
    reasons: list[str | None]  # per k-means cluster: None (kept) or why it was pruned
    sizes_init: np.ndarray  # documents per k-means cluster
    mean_quality_init: np.ndarray  # per k-means cluster
    mapping: np.ndarray  # k-means cluster -> final cluster (-1: pruned)
    merged: MergeResult
    stats: Collector
    notes: dict[str, object]  # what each scorer used
    scorer: str  # the scorer that drives pruning
    curated: Dataset  # where the snippets' and terms' texts are read from
    model: str | None  # the embedding model (its tokenizer estimates tokens)


def _mix_entry(entry: dict[str, Any], mix: list[tuple[str, int]]) -> dict[str, Any]:
    """The source mix (evaluation only) and purity of a cluster from its (label, count) list."""
    total = sum(k for _, k in mix)
    if total:
        entry["source_mix"] = {s: round(k / total, 4) for s, k in mix}
        entry["purity"] = round(mix[0][1] / total, 4)
    return entry


def _finish_entry(
    entry: dict[str, Any], c: int, m: np.ndarray, tpw: dict[int, float], sources: np.ndarray, words: np.ndarray | None
) -> dict[str, Any]:
    """The token estimate and (evaluation only) the source mix of cluster `c`, rows `m`."""
    if words is not None and tpw.get(c):
        entry["tokens_est"] = int(round(entry["words"] * tpw[c]))
    labelled = sources[m][sources[m] != ""]
    return _mix_entry(entry, Counter(labelled.tolist()).most_common())


def _labels(meta: pa.Table, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(source label per document, "" when absent; word count per document or None)."""
    sources = (
        np.array([s if s is not None else "" for s in meta.column("source").to_pylist()], dtype=object)
        if "source" in meta.column_names
        else np.full(n, "", dtype=object)
    )
    words = (
        meta.column("n_words").to_numpy(zero_copy_only=False).astype(np.int64)
        if "n_words" in meta.column_names
        else None
    )
    return sources, words


def _kmeans_entry(inp: ReportInputs, c: int, texts: dict[str, str], terms: dict, tpw: dict[int, float]) -> dict:
    st = inp.stats
    size = int(st.sizes[c])
    entry: dict[str, Any] = {
        "cluster": c,
        "documents": size,
        "words": int(st.words[c]) if st.words is not None else None,
        "tokens_est": None,
        "mean_quality": round(float(st.score_sums[inp.scorer][c] / size), 4),
        "mean_scores": {k: round(float(v[c] / size), 4) for k, v in sorted(st.score_sums.items())},
        "kmeans_clusters": [int(k) for k in np.flatnonzero(inp.mapping == c)],
        "top_terms": [[t, s] for t, s in terms.get(c, [])],
        "snippets": [{"id": i, "text": snippet(texts[i])} for i in st.central[c].ids],
    }
    if st.words is not None and tpw.get(c):
        entry["tokens_est"] = int(round(entry["words"] * tpw[c]))
    return _mix_entry(entry, st.source_mix(c))


def cluster_entries(inp: ReportInputs) -> list[dict[str, Any]]:
    """One entry per final cluster: size, quality, top terms, snippets, source mix; only the
    sampled and central documents' texts are read."""
    st = inp.stats
    n_final = len(st.sizes)
    texts = texts_by_id(inp.curated, {i for c in range(n_final) for i in st.sample_ids[c] + st.central[c].ids})
    sampled = {c: [texts[i] for i in st.sample_ids[c]] for c in range(n_final)}
    terms = top_terms(sampled)
    tpw = tokens_per_word(inp.model, sampled)
    return [_kmeans_entry(inp, c, texts, terms, tpw) for c in range(n_final)]


def pruning(inp: ReportInputs) -> dict[str, Any]:
    """What was pruned and why, with the thresholds."""
    sizes, reasons = inp.sizes_init, inp.reasons
    pruned: dict[str, Any] = {}
    for reason in ("empty", "size", "quality"):
        ks = [k for k, r in enumerate(reasons) if r == reason]
        if ks:
            pruned[reason] = {"clusters": len(ks), "documents": int(sizes[ks].sum()), "kmeans_clusters": ks}
    pruned_q = [
        {
            "kmeans_cluster": k,
            "documents": int(sizes[k]),
            "mean_quality": round(float(inp.mean_quality_init[k]), 4),
        }
        for k, r in enumerate(reasons)
        if r == "quality"
    ]
    return {
        "min_cluster_quality": inp.cfg.quality.min_cluster_quality,
        "min_cluster_size": inp.cfg.min_cluster_size,
        "pruned": pruned,
        "pruned_for_quality": pruned_q,
    }


def kmeans_section(inp: ReportInputs) -> dict[str, Any]:
    km, cfg = inp.km, inp.cfg
    return {
        "k_requested": int(cfg.k_init),
        "k": int(len(km.centroids)),
        "train_points": km.train_points,
        "documents": inp.n,
        "mean_cosine": round(km.objective, 5),
        "gpu": km.gpu,  # its seconds: the manifest's `seconds` and MLflow (a report is a function of its inputs)
        "niter": cfg.niter,
        "nredo": cfg.nredo,
        "seed": inp.seed,
    }


def merge_section(inp: ReportInputs) -> dict[str, Any]:
    mg = inp.merged
    return {
        "kept_kmeans_clusters": int(len(mg.labels)),
        "merge_distance": inp.cfg.merge_distance,
        "target_clusters": inp.cfg.target_clusters,
        "groups_at_distance": mg.n_at_distance,
        "merges_applied": mg.applied,
        "final_clusters": len(inp.stats.sizes),
        "last_applied_height": round(float(mg.heights[mg.applied - 1]), 4) if mg.applied else None,
        "next_height": round(float(mg.heights[mg.applied]), 4) if mg.applied < len(mg.heights) else None,
    }


def build_report(inp: ReportInputs) -> dict[str, Any]:
    """The report as a JSON-ready dict (report.json; report.md renders it)."""
    st = inp.stats
    means = {k: v / inp.n for k, v in st.score_totals.items()}
    return {
        "clusters": cluster_entries(inp),
        "kmeans": kmeans_section(inp),
        "pruning": pruning(inp),
        "merge": merge_section(inp),
        "quality": quality_means(inp.scorer, inp.notes, means),
        "evaluation": evaluation_from_counts(st.init_counts, st.final_counts, st.sources),
        "embedding_model": inp.model,
    }


def quality_means(scorer: str, notes: dict[str, object], means: dict[str, float]) -> dict[str, Any]:
    return {
        "scorer": scorer,
        "scale": "1-5",
        "notes": notes,
        "mean": {k: round(float(v), 4) for k, v in sorted(means.items())},
    }


def quality_section(cfg: ClusterConfig, scores: Scores) -> dict[str, Any]:
    return quality_means(cfg.quality.scorer, scores.notes, {k: float(v.mean()) for k, v in scores.by_name.items()})


# ------------------------------------------------------------------------- the user's groups
@dataclass
class GroupReportInputs:
    """What the cluster stage knows with the user's groups (`cluster.method` field or
    assignments): no embeddings, so snippets are the most typical documents by TF-IDF."""

    cfg: ClusterConfig
    seed: int
    ids: pa.Array  # document ids (strings), in the curated order
    meta: pa.Table  # curated id, source, n_words, q_* in the same order
    groups: NumberedGroups
    grouping: Grouping
    quality: np.ndarray
    scores: Scores
    curated: Dataset
    model: str | None  # the tokenizer of this embedding model estimates tokens


def group_entries(inp: GroupReportInputs, sources: np.ndarray, words: np.ndarray | None) -> list[dict[str, Any]]:
    """One entry per final cluster: its user group, size, quality, top terms, snippets, source mix."""
    rng = np.random.default_rng(inp.seed)
    names, ng = inp.groups.final_names(), inp.groups
    rows = {c: np.flatnonzero(ng.cluster == c) for c in range(len(names))}
    sample = {c: np.sort(rng.choice(m, min(len(m), TFIDF_DOCS_PER_CLUSTER), replace=False)) for c, m in rows.items()}
    sample_ids = {c: inp.ids.take(pa.array(m, pa.int64())).to_pylist() for c, m in sample.items()}
    texts = texts_by_id(inp.curated, {i for ids in sample_ids.values() for i in ids})
    sampled = {c: [texts[i] for i in ids] for c, ids in sample_ids.items()}
    terms, typical = terms_and_typical(sampled)
    tpw = tokens_per_word(inp.model, sampled)
    out = []
    for c, m in rows.items():
        entry: dict[str, Any] = {
            "cluster": c,
            "name": cluster_name(c),
            "group": names[c],
            "documents": int(len(m)),
            "words": int(words[m].sum()) if words is not None else None,
            "tokens_est": None,
            "mean_quality": round(float(inp.quality[m].mean()), 4),
            "mean_scores": {k: round(float(v[m].mean()), 4) for k, v in sorted(inp.scores.by_name.items())},
            "values": inp.grouping.values.get(names[c]),
            "top_terms": [[t, s] for t, s in terms.get(c, [])],
            "snippets": [{"id": sample_ids[c][j], "text": snippet(texts[sample_ids[c][j]])} for j in typical[c]],
        }
        out.append(_finish_entry(entry, c, m, tpw, sources, words))
    return out


def groups_section(inp: GroupReportInputs) -> dict[str, Any]:
    """Every user group (kept: its final cluster; pruned: why), and the documents without a group."""
    cfg, ng, gr = inp.cfg, inp.groups, inp.grouping
    per = [
        {
            "group": g,
            "documents": int(ng.sizes[i]),
            "mean_quality": round(float(ng.mean_quality[i]), 4),
            "cluster": int(ng.mapping[i]) if ng.mapping[i] >= 0 else None,
            "name": cluster_name(int(ng.mapping[i])) if ng.mapping[i] >= 0 else None,
            "pruned": ng.reasons[i],
        }
        for i, g in enumerate(ng.names)
    ]
    return {
        "method": cfg.method,
        "field": cfg.field,
        "mapping": cfg.mapping,
        "unmapped": cfg.unmapped if cfg.mapping else None,
        "assignments": cfg.assignments,
        "documents": len(inp.ids),
        "groups": per,
        "ungrouped": dict(gr.ungrouped),
        "unknown_ids": gr.unknown_ids,
        "unknown_id_examples": list(gr.unknown_examples),
        "min_cluster_quality": cfg.quality.min_cluster_quality,
        "min_cluster_size": cfg.min_cluster_size,
    }


def build_group_report(inp: GroupReportInputs) -> dict[str, Any]:
    """The report of the user's groups as a JSON-ready dict (report.json; report.md renders it)."""
    sources, words = _labels(inp.meta, len(inp.ids))
    has = inp.groups.init >= 0
    return {
        "method": inp.cfg.method,
        "clusters": group_entries(inp, sources, words),
        "groups": groups_section(inp),
        "quality": quality_section(inp.cfg, inp.scores),
        "evaluation": evaluation(inp.groups.init[has], inp.groups.cluster[has], sources[has]),
        "token_estimate_model": inp.model,
    }


def map_rows(n: int, seed: int) -> np.ndarray:
    """The seeded rows (ascending) of the documents drawn on the map."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, MAP_POINTS), replace=False))
