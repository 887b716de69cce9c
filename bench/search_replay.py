"""Which final-choice rule turns a search's runs into the best mixture? Replays finished searches.

    .venv/bin/python bench/search_replay.py --lab sample-field --targets debian-reference \\
        --rule committed= --rule trust1=search.trust_region=1 --rule best_observed=search.predictor.min_spearman=1

The final choice (`mixture.search.bootstrap.final`) reads only the runs, so a new rule can be tried
on searches that `bench/search_quality.py` already ran, without training a proxy again: every
search of the benchmark's cache (`searches/<lab>-<target>-s<seed>-<key>/search`) is read back, the
final mixture chosen again under each `--rule` (overrides of the search's own recorded config;
`committed=` with no override must reproduce the committed mixture) and retrained at the transfer
scale exactly as the benchmark does (the same cached runs, seeds and report half: pass the
benchmark's `--set`, whose proxy settings are part of every run's key). Printed per
search and rule: the transfer score, the method, the Hellinger distance from the final mixture to
the nearest trained one; then each rule's mean and its paired difference against the first rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402


def replay(search_dir: Path, names: list[str], sets: list[str]) -> tuple[np.ndarray, dict]:
    """The final mixture of one finished search under its recorded config with `sets` applied."""
    from mixture.config import SearchConfig, parse_overrides
    from mixture.search import bootstrap

    mixture = json.loads((search_dir / "mixture.json").read_text())
    runs = [json.loads(p.read_text()) for p in sorted((search_dir / "runs").glob("*.json"))]
    runs = [r for r in runs if r.get("iteration", 0) >= 0 and r.get("score") is not None]
    raw, seed = mixture["config"]["search"], int(mixture["config"]["seed"])
    for key, value in parse_overrides(sets).items():
        node = raw
        *path, last = key.removeprefix("search.").split(".")
        for part in path:
            node = node[part]
        node[last] = value
    scfg = SearchConfig.model_validate(raw)
    obs = bootstrap.observe(runs, names, scfg.weight_floor)
    prior = np.array([mixture["prior"][c] for c in names])
    res = bootstrap.final(scfg, prior, obs, seed)
    w = np.array(res["weights"])
    return w, {"method": res["method"], "distance": float(bootstrap.nearest_distance(w[None], obs.X)[0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(sq.REPO / "out" / "search-quality"))
    ap.add_argument("--lab", default="sample-field")
    ap.add_argument("--targets", required=True, help="comma-separated")
    ap.add_argument("--key", default="", help="only searches whose config key starts with this")
    ap.add_argument("--rule", action="append", required=True, metavar="NAME=SET;SET", help="a final-choice rule")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the benchmark's --set")
    ap.add_argument("--transfer-seeds", type=int, default=2)
    ap.add_argument("--transfer-factor", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    rules = {r.split("=", 1)[0]: [x for x in r.split("=", 1)[1].split(";") if x] for r in args.rule}
    cache = Path(args.cache)
    cfg, runner, targets, make_cfg = sq.open_lab(cache, args.lab, args.set, args)
    scores: dict[str, dict[str, list[float]]] = {r: {} for r in rules}
    print("| search | " + " | ".join(rules) + " |\n|---|" + "---|" * len(rules))
    for t in [t for t in targets if t.name in args.targets.split(",")]:
        ctx = sq.Context(args.lab, cfg, [], [], make_cfg, runner, runner.names, runner.prior, t)
        for d in sorted((cache / "searches").glob(f"{args.lab}-{t.name}-s*-{args.key}*")):
            if not (d / "search" / "mixture.json").exists():
                continue
            cells = []
            for name, sets in rules.items():
                w, info = replay(d / "search", runner.names, sets)
                got = sq.transfer(ctx, w, list(range(args.transfer_seeds)), args.transfer_tokens)
                scores[name][d.name] = got
                cells.append(f"{np.mean(got):.4f} ({info['method']}, d {info['distance']:.2f})")
            print(f"| {d.name} | " + " | ".join(cells) + " |", flush=True)
    first = next(iter(rules))
    for name in rules:
        v = sq.paired(scores[name], scores[first]) if name != first else {}
        allv = [x for xs in scores[name].values() for x in xs]
        diff = f"; - {first}: {v['mean']:+.4f} ± {v['se'] or 0:.4f} (n {v['n']})" if v else ""
        print(f"{name}: mean {np.mean(allv):.4f}{diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
