"""`climb baselines`: the search's mixture against the usual alternatives, at transfer scale.

CLIMB (Diao et al., 2025, Table 2) compares its mixture with random mixing, RegMix and DoReMi by
training larger models on each and evaluating them on the target. Here, under the same proxy
budget as the search (sum(search.iterations) proxy runs of search.proxy):

  natural         the clusters' token shares (what concatenating ClimbLab gives)
  uniform         equal weights
  best_of_random  the whole budget on random prior mixtures (sampler.py), the best observed one
  regmix          RegMix (Liu et al., 2024): the same random runs in one round, LightGBM, the mean
                  of the top 128 of `search.candidates` simulated mixtures
  climb           the committed search's mixture.json

The random runs reuse the search's first iteration (the same sampler with the same seed) and add
random mixtures up to the budget. Every method's mixture is then trained with the larger
`search.transfer_proxy` and, for reference, with `search.proxy`, `search.transfer_seeds` times
each (the same seeds for every method), and evaluated on the target. The table reports the mean
and standard deviation of the score (higher is better) and of each target metric, and each
method's difference to CLIMB. The `baselines` stage (`mixture.stages.baselines`) commits them as the
dataset `<output_root>/baselines` (runs/, results.json, table.md, weights.png) and logs an MLflow
run in the search's experiment.
"""

from __future__ import annotations

import logging

import numpy as np

from mixture.config import Config
from mixture.search import bootstrap, steps
from mixture.search import predictor as pred
from mixture.search.sampler import quantize, sample_mixtures

log = logging.getLogger(__name__)

METHODS = ("natural", "uniform", "best_of_random", "regmix", "climb")
REGMIX_TOP_K = 128  # RegMix: the mean of the top-128 simulated mixtures
STREAM_POOL = 2_000_003


def _job(kind: str, index: int, mixture: dict[str, float], seed: int, section: str, iteration: int = -1) -> dict:
    rid = steps.run_id(0, index, mixture, seed).replace("it0-", f"{kind}-", 1)
    return {
        "run_id": rid,
        "iteration": iteration,
        "index": index,
        "mixture": mixture,
        "seed": seed,
        "proxy_section": section,
    }


def random_pool_jobs(cfg: Config, names: list[str], prior: np.ndarray, search_runs: list[dict]) -> list[dict]:
    """The random-mixture runs that best-of-random and RegMix share: the search's first
    iteration plus new random mixtures up to the search's whole budget (in mixtures)."""
    first = sorted({r["run_id"]: r for r in search_runs if r["iteration"] == 0}.values(), key=lambda r: r["run_id"])
    budget = sum(cfg.search.iterations)
    have = {tuple(r["mixture"][c] for c in names) for r in first}
    extra = budget - len(have)
    jobs = []
    if extra > 0:
        from mixture.search.sampler import mixture_keys

        exclude = set(mixture_keys(np.array(sorted(have)), cfg.search.weight_floor)) if have else set()
        W = sample_mixtures(
            bootstrap.rng_for(cfg.seed, STREAM_POOL),
            prior,
            extra,
            temperature=cfg.search.temperature,
            concentration=cfg.search.concentration,
            epoch_cap=cfg.search.epoch_cap,
            floor=cfg.search.weight_floor,
            exclude=exclude,
        )
        for j, w in enumerate(W):
            mixture = dict(zip(names, [float(x) for x in w]))
            for s in range(cfg.search.seeds):
                jobs.append(_job("pool", j, mixture, cfg.seed + s, "proxy"))
    return jobs


def regmix_mixture(cfg: Config, prior: np.ndarray, obs: bootstrap.Observations) -> tuple[np.ndarray, dict]:
    model = pred.make("lightgbm", cfg.search.predictor, cfg.seed).fit(obs.X, obs.y)
    cv = pred.cross_validate("lightgbm", obs.X, obs.y, cfg.search.predictor, cfg.seed)
    C = sample_mixtures(
        bootstrap.rng_for(cfg.seed, STREAM_POOL + 1),
        prior,
        cfg.search.candidates,
        temperature=cfg.search.temperature,
        concentration=cfg.search.concentration,
        epoch_cap=cfg.search.epoch_cap,
        floor=cfg.search.weight_floor,
    )
    p = model.predict(C)
    top = np.lexsort((np.arange(len(C)), -p))[:REGMIX_TOP_K]
    w = quantize(C[top].mean(axis=0), cfg.search.weight_floor)[0]
    return w, {"cv_spearman": cv.spearman, "cv_mae": cv.mae, "predicted": float(model.predict(w[None])[0])}


def _stats(values: list[float]) -> dict:
    a = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(a):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def _fmt(s: dict, digits: int = 4) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"


def table(results: dict) -> str:
    metric = results["metric"]
    climb = results["methods"]["climb"]["transfer"]["score"]["mean"]
    lines = [
        f"| method | transfer score | transfer {metric} | proxy score | Δ score vs climb | largest weights |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for m in METHODS:
        r = results["methods"][m]
        t = r["transfer"]
        delta = "-" if m == "climb" or t["score"]["mean"] is None else f"{t['score']['mean'] - climb:+.4f}"
        top = sorted(r["weights"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(
            f"| {m} | {_fmt(t['score'])} | {_fmt(t.get(metric, {'mean': None}))} | "
            f"{_fmt(r['proxy']['score'])} | {delta} | " + ", ".join(f"{c} {w:.2f}" for c, w in top) + " |"
        )
    ranked = sorted(METHODS, key=lambda m: -(results["methods"][m]["transfer"]["score"]["mean"] or -np.inf))
    lines.append("")
    lines.append(
        f"transfer proxy {results['transfer_proxy']['preset']} ({results['transfer_proxy']['tokens']:,} "
        f"tokens), proxy {results['proxy']['preset']} ({results['proxy']['tokens']:,} tokens), "
        f"{results['transfer_seeds']} seeds each; random pool {results['pool_runs']} proxy runs; "
        f"RegMix LightGBM CV Spearman {results['regmix']['cv_spearman']:.2f}; "
        f"search: {results['search']['method']} via {results['search']['predictor']}."
    )
    lines.append(f"ranking at transfer scale (score, higher is better): {' > '.join(ranked)}")
    return "\n".join(lines)


def pool_jobs_and_mixtures(
    cfg: Config, names: list[str], prior: np.ndarray, search_runs: list[dict], search_mixture: dict, run_jobs
) -> tuple[list[dict], dict, dict, bootstrap.Observations]:
    """The random pool (the search's first iteration plus new random runs, trained with
    `run_jobs(jobs, desc)`) and every method's mixture."""
    pool = [r for r in search_runs if r["iteration"] == 0]
    pool += run_jobs(random_pool_jobs(cfg, names, prior, search_runs), "baselines: random pool")
    obs = bootstrap.observe(pool, names, cfg.search.weight_floor)
    regmix_w, regmix_info = regmix_mixture(cfg, prior, obs)
    mixtures = {
        "natural": prior,
        "uniform": np.full(len(names), 1.0 / len(names)),
        "best_of_random": obs.X[obs.best()],
        "regmix": regmix_w,
        "climb": np.array([search_mixture["weights"][c] for c in names]),
    }
    return pool, mixtures, regmix_info, obs


def transfer_jobs(cfg: Config, names: list[str], mixtures: dict[str, np.ndarray]) -> list[dict]:
    """Every method's mixture at proxy and at transfer scale, the same seeds for all, scored on
    the target's report part (`search.target.report_share`: the part no method selected on)."""
    split = {"target_split": "report"} if cfg.search.target.report_share > 0 else {}
    jobs = []
    for m in METHODS:
        mixture = dict(zip(names, [float(x) for x in mixtures[m] / mixtures[m].sum()]))
        for s in range(cfg.search.transfer_seeds):
            for section in ("proxy", "transfer_proxy"):
                jobs.append(
                    {
                        **_job(
                            f"{m}-{'transfer' if section == 'transfer_proxy' else 'proxy'}",
                            0,
                            mixture,
                            cfg.seed + s,
                            section,
                        ),
                        "method": m,
                        **split,
                    }
                )
    return jobs


def method_entry(runs: list[dict], method: str) -> dict:
    """One method's weights and score statistics at proxy and at transfer scale."""
    mine = [r for r in runs if r["method"] == method]
    entry = {"weights": mine[0]["mixture"]}
    for scale, section in (("proxy", "proxy"), ("transfer", "transfer_proxy")):
        rs = [r for r in mine if r["proxy_section"] == section]
        keys = sorted({k for r in rs for k in r.get("metrics", {})})
        entry[scale] = {
            "score": _stats([r["score"] for r in rs]),
            **{k: _stats([r["metrics"].get(k) for r in rs]) for k in keys},
            "run_ids": [r["run_id"] for r in rs],
        }
    return entry


def results_record(
    cfg: Config,
    finished: list[dict],
    pool: list[dict],
    obs: bootstrap.Observations,
    regmix_info: dict,
    search_mixture: dict,
) -> dict:
    """results.json: every method's statistics and whether CLIMB beat each baseline."""
    best = obs.best()
    results: dict = {
        "metric": f"val.{cfg.search.target.metric}" if cfg.search.target.val_uris else "score",
        "pool_runs": len(pool),
        "transfer_seeds": cfg.search.transfer_seeds,
        "proxy": cfg.search.proxy.model_dump(mode="json"),
        "transfer_proxy": cfg.search.transfer_proxy.model_dump(mode="json"),
        "regmix": regmix_info,
        "best_of_random": {"score": float(obs.y[best]), "run_ids": obs.run_ids[best]},
        "search": {
            "method": search_mixture["method"],
            "predictor": search_mixture.get("predictor"),
            "cv_spearman": search_mixture.get("cv_spearman"),
        },
        "methods": {m: method_entry(finished, m) for m in METHODS},
    }
    transfer = {m: results["methods"][m]["transfer"]["score"]["mean"] for m in METHODS}
    results["transfer_score"] = transfer
    results["climb_beats_every_baseline"] = all(
        transfer["climb"] is not None and (transfer[m] is None or transfer["climb"] > transfer[m])
        for m in METHODS
        if m != "climb"
    )
    return results
