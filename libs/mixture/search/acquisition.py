"""Which candidate mixtures an iteration >= 1 trains: the acquisition rule (`search.acquisition`).

- `top_random` (the default; CLIMB, Diao et al. 2025, Sec. 3.2): a random subset of the
  predictor's top `search.top_n` candidates. It ignores how sure the predictor is. With
  `min_distance` > 0 (the default) a pick within `min_distance` of an earlier pick or of a
  trained mixture gives its place to the next-ranked candidate far enough from both
  (`spread_subset`; the same picks as the paper's when none is that near). Without it, a
  predictor whose top N sit in one corner spends an iteration on copies of one mixture
  (bench/RESULTS.md: 3 of 19 benchmark searches trained 3-9 mixtures within 0.02 of a mixture
  trained before them).
- `ei`: expected improvement (Jones et al. 1998) over the best predicted score of an observed
  mixture (predicted, not observed: with seed noise the best observed score is biased upwards):
  EI = (m - best - xi) Phi(z) + s phi(z), z = (m - best - xi) / s.
- `ucb`: upper confidence bound (Srinivas et al. 2010), m + beta * s.

m is the chosen predictor's mean, s the std of that mean: the chosen predictor's own when it has
`predict_std` (the `gp`), else a `gp` fitted on the same runs (said in the report). The batch is
picked one at a time: after each pick the GP is conditioned on a pseudo-observation of the pick
at its predicted mean ("kriging believer", Ginsbourger et al. 2010: the mean stays, the std near
the pick shrinks), and candidates closer than `min_distance` (Hellinger distance, 0-1) to a pick
are skipped, so the batch spreads instead of being N copies of one point.
"""

from __future__ import annotations

import numpy as np

from mixture.config import PredictorConfig
from mixture.config.search import AcquisitionConfig
from mixture.search.sampler import pairwise_hellinger


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI of each candidate over `best` (higher is better); max(m - best - xi, 0) where std is 0."""
    from scipy.stats import norm

    gain = mean - best - xi
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, gain / std, 0.0)
        ei = gain * norm.cdf(z) + std * norm.pdf(z)
    return np.where(std > 0, ei, np.maximum(gain, 0.0))


def value(acfg: AcquisitionConfig, mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    if acfg.rule == "ei":
        return expected_improvement(mean, std, best, acfg.ei_xi)
    if acfg.rule == "ucb":
        return mean + acfg.ucb_beta * std
    raise ValueError(f"acquisition rule {acfg.rule!r} picks no candidates one at a time")


def pick(acfg: AcquisitionConfig, C: np.ndarray, mean: np.ndarray, posterior, best: float, n: int) -> dict:
    """n candidate rows of C, one at a time by the acquisition value; `posterior` has `var` (over
    C) and `condition(j)` (gp.Posterior). Returns the picks and, per pick, its value and std."""
    taken = np.zeros(len(C), dtype=bool)
    near = np.zeros(len(C), dtype=bool)
    picks, values, stds, relaxed = [], [], [], 0
    for _ in range(min(n, len(C))):
        std = np.sqrt(posterior.var)
        a = value(acfg, mean, std, best)
        blocked = taken | near
        if blocked.all():  # every candidate left is near a pick: the distance gives way
            blocked, relaxed = taken, relaxed + 1
        a = np.where(blocked, -np.inf, a)
        j = int(np.argmax(a))  # the first of equal values: deterministic
        picks.append(j)
        values.append(float(a[j]))
        stds.append(float(std[j]))
        taken[j] = True
        if acfg.min_distance > 0:
            near |= pairwise_hellinger(C, C[[j]])[:, 0] < acfg.min_distance
        posterior.condition(j)
    return {"picks": np.array(picks, dtype=np.int64), "values": values, "stds": stds, "relaxed": relaxed}


def spread_subset(
    rng: np.random.Generator, order: np.ndarray, C: np.ndarray, X: np.ndarray, n: int, top_n: int, min_distance: float
) -> tuple[np.ndarray, dict]:
    """`top_random`'s n rows of C: the paper's random subset of the top max(top_n, n) of `order`
    (C's rows, best first), in rank order, where a pick within `min_distance` (Hellinger) of an
    earlier pick or of a trained mixture (rows of X) gives its place to the next-ranked candidate
    far enough from both; when none is left, the skipped ones in rank order (the distance gives
    way). With no pick that near, the same rows as the plain subset (the same draw)."""
    top = order[: max(top_n, n)]
    chosen = rng.choice(top, size=n, replace=False) if len(top) > n else top
    plain = top[np.isin(top, chosen)]  # the random subset, in rank order
    rest = order[~np.isin(order, plain)]
    taken: list[int] = []
    skipped: list[int] = []
    for j in map(int, np.concatenate([plain, rest])):
        if len(taken) == n:
            break
        before = np.vstack([X, C[taken]]) if taken else X
        if len(before) and pairwise_hellinger(C[[j]], before).min() < min_distance:
            skipped.append(j)
            continue
        taken.append(j)
    relaxed = n - len(taken)
    taken += skipped[:relaxed]
    rank = np.full(len(C), len(C), dtype=np.int64)
    rank[order] = np.arange(len(order))
    picks = np.array(sorted(taken, key=lambda j: rank[j]), dtype=np.int64)
    report = {
        "rule": "top_random",
        "min_distance": min_distance,
        "replaced": int(np.sum(~np.isin(picks, plain))),
        "beyond_top_n": int(np.sum(~np.isin(picks, top))),
        "distance_relaxed": relaxed,
    }
    return picks, report


class FixedStd:
    """The posterior of a predictor that has `predict_std` but no `posterior`: its std, not
    shrunk by picks (the distance rule alone spreads the batch)."""

    def __init__(self, model, C: np.ndarray):
        self.var = np.asarray(model.predict_std(C), dtype=np.float64) ** 2

    def condition(self, j: int) -> None:
        pass


def posterior_for(fitted, C: np.ndarray, X: np.ndarray, y: np.ndarray, pcfg: PredictorConfig, seed: int):
    """The std the rule uses over C, and where it comes from: the chosen predictor's when it has
    one, else a `gp` fitted on the same runs."""
    from mixture.search import predictor as pred

    if hasattr(fitted.model, "posterior"):
        return fitted.model.posterior(C), fitted.chosen
    if hasattr(fitted.model, "predict_std"):
        return FixedStd(fitted.model, C), fitted.chosen
    gp = pred.make("gp", pcfg, seed).fit(X, y)
    return gp.posterior(C), f"gp (the chosen {fitted.chosen} has no std)"  # type: ignore[attr-defined]


def choose(
    acfg: AcquisitionConfig,
    fitted,
    C: np.ndarray,
    C_pred: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    pcfg,
    seed: int,
    n: int,
) -> tuple[np.ndarray | None, dict]:
    """The rows of C to train by `acfg.rule`, with a report; (None, report with the reason) when
    no std can be had, and the caller falls back to `top_random`."""
    from mixture.search.predictor import one_blas_thread

    with one_blas_thread():
        try:
            posterior, source = posterior_for(fitted, C, X, y, pcfg, seed)
        except (ValueError, np.linalg.LinAlgError) as err:
            return None, {"rule": "top_random", "asked": acfg.rule, "reason": f"no std for {acfg.rule}: {err}"}
        best = float(np.max(fitted.predict(X)))
        out = pick(acfg, C, C_pred, posterior, best, n)
    report = {
        "rule": acfg.rule,
        "std_from": source,
        "best_predicted_observed": best,
        "picked_value": out["values"],
        "picked_std": out["stds"],
        "min_distance": acfg.min_distance,
        "distance_relaxed": out["relaxed"],
    }
    if acfg.rule == "ucb":
        report["ucb_beta"] = acfg.ucb_beta
    return out["picks"], report
