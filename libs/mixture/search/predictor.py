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
  fitted by regularised least squares;
- `mixing_law_components` (off by default): one such law per target component (the validation
  text, each task), Huber loss, several starts, summed with the target's weights;
- `gp`: a Gaussian process with a noise term, a predictor with a std;
- `ngram` and `ngram_gp`: the n-gram estimate (`mixture.search.ngram`: the target's
  log-probability under a bigram model of the mixture's tokens, no parameters fitted to the runs)
  on a line, and that line plus a `gp` on what it leaves.

Every candidate is scored on the same k folds by the Spearman correlation of its pooled
out-of-fold predictions with the observed scores (what the search needs: a ranking), and the MAE.
Ties are broken explicitly: the higher Spearman rounded to 3 decimals wins, then the lower MAE,
then the simpler model (ridge, ridge_sqrt, mixing_law, lightgbm). A constant prediction has no
ranking and counts as Spearman 0.

The candidates are registered in `mixture.registry.PREDICTORS`, one module each in
`mixture.search.predictors` (a class taking `(cfg, seed)` with `fit`, `predict`, `name` and a
`simplicity` rank for ties); `search.predictor.candidates` names them. Two optional parts: a class
with `uses_components = True` is fitted as `fit(X, y, components=...)` when the runs recorded
their target components (each component's share of the score: `components[c] = weight_c /
sum(weights) * value_c`, higher is better as `evaluate` records it, so they add up to y); a
predictor with `predict_std(X)` (the std of its predicted mean) gives the acquisition rule its
uncertainty (`mixture.search.acquisition`); a class with `uses_estimate = True` is fitted as
`fit(X, y, estimate=...)` with the search's n-gram estimate (a function of the mixtures), and is
left out of the candidates when the search has none.

Scores are "higher is better" throughout (see evaluate.py: the score of a bpb target is -bpb).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS


class Predictor(Protocol):
    name: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> Predictor: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


Components = dict[str, np.ndarray]  # per target component, its share of the score per row
Estimate = Callable[[np.ndarray], np.ndarray]  # mixtures -> a score estimate fitted to no run (ngram.py)


def make(name: str, cfg: PredictorConfig, seed: int = 0) -> Predictor:
    """A new, unfitted predictor of the registered kind `name` (`mixture.search.predictors`)."""
    return PREDICTORS.get(name)(cfg, seed)


def one_blas_thread():
    """A context in which BLAS runs on one thread: the fits here are tiny, and threaded BLAS
    makes scipy's optimisers (the gp's L-BFGS-B) 20x slower on a busy machine (measured)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fit_one(
    name: str,
    cfg: PredictorConfig,
    seed: int,
    X: np.ndarray,
    y: np.ndarray,
    components: Components | None = None,
    estimate: Estimate | None = None,
) -> Predictor:
    """`make(name).fit(...)`, with the components or the estimate for a predictor that uses them."""
    model = make(name, cfg, seed)
    if components and getattr(model, "uses_components", False):
        return model.fit(X, y, components=components)  # type: ignore[call-arg]
    if getattr(model, "uses_estimate", False):
        if estimate is None:
            raise ValueError(f"predictor {name} needs the search's n-gram estimate (search.ngram)")
        return model.fit(X, y, estimate=estimate)  # type: ignore[call-arg]
    return model.fit(X, y)


def usable(names: list[str], estimate: Estimate | None) -> list[str]:
    """The candidates that can be fitted: those needing an estimate only when there is one."""
    return [n for n in names if estimate is not None or not getattr(PREDICTORS.get(n), "uses_estimate", False)]


def check_components(y: np.ndarray, components: Components | None) -> Components | None:
    """The components as float arrays; ValueError when they do not add up to y row by row."""
    if not components:
        return None
    out = {c: np.asarray(v, dtype=np.float64) for c, v in components.items()}
    if any(v.shape != y.shape for v in out.values()):
        raise ValueError(f"every component needs one value per row ({len(y)})")
    gap = float(np.max(np.abs(sum(out.values()) - y)))
    if not gap <= 1e-6 * max(1.0, float(np.max(np.abs(y)))):
        raise ValueError(f"the components do not add up to the score (largest gap {gap:.3g})")
    return out


def simplicity(name: str) -> int:
    """Tie-break rank among predictors with equal CV scores: lower is simpler."""
    return int(getattr(PREDICTORS.get(name), "simplicity", 100))


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


def cross_validate(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    cfg: PredictorConfig,
    seed: int = 0,
    components: Components | None = None,
    estimate: Estimate | None = None,
) -> CVResult:
    """Pooled out-of-fold predictions of one predictor: their Spearman with y and their MAE."""
    oof = np.empty(len(y), dtype=np.float64)
    parts = folds(len(y), cfg.cv_folds, seed)
    with one_blas_thread():
        for held in parts:
            train = np.setdiff1d(np.arange(len(y)), held)
            comps = {c: v[train] for c, v in components.items()} if components else None
            oof[held] = fit_one(name, cfg, seed, X[train], y[train], comps, estimate).predict(X[held])
    return CVResult(name, spearman(oof, y), float(np.mean(np.abs(oof - y))), len(parts), oof.tolist())


def selection_key(r: CVResult) -> tuple:
    """Sort key, best first: higher Spearman (3 decimals), lower MAE, simpler model."""
    return (-round(r.spearman, 3), round(r.mae, 9), simplicity(r.name))


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
        return {"chosen": self.chosen, "order": self.order, "cv": {n: r.summary() for n, r in self.cv.items()}}


def fit_select(
    X: np.ndarray,
    y: np.ndarray,
    cfg: PredictorConfig,
    seed: int = 0,
    components: Components | None = None,
    estimate: Estimate | None = None,
) -> Fitted:
    """Cross-validate every configured candidate, pick the best and fit it (and the runner-up)
    on all rows. `components`: the score's parts per row (see the module docstring), for the
    predictors that fit them; `estimate`: the n-gram estimate, for those that use it."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) < 3:
        raise ValueError(f"a predictor needs at least 3 observed mixtures, got {len(y)}")
    comps = check_components(y, components)
    names = usable(cfg.candidates, estimate)
    if not names:
        raise ValueError(f"predictor.candidates {cfg.candidates} all need the n-gram estimate; this search has none")
    with one_blas_thread():
        cv = {name: cross_validate(name, X, y, cfg, seed, comps, estimate) for name in names}
        order = choose(cv)
        model = fit_one(order[0], cfg, seed, X, y, comps, estimate)
        runner_up = fit_one(order[1], cfg, seed, X, y, comps, estimate) if len(order) > 1 else None
    return Fitted(order[0], model, runner_up, cv, order)
