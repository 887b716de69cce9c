"""Does the search find better mixtures than random search? The comparison a skeptic accepts.

    .venv/bin/python bench/search_quality.py                      # every lab, every method
    .venv/bin/python bench/search_quality.py --quick              # a smoke run: tiny budgets (results-quick.json)
    .venv/bin/python bench/search_quality.py --labs sample-field --methods climb,best_of_random

What is measured (issue #20; CLIMB, Diao et al. 2025, Table 2 compares with random search and
RegMix the same way, at 1B):
- labs: a ClimbLab per corpus and grouping, built by the product's own stages (`climb run --until
  shards`): the sample corpus without the held-out domains, grouped by k-means into 16 groups
  (`sample-kmeans`, the default with `debian-kmeans`) or by `source` (`sample-field`, 6-8 groups,
  where 30 random mixtures already cover the simplex); a second corpus from Debian packages
  (`debian-kmeans`, `debian-field`, and `debian-kmeans-32` at 32 groups, where the two large
  groups that carry both held-out domains at 16 are split; needs the packages that `climb corpus
  sample` reads, listed when missing);
- held-out targets: domains no group contains, two per corpus, and both together (`a+b`, a
  multi-domain target as the paper's are: see `_targets`); each target's documents are split
  by document into a *select* half (the only text any method scores its proxies on) and a
  *report* half (the only text the table reports: never used to choose anything);
- methods, the same proxy budget each (proxy runs of `search.proxy`, counted in training tokens):
  `climb` (the product's defaults, changed by `--set`), `climb_today` (the defaults before issue #20),
  `best_of_random` (the whole budget on prior mixtures, the best at proxy scale), `regmix`
  (the same random runs, LightGBM, mean of the top 128 of the candidates), `natural` (token
  shares), `uniform`;
- every method's final mixture retrained at the transfer scale (`--transfer-tokens`, the proxy
  model at 3x its tokens by default) with `--transfer-seeds` seeds and scored on the report half;
  the transfer runs take the lab's default proxy settings with a cosine schedule and per-cluster
  streams (`YARDSTICK`: the settings every recorded table was judged by) whatever `--set` changes
  in the search's (`search.proxy.schedule`, `data_order`, ...), so that runs comparing proxy
  settings are judged by the same yardstick;
  searches and random draws repeated with `--seeds` seeds;
- per target: mean +- sd per method, the paired difference of climb against each baseline with a
  95% interval (mean +- 1.96 standard errors over the (seed, transfer seed) pairs), the spread of
  climb's seeds, the predictor's leave-one-out Spearman on the search's runs, wall time.

Resumable: every trained proxy is cached under `--cache` by its inputs (the ClimbLab's manifest,
the mixture, the seed, the proxy settings) with its scores on *every* target's halves, so the random
runs are shared between the targets of a lab and a killed run loses at most the runs in flight (a
cached run that predates a target the run needs is trained again, its other scores kept).
What is scaled down for 2 CPU cores is printed with the results (proxy size and tokens, budgets).
A proxy run takes ~30 s of one core here: the whole default run (2 labs x 3 targets x 3 seeds)
is about four hours on 2 cores from an empty cache (one lab's combined target alone, lab build included: ~60 minutes),
not the 90 minutes issue #20 asked for; a lab, a target (`--targets`) or fewer seeds is a run a
session can finish and resume.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
HELD_OUT = {"sample": ["debian-policy"], "debian": ["python-docs", "perl-docs"]}
DEBIAN_SOURCES = ["manpages", "python-code", "dictionary", "wordnet", "jargon", "fortunes"]


# ------------------------------------------------------------------------------------ targets
def split_halves(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """A target's documents into (select, report) halves by a hash of the document id: the same
    split whatever the order or the other documents."""
    select, report = [], []
    for r in records:
        (select if zlib.crc32(str(r["id"]).encode()) % 2 == 0 else report).append(r)
    return select, report


def write_jsonl_gz(path: Path, records: list[dict]) -> str:
    """Write the records unless the file already holds them: a rewritten input would make the
    product's stages rebuild the lab, and every cached run is keyed by the lab's manifest."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.exists():
        with gzip.open(path, "rt") as f:
            if f.read() == text:
                return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(text.encode())
    os.replace(tmp, path)
    return str(path)


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Target:
    name: str
    select: str  # jsonl.gz of the select half
    report: str  # jsonl.gz of the report half


def prepare_sample_corpus(cache: Path) -> tuple[str, list[Target]]:
    """The sample corpus less its held-out domains; targets: Debian Reference (held out when the
    sample was made) and each held-out domain."""
    corpus = read_jsonl_gz(SAMPLE / "corpus.jsonl.gz")
    held = HELD_OUT["sample"]
    train = [r for r in corpus if r["source"] not in held]
    out = cache / "corpora" / "sample"
    uri = write_jsonl_gz(out / "corpus.jsonl.gz", train)
    targets = {"debian-reference": read_jsonl_gz(SAMPLE / "target_val.jsonl.gz")}
    targets |= {s: [r for r in corpus if r["source"] == s and not r["id"].endswith("-copy")] for s in held}
    return uri, _targets(out, targets)


def prepare_debian_corpus(cache: Path, docs_per_source: int = 300) -> tuple[str, list[Target]]:
    """A second corpus from Debian packages (other sources than the sample's training mix leaves
    out), with two documentation domains held out as targets."""
    from mixture.corpus import sample

    out = cache / "corpora" / "debian"
    held = HELD_OUT["debian"]
    if not (out / "corpus.jsonl.gz").exists():
        try:
            sample.build_sample(out, docs_per_source, seed=1, target_source=None, sources=DEBIAN_SOURCES + held)
        except RuntimeError as e:  # a package missing: its message names the apt-get command
            raise SystemExit(f"search_quality: the Debian corpus: {e}") from None
    corpus = read_jsonl_gz(out / "corpus.jsonl.gz")
    train = [r for r in corpus if r["source"] not in held]
    uri = write_jsonl_gz(out / "train.jsonl.gz", train)
    targets = {s: [r for r in corpus if r["source"] == s and not r["id"].endswith("-copy")] for s in held}
    return uri, _targets(out, targets)


def _targets(out: Path, by_name: dict[str, list[dict]]) -> list[Target]:
    """The corpus's held-out domains and one more target, all of them together (`a+b`): a
    multi-domain target as the paper's are (several tasks). A single domain's best mixture is often
    one large group, a corner that random mixtures reach by themselves (the prior's draws put more
    than 80% on one group a third of the time); a blend of domains may need a blend of groups."""
    by_name = by_name | {"+".join(by_name): [r for recs in by_name.values() for r in recs]}
    return [_target(out, name, recs) for name, recs in by_name.items()]


def _target(out: Path, name: str, records: list[dict]) -> Target:
    select, report = split_halves(records)
    return Target(
        name,
        write_jsonl_gz(out / "targets" / f"{name}-select.jsonl.gz", select),
        write_jsonl_gz(out / "targets" / f"{name}-report.jsonl.gz", report),
    )


# ------------------------------------------------------------------------------------ labs
LABS = {  # k-means at 16 groups: the paper searches ~20 clusters; with 6-8, 30 random mixtures cover the simplex
    "sample-field": ("sample", {"cluster.method": "field", "cluster.field": "source"}),
    "sample-kmeans": ("sample", {"cluster.target_clusters": 16}),
    "debian-field": ("debian", {"cluster.method": "field", "cluster.field": "source"}),
    "debian-kmeans": ("debian", {"cluster.target_clusters": 16}),
    # 32 groups: the Debian corpus's two largest groups at 16 carry both held-out domains, a corner
    # that 30 random draws reach by themselves; split, a good mixture is a blend again
    "debian-kmeans-32": ("debian", {"cluster.target_clusters": 32}),
}


def search_folder(lab: str, target: str, seed: int | str, key: str) -> str:
    """The name of a search's cache folder (`parse_search_folder` reads it back); a `*` glob works."""
    return f"{lab}-{target}-s{seed}-{key}"


def parse_search_folder(name: str) -> tuple[str, str, int, str] | None:
    """(lab, target, seed, key) of a search's cache folder name, or None when it is no lab's: the
    lab is the longest lab name the folder starts with (debian-kmeans-32-... is not debian-kmeans's)."""
    lab = max((k for k in LABS if name.startswith(k + "-")), key=len, default=None)
    if lab is None:
        return None
    rest, _, key = name[len(lab) + 1 :].rpartition("-")
    target, _, seed = rest.rpartition("-s")
    if not target or not seed.isdigit():
        return None
    return lab, target, int(seed), key


BEFORE_20 = [  # `climb_today`: the search's defaults before issue #20
    "search.proxy.data_order=run",
    "search.proxy.schedule=cosine",
    "search.predictor.candidates=[lightgbm,ridge,ridge_sqrt,mixing_law]",
    "search.acquisition.min_distance=0",
    "search.trust_region=0",
    "search.final=top_mean",
    "search.playoff.enabled=false",
]


def lab_config(cache: Path, lab: str, corpus_uri: str, targets: list[Target], overrides: list[str]):
    """The demo's configuration on this lab's corpus, its own output root, `--set` overrides last."""
    from mixture.config import load_config, parse_overrides

    _, grouping = LABS[lab]
    sets = [f"output_root={cache / 'labs' / lab}", f"input.uris=[{corpus_uri}]"]
    sets += [f"{k}={v}" for k, v in grouping.items()]
    sets += [f"search.target.val_uris=[{targets[0].select}]"]
    return load_config(REPO / "configs" / "demo.yaml", parse_overrides(sets + overrides))


def build_lab(cfg) -> object:
    """The ClimbLab of the lab, by the product's stages (up to date after the first time)."""
    from mixture import pipeline
    from mixture.climblab import ClimbLab

    pipeline.run_all(cfg, until="shards")
    return ClimbLab(pipeline.current(cfg, pipeline.stage("shards")))


# -------------------------------------------------------------------------------- the runner
def run_key(lab_sha: str, w: np.ndarray, seed: int, pcfg: dict) -> str:
    body = json.dumps([lab_sha, [round(float(x), 6) for x in w], int(seed), pcfg], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


def _train_and_score(job: dict) -> dict:
    """One proxy trained on a mixture (or `job["segment"]` of a run, `proxy.Segment`), scored on every
    target's halves (a worker process)."""
    import torch
    from mixture.climblab import ClimbLab
    from mixture.config import ProxyConfig, TargetConfig
    from mixture.dataset import open_dataset
    from mixture.search import evaluate, proxy

    torch.set_num_threads(1)
    lab = ClimbLab(open_dataset(job["lab"]))
    pcfg = ProxyConfig(**job["proxy"])
    mixture = dict(zip(job["names"], job["weights"]))
    shards = {c: lab.shard(c).tokens for c, w in mixture.items() if w > 0}
    t0 = time.perf_counter()
    res = proxy.train(pcfg, shards, mixture, lab.vocab_size, lab.eos_id, job["seed"], segment=job.get("segment"))
    scores = {}
    for name, halves in job["targets"].items():
        for half, uri in halves.items():
            tcfg = TargetConfig(val_uris=[uri], val_tokens=job["val_tokens"], metric="bpb")
            target = evaluate.target_for(tcfg, lab.tokenizer_path, lab.eos_id, 0)
            ev = evaluate.evaluate(res.model, target, pcfg.seq_len, res.device)
            scores[f"{name}/{half}"] = float(ev["score"])
    return {"key": job["key"], "scores": scores, "seconds": round(time.perf_counter() - t0, 1)}


class Runner:
    """Trains proxies in `workers` processes, caches every result by its inputs (one JSON file a
    run, written atomically), and answers scores on a target's half."""

    def __init__(self, cache: Path, lab, names, prior, targets: list[Target], workers: int, val_tokens: int):
        self.dir = cache / "runs" / lab.dataset.manifest_sha256[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lab_uri, self.lab_sha = lab.dataset.uri, lab.dataset.manifest_sha256
        self.names, self.prior = names, prior  # the lab's groups and their token shares
        self.targets = {t.name: {"select": t.select, "report": t.report} for t in targets}
        self.workers, self.val_tokens = workers, val_tokens
        self.vocab_size = lab.vocab_size
        self.needed = list(self.targets)  # a cached run without one of these targets' scores is retrained
        self.trained = 0

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _cached(self, key: str) -> dict | None:
        """The scores cached under `key`, or None when the run is new or predates a needed target."""
        p = self._path(key)
        if not p.exists():
            return None
        scores = json.loads(p.read_text())["scores"]
        return scores if all(f"{t}/select" in scores for t in self.needed) else None

    def _store(self, out: dict) -> dict:
        """A trained run's scores, written atomically and returned; a retrained run keeps the
        scores cached before."""
        old = self._path(out["key"])
        if old.exists():
            out["scores"] = out["scores"] | json.loads(old.read_text())["scores"]
        tmp = old.with_suffix(".tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, old)
        self.trained += 1
        return out["scores"]

    def scores(self, batch: list[tuple[np.ndarray, int, dict]]) -> list[dict]:
        """Scores (every target and half) of each (weights, seed, proxy settings), trained if new."""
        keys = [run_key(self.lab_sha, w, seed, pcfg) for w, seed, pcfg in batch]
        got, jobs = {}, {}
        for key, (w, seed, pcfg) in zip(keys, batch):
            if key in got or key in jobs:
                continue
            if (cached := self._cached(key)) is not None:
                got[key] = cached
            else:
                jobs[key] = {
                    "key": key,
                    "lab": self.lab_uri,
                    "names": self.names,
                    "weights": [float(x) for x in w],
                    "seed": int(seed),
                    "proxy": pcfg,
                    "targets": self.targets,
                    "val_tokens": self.val_tokens,
                }
        if jobs:
            with ProcessPoolExecutor(self.workers) as pool:
                for out in pool.map(_train_and_score, jobs.values()):
                    got[out["key"]] = self._store(out)
        return [got[key] for key in keys]


# ------------------------------------------------------------------------------------ methods
@dataclass
class Context:
    """What every method of one lab and target needs."""

    lab: str
    cfg: object  # the lab's Config with the search under test (`--set`)
    sets: list[str]  # the overrides that made `cfg` from the lab's config
    base_sets: list[str]  # the overrides of `climb_today` (the search's defaults before issue #20)
    make_cfg: object  # overrides -> the lab's Config (`lab_config` with this lab's corpus)
    runner: Runner
    names: list[str]
    prior: np.ndarray
    target: Target
    truth: dict | None = None  # the transfer runs' proxy settings (the lab's defaults); None: the search's

    def proxy(self) -> dict:
        return self.cfg.search.proxy.model_dump(mode="json")

    def select_scores(self, W: np.ndarray, seed: int) -> np.ndarray:
        got = self.runner.scores([(w, seed, self.proxy()) for w in W])
        return np.array([g[f"{self.target.name}/select"] for g in got])


# The proxy defaults that changed since the recorded tables and the searches' folders were made
# (before WSD + spread became the search's default): {key: the default then}
EARLIER_DEFAULTS = {"search.proxy.schedule": "cosine", "search.proxy.data_order": "cluster"}
# The transfer runs keep them, so that every recorded table shares one yardstick
YARDSTICK = [f"{key}={was}" for key, was in EARLIER_DEFAULTS.items()]


def lab_truth(make_cfg, sets: list[str] = ()) -> dict:
    """The transfer runs' proxy settings: the lab's defaults (with `sets`, e.g. `--quick`'s) and
    `YARDSTICK`, whatever `--set` changes in the search's, so that runs comparing proxy settings
    share one yardstick."""
    return make_cfg(list(sets) + YARDSTICK).search.proxy.model_dump(mode="json")


def budget(scfg, vocab_size: int, groups: int) -> int:
    """Proxy runs of `search.proxy` that the search costs, in training compute: its runs (the part
    after the base when they continue from one), the base once, the experts, the playoff (anchors
    and transfer runs by tokens x parameters). Every random method gets that many runs."""
    runs = sum(scfg.iterations) * scfg.seeds
    if scfg.base.enabled:
        share = scfg.base.share
        runs = runs * (1 - share) + share
        if scfg.experts.enabled:
            runs += groups * ((scfg.experts.tokens or scfg.proxy.tokens * (1 - share)) / scfg.proxy.tokens)
    if scfg.playoff.enabled:
        from mixture.search import playoff

        runs += playoff.budget(scfg, vocab_size)["cost"]
    return math.ceil(runs - 1e-9)


def random_pool(ctx: Context, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """`budget` prior mixtures of draw `draw` (the first ones are the search's first iteration
    with the same seed: the same sampler stream) and their select scores."""
    from mixture.search import bootstrap
    from mixture.search.sampler import sample_mixtures

    s = ctx.cfg.search
    W = sample_mixtures(
        bootstrap.rng_for(draw, 0),
        ctx.prior,
        budget(s, ctx.runner.vocab_size, len(ctx.names)),
        temperature=s.temperature,
        concentration=s.concentration,
        epoch_cap=s.epoch_cap,
        floor=s.weight_floor,
    )
    return W, ctx.select_scores(W, draw)


def best_of_random(ctx: Context, draw: int) -> tuple[np.ndarray, dict]:
    W, y = random_pool(ctx, draw)
    return W[int(np.argmax(y))], {"runs": len(y), "best_select": float(y.max())}


def regmix(ctx: Context, draw: int) -> tuple[np.ndarray, dict]:
    from mixture.search import baselines, bootstrap

    W, y = random_pool(ctx, draw)
    obs = bootstrap.Observations(W, y, [[str(i)] for i in range(len(y))], [])
    w, info = baselines.regmix_mixture(ctx.cfg.model_copy(update={"seed": draw}), ctx.prior, obs)
    return w, {"runs": len(y), **info}


def search(ctx: Context, seed: int, sets: list[str]) -> tuple[np.ndarray, dict]:
    """The product's own search (`climb search`: base, experts, iterations and playoff as the
    config says) with `seed`, scored on the target's select half, in an output root of its own
    that links the lab's upstream datasets, so that a rerun finds it committed (resumable)."""
    from mixture import pipeline
    from mixture.search import bootstrap, ngram

    key = folder_key(sets)
    lab_root = Path(ctx.cfg.output_root)
    root = lab_root.parent.parent / "searches" / search_folder(ctx.lab, ctx.target.name, seed, key)
    for name in ("annotated", "curated", "embeddings", "clusters", "climblab"):
        if not (root / name).exists():
            root.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(lab_root / name, target_is_directory=True)
    own = [f"seed={seed}", f"output_root={root}", f"search.target.val_uris=[{ctx.target.select}]"]
    cfg = ctx.make_cfg(sets + own)
    if pipeline.current(cfg, "search") is None:
        reuse_first_iteration(cfg, root)
    ds = pipeline.run_stage(cfg, "search").dataset
    mixture = json.loads(Path(ds.path("mixture.json")).read_text())
    runs = proxy_runs([json.loads(Path(ds.path(f)).read_text()) for f in ds.files("runs/")])
    obs = bootstrap.observe(runs, ctx.names, cfg.search.weight_floor)
    return np.array([mixture["weights"].get(c, 0.0) for c in ctx.names]), {
        "runs": len(runs),
        "method": mixture["method"],
        # the lab the search ran on: `cfg` (its seed) would build another lab, clustered with that seed
        "loo_spearman": loo_spearman(cfg.search, obs, seed, ngram.for_search(cfg, build_lab(ctx.cfg), ctx.names)),
        "playoff": (mixture.get("playoff") or {}).get("reason"),
    }


def folder_key(sets: list[str]) -> str:
    """The suffix of a search's cache folder: a hash of `folder_sets(sets)`."""
    return hashlib.sha256(json.dumps(folder_sets(sets)).encode()).hexdigest()[:10]


def folder_sets(sets: list[str]) -> list[str]:
    """The overrides a search's folder is named by: `sets` written against the defaults of the time
    folders were first named (`EARLIER_DEFAULTS`), so that a folder keeps naming the settings it
    was searched with (today's defaults find the searches once run with `--set` for them)."""
    from mixture.config import ProxyConfig

    given = {s.split("=", 1)[0] for s in sets}
    now = {key: ProxyConfig.model_fields[key.rsplit(".", 1)[1]].default for key in EARLIER_DEFAULTS}
    implied = [f"{key}={now[key]}" for key in EARLIER_DEFAULTS if key not in given]
    return implied + [s for s in sets if s not in YARDSTICK]


def reuse_first_iteration(cfg, root: Path) -> None:
    """Stage the first-iteration runs that another search of this lab, target and seed committed
    with the same proxy settings into this search's staging folder, where the search finds them
    instead of training them again: the first iteration samples the prior with the seed's own
    stream whatever the rest of the search is, and a proxy run is deterministic (bench/faults.py:
    two clean searches are byte-identical). Only runs this search would propose are used (the run
    id holds the mixture and the seed)."""
    from mixture import pipeline

    proxy = cfg.search.proxy.model_dump(mode="json")
    runs = Path(pipeline.open_stage(cfg, "search").writer.staging) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    lab, target, seed, _ = parse_search_folder(root.name)
    for sibling in sorted(root.parent.glob(f"{search_folder(lab, target, seed, '*')}/search/runs")):
        for f in sibling.glob("it0-*.json"):
            rec = json.loads(f.read_text())
            if rec.get("proxy") == proxy and rec.get("seed") == cfg.seed and not (runs / f.name).exists():
                shutil.copyfile(f, runs / f.name)


def proxy_runs(runs: list[dict]) -> list[dict]:
    """A search's runs that the final choice and the predictor's leave-one-out read: the scored
    runs of its iterations, not the playoff's (iteration < 0)."""
    return [r for r in runs if r.get("iteration", 0) >= 0 and r.get("score") is not None]


def loo_spearman(scfg, obs, seed: int, estimate=None) -> float | None:
    """The chosen predictor family's leave-one-out Spearman on all of a search's runs (`estimate`:
    the search's n-gram estimate, for the predictors that use it)."""
    from mixture.search import predictor as pred

    if len(obs) < 5:
        return None
    pcfg = scfg.predictor.model_copy(update={"cv_folds": len(obs)})
    fitted = pred.fit_select(obs.X, obs.y, pcfg, seed, estimate=estimate)
    return float(fitted.cv[fitted.chosen].spearman)


METHODS = {
    "climb": lambda ctx, s: search(ctx, s, ctx.sets),
    "climb_today": lambda ctx, s: search(ctx, s, ctx.base_sets),
    "best_of_random": best_of_random,
    "regmix": regmix,
    "natural": lambda ctx, s: (ctx.prior.copy(), {}),
    "uniform": lambda ctx, s: (np.full(len(ctx.prior), 1 / len(ctx.prior)), {}),
}
SEEDLESS = {"natural", "uniform"}


# ------------------------------------------------------------------------------- transfer + stats
def transfer(ctx: Context, w: np.ndarray, seeds: list[int], tokens: int) -> list[float]:
    """The mixture retrained at the transfer scale, one score on the report half per seed."""
    pcfg = {**(ctx.truth or ctx.proxy()), "tokens": tokens}
    got = ctx.runner.scores([(w, 10_000 + t, pcfg) for t in seeds])
    return [g[f"{ctx.target.name}/report"] for g in got]


def paired(a: dict[int, list[float]], b: dict[int, list[float]]) -> dict:
    """Mean difference a - b over (seed, transfer seed) pairs, its standard error and 95% interval."""
    d = np.array([x - y for s in a for x, y in zip(a[s], b.get(s, b.get(0, [])))])
    if len(d) < 3:  # two pairs give no standard error worth an interval
        return {"mean": float(d.mean()) if len(d) else None, "se": None, "n": len(d)}
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    return {
        "mean": float(d.mean()),
        "se": se,
        "lo": float(d.mean() - 1.96 * se),
        "hi": float(d.mean() + 1.96 * se),
        "n": len(d),
        "significant": bool(abs(d.mean()) > 2 * se),
    }


def evaluate_target(ctx: Context, methods: list[str], seeds: list[int], args) -> dict:
    out = {}
    for m in methods:
        t0 = time.time()
        per_seed, info = {}, {}
        for s in [0] if m in SEEDLESS else seeds:
            w, info[s] = METHODS[m](ctx, s)
            per_seed[s] = transfer(ctx, w, list(range(args.transfer_seeds)), args.transfer_tokens)
            info[s]["weights"] = {c: round(float(x), 4) for c, x in zip(ctx.names, w) if x > 1e-4}
        scores = [x for v in per_seed.values() for x in v]
        out[m] = {
            "per_seed": per_seed,
            "mean": float(np.mean(scores)),
            "sd": float(np.std(scores, ddof=1)),
            "seed_means": {s: float(np.mean(v)) for s, v in per_seed.items()},
            "info": info,
            "seconds": round(time.time() - t0, 1),
        }
        print(f"  {ctx.target.name} {m}: {out[m]['mean']:.4f} ± {out[m]['sd']:.4f} ({out[m]['seconds']} s)", flush=True)
    return compare(out)


def compare(out: dict) -> dict:
    """climb's paired difference against every other method (in place; none without climb)."""
    if "climb" not in out:
        return out
    for m in out:
        if m != "climb":
            out["climb"].setdefault("vs", {})[m] = paired(out["climb"]["per_seed"], out[m]["per_seed"])
    return out


def report(results: dict, args) -> str:
    lines = [
        f"Proxy {args.proxy_desc}; transfer: {args.transfer_tokens:,} tokens x {args.transfer_seeds} seeds; "
        f"searches/draws: seeds {args.seeds}; score = -bits per byte on the report half (higher is better)."
    ]
    for key, per in results.items():
        lines += [
            "",
            f"### {key}",
            "",
            "| method | transfer score (mean ± sd) | per seed | climb - method (95% CI) |",
            "|---|---:|---|---:|",
        ]
        for m, r in sorted(per.items(), key=lambda kv: -kv[1]["mean"]):
            v = per.get("climb", {}).get("vs", {}).get(m)
            ci = (
                "-"
                if not v or v.get("se") is None
                else (f"{v['mean']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]{' *' if v['significant'] else ''}")
            )
            seeds = ", ".join(f"{x:.3f}" for x in r["seed_means"].values())
            lines.append(f"| {m} | {r['mean']:.4f} ± {r['sd']:.4f} | {seeds} | {ci} |")
        if "climb" in per:
            loo = [i.get("loo_spearman") for i in per["climb"]["info"].values()]
            lines.append(
                f"\nclimb's leave-one-out Spearman per seed: {', '.join(f'{x:.2f}' for x in loo if x is not None)}"
            )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(REPO / "out" / "search-quality"))
    ap.add_argument("--labs", default="sample-kmeans,debian-kmeans")
    ap.add_argument("--methods", default="best_of_random,natural,uniform,regmix,climb")
    ap.add_argument("--targets", default="", help="only these targets (comma-separated names); default all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--transfer-seeds", type=int, default=2)
    ap.add_argument("--transfer-factor", type=float, default=3.0, help="transfer tokens = factor x proxy tokens")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny budgets and proxies: checks the plumbing only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the search under test")
    return ap.parse_args(argv)


def open_lab(cache: Path, lab_name: str, sets: list[str], args):
    """The lab's Config (with `sets`), its Runner, its targets and a Config maker; sets
    `args.proxy_desc` and `args.transfer_tokens` from the proxy settings."""
    from mixture.search.steps import names_and_prior

    corpus = LABS[lab_name][0]
    corpus_uri, targets = (prepare_sample_corpus if corpus == "sample" else prepare_debian_corpus)(cache)
    cfg = lab_config(cache, lab_name, corpus_uri, targets, sets)
    lab = build_lab(cfg)
    names, prior = names_and_prior(lab)
    val_tokens = cfg.search.target.val_tokens  # the search's own: every method selects on the same text
    runner = Runner(cache, lab, names, prior, targets, args.workers, val_tokens)
    p = cfg.search.proxy
    args.proxy_desc = f"{p.preset} on {p.tokens:,} tokens, budget {budget(cfg.search, lab.vocab_size, len(names))} runs"
    args.transfer_tokens = int(p.tokens * args.transfer_factor)
    print(f"{lab_name}: {len(names)} groups, targets {[t.name for t in targets]}", flush=True)

    def make_cfg(extra: list[str]):
        return lab_config(cache, lab_name, corpus_uri, targets, extra)

    return cfg, runner, targets, make_cfg


def result_key(lab_name: str, target: str, sets: list[str]) -> str:
    """A run's entry in the results file: its lab, its target and the search's `--set`s, so that a
    run of other settings (or a `--quick` one, which writes its own file) keeps the defaults' figures."""
    return f"{lab_name} / {target}" + (f" [{', '.join(sets)}]" if sets else "")


def save_results(path: Path, results: dict) -> None:
    """This run's figures into the cache's results file, keeping other labs' and targets' (a run of
    one lab or target does not overwrite the last full run's)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(old | results, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cache = Path(args.cache)
    quick = (
        [
            "search.iterations=[6,3]",
            "search.playoff.budget_share=1.0",
            "search.proxy.preset=cpu-tiny",
            "search.proxy.tokens=20000",
            "search.candidates=2000",
        ]
        if args.quick
        else []
    )
    results, t0 = {}, time.time()
    for lab_name in args.labs.split(","):
        sets = quick + args.set
        cfg, runner, targets, make_cfg = open_lab(cache, lab_name, sets, args)
        names, prior = runner.names, runner.prior
        truth = lab_truth(make_cfg, quick)
        chosen = [t for t in targets if not args.targets or t.name in args.targets.split(",")]
        runner.needed = [t.name for t in chosen]
        for t in chosen:
            ctx = Context(lab_name, cfg, sets, quick + BEFORE_20, make_cfg, runner, names, prior, t, truth)
            seeds = list(range(args.seeds))
            results[result_key(lab_name, t.name, args.set)] = evaluate_target(ctx, args.methods.split(","), seeds, args)
        print(f"{lab_name}: {runner.trained} proxies trained in this run", flush=True)
    text = report(results, args)
    path = cache / ("results-quick.json" if args.quick else "results.json")
    save_results(path, results)
    print(text + f"\n\nwall time {time.time() - t0:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
