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
method's difference to CLIMB. Results are a committed dataset `<output_root>/baselines`
(runs/, results.json, table.md, weights.png) and an MLflow run in the search's experiment.
"""
from __future__ import annotations

import logging

import numpy as np

from mixture import storage
from mixture.config import Config
from mixture.dataset import Dataset, DatasetWriter, open_dataset, up_to_date
from mixture.search import bootstrap, plots, steps
from mixture.search import predictor as pred
from mixture.search.sampler import quantize, sample_mixtures

log = logging.getLogger(__name__)

METHODS = ("natural", "uniform", "best_of_random", "regmix", "climb")
REGMIX_TOP_K = 128            # RegMix: the mean of the top-128 simulated mixtures
STREAM_POOL = 2_000_003


def _writer(cfg: Config, inputs: dict[str, str]) -> DatasetWriter:
    from mixture.pipeline import dataset_uri

    return DatasetWriter(dataset_uri(cfg, "baselines"), "baselines", cfg.section_hash("search", "tracking"),
                         inputs, staging_root=storage.join(cfg.output_root, "_staging"), resume=True)


def _job(kind: str, index: int, mixture: dict[str, float], seed: int, section: str, iteration: int = -1) -> dict:
    rid = steps.run_id(0, index, mixture, seed).replace("it0-", f"{kind}-", 1)
    return {"run_id": rid, "iteration": iteration, "index": index, "mixture": mixture, "seed": seed,
            "proxy_section": section}


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
        W = sample_mixtures(bootstrap.rng_for(cfg.seed, STREAM_POOL), prior, extra,
                            temperature=cfg.search.temperature, concentration=cfg.search.concentration,
                            epoch_cap=cfg.search.epoch_cap, floor=cfg.search.weight_floor, exclude=exclude)
        for j, w in enumerate(W):
            mixture = dict(zip(names, [float(x) for x in w]))
            for s in range(cfg.search.seeds):
                jobs.append(_job("pool", j, mixture, cfg.seed + s, "proxy"))
    return jobs


TRANSFER_ONLY = ("transfer_proxy", "transfer_seeds")


def _search_settings(seed: int, search: dict) -> dict:
    return {"seed": seed, "search": {k: v for k, v in search.items() if k not in TRANSFER_ONLY}}


def reusable_search(cfg: Config, climblab: Dataset) -> Dataset | None:
    """The committed search when it was made from the same climblab and the same search settings
    except the transfer ones (which only the baselines use), so that changing
    search.transfer_proxy does not repeat the search."""
    from mixture import pipeline
    from mixture.dataset import try_open

    ds = try_open(pipeline.dataset_uri(cfg, "search"))
    if ds is None or ds.manifest.inputs.get("climblab") != climblab.manifest_sha256:
        return None
    made_with = storage.read_json(ds.path("mixture.json")).get("config")
    if not made_with:
        return None
    mine = _search_settings(cfg.seed, cfg.search.model_dump(mode="json"))
    return ds if _search_settings(made_with["seed"], made_with["search"]) == mine else None


def regmix_mixture(cfg: Config, prior: np.ndarray, obs: bootstrap.Observations) -> tuple[np.ndarray, dict]:
    model = pred.make("lightgbm", cfg.search.predictor, cfg.seed).fit(obs.X, obs.y)
    cv = pred.cross_validate("lightgbm", obs.X, obs.y, cfg.search.predictor, cfg.seed)
    C = sample_mixtures(bootstrap.rng_for(cfg.seed, STREAM_POOL + 1), prior, cfg.search.candidates,
                        temperature=cfg.search.temperature, concentration=cfg.search.concentration,
                        epoch_cap=cfg.search.epoch_cap, floor=cfg.search.weight_floor)
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
    lines = [f"| method | transfer score | transfer {metric} | proxy score | Δ score vs climb | largest weights |",
             "|---|---:|---:|---:|---:|---|"]
    for m in METHODS:
        r = results["methods"][m]
        t = r["transfer"]
        delta = "-" if m == "climb" or t["score"]["mean"] is None else f"{t['score']['mean'] - climb:+.4f}"
        top = sorted(r["weights"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"| {m} | {_fmt(t['score'])} | {_fmt(t.get(metric, {'mean': None}))} | "
                     f"{_fmt(r['proxy']['score'])} | {delta} | "
                     + ", ".join(f"{c} {w:.2f}" for c, w in top) + " |")
    ranked = sorted(METHODS, key=lambda m: -(results["methods"][m]["transfer"]["score"]["mean"] or -np.inf))
    lines.append("")
    lines.append(f"transfer proxy {results['transfer_proxy']['preset']} ({results['transfer_proxy']['tokens']:,} "
                 f"tokens), proxy {results['proxy']['preset']} ({results['proxy']['tokens']:,} tokens), "
                 f"{results['transfer_seeds']} seeds each; random pool {results['pool_runs']} proxy runs; "
                 f"RegMix LightGBM CV Spearman {results['regmix']['cv_spearman']:.2f}; "
                 f"search: {results['search']['method']} via {results['search']['predictor']}.")
    lines.append(f"ranking at transfer scale (score, higher is better): {' > '.join(ranked)}")
    return "\n".join(lines)


def run(cfg: Config, objective: steps.Objective | None = None) -> str:
    """Run (or resume) the baselines and return the comparison table (markdown). `objective`
    replaces proxy training (tests)."""
    from mixture import pipeline
    from mixture.search.stage import ProxyRunner
    from mixture.climblab import ClimbLab

    climblab = open_dataset(pipeline.dataset_uri(cfg, "climblab"))
    search_ds = (pipeline.current(cfg, "search") or reusable_search(cfg, climblab)
                 or pipeline.run_stage(cfg, "search").dataset)
    inputs = {"climblab": climblab.manifest_sha256, "search": search_ds.manifest_sha256}
    uri = pipeline.dataset_uri(cfg, "baselines")
    done = up_to_date(uri, cfg.section_hash("search", "tracking"), inputs)
    if done:
        return storage.read_text(done.path("table.md")).rstrip("\n")
    writer = _writer(cfg, inputs)
    lab = ClimbLab(climblab)
    names, prior = steps.names_and_prior(lab)
    search_runs = [storage.read_json(f) for f in search_ds.files("runs/")]
    search_mixture = storage.read_json(search_ds.path("mixture.json"))

    with ProxyRunner(cfg, cfg.search.workers, cfg.search.proxy.threads) as runner:
        def run_all(jobs: list[dict], desc: str) -> list[dict]:
            return runner.run([(j, writer.path(f"runs/{j['run_id']}.json")) for j in jobs], climblab,
                              objective, desc=desc)

        # 1. the random pool: best-of-random and RegMix
        pool = [r for r in search_runs if r["iteration"] == 0]
        pool += run_all(random_pool_jobs(cfg, names, prior, search_runs), "baselines: random pool")
        obs = bootstrap.observe(pool, names, cfg.search.weight_floor)
        best = obs.best()
        regmix_w, regmix_info = regmix_mixture(cfg, prior, obs)
        mixtures = {
            "natural": prior,
            "uniform": np.full(len(names), 1.0 / len(names)),
            "best_of_random": obs.X[best],
            "regmix": regmix_w,
            "climb": np.array([search_mixture["weights"][c] for c in names]),
        }
        # 2. every method's mixture at proxy and at transfer scale, the same seeds for all
        jobs = []
        for m in METHODS:
            mixture = dict(zip(names, [float(x) for x in mixtures[m] / mixtures[m].sum()]))
            for s in range(cfg.search.transfer_seeds):
                for section in ("proxy", "transfer_proxy"):
                    jobs.append({**_job(f"{m}-{'transfer' if section == 'transfer_proxy' else 'proxy'}", 0,
                                        mixture, cfg.seed + s, section), "method": m})
        finished = run_all(jobs, "baselines: transfer")

    metric = f"val.{cfg.search.target.metric}" if cfg.search.target.val_uris else "score"
    results: dict = {"metric": metric, "methods": {}, "pool_runs": len(pool),
                     "transfer_seeds": cfg.search.transfer_seeds,
                     "proxy": cfg.search.proxy.model_dump(mode="json"),
                     "transfer_proxy": cfg.search.transfer_proxy.model_dump(mode="json"),
                     "regmix": regmix_info,
                     "best_of_random": {"score": float(obs.y[best]), "run_ids": obs.run_ids[best]},
                     "search": {"method": search_mixture["method"], "predictor": search_mixture.get("predictor"),
                                "cv_spearman": search_mixture.get("cv_spearman")}}
    for m in METHODS:
        mine = [r for r in finished if r["method"] == m]
        entry = {"weights": mine[0]["mixture"]}
        for scale, section in (("proxy", "proxy"), ("transfer", "transfer_proxy")):
            rs = [r for r in mine if r["proxy_section"] == section]
            keys = sorted({k for r in rs for k in r.get("metrics", {})})
            entry[scale] = {"score": _stats([r["score"] for r in rs]),
                            **{k: _stats([r["metrics"].get(k) for r in rs]) for k in keys},
                            "run_ids": [r["run_id"] for r in rs]}
        results["methods"][m] = entry
    transfer = {m: results["methods"][m]["transfer"]["score"]["mean"] for m in METHODS}
    results["climb_beats_every_baseline"] = all(
        transfer["climb"] is not None and (transfer[m] is None or transfer["climb"] > transfer[m])
        for m in METHODS if m != "climb")
    text = table(results)
    storage.write_json(writer.path("results.json"), results)
    storage.write_text(writer.path("table.md"), text + "\n")
    weights_png = plots.weights(names, {m: mixtures[m].tolist() for m in METHODS}, "baseline mixtures")
    storage.write_bytes(writer.path("weights.png"), weights_png)
    _track(cfg, writer, results, {"table.md": text, "weights.png": weights_png})
    writer.commit({"methods": len(METHODS), "runs": len(finished) + len(pool)},
                  {"transfer_score": transfer, "climb_beats_every_baseline": results["climb_beats_every_baseline"]})
    return text


def _track(cfg: Config, writer: DatasetWriter, results: dict, files: dict) -> None:
    from mixture.search.track import SearchTracker

    t = SearchTracker(cfg, steps.search_key(writer))
    found = t._find(kind="baselines")
    parent = found[0].info.run_id if found else t._create("baselines", None, kind="baselines")
    for m, r in results["methods"].items():
        found = t._find(kind="baseline", method=m)
        if found:
            continue
        run_id = t._create(m, parent, kind="baseline", method=m)
        params = {f"w.{c}": w for c, w in sorted(r["weights"].items())}
        params.update(method=m, transfer_seeds=results["transfer_seeds"])
        metrics = {}
        for scale in ("proxy", "transfer"):
            for k, s in r[scale].items():
                if isinstance(s, dict) and s.get("mean") is not None:
                    metrics[f"{scale}.{k}.mean"] = s["mean"]
                    metrics[f"{scale}.{k}.std"] = s["std"]
        t._log(run_id, params=params, metrics=metrics)
        t.client.set_terminated(run_id, "FINISHED")
    t._log(parent, metrics={"climb_beats_every_baseline": float(results["climb_beats_every_baseline"]),
                            "regmix.cv_spearman": results["regmix"]["cv_spearman"]})
    t._artifacts(parent, files)
    t.client.set_terminated(parent, "FINISHED")
