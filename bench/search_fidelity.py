"""Proxy-score noise with per-cluster data streams and a shared base; merged experts vs real runs.

    .venv/bin/python bench/search_fidelity.py --climblab out/demo/climblab --work /tmp/fidelity \\
        [--tokens 200000] [--seeds 3] [--mixtures 3] [--rank-mixtures 10] [--val-tokens 30000] [--workers 2]

Needs a committed climblab (the demo's: `climb run --config configs/demo.yaml --until climblab`);
it is only read (linked into `--work/out`), and every run is staged under `--work`, so a second
call reuses what is finished. The proxy is the demo's (cpu-2m, batch 4, seq 256, lr 4e-3; the
demo's target: data/sample/target_val.jsonl.gz, `--val-tokens` validation tokens) at `--tokens`.

(a) Seed noise: `--mixtures` mixtures (the natural one and random prior mixtures) are trained with
`--seeds` search seeds (`seed` = s: the initial weights, the data streams and the base all follow
it) under four settings: data_order run / cluster, from scratch / continued from a base trained
on the natural mixture for `--share` of the steps (`search.base`). Printed per setting: the mean
over mixtures of the score's std over seeds (the noise of one run), the mean over mixture pairs
of the std over seeds of their score difference (the noise of a comparison: what the predictor
sees), and the std over mixtures of the mean score (the signal between mixtures).

(b) Merged experts (`search.experts`, data_order cluster, with the base, seed 0): one expert per
cluster, then `--rank-mixtures` random mixtures scored by merged models and by real proxy runs;
printed: the Spearman between the two, and the wall time of each part.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from mixture import pipeline, storage
from mixture.climblab import ClimbLab
from mixture.config import parse_config
from mixture.search import base as base_proxy
from mixture.search import experts, steps
from mixture.search.sampler import sample_mixtures
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [("run", False), ("cluster", False), ("run", True), ("cluster", True)]


def config(args, seed: int, order: str, base: bool):
    """The demo's proxy at --tokens; experts on with the base (they do not change proxy runs, so
    (b) reuses the base and runs of (a)'s cluster/base setting)."""
    return parse_config(
        {
            "run_name": "fidelity",
            "output_root": str(Path(args.work) / "out"),
            "input": {"uris": ["unused"]},
            "seed": seed,
            "search": {
                "proxy": {"preset": "cpu-2m", "tokens": args.tokens, "data_order": order},
                "target": {"val_uris": [str(REPO / "data/sample/target_val.jsonl.gz")], "val_tokens": args.val_tokens},
                "base": {"enabled": base, "share": args.share},
                "experts": {"enabled": base, "eval_tokens": None},  # merged models: the same target
            },
            "tracking": {"experiment": "fidelity"},
        }
    )


def _execute(cfg, job, uri) -> dict:
    import torch

    torch.set_num_threads(1)
    ctx = pipeline.open_stage(cfg, "search")
    if job is None:  # the base
        return steps.base(ctx) or {}
    return steps.execute(cfg, job, uri, ctx.inputs["climblab"])


def job_for(ctx, mixture: dict, seed: int, tag: str) -> tuple[dict, str]:
    job = {"run_id": steps.run_id(0, 0, mixture, 0) + tag, "iteration": 0, "index": 0, "mixture": mixture, "seed": seed}
    if ctx.cfg.search.base.enabled:
        job["base"] = base_proxy.ref(ctx.writer.staging)
    return job, ctx.writer.path(f"runs/{job['run_id']}.json")


def run_all(pool, items) -> list[dict]:
    return list(pool.map(_execute, *zip(*items))) if items else []


def noise(args, pool, mixtures) -> None:
    print(f"(a) seed noise: {len(mixtures)} mixtures x {args.seeds} seeds, cpu-2m {args.tokens:,} tokens")
    print(
        "| data_order | base | run noise (std over seeds) | comparison noise (std of differences) "
        "| signal (std of means) | wall s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for order, base in SETTINGS:
        t0 = time.time()
        cfgs = [config(args, s, order, base) for s in range(args.seeds)]
        run_all(pool, [(c, None, "") for c in cfgs if base])
        items = []
        for c in cfgs:
            ctx = pipeline.open_stage(c, "search")
            items += [(c, *job_for(ctx, m, c.seed, "")) for m in mixtures]
        scores = np.array([r["score"] for r in run_all(pool, items)]).reshape(args.seeds, len(mixtures))
        run_noise = scores.std(axis=0, ddof=1).mean()
        pairs = list(itertools.combinations(range(len(mixtures)), 2))
        diff_noise = np.mean([np.std(scores[:, i] - scores[:, j], ddof=1) for i, j in pairs])
        signal = scores.mean(axis=0).std(ddof=1)
        print(
            f"| {order} | {'yes' if base else 'no'} | {run_noise:.4f} | {diff_noise:.4f} | {signal:.4f} | "
            f"{time.time() - t0:.0f} |"
        )


def merged_vs_real(args, pool, names, W) -> None:
    cfg = config(args, 0, "cluster", True)
    ctx = pipeline.open_stage(cfg, "search")
    t0 = time.time()
    run_all(pool, [(cfg, None, "")])
    jobs = steps.expert_jobs(ctx)
    run_all(pool, [(cfg, j, steps.job_uri(ctx.writer, j)) for j in jobs])
    t_experts = time.time() - t0
    t0 = time.time()
    est = experts.estimates(cfg, ctx.writer, ClimbLab(ctx.inputs["climblab"]), names, W)
    t_merged = time.time() - t0
    t0 = time.time()
    real = [r["score"] for r in run_all(pool, [(cfg, *job_for(ctx, dict(zip(names, w.tolist())), 0, "")) for w in W])]
    t_real = time.time() - t0
    rho = spearmanr(est, real).statistic
    print(
        f"(b) merged experts vs real proxy runs over {len(W)} mixtures: Spearman {rho:.2f} "
        f"(experts {t_experts:.0f} s incl. the base, merged scoring {t_merged:.0f} s, real runs {t_real:.0f} s)"
    )
    for e, r, w in sorted(zip(est, real, W), key=lambda t: -t[1]):
        top = np.argsort(-w)[:3]
        print(f"  real {r:.4f}  merged {e:.4f}  " + ", ".join(f"{names[k]} {w[k]:.2f}" for k in top))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--climblab", required=True, help="a committed climblab dataset (read only)")
    p.add_argument("--work", required=True, help="scratch folder (runs are kept: a rerun reuses them)")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--share", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--mixtures", type=int, default=3)
    p.add_argument("--rank-mixtures", type=int, default=10)
    p.add_argument("--val-tokens", type=int, default=30000, help="the target's validation tokens (the demo's 30,000)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.work) / "out"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "climblab").exists():
        (out / "climblab").symlink_to(Path(args.climblab).resolve())
    lab = ClimbLab(pipeline.open_stage(config(args, 0, "run", False), "search").inputs["climblab"])
    names = sorted(lab.tokens_per_cluster)
    prior = np.array([lab.prior[c] for c in names])
    W = sample_mixtures(np.random.default_rng(12345), prior, max(args.rank_mixtures, args.mixtures - 1))
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        mixtures = [dict(zip(names, prior.tolist()))] + [dict(zip(names, w.tolist())) for w in W[: args.mixtures - 1]]
        noise(args, pool, mixtures)
        if args.rank_mixtures:
            merged_vs_real(args, pool, names, W[: args.rank_mixtures])
    storage.write_text(str(Path(args.work) / "done"), "ok\n")


if __name__ == "__main__":
    main()
