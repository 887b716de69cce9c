"""The search's logic on a synthetic objective with a known optimum, against the alternatives.

    .venv/bin/python bench/search_synthetic.py [--problems 10] [--clusters 10] [--budget 16,8,6]
        [--objective hellinger|components] [--variants climb,climb+gp,...]

For each problem (a random token prior over K clusters and a random optimum inside the caps; the
objective is calibrated like the CPU proxies measured here: score spread 0.33 over random
mixtures, seed noise 0.08), the same budget of noisy evaluations goes to
  climb          the iterative search (bootstrap.run_search, the pipeline's code)
  climb-local    the same with half of the candidates drawn around the best observed mixtures
  climb+gp       `gp` added to the predictor's candidates
  climb+mlc      `mixing_law_components` added to the candidates
  climb+ei       acquisition by expected improvement (std from the gp)
  climb+ucb      acquisition by an upper confidence bound (beta 2)
  climb+gp+ei, climb+gp+ucb, climb+all   the combinations
  climb+gp+observed, climb+gp+fitted      final choice among the trained mixtures (search.final)
  regmix         the whole budget random in one round, LightGBM, mean of the top-128 candidates
  random         the whole budget random, the best observed mixture
and each final mixture is judged by the noiseless objective (regret = distance to the optimum's
score, lower is better). `--objective components`: a target of 3 components with known mixing
laws (synthetic.random_components; the runs record their components), where the optimum is the
law's best mixture on the simplex. Prints medians over problems, wins against random, and the
predictor choice and CV Spearman the search reported.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter

import numpy as np
from mixture.config import SearchConfig
from mixture.search import bootstrap
from mixture.search import predictor as pred
from mixture.search.sampler import quantize, sample_mixtures
from mixture.search.synthetic import calibrated, random_components

warnings.filterwarnings("ignore")


VARIANTS: dict[str, dict] = {
    "climb": {},
    "climb-local": {"local_frac": 0.5},
    "climb+gp": {"add": ["gp"]},
    "climb+mlc": {"add": ["mixing_law_components"]},
    "climb+ei": {"acquisition": {"rule": "ei"}},
    "climb+ucb": {"acquisition": {"rule": "ucb"}},
    "climb+gp+ei": {"add": ["gp"], "acquisition": {"rule": "ei"}},
    "climb+gp+ucb": {"add": ["gp"], "acquisition": {"rule": "ucb"}},
    "climb+all": {"add": ["gp", "mixing_law_components"], "acquisition": {"rule": "ei"}},
    "climb+gp+observed": {"add": ["gp"], "final": "best_observed"},
    "climb+gp+fitted": {"add": ["gp"], "final": "best_fitted"},
}
DEFAULT_VARIANTS = "climb,climb-local,climb+gp,climb+mlc,climb+ei,climb+ucb"


def score_of(out) -> float:
    return float(out["score"]) if isinstance(out, dict) else float(out)


def regmix(scfg: SearchConfig, prior, obj, seed: int) -> np.ndarray:
    budget = sum(scfg.iterations)
    W = sample_mixtures(np.random.default_rng([seed, 11]), prior, budget)
    y = np.array([score_of(obj(w, seed)) for w in W])
    model = pred.make("lightgbm", scfg.predictor, seed).fit(W, y)
    C = sample_mixtures(np.random.default_rng([seed, 12]), prior, scfg.candidates)
    top = np.argsort(-model.predict(C), kind="stable")[:128]
    return quantize(C[top].mean(axis=0), scfg.weight_floor)[0]


def random_best(scfg: SearchConfig, prior, obj, seed: int) -> np.ndarray:
    W = sample_mixtures(np.random.default_rng([seed, 11]), prior, sum(scfg.iterations))
    return W[int(np.argmax([score_of(obj(w, seed)) for w in W]))]


def config(common: dict, variant: dict, obj) -> SearchConfig:
    predictor = dict(common["predictor"])
    predictor["candidates"] = ["lightgbm", "ridge", "ridge_sqrt", "mixing_law", *variant.get("add", [])]
    extra = {k: v for k, v in variant.items() if k != "add"}
    target = {"weights": obj.weights} if hasattr(obj, "weights") else {}
    return SearchConfig(**{**common, "predictor": predictor, "target": target, **extra})


def problem(seed: int, clusters: int, objective: str):
    """The prior, the objective and its best noiseless score."""
    prior = np.random.default_rng(100 + seed).dirichlet(np.full(clusters, 2.0))
    if objective == "components":
        obj = random_components(prior, seed=seed)
        return prior, obj, obj.optimum_value()
    optimum = sample_mixtures(np.random.default_rng(900 + seed), prior, 1, concentration=(0.3, 0.3))[0]
    return prior, calibrated(prior, optimum), 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=10)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--budget", default="16,8,6")
    p.add_argument("--candidates", type=int, default=20000)
    p.add_argument("--objective", choices=["hellinger", "components"], default="hellinger")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    args = p.parse_args()
    iterations = [int(x) for x in args.budget.split(",")]
    common = dict(
        iterations=iterations,
        candidates=args.candidates,
        top_n=32,
        top_k=32,
        predictor=dict(min_child_samples=3, min_data_in_bin=1),
    )
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    regret: dict[str, list[float]] = {k: [] for k in [*names, "regmix", "random"]}
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    chosen: dict[str, list[str]] = {k: [] for k in names}
    spearman, methods = [], []
    t0 = time.time()
    for seed in range(args.problems):
        prior, obj, best = problem(seed, args.clusters, args.objective)
        for name in names:
            scfg = config(common, VARIANTS[name], obj)
            t1 = time.time()
            result, _, _ = bootstrap.run_search(scfg, prior, obj, seed=seed)
            seconds[name] += time.time() - t1
            regret[name].append(best - obj.value(np.array(result["weights"])))
            if result["predictor"]:
                chosen[name].append(result["predictor"]["chosen"])
            if name == "climb":
                methods.append(result["method"])
                if result["predictor"]:
                    spearman.append(result["predictor"]["cv"][result["predictor"]["chosen"]]["spearman"])
        scfg = config(common, {}, obj)
        regret["regmix"].append(best - obj.value(regmix(scfg, prior, obj, seed)))
        regret["random"].append(best - obj.value(random_best(scfg, prior, obj, seed)))
        print(f"problem {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in regret.items()), flush=True)
    report(args, iterations, regret, seconds, chosen, methods, spearman, time.time() - t0)


def report(args, iterations, regret, seconds, chosen, methods, spearman, wall) -> None:
    print(
        f"{args.problems} problems, objective {args.objective}, {args.clusters} clusters, budget {iterations} = "
        f"{sum(iterations)} runs, {args.candidates} candidates, {wall:.0f} s"
    )
    print(
        "| method | median regret | mean regret | wins vs random | wins / losses vs climb | "
        "regret - climb's (mean +- 2 se) | s per search | final predictor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r in regret.items():
        wins = np.mean(np.array(r) < np.array(regret["random"]))
        vs_climb, paired = "-", "-"
        if "climb" in regret:
            d = np.array(r) - np.array(regret["climb"])
            vs_climb = f"{np.sum(d < -1e-9)} / {np.sum(d > 1e-9)}"
            paired = f"{d.mean():+.4f} +- {2 * d.std(ddof=1) / np.sqrt(len(d)):.4f}" if len(d) > 1 else "-"
        per = f"{seconds[name] / args.problems:.1f}" if name in seconds else "-"
        picks = chosen.get(name) or []
        counts = ", ".join(f"{k} {v}" for k, v in zip(*np.unique(picks, return_counts=True))) if picks else "-"
        cells = [f"{np.median(r):.4f}", f"{np.mean(r):.4f}", f"{wins:.0%}", vs_climb, paired, per, counts]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if spearman:
        print(
            f"climb final: {dict(Counter(methods))}; final CV Spearman median "
            f"{np.median(spearman):.2f} (min {np.min(spearman):.2f}, max {np.max(spearman):.2f})"
        )


if __name__ == "__main__":
    main()
