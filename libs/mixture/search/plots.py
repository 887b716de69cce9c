"""Figures of a search (PNG bytes, matplotlib's Agg backend; no display needed).

- `scatter`: a predictor's cross-validated predictions against the observed scores, the figure
  behind the Spearman that chose it;
- `weights`: mixtures side by side per cluster (the prior, the final mixture, the best observed);
- `progress`: every run's score by iteration with the best so far.
"""

from __future__ import annotations

import io as _io

import numpy as np


def _figure(w: float = 6.0, h: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(w, h), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def scatter(actual: list[float], predicted: list[float], title: str) -> bytes:
    plt, fig, ax = _figure(4.5, 4.5)
    a, p = np.asarray(actual), np.asarray(predicted)
    ax.scatter(a, p, s=18, alpha=0.8)
    if len(a):
        lo, hi = float(min(a.min(), p.min())), float(max(a.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("observed score (higher is better)")
    ax.set_ylabel("predicted (out of fold)")
    ax.set_title(title, fontsize=9)
    return _png(plt, fig)


def weights(names: list[str], series: dict[str, list[float]], title: str = "mixture weights") -> bytes:
    plt, fig, ax = _figure(max(6.0, 0.35 * len(names) * max(1, len(series))), 4.0)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, w) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, w, width, label=label)
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("weight")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def progress(scores_by_iteration: list[list[float]]) -> bytes:
    plt, fig, ax = _figure()
    best = -np.inf
    xs, bests = [], []
    for i, scores in enumerate(scores_by_iteration):
        ax.scatter(np.full(len(scores), i + 1) + np.linspace(-0.15, 0.15, len(scores)), scores, s=12, alpha=0.7)
        if scores:
            best = max(best, max(scores))
        xs.append(i + 1)
        bests.append(best)
    ax.plot(xs, bests, color="black", lw=1.5, label="best so far")
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("score (higher is better)")
    ax.legend(fontsize=8)
    return _png(plt, fig)
