"""`ngram` and `ngram_gp`: predictors built on the n-gram estimate (`mixture.search.ngram`).

The estimate e(w) is the target's mean log-probability under a bigram model of mixture w's tokens,
computed from counts before any proxy trains. `ngram` fits only its scale: score = a + b * e(w),
b >= 0 (least squares; a negative slope would say that fitting the target's bigrams hurts, which
is noise, so it is clipped to 0 and the prediction is constant: no ranking, a Spearman of at
most 0 in the cross-validation). `ngram_gp` adds a Gaussian process (the `gp` predictor, sqrt
weights, a noise term) fitted to what the line leaves, so it learns from the runs where the
counts are wrong; its std is that GP's, so the acquisition rules can use it.

Both need the estimate: `predictor.fit_select` passes it to a predictor whose class says
`uses_estimate = True`, and leaves such predictors out when the search has none (a target of tasks
only, `search.ngram.enabled: false`, the synthetic objective).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS


@PREDICTORS.register("ngram")
class NgramPredictor:
    name = "ngram"
    simplicity = 3
    uses_estimate = True

    def __init__(self, cfg: PredictorConfig | None = None, seed: int = 0):
        self.cfg = cfg or PredictorConfig()
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, estimate: Callable[[np.ndarray], np.ndarray]) -> NgramPredictor:
        self.estimate = estimate
        e, y = estimate(X), np.asarray(y, dtype=np.float64)
        var = float(np.var(e))
        self.b = max(0.0, float(np.mean((e - e.mean()) * (y - y.mean()))) / var) if var > 0 else 0.0
        self.a = float(y.mean() - self.b * e.mean())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.a + self.b * self.estimate(X)


@PREDICTORS.register("ngram_gp")
class NgramGPPredictor(NgramPredictor):
    name = "ngram_gp"
    simplicity = 6

    def fit(self, X: np.ndarray, y: np.ndarray, estimate: Callable[[np.ndarray], np.ndarray]) -> NgramGPPredictor:
        from mixture.search.predictors.gp import GPPredictor

        super().fit(X, y, estimate)
        self.residual = GPPredictor(self.cfg, self.seed).fit(X, np.asarray(y) - super().predict(X))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return super().predict(X) + self.residual.predict(X)

    def predict_std(self, X: np.ndarray) -> np.ndarray:
        return self.residual.predict_std(X)

    def posterior(self, C: np.ndarray):
        return self.residual.posterior(C)
