"""The search stage at demo scale: wall time, runs, and how informative the predictor is.

    .venv/bin/python bench/search_demo.py --config configs/demo.yaml [--set key=value ...]

Needs the datasets before the search (`climb run --config F --until climblab`). Runs `climb
search --force` (the pipeline's stage, the configured workers and proxies) and prints, from the
committed iterations.json: per iteration the runs, their best and median score, every predictor's
cross-validated Spearman/MAE (the chosen one marked), and the *prospective* Spearman: how the
predictor of iteration k ranked the mixtures it proposed against the scores they then got (an
out-of-sample check). The alternative a user would pick is in the same table: iteration 0 is
pure random sampling, so "later iterations vs iteration 0" is search vs random at equal cost per
run; `climb baselines` (bench/search_baselines.py) compares the final mixtures at transfer scale.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mixture import pipeline, storage
from mixture.config import load_config, parse_overrides


def _cv_cell(pr: dict | None) -> str:
    """Each predictor's CV Spearman (MAE), the chosen one in bold."""
    if not pr:
        return "random (no predictor)"
    cells = []
    for n, v in pr["cv"].items():
        mark = "**" if n == pr["chosen"] else ""
        cells.append(f"{mark}{n} {v['spearman']:.2f} ({v['mae']:.3f}){mark}")
    return ", ".join(cells)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    cfg = load_config(args.config, parse_overrides(args.set))
    t0 = time.time()
    res = pipeline.run_stage(cfg, "search", force=True)
    wall = time.time() - t0
    ds = res.dataset
    its = storage.read_json(ds.path("iterations.json"))
    mix = storage.read_json(ds.path("mixture.json"))
    runs = [storage.read_json(f) for f in ds.files("runs/")]
    train_s = [r["train"]["seconds"] for r in runs if r.get("train")]
    eval_s = [r["eval_seconds"] for r in runs if r.get("eval_seconds") is not None]
    print(
        f"search: {len(runs)} proxy runs in {wall:.0f} s wall ({cfg.search.workers} workers x "
        f"{cfg.search.proxy.threads} threads), proxy {cfg.search.proxy.preset} {cfg.search.proxy.tokens:,} tokens; "
        f"per run median train {statistics.median(train_s):.1f} s, eval {statistics.median(eval_s):.1f} s"
    )
    print("| iteration | runs | best score | median score | predictor CV Spearman (MAE) | prospective Spearman |")
    print("|---:|---:|---:|---:|---|---:|")
    for it in its["iterations"]:
        scores = [r["score"] for r in it["runs"] if r["score"] is not None]
        pr = it["predictor"]
        cv = _cv_cell(pr)
        ps = it.get("prospective_spearman")
        print(
            f"| {it['iteration']} | {len(scores)} | {max(scores):.4f} | {statistics.median(scores):.4f} | {cv} | "
            f"{'-' if ps is None else f'{ps:.2f}'} |"
        )
    fin = its["final"]
    if fin["predictor"]:
        ch = fin["predictor"]["chosen"]
        print(
            f"final predictor on all runs: {ch}, CV Spearman {fin['predictor']['cv'][ch]['spearman']:.2f}; "
            + ", ".join(f"{n} {v['spearman']:.2f}" for n, v in fin["predictor"]["cv"].items())
        )
    print(
        f"final mixture: {mix['method']} ({mix['reason']}); predicted {mix['predicted']}, "
        f"best observed {mix['best_observed']['score']:.4f}"
    )
    top = sorted(mix["weights"].items(), key=lambda kv: -kv[1])[:6]
    print("weights: " + ", ".join(f"{c} {w:.3f}" for c, w in top))


if __name__ == "__main__":
    main()
