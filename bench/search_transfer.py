"""Does the proxy's ranking of mixtures carry to the transfer scale? The limit of every method that
chooses at proxy scale (best-of-random, RegMix and the search alike).

    .venv/bin/python bench/search_transfer.py --labs sample-field,debian-field --draws 1 \\
        --set search.proxy.data_order=cluster

Each random draw of `bench/search_quality.py` (the same mixtures, seeds and cache: pass the
benchmark's `--set`) is trained again at the transfer scale (the lab's default proxy whatever `--set`
changes, at `--transfer-factor` x the proxy's tokens, transfer seed 0, as the benchmark's finals)
and scored on every target's halves. Per target:
- Spearman between the proxy's select-half score (what every method chooses by) and the transfer
  scale's report-half score (what the benchmark reports), over all the draw's mixtures and over the
  proxy's top half;
- the same at one scale across the halves (proxy select vs proxy report; transfer select vs
  transfer report): how much of the disagreement is the evaluation text, not the scale;
- the regret of best-of-random at transfer scale: the best transfer score among the draw's mixtures
  minus the transfer score of the one the proxy picked, and the transfer rank of that pick.
`--proxy-factor F` ranks the draw at F x the proxy's tokens instead (would a larger proxy rank the
good mixtures better?). Results in `<cache>/transfer-agreement-x<F>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402


def agreement(proxy_sel: np.ndarray, proxy_rep: np.ndarray, tr_sel: np.ndarray, tr_rep: np.ndarray) -> dict:
    """Rank agreement and best-of-random's regret for one target over one draw's mixtures."""
    from mixture.search.predictor import spearman

    top = np.argsort(-proxy_sel)[: max(3, len(proxy_sel) // 2)]
    pick = int(np.argmax(proxy_sel))
    return {
        "n": len(proxy_sel),
        "proxy_to_transfer": spearman(proxy_sel, tr_rep),
        "proxy_to_transfer_top_half": spearman(proxy_sel[top], tr_rep[top]),
        "proxy_halves": spearman(proxy_sel, proxy_rep),
        "transfer_halves": spearman(tr_sel, tr_rep),
        "pick_regret": float(tr_rep.max() - tr_rep[pick]),
        "pick_rank": int((tr_rep > tr_rep[pick]).sum()) + 1,
        "transfer_spread": float(tr_rep.std()),
    }


def measure(ctx: sq.Context, draw: int, tokens: int, proxy_tokens: int) -> dict:
    """One target, one draw: the pool's scores at both scales and their agreement."""
    W, _ = sq.random_pool(ctx, draw)
    name = ctx.target.name
    proxy = ctx.runner.scores([(w, draw, {**ctx.proxy(), "tokens": proxy_tokens}) for w in W])
    pcfg = {**(ctx.truth or ctx.proxy()), "tokens": tokens}
    trans = ctx.runner.scores([(w, 10_000, pcfg) for w in W])
    col = {
        k: np.array([g[f"{name}/{half}"] for g in got])
        for k, got, half in [
            ("ps", proxy, "select"),
            ("pr", proxy, "report"),
            ("ts", trans, "select"),
            ("tr", trans, "report"),
        ]
    }
    return agreement(col["ps"], col["pr"], col["ts"], col["tr"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(sq.REPO / "out" / "search-quality"))
    ap.add_argument("--labs", default="sample-field,debian-field")
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--transfer-factor", type=float, default=3.0)
    ap.add_argument(
        "--proxy-factor", type=float, default=1.0, help="rank at this x the proxy's tokens (the draw's seed)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the benchmark's --set")
    args = ap.parse_args(argv)
    cache, out = Path(args.cache), {}
    for lab_name in args.labs.split(","):
        cfg, runner, targets, make_cfg = sq.open_lab(cache, lab_name, args.set, args)
        proxy_tokens = int(cfg.search.proxy.tokens * args.proxy_factor)
        for t in targets:
            ctx = sq.Context(
                lab_name, cfg, args.set, [], make_cfg, runner, runner.names, runner.prior, t, sq.lab_truth(make_cfg)
            )
            for d in range(args.draws):
                out[f"{lab_name} / {t.name} / draw {d}"] = measure(ctx, d, args.transfer_tokens, proxy_tokens)
    print(
        f"\nProxy {args.proxy_desc}, ranking at {proxy_tokens:,} tokens; "
        f"transfer: {args.transfer_tokens:,} tokens, 1 seed.\n"
    )
    print(
        "| target / draw | n | proxy→transfer | top half | proxy sel→rep | transfer sel→rep "
        "| pick's transfer rank | regret |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, a in out.items():
        print(
            f"| {key} | {a['n']} | {a['proxy_to_transfer']:.2f} | {a['proxy_to_transfer_top_half']:.2f} | "
            f"{a['proxy_halves']:.2f} | {a['transfer_halves']:.2f} | {a['pick_rank']} | {a['pick_regret']:.3f} |"
        )
    (cache / f"transfer-agreement-x{args.proxy_factor:g}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
