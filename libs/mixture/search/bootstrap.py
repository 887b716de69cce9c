"""CLIMB's iterative bootstrapping as pure functions: which mixtures to try next, which to keep.

Diao et al. (2025), Sec. 3.2: iteration 1 trains proxies on mixtures sampled from the Dirichlet
prior (sampler.py); iteration k fits the predictor on every run so far, scores many sampled
candidate mixtures (the paper: 100,000), keeps the top N and trains a random subset of them (the
paper: 64, 32, 16 runs, 4:2:1). The final mixture is the predictor's best candidate, or the mean of
its top-k candidates as in RegMix (Liu et al., 2024: top-128 of 100,000), or (`search.final`) a
trained mixture: the best observed, or the one the predictor fits best.

Three choices here go beyond the paper, each because of what was measured with 16-30 CPU proxies:
- the predictor is chosen per iteration by cross-validation (predictor.py), not fixed to LightGBM;
- the final mixture falls back to the best observed one when the chosen predictor's CV Spearman is
  below `predictor.min_spearman`, or when the predictor itself does not rank the predicted mixture
  above the best observed one (predictor-chosen mixtures lost to the best observed random mixture
  at larger scale when the predictor was weak);
- the final choice is made only among candidates near the trained mixtures (`search.trust_region`,
  `trusted`): cross-validation measures how well the predictor interpolates between runs, and a
  linear predictor's top-k mean otherwise lands on a vertex no run was near.
A share `search.local_frac` of the candidates is drawn around the best observed mixtures instead of
around the prior, so that later iterations refine where the runs were good (0 reproduces the
paper's global-only candidates). `search.acquisition.rule` (acquisition.py) can replace the
paper's random subset of the top N by expected improvement or an upper confidence bound (off by
default). When every run recorded its target components (evaluate.py), the predictors that fit
them get each component's share of the score (`contributions`).

Scores are higher-is-better (evaluate.py). Nothing here reads files or trains models: the
objective is whatever produced the observations, which is what lets tests run the whole search on
a cheap synthetic function with a known optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixture.config import SearchConfig
from mixture.search import acquisition
from mixture.search import predictor as pred
from mixture.search.sampler import mixture_keys, pairwise_hellinger, quantize, sample_mixtures

# seeds of the random streams, so that no two decisions share one
STREAM_FINAL = 1_000_003


def rng_for(seed: int, iteration: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(iteration)])


@dataclass
class Observations:
    """Unique mixtures with their mean score over seeds (the predictor's training rows)."""

    X: np.ndarray  # [m, k] weights
    y: np.ndarray  # [m] mean score, higher is better
    run_ids: list[list[str]]  # the runs behind each row
    excluded: list[dict]  # runs left out, with the reason
    # the mean of each target component (evaluate.py, higher is better) per row, when every run has them
    components: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def best(self) -> int:
        return int(np.argmax(self.y))


def observe(runs: list[dict], names: list[str], floor: float) -> Observations:
    """Group finished runs by mixture (seeds of one mixture are averaged, their components too)."""
    rows: dict[bytes, dict] = {}
    excluded = []
    for r in sorted(runs, key=lambda r: r["run_id"]):
        score = r.get("score")
        if score is None or not np.isfinite(score):
            excluded.append({"run_id": r["run_id"], "reason": r.get("error") or "non-finite score"})
            continue
        w = np.array([r["mixture"].get(c, 0.0) for c in names], dtype=np.float64)
        key = mixture_keys(w, floor)[0]
        row = rows.setdefault(key, {"w": w, "scores": [], "ids": []})
        row["scores"].append(float(score))
        row["ids"].append(r["run_id"])
        row.setdefault("components", []).append(r.get("components") or {})
    if not rows:
        return Observations(np.zeros((0, len(names))), np.zeros(0), [], excluded)
    X = np.stack([v["w"] for v in rows.values()])
    y = np.array([np.mean(v["scores"]) for v in rows.values()])
    return Observations(X, y, [v["ids"] for v in rows.values()], excluded, _mean_components(list(rows.values())))


def _mean_components(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per component, its mean over each row's runs; none unless every run has the same finite ones."""
    every = [c for row in rows for c in row["components"]]
    names = sorted(every[0]) if every else []
    if not names or any(sorted(c) != names or not all(np.isfinite(list(c.values()))) for c in every):
        return {}
    return {n: np.array([np.mean([c[n] for c in row["components"]]) for row in rows]) for n in names}


def contributions(scfg: SearchConfig, obs: Observations) -> dict[str, np.ndarray] | None:
    """Each component's share of the score (`search.target.weights`, 1 when not named), or None
    when the runs recorded no components or their shares do not add up to the scores."""
    if not obs.components:
        return None
    w = {c: float(scfg.target.weights.get(c, 1.0)) for c in obs.components}
    total = sum(w.values())
    if total <= 0:
        return None
    shares = {c: w[c] / total * v for c, v in obs.components.items()}
    return shares if np.allclose(sum(shares.values()), obs.y, rtol=0, atol=1e-6) else None


def fit_predictor(
    scfg: SearchConfig, obs: Observations, seed: int, estimate: pred.Estimate | None = None
) -> pred.Fitted:
    """`predictor.fit_select` on the observations (with their components, when they add up, and
    the search's n-gram estimate, when it has one)."""
    return pred.fit_select(obs.X, obs.y, scfg.predictor, seed, contributions(scfg, obs), estimate)


def sampler_args(scfg: SearchConfig) -> dict[str, Any]:
    """The sampler's settings from the search's config (`sampler.sample_mixtures`)."""
    return dict(
        temperature=scfg.temperature,
        concentration=scfg.concentration,
        epoch_cap=scfg.epoch_cap,
        floor=scfg.weight_floor,
    )


def candidates(
    scfg: SearchConfig, prior: np.ndarray, rng: np.random.Generator, obs: Observations, exclude: set[bytes]
) -> np.ndarray:
    """`search.candidates` mixtures: most around the prior (the paper), `local_frac` of them
    around the best observed mixtures."""
    n_local = int(round(scfg.candidates * scfg.local_frac)) if len(obs) else 0
    kw = sampler_args(scfg)
    C = sample_mixtures(rng, prior, scfg.candidates - n_local, exclude=exclude, **kw)
    if n_local:
        top = np.argsort(-obs.y, kind="stable")[: max(1, min(len(obs), scfg.local_top))]
        seen = exclude | set(mixture_keys(C, scfg.weight_floor))
        C = np.concatenate([C, sample_mixtures(rng, prior, n_local, exclude=seen, center=obs.X[top], **kw)])
    return C


# A cheaper fidelity re-ranking the predictor's order: (candidates, order) -> (order, report)
# (`mixture.search.experts.screener`: merged cluster experts)
Screen = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, dict]]


MIN_FIT_RUNS = 3  # observed mixtures a predictor is fitted to, at least


def fits_predictor(iteration: int, observed: int) -> bool:
    """Whether `propose` fits a predictor in `iteration` (0-based) with `observed` mixtures: the
    first iteration, and any with too few, sample the prior."""
    return iteration > 0 and observed >= MIN_FIT_RUNS


def propose(
    scfg: SearchConfig,
    prior: np.ndarray,
    iteration: int,
    obs: Observations,
    seed: int,
    screen: Screen | None = None,
    estimate: pred.Estimate | None = None,
) -> tuple[np.ndarray, dict]:
    """The mixtures to train in `iteration` (0-based) and a report of how they were chosen;
    `screen` re-ranks the predictor's top candidates before the top N are drawn from; `estimate`
    (`mixture.search.ngram`) is there for the predictors that use it."""
    n = scfg.iterations[iteration]
    rng = rng_for(seed, iteration)
    exclude = set(mixture_keys(obs.X, scfg.weight_floor)) if len(obs) else set()
    if not fits_predictor(iteration, len(obs)):
        W = sample_mixtures(rng, prior, n, exclude=exclude, **sampler_args(scfg))
        why = (
            "the first iteration samples the prior"
            if iteration == 0
            else f"only {len(obs)} observed mixtures: too few to fit a predictor"
        )
        return W, {"iteration": iteration, "method": "random", "reason": why, "observed": len(obs)}
    fitted = fit_predictor(scfg, obs, seed, estimate)
    C = candidates(scfg, prior, rng, obs, exclude)
    C_pred = fitted.predict(C)
    order = fitted.rank(C, C_pred)
    screened = None
    if screen is not None:
        order, screened = screen(C, order)
    top = order[: max(scfg.top_n, n)]
    picked, acquired = _select(scfg, fitted, C, C_pred, obs, seed, n)
    if picked is None:  # top_random: the paper's random subset of the top N, no pick a copy of another
        picked, acquired = acquisition.spread_subset(rng, order, C, obs.X, n, scfg.top_n, scfg.acquisition.min_distance)
    report = {
        "iteration": iteration,
        "method": "predicted",
        "observed": len(obs),
        "predictor": fitted.report(),
        "acquisition": acquired,
        "candidates": int(len(C)),
        "top_n": int(len(top)),
        "oof": {name: r.oof for name, r in fitted.cv.items()},
        "y": obs.y.tolist(),
        "top": [
            {"rank": i, "predicted": float(C_pred[r]), "weights": C[r].tolist()}
            for i, r in enumerate(top[: min(len(top), 20)])
        ],
        "picked_predicted": [float(C_pred[r]) for r in picked],
        "top_n_threshold": float(C_pred[top[-1]]),  # the N-th best candidate's prediction
        "best_observed_predicted": float(fitted.predict(obs.X[[obs.best()]])[0]),
        "best_observed_score": float(obs.y[obs.best()]),
    }
    if screened is not None:
        report["screen"] = screened
    return C[picked], report


def _select(scfg: SearchConfig, fitted, C, C_pred, obs: Observations, seed: int, n: int) -> tuple[Any, dict]:
    """The candidates picked by `search.acquisition.rule`, in pick order, and how; (None, report)
    for `top_random`, whose draw is the caller's (it shares the iteration's random stream)."""
    acfg = scfg.acquisition
    if acfg.rule == "top_random":
        return None, {"rule": "top_random"}
    return acquisition.choose(acfg, fitted, C, C_pred, obs.X, obs.y, scfg.predictor, seed, n)


def final(
    scfg: SearchConfig,
    prior: np.ndarray,
    obs: Observations,
    seed: int,
    screen: Screen | None = None,
    estimate: pred.Estimate | None = None,
) -> dict:
    """The search's answer: the predicted best (or top-k mean) mixture, or the best observed one
    when the predictor cannot be trusted to beat it. Weights are a vector in the clusters' order."""
    if len(obs) == 0:
        raise ValueError("no finished proxy run with a finite score: nothing to choose from")
    b = obs.best()
    best_observed = {"weights": obs.X[b].tolist(), "score": float(obs.y[b]), "run_ids": obs.run_ids[b]}
    if len(obs) < MIN_FIT_RUNS:
        return _observed(best_observed, f"only {len(obs)} observed mixtures: too few to fit a predictor", None)
    fitted = fit_predictor(scfg, obs, seed, estimate)
    if scfg.final in OBSERVED_FINALS:
        return observed_final(scfg, obs, fitted, best_observed)
    C, region = final_candidates(scfg, prior, obs, seed)
    if not len(C):
        why = f"no candidate within the trust region (radius {region['radius']:.3f})"
        return {**_observed(best_observed, why, fitted.report()), "trust_region": region}
    order, screened = screen(C, fitted.rank(C)) if screen is not None else (fitted.rank(C), None)
    w = pick(scfg.final, scfg, prior, C, order, obs.X, region)
    predicted = float(fitted.predict(w[None])[0])
    predicted_best_observed = float(fitted.predict(obs.X[[b]])[0])
    out = {
        "predicted": predicted,
        "best_observed": {**best_observed, "predicted": predicted_best_observed},
        "predictor": fitted.report(),
        "candidates": int(len(C)),
        "top_k": scfg.top_k if scfg.final == "top_mean" else 1,
        "oof": {name: r.oof for name, r in fitted.cv.items()},
        "y": obs.y.tolist(),
        **({"trust_region": region} if region else {}),
        **({"screen": screened} if screened is not None else {}),
    }
    reason = _distrust(scfg, fitted, predicted, predicted_best_observed)
    if reason:
        return {
            **out,
            "weights": obs.X[b].tolist(),
            "method": "best_observed",
            "reason": reason,
            "predicted_mixture": w.tolist(),
        }
    cv_spearman = fitted.cv[fitted.chosen].spearman
    return {
        **out,
        "weights": w.tolist(),
        "method": scfg.final,
        "reason": f"{fitted.chosen} (CV Spearman {cv_spearman:.2f}) ranks it above the best observed",
    }


# final choices among the trained mixtures only (no candidate is ranked)
OBSERVED_FINALS = ("best_observed", "best_fitted")


def best_fitted_index(fitted, obs: Observations) -> int:
    """The trained mixture the predictor fits best (`final: best_fitted` and the playoff's
    `best_fitted` finalist): a fit across neighbouring runs discounts one run's lucky seed."""
    return int(np.argmax(fitted.predict(obs.X)))


def observed_final(scfg: SearchConfig, obs: Observations, fitted, best_observed: dict) -> dict:
    """A trained mixture as the final one: the best mean score (`best_observed`, what best-of-N
    random search picks), or the best score the chosen predictor fits to the trained mixtures
    (`best_fitted`: a fit across neighbouring runs discounts one run's lucky seed), unless the
    predictor's CV Spearman is below `predictor.min_spearman`: then its fit is no guide."""
    fit = fitted.predict(obs.X)
    cv_spearman = fitted.cv[fitted.chosen].spearman
    b, final = obs.best(), scfg.final
    if final == "best_observed":
        i, reason = b, f"the best score of {len(obs)} trained mixtures"
    elif cv_spearman < scfg.predictor.min_spearman:
        final, i = "best_observed", b
        reason = f"the chosen predictor ({fitted.chosen}) has CV Spearman {cv_spearman:.2f}: its fit is no guide"
    else:
        i = best_fitted_index(fitted, obs)
        reason = (
            f"{fitted.chosen}'s best fit among {len(obs)} trained mixtures ({fit[i]:.4f}; "
            f"scored {obs.y[i]:.4f}, the best score {obs.y.max():.4f})"
        )
    return {
        "weights": obs.X[i].tolist(),
        "method": final,
        "predicted": float(fit[i]),
        "reason": reason,
        "best_observed": best_observed,
        "predictor": fitted.report(),
        "oof": {name: r.oof for name, r in fitted.cv.items()},
        "y": obs.y.tolist(),
    }


def _observed(best_observed: dict, reason: str, predictor: dict | None) -> dict:
    """The best observed mixture as the final one, with why, when no prediction is made."""
    return {
        "weights": best_observed["weights"],
        "method": "best_observed",
        "predicted": None,
        "reason": reason,
        "best_observed": best_observed,
        "predictor": predictor,
    }


def nearest_distance(C: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Hellinger distance of each row of C to its nearest row of X."""
    return pairwise_hellinger(C, X).min(axis=1)


def trusted(scale: float, C: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, dict]:
    """The candidates within `scale` x the median nearest-neighbour distance between the trained
    mixtures X of one of them: how far leave-one-out cross-validation asked the predictor to reach.
    A predictor that ranks held-out runs well need not rank far corners of the simplex (a linear
    fit's best is a vertex). scale 0: every candidate, no report."""
    if scale <= 0 or len(X) < 2:
        return C, {}
    pair = pairwise_hellinger(X, X)
    np.fill_diagonal(pair, np.inf)
    radius = float(scale * np.median(pair.min(axis=1)))
    keep = nearest_distance(C, X) <= radius
    return C[keep], {"radius": radius, "scale": scale, "kept": int(keep.sum()), "of": int(len(keep))}


def final_candidates(scfg: SearchConfig, prior: np.ndarray, obs: Observations, seed: int) -> tuple[np.ndarray, dict]:
    """The candidates the final choice ranks (its own random stream), within the trust region."""
    C = candidates(scfg, prior, rng_for(seed, STREAM_FINAL), obs, exclude=set())
    return trusted(scfg.trust_region, C, obs.X)


def pick(
    final: str, scfg: SearchConfig, prior: np.ndarray, C: np.ndarray, order: np.ndarray, X: np.ndarray, region: dict
) -> np.ndarray:
    """The best candidate (`final: best`), or the mean of the top k (quantised when that keeps it
    within the cap); a mean outside the trust region gives way to the best candidate, inside it."""
    if final == "best":
        return C[order[0]]
    w = C[order[: scfg.top_k]].mean(axis=0)
    q = quantize(w, scfg.weight_floor)[0]
    # the mean of capped mixtures is capped; rounding may cross a cap by one unit: keep it exact then
    w = q if (q <= scfg.epoch_cap * prior / prior.sum() + 1e-12).all() else w / w.sum()
    return C[order[0]] if region and nearest_distance(w[None], X)[0] > region["radius"] else w


def _distrust(scfg: SearchConfig, fitted, predicted: float, predicted_best_observed: float) -> str | None:
    """Why the predicted mixture is not taken over the best observed one, or None."""
    cv_spearman = fitted.cv[fitted.chosen].spearman
    if cv_spearman < scfg.predictor.min_spearman:
        return (
            f"the chosen predictor ({fitted.chosen}) has CV Spearman {cv_spearman:.2f} "
            f"< predictor.min_spearman {scfg.predictor.min_spearman}"
        )
    if predicted <= predicted_best_observed:
        return (
            f"{fitted.chosen} predicts {predicted:.4f} for its {scfg.final} mixture, not above "
            f"{predicted_best_observed:.4f} for the best observed one"
        )
    return None


def run_search(
    scfg: SearchConfig,
    prior: np.ndarray,
    objective: Callable[[np.ndarray, int], Any],
    seed: int = 0,
    estimate: pred.Estimate | None = None,
) -> tuple[dict, Observations, list[dict]]:
    """The whole search in one process against `objective(weights, seed)`, which returns the score
    or a run's {"score", "components"} (tests and benchmarks; the pipeline runs the same
    propose/final through steps.py with real proxies)."""
    names = [f"c{i:02d}" for i in range(len(prior))]
    runs: list[dict] = []
    reports = []
    for it in range(len(scfg.iterations)):
        obs = observe(runs, names, scfg.weight_floor)
        W, report = propose(scfg, prior, it, obs, seed, estimate=estimate)
        reports.append(report)
        for j, w in enumerate(W):
            for s in range(scfg.seeds):
                out = objective(w, seed + s)
                result = dict(out) if isinstance(out, dict) else {"score": float(out)}
                runs.append({"run_id": f"it{it}-{j:03d}-s{s}", "mixture": dict(zip(names, w.tolist())), **result})
    obs = observe(runs, names, scfg.weight_floor)
    return final(scfg, prior, obs, seed, estimate=estimate), obs, reports
