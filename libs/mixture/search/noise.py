"""Seed noise at proxy scale: the pooled sd of mixtures trained with several seeds, what it says
about the observed runs (how many are within the noise of the best), and the ceiling it puts on
any predictor's rank of single-run scores (`rank_ceiling`). The playoff records it
(`mixture.search.playoff.record`); bench/proxy_noise.py measures it on a search's runs."""

from __future__ import annotations

import math

import numpy as np

from mixture.config import SearchConfig
from mixture.search import bootstrap
from mixture.search.sampler import mixture_keys


def pooled_sd(groups: list[list[float]]) -> tuple[float | None, int]:
    """The pooled within-group standard deviation and its degrees of freedom (groups of one add
    nothing); None when no group has two values."""
    ss, df = 0.0, 0
    for g in groups:
        a = np.asarray([v for v in g if v is not None and np.isfinite(v)], dtype=np.float64)
        if len(a) >= 2:
            ss += float(((a - a.mean()) ** 2).sum())
            df += len(a) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def rank_ceiling(score_var: float, noise_sd: float) -> float:
    """About the best Spearman any predictor can reach against single-run scores of variance
    `score_var` whose seed noise has sd `noise_sd`: the correlation of one seed's scores with the
    noise-free ones, sqrt(signal^2 / (signal^2 + noise^2)), signal^2 = score_var - noise^2 (0 when
    the noise is all the variance there is)."""
    signal2 = score_var - noise_sd**2
    return math.sqrt(signal2 / score_var) if signal2 > 0 else 0.0


def proxy_noise(
    scfg: SearchConfig, names: list[str], search_runs: list[dict], anchors: list[dict], obs: bootstrap.Observations
) -> dict:
    """Seed noise at proxy scale: the pooled sd over every mixture with two or more finished runs
    (the anchors and any search mixture run with several seeds), the anchors' scores, how many
    observed mixtures lie within noise_z standard errors of the best observed, and the rank ceiling
    that noise puts on any predictor of the observed scores (`rank_ceiling`)."""
    groups: dict[bytes, list[float]] = {}
    for r in search_runs + anchors:
        if r.get("score") is not None and np.isfinite(r["score"]):
            w = np.array([r["mixture"].get(c, 0.0) for c in names])
            groups.setdefault(mixture_keys(w, scfg.weight_floor)[0], []).append(float(r["score"]))
    sd, df = pooled_sd(list(groups.values()))
    out: dict = {"sd": sd, "df": df, "anchors": {}}
    for name in ("natural", "best_observed"):
        mine = [r for r in anchors if r.get("anchor") == name]
        if mine:
            w = np.array([mine[0]["mixture"].get(c, 0.0) for c in names])
            scores = groups.get(mixture_keys(w, scfg.weight_floor)[0], [])
            out["anchors"][name] = {"scores": scores, "mean": float(np.mean(scores)) if scores else None}
    if sd is not None and len(obs):
        b, z = obs.best(), scfg.playoff.noise_z
        n = [len(ids) for ids in obs.run_ids]
        out["within_noise_of_best_observed"] = sum(
            1 for i in range(len(obs)) if i != b and obs.y[b] - obs.y[i] <= z * sd * math.sqrt(1 / n[b] + 1 / n[i])
        )
        if len(obs) > 2:
            out["rank_ceiling"] = rank_ceiling(float(np.var(obs.y, ddof=1)), sd)
    return out
