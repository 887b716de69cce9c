"""The cluster report: what each final cluster holds, for people deciding what to train on.

Per final cluster: size in documents, words and estimated tokens (words x the encoder
tokenizer's tokens-per-word on a sample of the cluster), mean quality (every scorer), the top
TF-IDF terms (mean TF-IDF weight over a sample of its documents, English stop words removed),
three snippets (the documents closest to the cluster centroid) and, for evaluation only, the
mix of `source` labels with the cluster's purity. Overall: purity and normalised mutual
information (NMI, arithmetic normalisation) of the k-means and of the final clusters against the
source labels. The labels never influence any clustering decision (the project contract: a label
never drives a decision unless the config names it as the grouping field).

Written as report.md, report.json and map.png (a PCA projection of a sample of the embeddings,
coloured by final cluster, pruned documents in grey; matplotlib's Agg backend).

With the user's own groups (`cluster.method` field or assignments, `mixture.cluster.groups`; RegMix-style
domain mixing, Liu et al. 2024) the report has the same per-cluster entries plus the user group
each final cluster is; there are no embeddings, so the snippets are the sampled documents nearest
their cluster's mean TF-IDF vector and there is no map.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mixture.cluster.groups import Grouping, NumberedGroups, cluster_name
from mixture.cluster.kmeans import MergeResult
from mixture.config import ClusterConfig
from mixture.curate.documents import texts_by_id
from mixture.dataset import Dataset

if TYPE_CHECKING:
    from mixture.cluster.scorers import Scores

log = logging.getLogger(__name__)

TFIDF_DOCS_PER_CLUSTER = 200
TOP_TERMS = 12
SNIPPETS = 3
SNIPPET_CHARS = 300
MAP_POINTS = 5000


# ---------------------------------------------------------------------------- label metrics
def purity(labels: np.ndarray, classes: np.ndarray) -> float:
    """Share of documents whose cluster's most common class is their class."""
    labels, classes = np.asarray(labels), np.asarray(classes)
    if len(labels) == 0:
        return float("nan")
    total = 0
    for c in np.unique(labels):
        total += Counter(classes[labels == c].tolist()).most_common(1)[0][1]
    return total / len(labels)


def nmi(labels: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(classes, labels))


def _tfidf(texts_by_cluster: dict[int, list[str]]) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(TF-IDF matrix, owning cluster per row, vocabulary) of the sampled documents (IDF over all
    of them), or None when there is nothing to weigh."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    order = sorted(texts_by_cluster)
    docs = [t for c in order for t in texts_by_cluster[c]]
    owner = np.array([c for c in order for _ in texts_by_cluster[c]])
    if not docs:
        return None
    vec = TfidfVectorizer(
        stop_words="english",
        sublinear_tf=True,
        max_features=50_000,
        token_pattern=r"(?u)\b[^\W\d_][^\W\d_]{2,}\b",
        max_df=0.5 if len(docs) > 20 else 1.0,
        min_df=2 if len(docs) > 50 else 1,
    )
    try:
        m = vec.fit_transform(docs)
    except ValueError:  # no term survives (e.g. only stop words)
        return None
    return m, owner, np.array(vec.get_feature_names_out())


def top_terms(texts_by_cluster: dict[int, list[str]], n_terms: int = TOP_TERMS) -> dict[int, list[tuple[str, float]]]:
    """Highest mean TF-IDF terms per cluster (IDF over all the sampled documents)."""
    return terms_and_typical(texts_by_cluster, n_terms)[0]


def terms_and_typical(
    texts_by_cluster: dict[int, list[str]], n_terms: int = TOP_TERMS, n_typical: int = SNIPPETS
) -> tuple[dict[int, list[tuple[str, float]]], dict[int, list[int]]]:
    """Per cluster its top TF-IDF terms, and the positions in its list of its most typical
    documents (highest cosine to the cluster's mean TF-IDF vector: the snippets when there are no
    embeddings to find the documents nearest a centroid)."""
    order = sorted(texts_by_cluster)
    fitted = _tfidf(texts_by_cluster)
    if fitted is None:
        return {c: [] for c in order}, {c: list(range(min(n_typical, len(texts_by_cluster[c])))) for c in order}
    m, owner, vocab = fitted
    terms, typical = {}, {}
    for c in order:
        rows = m[owner == c]
        mean = np.asarray(rows.mean(axis=0)).ravel()
        best = np.argsort(-mean, kind="stable")[:n_terms]
        terms[c] = [(str(vocab[j]), round(float(mean[j]), 4)) for j in best if mean[j] > 0]
        typical[c] = np.argsort(-np.asarray(rows @ mean).ravel(), kind="stable")[:n_typical].tolist()
    return terms, typical


def _snippet(text: str) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."


def token_counter(model: str | None):
    """A function text list -> token count with the embedding model's tokenizer, or None."""
    if not model:
        return None
    try:
        from transformers import AutoTokenizer

        from mixture.cluster.encoder import read_model_spec, resolve_model

        tok = AutoTokenizer.from_pretrained(str(read_model_spec(resolve_model(model)).path), local_files_only=True)
    except Exception as err:  # the estimate is informative only: say so and go on
        log.warning("token estimate skipped: %s", err)
        return None

    def count(texts: list[str]) -> int:
        if not texts:
            return 0
        enc = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return sum(len(x) for x in enc)

    return count


# ------------------------------------------------------------------------------------ build
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


def _tokens_per_word(model: str | None, sampled: dict[int, list[str]]) -> dict[int, float]:
    """Tokens per word of each cluster's sample (code has more tokens per word than prose)."""
    count = token_counter(model)
    if count is None:
        return {}
    return {c: count(t) / max(sum(len(x.split()) for x in t), 1) for c, t in sampled.items()}


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
        "snippets": [{"id": i, "text": _snippet(texts[i])} for i in st.central[c].ids],
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
    tpw = _tokens_per_word(inp.model, sampled)
    return [_kmeans_entry(inp, c, texts, terms, tpw) for c in range(n_final)]


def counts_purity(table: np.ndarray) -> float:
    """purity() from a (cluster x class) count table."""
    return int(table.max(axis=1).sum()) / int(table.sum()) if table.sum() else float("nan")


def _entropy(counts: np.ndarray) -> float:
    pi = counts[counts > 0].astype(np.float64)
    pi_sum = np.sum(pi)
    return float(-np.sum((pi / pi_sum) * (np.log(pi) - np.log(pi_sum))))


def counts_nmi(table: np.ndarray, classes: list[str]) -> float:
    """nmi() from a (cluster x class) count table: scikit-learn's arithmetic NMI, computed the
    way it computes it (classes in sorted order, the same contingency matrix)."""
    import scipy.sparse as sp
    from sklearn.metrics import mutual_info_score

    rows, cols = table.sum(axis=1) > 0, table.sum(axis=0) > 0
    names = [classes[j] for j in np.flatnonzero(cols)]
    t = table[rows][:, cols][:, np.argsort(np.array(names, dtype=object), kind="stable")]
    if t.shape[0] == t.shape[1] == 1 or t.shape[0] == t.shape[1] == 0:
        return 1.0
    contingency = sp.csr_matrix(t.T.astype(np.int64)).astype(np.float64)
    mi = mutual_info_score(None, None, contingency=contingency)
    if mi == 0:
        return 0.0
    return float(mi / np.mean([_entropy(t.sum(axis=0)), _entropy(t.sum(axis=1))]))


def evaluation_from_counts(init: np.ndarray, final: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """evaluation() from the k-means and final clusters' (cluster x source) counts."""
    out: dict[str, Any] = {}
    if not init.sum():
        return out
    out["init"] = {
        "purity": round(counts_purity(init), 4),
        "nmi": round(counts_nmi(init, classes), 4),
        "documents": int(init.sum()),
    }
    if final.sum():
        out["final"] = {
            "purity": round(counts_purity(final), 4),
            "nmi": round(counts_nmi(final, classes), 4),
            "documents": int(final.sum()),
        }
    totals = init.sum(axis=0)
    order = np.lexsort((np.arange(len(classes)), -totals))  # codes are in first-seen order
    out["sources"] = {classes[s]: int(totals[s]) for s in order if totals[s]}
    return out


def evaluation(assign: np.ndarray, cluster: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    """Purity and NMI of the k-means and final clusters against the source labels (documents that
    carry one); evaluation only."""
    out: dict[str, Any] = {}
    has = sources != ""
    if not has.any():
        return out
    out["init"] = {
        "purity": round(purity(assign[has], sources[has]), 4),
        "nmi": round(nmi(assign[has], sources[has]), 4),
        "documents": int(has.sum()),
    }
    kept_has = has & (cluster >= 0)
    if kept_has.any():
        out["final"] = {
            "purity": round(purity(cluster[kept_has], sources[kept_has]), 4),
            "nmi": round(nmi(cluster[kept_has], sources[kept_has]), 4),
            "documents": int(kept_has.sum()),
        }
    out["sources"] = dict(Counter(sources[has].tolist()).most_common())
    return out


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
        "seconds": round(km.seconds, 2),
        "gpu": km.gpu,
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
    tpw = _tokens_per_word(inp.model, sampled)
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
            "snippets": [{"id": sample_ids[c][j], "text": _snippet(texts[sample_ids[c][j]])} for j in typical[c]],
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


# ----------------------------------------------------------------------------------- render
def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def render_markdown(rep: dict[str, Any]) -> str:
    if rep.get("method", "kmeans") == "kmeans":
        lines = _kmeans_header(rep) + ["", "![map](map.png)", ""]
    else:
        lines = _groups_header(rep) + [""]
    return "\n".join(lines + _cluster_tables(rep) + _quality_lines(rep["quality"]))


def _kmeans_header(rep: dict[str, Any]) -> list[str]:
    km, pr, mg, q, ev = rep["kmeans"], rep["pruning"], rep["merge"], rep["quality"], rep["evaluation"]
    lines = ["# Cluster report", ""]
    lines.append(
        f"{km['documents']:,} documents, embedded with `{rep.get('embedding_model')}`. "
        f"k-means K={km['k']} (asked {km['k_requested']}; trained on {km['train_points']:,} "
        f"documents, {km['niter']} iterations, nredo {km['nredo']}, seed {km['seed']}, "
        f"{'GPU' if km['gpu'] else 'CPU'}, {km['seconds']} s; mean cosine to centroid {km['mean_cosine']})."
    )
    pruned_total = sum(v["clusters"] for v in pr["pruned"].values())
    pruned_docs = sum(v["documents"] for v in pr["pruned"].values())
    lines.append(
        f"Pruned {pruned_total} k-means clusters ({pruned_docs:,} documents): "
        + (", ".join(f"{k} {v['clusters']}" for k, v in pr["pruned"].items()) or "none")
        + f" (quality scorer `{q['scorer']}` below {pr['min_cluster_quality']} on 1-5, "
        f"or fewer than {pr['min_cluster_size']} documents)."
    )
    lines.append(
        f"Ward merge of {mg['kept_kmeans_clusters']} centroids: {mg['groups_at_distance']} groups at "
        f"distance {mg['merge_distance']}, target {mg['target_clusters']} -> "
        f"**{mg['final_clusters']} final clusters** (last merge height {mg['last_applied_height']}, "
        f"next {mg['next_height']})."
    )
    if ev.get("final"):
        lines.append(
            f"Against the `source` labels (evaluation only): k-means purity {ev['init']['purity']}, "
            f"NMI {ev['init']['nmi']}; final purity {ev['final']['purity']}, NMI {ev['final']['nmi']}."
        )
    return lines


def _groups_header(rep: dict[str, Any]) -> list[str]:
    g, q = rep["groups"], rep["quality"]
    how = (
        f"the curated field `{g['field']}`"
        + (f" through the mapping `{g['mapping']}` (values without an entry: {g['unmapped']})" if g["mapping"] else "")
        if g["method"] == "field"
        else f"the assignments file `{g['assignments']}`"
    )
    pruned = [x for x in g["groups"] if x["pruned"]]
    lines = [
        "# Cluster report: the user's groups",
        "",
        f"{g['documents']:,} documents grouped by {how} (cluster.method {g['method']}; no embeddings, "
        f"no k-means): {len(g['groups'])} groups, **{len(rep['clusters'])} final clusters** numbered by size.",
        "Documents without a group (cluster -1): "
        + (", ".join(f"{k} {v:,}" for k, v in g["ungrouped"].items()) or "none")
        + ".",
        f"Pruned {len(pruned)} groups ({sum(x['documents'] for x in pruned):,} documents): "
        + (", ".join(f"{x['group']} ({x['pruned']})" for x in pruned) or "none")
        + f" (quality scorer `{q['scorer']}` below {g['min_cluster_quality']} on 1-5, or fewer than "
        f"{g['min_cluster_size']} documents).",
    ]
    if g["method"] == "assignments":
        lines.append(
            f"Ids in the assignments file that are not curated documents: {g['unknown_ids']:,}"
            + (f" (e.g. {', '.join(g['unknown_id_examples'])})" if g["unknown_ids"] else "")
            + "."
        )
    return lines


def _origin(c: dict[str, Any]) -> str:
    if "kmeans_clusters" in c:
        return f"from k-means clusters {c['kmeans_clusters']}"
    values = c.get("values")
    merged = f" (values {', '.join(values)})" if values and values != [c["group"]] else ""
    return f"of the user group `{c['group']}`{merged}"


def _cluster_tables(rep: dict[str, Any]) -> list[str]:
    lines = [
        "| cluster | documents | words | tokens (est.) | quality | top terms | top source (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rep["clusters"]:
        top_src = next(iter(c.get("source_mix", {}).items()), None)
        label = f"{c['cluster']} ({c['name']}: {c['group']})" if "group" in c else f"{c['cluster']}"
        lines.append(
            f"| {label} | {c['documents']:,} | {_num(c['words'])} | "
            f"{_num(c['tokens_est'])} | {c['mean_quality']:.2f} | "
            f"{', '.join(t for t, _ in c['top_terms'][:6])} | "
            f"{f'{top_src[0]} ({top_src[1]:.0%})' if top_src else '-'} |"
        )
    for c in rep["clusters"]:
        lines += [
            "",
            f"## Cluster {c['cluster']}",
            "",
            f"{c['documents']:,} documents {_origin(c)}; mean scores "
            + ", ".join(f"{k} {v:.2f}" for k, v in c["mean_scores"].items())
            + ".",
            "",
            "Top terms: " + ", ".join(f"{t} ({s:.3f})" for t, s in c["top_terms"]),
            "",
        ]
        if c.get("source_mix"):
            lines.append(
                "Source mix (evaluation only): "
                + ", ".join(f"{s} {v:.0%}" for s, v in list(c["source_mix"].items())[:6])
                + f"; purity {c['purity']:.2f}"
            )
            lines.append("")
        for s in c["snippets"]:
            lines.append(f"> `{s['id']}`: {s['text']}")
            lines.append(">")
        if c["snippets"]:
            lines.pop()
    return lines


def _quality_lines(q: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Quality scores",
        "",
        f"Scorer driving pruning: `{q['scorer']}`. Mean per scorer: "
        + ", ".join(f"{k} {v:.2f}" for k, v in q["mean"].items())
        + ".",
        "",
        "```json",
        json.dumps(q["notes"], indent=1, default=str),
        "```",
        "",
    ]


def map_rows(n: int, seed: int) -> np.ndarray:
    """The seeded rows (ascending) of the documents drawn on the map."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, MAP_POINTS), replace=False))


def plot_map(points: np.ndarray, labels: np.ndarray, k: int, seed: int, path: Path) -> None:
    """PCA of the sampled documents' embeddings `points`, coloured by final cluster `labels`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    pick = np.arange(len(points))
    pca = PCA(n_components=2, random_state=seed).fit(points) if len(pick) >= 2 else None
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    if pca is not None:
        xy = pca.transform(points)
        lab = labels
        size = 24 if len(pick) < 1000 else 6
        pruned = lab < 0
        if pruned.any():
            ax.scatter(xy[pruned, 0], xy[pruned, 1], s=size / 2, c="#c8c8c8", linewidths=0, label="pruned")
        cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "gist_ncar")
        colors = [cmap(i) for i in range(k)] if k <= 20 else list(cmap(np.linspace(0.02, 0.95, k)))
        for c in range(k):
            sel = lab == c
            if not sel.any():
                continue
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colors[c], linewidths=0, label=f"{c}")
            # label at the middle of the cluster's points as drawn (inside the axes)
            cx, cy = np.median(xy[sel], axis=0)
            ax.annotate(
                str(c),
                (cx, cy),
                fontsize=10,
                weight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0},
            )
        ax.legend(
            loc="best",
            fontsize=7,
            markerscale=1.5,
            ncol=2 if k > 10 else 1,
            title="cluster",
            title_fontsize=8,
            framealpha=0.8,
        )
    ax.set_title(f"{k} clusters, PCA of {len(pick):,} documents (grey: pruned)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_report(
    rep: dict[str, Any],
    folder: Path,
    *,
    points: tuple[np.ndarray, np.ndarray] | None,
    n_clusters: int,
    seed: int,
) -> list[Path]:
    """report.json, report.md and, when there are embeddings to project (`points`: the map's
    sampled documents and their final clusters), map.png."""
    folder.mkdir(parents=True, exist_ok=True)
    md, js, png = folder / "report.md", folder / "report.json", folder / "map.png"
    js.write_text(json.dumps(_jsonable(rep), indent=1, sort_keys=False) + "\n")
    md.write_text(render_markdown(rep))
    if points is None:
        return [md, js]
    plot_map(points[0], points[1], n_clusters, seed, png)
    return [md, js, png]
