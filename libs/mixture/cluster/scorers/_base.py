"""What the quality scorers share: the paper's 1-5 scale, the error a scorer raises, what a
scorer is given and the class every registered scorer derives from."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from mixture.config import QualityConfig
    from mixture.dataset import Dataset

log = logging.getLogger("mixture.cluster.scorers")

SCALE_MIN, SCALE_MAX = 1.0, 5.0


class QualityError(RuntimeError):
    """A scorer was asked for but cannot run; the message says what is missing."""


def to_scale(p: np.ndarray) -> np.ndarray:
    """A value in [0, 1] (a desirability or a probability) onto the paper's 1-5 scale."""
    return (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * np.clip(p, 0.0, 1.0)).astype(np.float32)


@dataclass
class ScoreSetup:
    """What a scorer may read once, before the batches: the quality config, the seed, the number
    of documents `n`, the curated column names, the committed `curated` and `embeddings`
    datasets, and `sample(rows)`: the unit-norm embeddings of the given row numbers (ascending),
    read shard by shard (None without embeddings). `chosen`: this scorer drives the pruning."""

    cfg: QualityConfig
    seed: int
    n: int
    columns: list[str]
    curated: Dataset
    embeddings: Dataset | None
    sample: Callable[[np.ndarray], np.ndarray] | None
    chosen: bool = False


@dataclass
class ScoreBatch:
    """Consecutive documents: the row number of the first, their unit-norm embeddings `x`
    ([b, d]; d = 0 without embeddings) and their curated columns `meta` (q_* signals; `text`
    when a scorer asks for it)."""

    start: int
    x: np.ndarray
    meta: pa.Table


class BatchScorer(Protocol):
    def score(self, batch: ScoreBatch) -> np.ndarray:
        """float32 1-5 scores of the batch's documents, in order."""
        ...

    def note(self) -> Any:
        """What the scorer used, for the report (after the last batch)."""
        ...


class Scorer:
    """A registered quality scorer (used as a class, never instantiated). `open` returns a
    `BatchScorer` that scores the corpus batch by batch (whatever it fits, e.g. a classifier on a
    sample, happens in `open`), or (None, note) when the scorer does not apply; it raises
    QualityError when it is `chosen` but cannot run. `needs_text`: its batches carry `text`."""

    order: int = 100
    needs_text: bool = False

    @staticmethod
    def open(setup: ScoreSetup) -> tuple[BatchScorer | None, Any]:
        raise NotImplementedError
