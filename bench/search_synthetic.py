"""The search's logic on a synthetic objective with a known optimum, against the alternatives.

    .venv/bin/python bench/search_synthetic.py [--problems 10] [--clusters 10] [--budget 16,8,6]

For each problem (a random token prior over K clusters and a random optimum inside the caps; the
objective is calibrated like the CPU proxies measured here: score spread 0.33 over random
mixtures, seed noise 0.08), the same budget of noisy evaluations goes to
  climb          the iterative search (bootstrap.run_search, the pipeline's code)
  climb-local    the same with half of the candidates drawn around the best observed mixtures
  regmix         the whole budget random in one round, LightGBM, mean of the top-128 candidates
  random         the whole budget random, the best observed mixture
and each final mixture is judged by the noiseless objective (regret = distance to the optimum's
score, lower is better). Prints medians over problems, wins against random, and the predictor
choice and CV Spearman the search reported.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from mixture.config import SearchConfig
from mixture.search import bootstrap
from mixture.search import predictor as pred
from mixture.search.sampler import quantize, sample_mixtures
from mixture.search.synthetic import calibrated

warnings.filterwarnings("ignore")


def regmix(scfg: SearchConfig, prior, obj, seed: int) -> np.ndarray:
    budget = sum(scfg.iterations)
    W = sample_mixtures(np.random.default_rng([seed, 11]), prior, budget)
    y = np.array([obj(w, seed) for w in W])
    model = pred.make("lightgbm", scfg.predictor, seed).fit(W, y)
    C = sample_mixtures(np.random.default_rng([seed, 12]), prior, scfg.candidates)
    top = np.argsort(-model.predict(C), kind="stable")[:128]
    return quantize(C[top].mean(axis=0), scfg.weight_floor)[0]


def random_best(scfg: SearchConfig, prior, obj, seed: int) -> np.ndarray:
    W = sample_mixtures(np.random.default_rng([seed, 11]), prior, sum(scfg.iterations))
    return W[int(np.argmax([obj(w, seed) for w in W]))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=10)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--budget", default="16,8,6")
    p.add_argument("--candidates", type=int, default=20000)
    args = p.parse_args()
    iterations = [int(x) for x in args.budget.split(",")]
    common = dict(
        iterations=iterations,
        candidates=args.candidates,
        top_n=32,
        top_k=32,
        predictor=dict(min_child_samples=3, min_data_in_bin=1),
    )
    variants = {"climb": SearchConfig(**common), "climb-local": SearchConfig(**common, local_frac=0.5)}
    regret: dict[str, list[float]] = {k: [] for k in [*variants, "regmix", "random"]}
    chosen, spearman, methods = [], [], []
    t0 = time.time()
    for seed in range(args.problems):
        prior = np.random.default_rng(100 + seed).dirichlet(np.full(args.clusters, 2.0))
        optimum = sample_mixtures(np.random.default_rng(900 + seed), prior, 1, concentration=(0.3, 0.3))[0]
        obj = calibrated(prior, optimum)
        for name, scfg in variants.items():
            result, _, _ = bootstrap.run_search(scfg, prior, obj, seed=seed)
            regret[name].append(-obj.value(np.array(result["weights"])))
            if name == "climb":
                methods.append(result["method"])
                if result["predictor"]:
                    chosen.append(result["predictor"]["chosen"])
                    spearman.append(result["predictor"]["cv"][result["predictor"]["chosen"]]["spearman"])
        regret["regmix"].append(-obj.value(regmix(variants["climb"], prior, obj, seed)))
        regret["random"].append(-obj.value(random_best(variants["climb"], prior, obj, seed)))
    print(
        f"{args.problems} problems, {args.clusters} clusters, budget {iterations} = {sum(iterations)} runs, "
        f"{args.candidates} candidates, {time.time() - t0:.0f} s"
    )
    print("| method | median regret | mean regret | wins vs random |")
    print("|---|---:|---:|---:|")
    for name, r in regret.items():
        wins = np.mean(np.array(r) < np.array(regret["random"]))
        print(f"| {name} | {np.median(r):.4f} | {np.mean(r):.4f} | {wins:.0%} |")
    print(
        f"climb final: {dict(zip(*np.unique(methods, return_counts=True)))}; predictor chosen: "
        f"{dict(zip(*np.unique(chosen, return_counts=True)))}; final CV Spearman median "
        f"{np.median(spearman):.2f} (min {np.min(spearman):.2f}, max {np.max(spearman):.2f})"
    )


if __name__ == "__main__":
    main()
