"""Per-document quality scores on CLIMB's 1-5 scale, the basis for pruning clusters.

CLIMB (Diao et al., NVIDIA 2025, cluster pruning) scores every document with fastText quality
classifiers (1-5), averages the scores per k-means cluster and drops clusters below 3.0. Every
scorer that applies runs and is stored per document (`score_*` columns of `assignments.parquet`);
`cluster.quality.scorer` names the one that drives pruning.

Modules: one per scorer, registered in `mixture.registry.QUALITY_SCORERS`: `heuristic` (from the
curated q_* signals and the filter limits the corpus was curated with), `classifier` (a
reference-vs-corpus classifier on the embeddings, the DCLM recipe) and `fasttext` (a fastText
model file); `_base` holds what they share (the 1-5 scale, the `Scorer` class). Adding a scorer
is one new module with a `Scorer` subclass registered under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixture.cluster.scorers._base import (
    SCALE_MAX,
    SCALE_MIN,
    BatchScorer,
    QualityError,
    ScoreBatch,
    Scorer,
    ScoreSetup,
    to_scale,
)
from mixture.curate import documents
from mixture.registry import QUALITY_SCORERS

if TYPE_CHECKING:
    import pyarrow as pa

    from mixture.config import ClusterConfig
    from mixture.dataset import Dataset

__all__ = [
    "SCALE_MAX",
    "SCALE_MIN",
    "BatchScorer",
    "QualityError",
    "ScoreBatch",
    "ScoreSetup",
    "Scorer",
    "Scores",
    "Scoring",
    "compute_scores",
    "open_scorers",
    "to_scale",
]


@dataclass
class Scores:
    by_name: dict[str, np.ndarray]  # scorer -> float32 [n]
    notes: dict[str, object]  # what each scorer used, for the report


class Scoring:
    """The scorers that apply, opened once; `score(batch)` gives every one's scores of a batch,
    `notes()` what each used (after the last batch)."""

    def __init__(self, chosen: str, scorers: dict[str, BatchScorer], skipped: dict[str, Any], order: list[str]):
        self.chosen, self.scorers, self.skipped, self.order = chosen, scorers, skipped, order

    @property
    def names(self) -> list[str]:
        return sorted(self.scorers)

    @property
    def needs_text(self) -> bool:
        return any(QUALITY_SCORERS.get(n).needs_text for n in self.scorers)

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        return {name: s.score(batch) for name, s in self.scorers.items()}

    def notes(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.order:
            note = self.scorers[name].note() if name in self.scorers else self.skipped.get(name)
            if note is not None:
                out[name] = note
        return out


def open_scorers(cfg: ClusterConfig, setup: ScoreSetup) -> Scoring:
    """Every registered scorer that applies, in their `order` (`setup.chosen` is set per scorer).
    Raises QualityError when the configured `cluster.quality.scorer` does not apply."""
    qcfg = cfg.quality
    names = sorted(QUALITY_SCORERS.names(), key=lambda n: (QUALITY_SCORERS.get(n).order, n))
    scorers: dict[str, BatchScorer] = {}
    skipped: dict[str, Any] = {}
    for name in names:
        setup.chosen = qcfg.scorer == name
        scorer, note = QUALITY_SCORERS.get(name).open(setup)
        if scorer is not None:
            scorers[name] = scorer
        else:
            skipped[name] = note
    if qcfg.scorer not in scorers:
        raise QualityError(f"cluster.quality.scorer={qcfg.scorer!r} produced no scores")
    return Scoring(qcfg.scorer, scorers, skipped, names)


def compute_scores(
    cfg: ClusterConfig, seed: int, x: np.ndarray, meta: pa.Table, curated: Dataset, embeddings: Dataset | None
) -> Scores:
    """Every scorer that applies, on documents in memory as one batch (the user's groups; the
    k-means stage streams batches through `open_scorers` instead): rows of the unit-norm
    embeddings `x` (d = 0 without), curated columns `meta` (with `text` when a scorer needs it)."""
    setup = ScoreSetup(
        cfg.quality,
        seed,
        len(meta),
        list(meta.column_names),
        curated,
        embeddings,
        (lambda rows: x[rows]) if x.shape[1] else None,
    )
    scoring = open_scorers(cfg, setup)
    rows = documents.BATCH_ROWS
    texts = (
        documents.iter_blocks(curated, ["text"], rows)
        if scoring.needs_text and "text" not in meta.column_names
        else None
    )
    parts: dict[str, list[np.ndarray]] = {name: [] for name in scoring.names}
    for start in range(0, len(meta), rows):
        batch = meta.slice(start, rows)
        if texts is not None:  # the curated order, as `meta` is
            batch = batch.append_column("text", next(texts).column("text"))
        for name, values in scoring.score(ScoreBatch(start, x[start : start + rows], batch)).items():
            parts[name].append(values)
    by_name = {n: np.concatenate(v) if v else np.zeros(0, np.float32) for n, v in parts.items()}
    return Scores(by_name, scoring.notes())
