"""Which final-choice rule turns a search's runs into the best mixture? Replays finished searches.

    .venv/bin/python bench/search_replay.py --lab sample-field --targets debian-reference \\
        --rule trust0=search.trust_region=0 --rule trust1=search.trust_region=1

The final choice (`mixture.search.bootstrap.final`) reads only the runs, so a new rule can be tried
on searches that `bench/search_quality.py` already ran, without training a proxy again: every
search of the benchmark's cache (`searches/<lab>-<target>-s<seed>-<key>/search`) is read back, the
final mixture chosen again under each `--rule` (overrides of the search's own recorded config,
whose missing fields take today's defaults: a search recorded before `search.trust_region` existed
replays with the trust region on unless the rule sets 0) and retrained at the transfer
scale exactly as the benchmark does (the same cached runs, seeds and report half: pass the
benchmark's `--set`, whose proxy settings are part of every run's key). Printed per
search and rule: the transfer score, the method, the Hellinger distance from the final mixture to
the nearest trained one; then, per rule, the benchmark's table (`search_quality.report`): the rule
as `climb` against the baselines (`--baselines`, run or read from the same cache as the
benchmark's) with paired differences, and the predictor's leave-one-out Spearman per search
(fitted once per search, under its recorded config: the rules' overrides are not applied to it).
Results also in `<cache>/replay-<lab>-<targets>-<rules>.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402


def read_search(search_dir: Path, names: list[str]) -> dict:
    """One finished search, read back once for every rule: its mixture.json, its runs
    (`search_quality.proxy_runs`), its seed and the predictor's leave-one-out Spearman on those runs.
    That refit is the expensive part, so it runs once per search, under the search's recorded
    config WITHOUT any rule's overrides: it reads only `search.predictor` (and the weight floor),
    which the rules so far (`search.trust_region`, `search.final`) leave alone."""
    from mixture.config import SearchConfig
    from mixture.search import bootstrap

    mixture = json.loads((search_dir / "mixture.json").read_text())
    runs = sq.proxy_runs([json.loads(p.read_text()) for p in sorted((search_dir / "runs").glob("*.json"))])
    seed = int(mixture["config"]["seed"])
    scfg = SearchConfig.model_validate(mixture["config"]["search"])
    obs = bootstrap.observe(runs, names, scfg.weight_floor)
    return {"mixture": mixture, "runs": runs, "seed": seed, "loo_spearman": sq.loo_spearman(scfg, obs, seed)}


def rule_config(search: dict, sets: list[str]):
    """The search's recorded SearchConfig with a rule's `sets` applied."""
    from mixture.config import SearchConfig, parse_overrides, set_dotted

    raw = copy.deepcopy(search["mixture"]["config"]["search"])  # the next rule starts from the recorded config
    for key, value in parse_overrides(sets).items():
        set_dotted(raw, key.removeprefix("search."), value)
    return SearchConfig.model_validate(raw)


def replay(search: dict, names: list[str], scfg) -> tuple[np.ndarray, dict, dict]:
    """The final mixture of one search (`read_search`) under `scfg` (`rule_config`), its info for
    the table and `bootstrap.final`'s whole result (with the `observations` it chose from)."""
    from mixture.search import bootstrap

    obs = bootstrap.observe(search["runs"], names, scfg.weight_floor)
    prior = np.array([search["mixture"]["prior"][c] for c in names])
    res = {**bootstrap.final(scfg, prior, obs, search["seed"]), "observations": obs}  # the playoff's too
    w = np.array(res["weights"])
    info = {
        "method": res["method"],
        "distance": float(bootstrap.nearest_distance(w[None], obs.X)[0]),
        "loo_spearman": search["loo_spearman"],
    }
    return w, info, res


def play_off(ctx, search: dict, scfg, res: dict) -> tuple[np.ndarray, dict]:
    """The playoff (`mixture.search.playoff`) after the replayed final choice: its jobs trained by
    the benchmark's runner and scored on the target's select half. Its transfer runs are the
    benchmark's proxy settings with the finalists' preset and tokens (`finalist_proxy`), seeded 20,000 +
    the job's seed (the report's transfer runs are 10,000 + t: never the same training run)."""
    from mixture.search import playoff

    names, obs = ctx.names, res["observations"]
    stored = playoff.plan(scfg, search["seed"], names, ctx.prior, obs, ctx.runner.vocab_size)
    scale = {**ctx.proxy(), "preset": scfg.finalist_proxy.preset, "tokens": scfg.finalist_proxy.tokens}
    batch = [(np.array([j["mixture"][c] for c in names]), 20_000 + j["seed"]) for j in stored["jobs"]]
    pcfgs = [ctx.proxy() if j["proxy_section"] == "proxy" else scale for j in stored["jobs"]]
    got = ctx.runner.scores([(w, s, p) for (w, s), p in zip(batch, pcfgs)])
    runs = {
        j["run_id"]: {**j, "score": g[f"{ctx.target.name}/select"], "metrics": {}} for j, g in zip(stored["jobs"], got)
    }
    search_runs = [{"mixture": dict(zip(names, x.tolist())), "score": float(y)} for x, y in zip(obs.X, obs.y)]
    rec = playoff.record(scfg, names, stored, runs, search_runs, obs, res["method"])
    out = playoff.apply(res, rec, names)
    w = np.array(out["weights"])
    return w, {"playoff": rec["reason"], "winner": rec["winner"], "transfer_runs": len(stored["jobs"])}


def replay_target(ctx, searches: list[Path], rules: dict[str, list[str]], args) -> dict[str, dict]:
    """Per rule, the benchmark's entry for `climb` (per seed transfer scores, info) on one target."""
    read = [(d, read_search(d / "search", ctx.names)) for d in searches]
    out = {}
    for name, sets in rules.items():
        per_seed, info = {}, {}
        for d, search in read:
            scfg = rule_config(search, sets)
            w, info_d, res = replay(search, ctx.names, scfg)
            if scfg.playoff.enabled:
                w, more = play_off(ctx, search, scfg, res)
                info_d = {**info_d, **more, "method": "playoff" if more["winner"] else info_d["method"]}
            seed = search["seed"]
            per_seed[seed] = sq.transfer(ctx, w, list(range(args.transfer_seeds)), args.transfer_tokens)
            info[seed] = {**info_d, "search": d.name, "weights": {c: round(float(x), 4) for c, x in zip(ctx.names, w)}}
            print(f"  {d.name} {name}: {np.mean(per_seed[seed]):.4f} ({info_d['method']}, d {info_d['distance']:.2f})")
        scores = [x for v in per_seed.values() for x in v]
        out[name] = {
            "per_seed": per_seed,
            "mean": float(np.mean(scores)),
            "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            "seed_means": {s: float(np.mean(v)) for s, v in per_seed.items()},
            "info": info,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(sq.REPO / "out" / "search-quality"))
    ap.add_argument("--lab", default="sample-field")
    ap.add_argument("--targets", required=True, help="comma-separated")
    ap.add_argument("--key", default="", help="only searches whose config key starts with this")
    ap.add_argument("--rule", action="append", required=True, metavar="NAME=SET;SET", help="a final-choice rule")
    ap.add_argument("--baselines", default="best_of_random,regmix,natural,uniform", help="compared with each rule")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the benchmark's --set")
    ap.add_argument("--seeds", type=int, default=3, help="random draws of the baselines")
    ap.add_argument("--transfer-seeds", type=int, default=2)
    ap.add_argument("--transfer-factor", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    rules = {r.split("=", 1)[0]: [x for x in r.split("=", 1)[1].split(";") if x] for r in args.rule}
    cache = Path(args.cache)
    cfg, runner, targets, make_cfg = sq.open_lab(cache, args.lab, args.set, args)
    results: dict[str, dict[str, dict]] = {r: {} for r in rules}
    for t in [t for t in targets if t.name in args.targets.split(",")]:
        ctx = sq.Context(
            args.lab, cfg, args.set, [], make_cfg, runner, runner.names, runner.prior, t, sq.lab_truth(make_cfg)
        )
        searches = [
            d
            for d in sorted((cache / "searches").glob(sq.search_folder(args.lab, t.name, "*", args.key) + "*"))
            if (d / "search" / "mixture.json").exists()
        ]
        per_rule = replay_target(ctx, searches, rules, args)
        base = sq.evaluate_target(ctx, [b for b in args.baselines.split(",") if b], list(range(args.seeds)), args)
        for name, entry in per_rule.items():
            results[name][f"{args.lab} / {t.name}"] = sq.compare({"climb": entry, **base})
    for name, per in results.items():
        how = " ".join(rules[name]) or "(as committed)"
        print(f"\n## climb = the searches' runs, final chosen by rule {name!r}: {how}")
        print(sq.report(per, args))
    path = cache / f"replay-{args.lab}-{args.targets.replace(',', '+')}-{'+'.join(rules)}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
