"""`lightgbm`: the paper's regressor (CLIMB, Diao et al. 2025; RegMix, Liu et al. 2024).

max_depth 4, learning rate 0.01, 1000 rounds, early stopping after 20 rounds, reg_alpha =
reg_lambda = 1, min_child_samples 5 (all from `search.predictor`). Early stopping uses an inner 20%
holdout of the training rows, then the model is refitted on all of them with the rounds it found.
"""

from __future__ import annotations

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS


@PREDICTORS.register("lightgbm")
class LightGBMPredictor:
    name = "lightgbm"
    simplicity = 3

    def __init__(self, cfg: PredictorConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.rounds: int | None = None

    def _params(self, rounds: int) -> dict:
        c = self.cfg
        return dict(
            objective="regression",
            max_depth=c.max_depth,
            learning_rate=c.learning_rate,
            n_estimators=rounds,
            reg_alpha=c.reg_alpha,
            reg_lambda=c.reg_lambda,
            min_child_samples=c.min_child_samples,
            min_data_in_bin=c.min_data_in_bin,
            num_leaves=2**c.max_depth,
            random_state=self.seed,
            n_jobs=1,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )

    def fit(self, X: np.ndarray, y: np.ndarray) -> LightGBMPredictor:
        import lightgbm as lgb

        rounds = self.cfg.n_estimators
        n = len(y)
        # Early stopping needs rows the trees do not see; with fewer than 10 rows there are too
        # few to spare, and the configured rounds run in full.
        if self.cfg.early_stopping_rounds and n >= 10:
            perm = np.random.default_rng(self.seed).permutation(n)
            n_val = max(2, n // 5)
            va, tr = perm[:n_val], perm[n_val:]
            probe = lgb.LGBMRegressor(**self._params(rounds))
            probe.fit(
                X[tr],
                y[tr],
                eval_X=(X[va],),
                eval_y=(y[va],),
                callbacks=[lgb.early_stopping(self.cfg.early_stopping_rounds, verbose=False)],
            )
            rounds = max(1, int(probe.best_iteration_ or rounds))
        self.rounds = rounds
        self.model = lgb.LGBMRegressor(**self._params(rounds)).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(X), dtype=np.float64)
