"""Predictors of a proxy's target score from its mixture weights, and how one is chosen.

CLIMB (Diao et al., 2025) and RegMix (Liu et al., 2024) fit LightGBM on (mixture weights -> proxy
score) with max_depth 4, learning rate 0.01, 1000 rounds, early stopping after 20 rounds,
reg_alpha = reg_lambda = 1 and min_child_samples 5; CLIMB reports a Spearman of 0.94 between its
predictions and real scores at 64-112 runs. With the 16-30 runs a CPU demo affords, trees at those
settings barely split (measured here: leave-one-out Spearman 0.19-0.53, four distinct outputs at 16
runs), so the predictor is *chosen* every time it is fitted, by cross-validation among:

- `lightgbm`: the paper's regressor (its settings from the config; early stopping on an inner 20%
  holdout of the training rows, then a refit on all of them with the rounds it found);
- `ridge`: ridge regression on the weights (RegMix's linear baseline), alpha by efficient LOO;
- `ridge_sqrt`: ridge on sqrt(weights), which bends the response like diminishing returns;
- `mixing_law`: the data-mixing law of Ye et al. (2024), score = c + k * exp(sum_j t_j w_j),
  fitted by regularised least squares.

Every candidate is scored on the same k folds by the Spearman correlation of its pooled
out-of-fold predictions with the observed scores (what the search needs: a ranking), and the MAE.
Ties are broken explicitly: the higher Spearman rounded to 3 decimals wins, then the lower MAE,
then the simpler model (ridge, ridge_sqrt, mixing_law, lightgbm). A constant prediction has no
ranking and counts as Spearman 0.

Scores are "higher is better" throughout (see evaluate.py: the score of a bpb target is -bpb).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from mixture.config import PredictorConfig

SIMPLICITY = {"ridge": 0, "ridge_sqrt": 1, "mixing_law": 2, "lightgbm": 3}
RIDGE_ALPHAS = np.logspace(-4, 3, 15)


class Predictor(Protocol):
    name: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Predictor": ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


class LightGBMPredictor:
    name = "lightgbm"

    def __init__(self, cfg: PredictorConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.rounds: int | None = None

    def _params(self, rounds: int) -> dict:
        c = self.cfg
        return dict(objective="regression", max_depth=c.max_depth, learning_rate=c.learning_rate,
                    n_estimators=rounds, reg_alpha=c.reg_alpha, reg_lambda=c.reg_lambda,
                    min_child_samples=c.min_child_samples, min_data_in_bin=c.min_data_in_bin,
                    num_leaves=2 ** c.max_depth, random_state=self.seed, n_jobs=1, deterministic=True,
                    force_row_wise=True, verbose=-1)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LightGBMPredictor":
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
            probe.fit(X[tr], y[tr], eval_X=(X[va],), eval_y=(y[va],),
                      callbacks=[lgb.early_stopping(self.cfg.early_stopping_rounds, verbose=False)])
            rounds = max(1, int(probe.best_iteration_ or rounds))
        self.rounds = rounds
        self.model = lgb.LGBMRegressor(**self._params(rounds)).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(X), dtype=np.float64)


class RidgePredictor:
    def __init__(self, sqrt: bool = False):
        self.sqrt = sqrt
        self.name = "ridge_sqrt" if sqrt else "ridge"

    def _features(self, X: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(X, 0, None)) if self.sqrt else X

    def fit(self, X: np.ndarray, y: np.ndarray) -> "RidgePredictor":
        from sklearn.linear_model import RidgeCV

        self.model = RidgeCV(alphas=RIDGE_ALPHAS).fit(self._features(X), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._features(X)), dtype=np.float64)


class MixingLawPredictor:
    """score = c + k * exp(t . w) (Ye et al., 2024, "Data Mixing Laws"), on standardised scores.
    k's sign is not known in advance (a loss falls, a score rises): both are fitted and the
    better fit kept. An L2 penalty on t and on log|k| keeps the fit sane with fewer runs than
    parameters (penalising t alone lets a huge k with a tiny t interpolate the runs linearly); the
    Jacobian is analytic (finite differences over ~20 weights cost 100x more)."""
    name = "mixing_law"

    def __init__(self, l2: float = 1.0):
        self.l2 = l2

    @staticmethod
    def _exp(p: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.exp(np.clip(p[1] + X @ p[2:], -50, 50))

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MixingLawPredictor":
        from scipy.optimize import least_squares

        self.mu, self.sd = float(np.mean(y)), float(np.std(y)) or 1.0
        z = (y - self.mu) / self.sd
        n, k = X.shape
        reg = math.sqrt(self.l2)
        best = None
        for sign in (1.0, -1.0):
            def residuals(p, sign=sign):
                return np.concatenate([p[0] + sign * self._exp(p, X) - z, reg * p[1:]])

            def jacobian(p, sign=sign):
                e = sign * self._exp(p, X)
                top = np.column_stack([np.ones(n), e, e[:, None] * X])
                bottom = np.column_stack([np.zeros((k + 1, 1)), reg * np.eye(k + 1)])
                return np.vstack([top, bottom])

            p0 = np.concatenate([[z.mean() - sign, 0.0], np.zeros(k)])
            res = least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=500)
            if best is None or res.cost < best[0]:
                best = (res.cost, sign, res.x)
        _, self.sign, self.p = best
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.p[0] + self.sign * self._exp(self.p, X)) * self.sd + self.mu


def make(name: str, cfg: PredictorConfig, seed: int = 0) -> Predictor:
    if name == "lightgbm":
        return LightGBMPredictor(cfg, seed)
    if name == "ridge":
        return RidgePredictor(sqrt=False)
    if name == "ridge_sqrt":
        return RidgePredictor(sqrt=True)
    if name == "mixing_law":
        return MixingLawPredictor()
    raise ValueError(f"unknown predictor {name!r}; known: {sorted(SIMPLICITY)}")


# ------------------------------------------------------------------------- cross-validation
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    r = spearmanr(a, b).statistic
    return 0.0 if not np.isfinite(r) else float(r)


@dataclass
class CVResult:
    name: str
    spearman: float
    mae: float
    folds: int
    oof: list[float] = field(repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("oof")
        return d


def folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """k shuffled folds of range(n) (leave-one-out when n <= k)."""
    k = min(k, n)
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i::k] for i in range(k)]


def cross_validate(name: str, X: np.ndarray, y: np.ndarray, cfg: PredictorConfig,
                   seed: int = 0) -> CVResult:
    """Pooled out-of-fold predictions of one predictor: their Spearman with y and their MAE."""
    oof = np.empty(len(y), dtype=np.float64)
    parts = folds(len(y), cfg.cv_folds, seed)
    for held in parts:
        train = np.setdiff1d(np.arange(len(y)), held)
        oof[held] = make(name, cfg, seed).fit(X[train], y[train]).predict(X[held])
    return CVResult(name, spearman(oof, y), float(np.mean(np.abs(oof - y))), len(parts), oof.tolist())


def selection_key(r: CVResult) -> tuple:
    """Sort key, best first: higher Spearman (3 decimals), lower MAE, simpler model."""
    return (-round(r.spearman, 3), round(r.mae, 9), SIMPLICITY[r.name])


def choose(results: dict[str, CVResult]) -> list[str]:
    """The candidates' names, best first."""
    return [r.name for r in sorted(results.values(), key=selection_key)]


@dataclass
class Fitted:
    """The chosen predictor fitted on all rows, the runner-up (its tie-breaker) and the CV report."""
    chosen: str
    model: Predictor
    runner_up: Predictor | None
    cv: dict[str, CVResult]
    order: list[str]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(X)

    def rank(self, X: np.ndarray, primary: np.ndarray | None = None) -> np.ndarray:
        """Row indices of X, best predicted first. Trees predict a few distinct values at small
        sample sizes, so equal predictions are ordered by the runner-up predictor, then by row.
        `primary`: this predictor's predictions for X, when already computed."""
        primary = self.model.predict(X) if primary is None else primary
        secondary = self.runner_up.predict(X) if self.runner_up is not None else np.zeros(len(X))
        return np.lexsort((np.arange(len(X)), -secondary, -primary))

    def report(self) -> dict:
        return {"chosen": self.chosen, "order": self.order,
                "cv": {n: r.summary() for n, r in self.cv.items()}}


def fit_select(X: np.ndarray, y: np.ndarray, cfg: PredictorConfig, seed: int = 0) -> Fitted:
    """Cross-validate every configured candidate, pick the best and fit it (and the runner-up)
    on all rows."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) < 3:
        raise ValueError(f"a predictor needs at least 3 observed mixtures, got {len(y)}")
    cv = {name: cross_validate(name, X, y, cfg, seed) for name in cfg.candidates}
    order = choose(cv)
    model = make(order[0], cfg, seed).fit(X, y)
    runner_up = make(order[1], cfg, seed).fit(X, y) if len(order) > 1 else None
    return Fitted(order[0], model, runner_up, cv, order)
