"""The quality scorers' old home, kept as re-exports until `cluster.py` imports from
`mixture.scorers` (one module per scorer, registered in `mixture.registry.QUALITY_SCORERS`)."""
from __future__ import annotations

from mixture.scorers import SCALE_MAX, SCALE_MIN, QualityError, Scores, compute_scores, to_scale
from mixture.scorers.classifier import ReferenceClassifier, read_reference_texts
from mixture.scorers.fasttext import POSITIVE_LABELS, FastTextScorer, fasttext_available, fasttext_label_scores
from mixture.scorers.heuristic import HEURISTIC_SIGNALS, HeuristicResult, Ramp, heuristic_scores, heuristic_table

__all__ = ["HEURISTIC_SIGNALS", "POSITIVE_LABELS", "SCALE_MAX", "SCALE_MIN", "FastTextScorer", "HeuristicResult",
           "QualityError", "Ramp", "ReferenceClassifier", "Scores", "compute_scores", "fasttext_available",
           "fasttext_label_scores", "heuristic_scores", "heuristic_table", "read_reference_texts", "to_scale"]
