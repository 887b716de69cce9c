"""Which predictor ranks real proxy runs best? Leave-one-out Spearman of every registered predictor
on the runs of finished searches (no proxy is trained: the runs are read back).

    .venv/bin/python bench/search_loo.py out/demo/search out/search-quality/searches/*/search

Each argument is a committed search dataset (its `runs/*.json`); the playoff's runs (iteration
< 0) are left out. A search of the search-quality benchmark (`searches/<lab>-<target>-s<seed>-<key>`)
gets its n-gram estimate (`mixture.search.ngram`), so the `ngram` predictors are scored too; the
`estimate` column is the estimate alone (no fit). The figure is what `search.predictor` chooses
by (`mixture.search.predictor.fit_select`), with as many folds as runs. Caveat: a search's later
iterations crowd around its best mixtures, so the scores' spread shrinks and ranking them is
harder than ranking random mixtures.

`--noise-sd S` (a proxy run's seed noise, e.g. from bench/proxy_noise.py) adds what a perfect
predictor would score on the same mixtures: scores simulated as a known truth (the estimate's line
fitted to the search's real scores: the real signal) plus seed noise of sd S, 200 draws; `oracle`
is that truth's own Spearman with the noisy scores (the ceiling), `oracle LOO` the pooled
leave-one-out Spearman of the `ngram` predictor given the truth itself as its estimate (what the
benchmark's criterion would read for a predictor that is exact up to its fitted scale).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402


def benchmark_estimate(search_dir: Path, names: list[str]):
    """The n-gram estimate of a benchmark search (its lab and target from its folder's name), or None."""
    from mixture.search import ngram

    folder = search_dir.resolve().parent
    parsed = sq.parse_search_folder(folder.name)
    if parsed is None:
        return None
    lab, target, seed, _ = parsed
    targets, make_cfg, climblab = _open_lab(folder.parent.parent, lab)
    t = next(t for t in targets if t.name == target)
    lab_cfg = make_cfg([f"search.target.val_uris=[{t.select}]"])
    # the target's windows as the search drew them (its seed), on the lab it ran on (the lab's config)
    return ngram.for_search(lab_cfg.model_copy(update={"seed": seed}), climblab, names)


@functools.cache
def _open_lab(cache: Path, lab: str):
    """(the lab's targets, its Config maker, its ClimbLab), opened once per lab for all the searches."""
    from mixture.climblab import ClimbLab
    from mixture.dataset import open_dataset

    _, runner, targets, make_cfg = sq.open_lab(cache, lab, [], argparse.Namespace(workers=1, transfer_factor=3.0))
    return targets, make_cfg, ClimbLab(open_dataset(runner.lab_uri))  # open_lab has built it


def loo_by_predictor(
    search_dir: Path, candidates: list[str], seed: int = 0, noise_sd: float | None = None
) -> tuple[int, float, dict[str, float]]:
    """(runs, std of their scores, {predictor: leave-one-out Spearman, "estimate": the estimate's
    own Spearman, with `noise_sd` "oracle" and "oracle LOO"}) of one search."""
    from mixture.config import PredictorConfig
    from mixture.search import bootstrap
    from mixture.search import predictor as pred

    runs = sq.proxy_runs([json.loads(p.read_text()) for p in sorted((search_dir / "runs").glob("*.json"))])
    names = sorted({c for r in runs for c in r["mixture"]})
    obs = bootstrap.observe(runs, names, 2e-4)
    estimate = benchmark_estimate(search_dir, names)
    pcfg = PredictorConfig(candidates=candidates, cv_folds=len(obs), min_child_samples=3, min_data_in_bin=1)
    fitted = pred.fit_select(obs.X, obs.y, pcfg, seed, estimate=estimate)
    loo = {k: float(fitted.cv[k].spearman) if k in fitted.cv else float("nan") for k in candidates}
    loo["estimate"] = pred.spearman(estimate(obs.X), obs.y) if estimate is not None else float("nan")
    if noise_sd and estimate is not None:
        loo["oracle"], loo["oracle LOO"] = oracle(obs, estimate, noise_sd)
    return len(obs), float(np.std(obs.y)), loo


def oracle(obs, estimate, noise_sd: float, sims: int = 200, seed: int = 0) -> tuple[float, float]:
    """(the truth's mean Spearman with simulated single-run scores, the mean pooled leave-one-out
    Spearman of `ngram` fitted to them with the truth as its estimate): see the module's doc."""
    from mixture.config import PredictorConfig
    from mixture.search import predictor as pred
    from mixture.search.predictors.ngram import NgramPredictor

    line = NgramPredictor().fit(obs.X, obs.y, estimate)
    truth = line.predict  # the estimate's line through the real scores: a truth with the real signal
    f = truth(obs.X)
    pcfg = PredictorConfig(candidates=["ngram"], cv_folds=len(obs))
    rng = np.random.default_rng(seed)
    plain, loo = [], []
    for _ in range(sims):
        y = f + rng.normal(scale=noise_sd, size=len(f))
        plain.append(pred.spearman(f, y))
        loo.append(pred.cross_validate("ngram", obs.X, y, pcfg, seed, estimate=truth).spearman)
    return float(np.mean(plain)), float(np.mean(loo))


def main(argv: list[str] | None = None) -> int:
    from mixture.registry import PREDICTORS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("searches", nargs="+", type=Path, help="committed search datasets")
    ap.add_argument("--predictors", default=",".join(sorted(PREDICTORS.names())), help="comma-separated")
    ap.add_argument("--noise-sd", type=float, help="a proxy run's seed noise: adds the oracle columns")
    args = ap.parse_args(argv)
    if empty := [str(d) for d in args.searches if not any((d / "runs").glob("*.json"))]:
        ap.error(f"no committed runs in {', '.join(empty)} (a search still running, or not a search dataset)")
    candidates = args.predictors.split(",")
    columns = candidates + ["estimate"] + (["oracle", "oracle LOO"] if args.noise_sd else [])
    table = {}
    print("| search | runs | score sd | " + " | ".join(columns) + " |")
    print("|---|---:|---:|" + "---:|" * len(columns))
    for d in args.searches:
        n, sd, loo = loo_by_predictor(d, candidates, noise_sd=args.noise_sd)
        table[str(d)] = loo
        cells = " | ".join(f"{loo.get(c, float('nan')):.2f}" for c in columns)
        print(f"| {d.parent.name}/{d.name} | {n} | {sd:.3f} | {cells} |", flush=True)
    medians = {c: float(np.nanmedian([t.get(c, np.nan) for t in table.values()])) for c in columns}
    print("| median | | | " + " | ".join(f"{medians[c]:.2f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
