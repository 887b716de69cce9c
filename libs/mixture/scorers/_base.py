"""What the quality scorers share: the paper's 1-5 scale, the error a scorer raises, what a
scorer is given and the class every registered scorer derives from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from mixture.config import QualityConfig
    from mixture.dataset import Dataset

log = logging.getLogger("mixture.scorers")

SCALE_MIN, SCALE_MAX = 1.0, 5.0


class QualityError(RuntimeError):
    """A scorer was asked for but cannot run; the message says what is missing."""


def to_scale(p: np.ndarray) -> np.ndarray:
    """A value in [0, 1] (a desirability or a probability) onto the paper's 1-5 scale."""
    return (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * np.clip(p, 0.0, 1.0)).astype(np.float32)


@dataclass
class ScoreInputs:
    """Everything a scorer may read: the quality config, the seed, the unit-norm embeddings `x`
    of the documents `ids` (in that order), their curated columns `meta` (q_* signals), and the
    committed `curated` and `embeddings` datasets. `chosen`: this scorer drives the pruning."""

    cfg: QualityConfig
    seed: int
    x: np.ndarray
    meta: pa.Table
    ids: list[str]
    curated: Dataset
    embeddings: Dataset
    chosen: bool = False


class Scorer:
    """A registered quality scorer (used as a class, never instantiated). `run` returns the 1-5
    scores of every document (float32, in `ids` order) and a note for the report, or (None, note)
    when the scorer does not apply; it raises QualityError when it is `chosen` but cannot run."""

    order: int = 100

    @staticmethod
    def run(inp: ScoreInputs) -> tuple[np.ndarray | None, Any]:
        raise NotImplementedError
