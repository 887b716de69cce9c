"""How much of a proxy run's score is the mixture, and how much the seed? Trains the mixtures of a
finished search-quality search again with other seeds and reports the scores' test-retest figures.

    .venv/bin/python bench/proxy_noise.py out/search-quality/searches/<lab>-<target>-s0-<key>/search \
        --seeds 0,1 --condition '{}' --condition '{"data_order": "spread"}' --condition '{"base": 0.5}'

A condition is JSON: `search.proxy` fields to change, plus `"base": share` (every run continues a
base trained on the natural mixture for that share of the steps, `mixture.search.base`'s
stable-decay schedule), `"init": seed` (the initial weights from this seed whatever the run's seed:
only the data windows follow it), `"data": seed` (the windows from this seed: only the initial
weights follow the run's seed). Per condition and target (the select half, what the
search ranks by): the Spearman of the scores of two seeds (all runs; the first iteration's random
mixtures; the later iterations', which crowd near the search's best), the noise sd (the sd of the
paired differences / sqrt 2), the signal sd (the scores' sd less that noise) and the ceiling
sqrt(signal^2 / (signal^2 + noise^2)): about the best rank correlation any predictor can reach
against one seed's scores. Runs are cached under the benchmark's cache like its own
(`search_quality.Runner`); a condition with `base`, `init` or `data` trains in this process's
workers and is not cached. (`bench/search_fidelity.py` measures noise on random mixtures of the
demo's climblab; this one on the crowded runs of a real search, where the predictor is judged.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402


@contextlib.contextmanager
def pinned(job: dict):
    """The job with its data seed (`data`, else its seed); the trainer's torch.manual_seed, which
    seeds the initial weights, takes `init` (else the job's seed) while inside."""
    import torch

    seeded = torch.manual_seed
    init = job["seed"] if job.get("init") is None else job["init"]
    torch.manual_seed = lambda _s: seeded(init)
    try:
        yield {**job, "seed": job["seed"] if job.get("data") is None else job["data"]}
    finally:
        torch.manual_seed = seeded


def _train_one(job: dict) -> dict[str, float]:
    """One proxy (from scratch, or a `segment` continuing a base), scored like the benchmark's runs."""
    with pinned(job) as job:
        return sq._train_and_score({**job, "key": None})["scores"]


def _base(job: dict) -> dict:
    """The base proxy's segment trained: its model and optimizer state, and the windows it drew."""
    import torch
    from mixture.climblab import ClimbLab
    from mixture.config import ProxyConfig
    from mixture.dataset import open_dataset
    from mixture.search import proxy

    torch.set_num_threads(1)
    with pinned(job) as job:
        lab = ClimbLab(open_dataset(job["lab"]))
        mixture = {c: w for c, w in zip(job["names"], job["weights"]) if w > 0}
        shards = {c: lab.shard(c).tokens for c in mixture}
        pcfg = ProxyConfig(**job["proxy"])
        res = proxy.train(pcfg, shards, mixture, lab.vocab_size, lab.eos_id, job["seed"], segment=job["segment"])
    return {"model": res.model.state_dict(), "optimizer": res.optimizer.state_dict(), "windows": res.windows}


def trained(runner, W: np.ndarray, seed: int, pcfg: dict, base: float | None, seeds: dict, workers: int):
    """{target: scores of W's rows} for one seed of one condition."""
    from mixture.config import ProxyConfig
    from mixture.config.search import BaseConfig
    from mixture.search import base as B
    from mixture.search import proxy

    if base is None and not seeds:
        got = runner.scores([(w, seed, pcfg) for w in W])
        return {t: np.array([g[f"{t}/select"] for g in got]) for t in runner.targets}
    common = {
        "lab": runner.lab_uri,
        "names": runner.names,
        "seed": seed,
        "proxy": pcfg,
        **seeds,
        "targets": {t: {"select": h["select"]} for t, h in runner.targets.items()},
        "val_tokens": runner.val_tokens,
    }
    segments = [None] * len(W)
    if base is not None:
        bcfg = BaseConfig(enabled=True, share=base)
        total, n = B.split(ProxyConfig(**pcfg), bcfg)
        first = proxy.Segment(0, n, total, "wsd", n)
        got = _base({**common, "weights": list(runner.prior), "segment": first})
        state = {"model": got["model"], "optimizer": got["optimizer"]}
        segments = [proxy.Segment(n, total - n, total, "wsd", n, state, got["windows"])] * len(W)
    jobs = [{**common, "weights": [float(x) for x in w], "segment": s} for w, s in zip(W, segments)]
    with ProcessPoolExecutor(workers) as pool:
        got = list(pool.map(_train_one, jobs))
    return {t: np.array([g[f"{t}/select"] for g in got]) for t in runner.targets}


def figures(a: np.ndarray, b: np.ndarray, first: int) -> dict:
    from mixture.search.noise import rank_ceiling
    from scipy.stats import spearmanr

    noise = float(np.std(a - b, ddof=1) / np.sqrt(2))
    score_var = float((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    signal = float(np.sqrt(max(0.0, score_var - noise**2)))
    return {
        "retest": float(spearmanr(a, b)[0]),
        "retest_first": float(spearmanr(a[:first], b[:first])[0]),
        "retest_later": float(spearmanr(a[first:], b[first:])[0]) if len(a) - first > 2 else float("nan"),
        "noise_sd": noise,
        "signal_sd": signal,
        "ceiling": rank_ceiling(score_var, noise),
        "mean": float((a.mean() + b.mean()) / 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("search", type=Path, help="a committed search of the benchmark's cache")
    ap.add_argument("--seeds", default="0,1", help="two seeds")
    ap.add_argument("--condition", action="append", default=[], help="JSON (see above); repeatable")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    folder = args.search.resolve().parent
    parsed = sq.parse_search_folder(folder.name)
    if parsed is None:
        ap.error(f"{folder.name} is no search of the benchmark's labs ({', '.join(sq.LABS)})")
    lab = parsed[0]
    cache = folder.parent.parent
    _, runner, _, _ = sq.open_lab(cache, lab, [], argparse.Namespace(workers=args.workers, transfer_factor=3.0))
    runs = sq.proxy_runs([json.loads(p.read_text()) for p in sorted((args.search / "runs").glob("*.json"))])
    W = np.array([[r["mixture"].get(c, 0.0) for c in runner.names] for r in runs])
    first = sum(1 for r in runs if r["iteration"] == 0)
    s1, s2 = (int(s) for s in args.seeds.split(","))
    print(f"{len(W)} mixtures ({first} of the first iteration), seeds {s1} and {s2}", flush=True)
    print("| condition | target | retest Spearman (first it. / later) | noise sd | signal sd | ceiling | mean |")
    print("|---|---|---|---:|---:|---:|---:|")
    for text in args.condition or ["{}"]:
        cond = json.loads(text)
        seeds = {k: cond.pop(k) for k in ("init", "data") if k in cond}
        base = cond.pop("base", None)
        pcfg = {**runs[0]["proxy"], **cond}
        t0 = time.time()
        a, b = (trained(runner, W, s, pcfg, base, seeds, args.workers) for s in (s1, s2))
        for t in runner.targets:
            f = figures(a[t], b[t], first)
            print(
                f"| {text} | {t} | {f['retest']:.2f} ({f['retest_first']:.2f} / {f['retest_later']:.2f}) | "
                f"{f['noise_sd']:.4f} | {f['signal_sd']:.4f} | {f['ceiling']:.2f} | {f['mean']:.4f} |",
                flush=True,
            )
        print(f"  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
