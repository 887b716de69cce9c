"""`ridge` and `ridge_sqrt`: linear predictors (RegMix's linear baseline, Liu et al. 2024).

`ridge_sqrt` fits on sqrt(weights), which bends the response like diminishing returns. Both are
the simplest candidates, so they win ties.
"""

from __future__ import annotations

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS

RIDGE_ALPHAS = np.logspace(-4, 3, 15)


@PREDICTORS.register("ridge")
class RidgePredictor:
    """Ridge on the weights; alpha by efficient leave-one-out over RIDGE_ALPHAS."""

    name = "ridge"
    simplicity = 0
    sqrt = False

    def __init__(self, cfg: PredictorConfig | None = None, seed: int = 0):
        pass

    def _features(self, X: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(X, 0, None)) if self.sqrt else X

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgePredictor:
        from sklearn.linear_model import RidgeCV

        self.model = RidgeCV(alphas=RIDGE_ALPHAS).fit(self._features(X), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._features(X)), dtype=np.float64)


@PREDICTORS.register("ridge_sqrt")
class RidgeSqrtPredictor(RidgePredictor):
    """Ridge on sqrt(weights)."""

    name = "ridge_sqrt"
    simplicity = 1
    sqrt = True
