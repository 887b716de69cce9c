"""Per-document quality scores on CLIMB's 1-5 scale, the basis for pruning clusters.

CLIMB (Diao et al., NVIDIA 2025, cluster pruning) scores every document with fastText quality
classifiers (1-5), averages the scores per k-means cluster and drops clusters below 3.0. Each
scorer is one module here, registered in `mixture.registry.QUALITY_SCORERS`: `heuristic` (from
the curated q_* signals and the filter limits the corpus was curated with), `classifier` (a
reference-vs-corpus classifier on the embeddings, the DCLM recipe) and `fasttext` (a fastText
model file). Every scorer that applies runs and is stored per document (`score_*` columns of
`assignments.parquet`); `cluster.quality.scorer` names the one that drives pruning. Adding a
scorer is one new module with a `Scorer` subclass registered under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mixture.registry import QUALITY_SCORERS
from mixture.scorers._base import SCALE_MAX, SCALE_MIN, QualityError, ScoreInputs, Scorer, to_scale

if TYPE_CHECKING:
    import pyarrow as pa

    from mixture.config import ClusterConfig
    from mixture.dataset import Dataset

__all__ = ["SCALE_MAX", "SCALE_MIN", "QualityError", "ScoreInputs", "Scorer", "Scores", "compute_scores", "to_scale"]


@dataclass
class Scores:
    by_name: dict[str, np.ndarray]  # scorer -> float32 [n]
    notes: dict[str, object]  # what each scorer used, for the report


def compute_scores(
    cfg: ClusterConfig, seed: int, x: np.ndarray, meta: pa.Table, ids: list[str], curated: Dataset, embeddings: Dataset
) -> Scores:
    """Every registered scorer that applies, in their `order`: the 1-5 scores of the documents
    `ids` (rows of the unit-norm embeddings `x`, curated columns `meta`), and notes. Raises
    QualityError when the configured `cluster.quality.scorer` produced no scores."""
    qcfg = cfg.quality
    by_name: dict[str, np.ndarray] = {}
    notes: dict[str, object] = {}
    names = sorted(QUALITY_SCORERS.names(), key=lambda n: (QUALITY_SCORERS.get(n).order, n))
    for name in names:
        inp = ScoreInputs(qcfg, seed, x, meta, ids, curated, embeddings, chosen=qcfg.scorer == name)
        scores, note = QUALITY_SCORERS.get(name).run(inp)
        if scores is not None:
            by_name[name] = scores
        if note is not None:
            notes[name] = note
    if qcfg.scorer not in by_name:
        raise QualityError(f"cluster.quality.scorer={qcfg.scorer!r} produced no scores")
    return Scores(by_name, notes)
