"""How the clusters line up with the documents' `source` labels: purity and normalised mutual
information (NMI, arithmetic normalisation, as scikit-learn computes it), per document or from
(cluster x label) count tables gathered while streaming.

Evaluation only: the labels never influence a clustering decision (the project contract: a
label never drives a decision unless the config names it as the grouping field). The k-means
report (`mixture.cluster.report`) gives both the k-means and the final clusters' figures.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


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
