"""The noise-aware final choice: seed noise from replicated anchors, a few finalists, and a playoff
at a larger scale that decides between them (`search.playoff`, on by default).

Why: searches that differed only in their seed have ended 0.15-0.29 nats apart at transfer scale,
more than most gaps between methods; the best observed score is the maximum of many noisy draws
(biased up), and the predictor's pick, the top-k mean and the best observed mixture each won on
some targets and lost on others. So the last step does not trust one proxy-scale ranking:

- Seed noise (`anchor_seeds`): the natural mixture (the clusters' token shares) and the best
  observed one are trained `anchor_seeds` times at proxy scale (the best observed's search runs
  count among its seeds). The pooled within-mixture standard deviation over every mixture with
  two or more runs is the search's seed noise (`mixture.search.noise`); the summary says it, how
  many observed mixtures lie within it of the best observed (mixtures its "best" does not tell
  apart) and the rank it leaves any predictor of single runs (`rank_ceiling`). The replicate of
  the best observed includes its selected, upward-biased run, so the estimate leans high.
- Finalists (`finalists`: a pure function of the fitted predictor, the candidates, the prior and
  the observations): `predicted`, the predictor's best candidate (`final: best`); `kl_prior`, the
  candidate maximising predicted score - kl_lambda * KL(w || prior), so that a predicted gain must
  pay for leaving the natural mixture; `top_mean`, the mean of the top-k candidates (RegMix's
  choice, `final: top_mean`); `best_observed`; `best_fitted`, the trained mixture the predictor
  fits best (`final: best_fitted`, without its fallback: the playoff judges it). Equal mixtures
  are one finalist (`also` names the others). The candidates and the predictor are those of
  `bootstrap.final` (same seed and stream).
- The playoff: every finalist is trained `seeds` times with the search's proxy on `tokens_factor`
  (2) times its tokens, or with `search.transfer_proxy` when the factor is null (the same seeds for
  all: common random numbers), and scored on the target's select part. Twice the proxy's tokens
  picked the finalist that is better at three times in 9 of 11 real playoffs, at two thirds of the
  cost of a three-times playoff (bench/RESULTS.md). The playoff-scale noise
  is the pooled within-finalist standard deviation (conservative with common seeds: it keeps the
  seeds' shared effect). A finalist whose mean is within noise_z standard errors of the difference
  (noise_z * sd * sqrt(1/n_top + 1/n)) of the top mean is tied with the top. Among the tied
  (`tie_break: search_choice`), the search's own choice (`bootstrap.final`'s) is kept, else the
  most prior-like (lowest KL(w || prior), then the earlier in `finalists`): the playoff overrides
  the search only on evidence beyond the noise. Measured on the synthetic objective (12 clusters,
  seed noise 0.25 x the spread of random mixtures, no shift between scales, 22-run searches, 20
  searches, 2 seeds): keeping the search's choice gained +0.012 +- 0.009 (se) in true score over
  the search alone, taking the most prior-like -0.002 +- 0.013, the top playoff mean +0.011 +-
  0.013; with the optimum near the sampler's mean, -0.006 +- 0.004, -0.023 and -0.020 at noise_z 1,
  and no change at noise_z 2 (+0.011 +- 0.008 on the first problem set). On real proxies with two
  seeds a finalist, noise_z 2 kept the search's choice in all 11 playoffs, and 0 (the higher mean
  wins) picked the finalist better at three times the tokens in 9 of 11: the default is 0.
  The winner is committed as the search's mixture.
- Budget: the anchors and the playoff cost at most `budget_share` (default a quarter) of the
  search's proxy runs, in proxy-run equivalents: an anchor run is one; a transfer run is its
  tokens x parameters over the search proxy's (training compute is ~6 N D; parameters counted from
  the preset, the sequence length and the tokenizer's vocabulary). A config over budget is refused
  before the search trains anything (`check_budget`, when iteration 0 is proposed).

Everything here is a pure function; `steps.propose_playoff` stages the jobs (ordinary proxy jobs,
`runs/<run_id>.json`), `steps.finish` applies the outcome.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from mixture.config import ProxyConfig, SearchConfig
from mixture.search import bootstrap
from mixture.search import predictor as pred
from mixture.search.noise import pooled_sd, proxy_noise
from mixture.search.proxy import preset
from mixture.search.sampler import mixture_keys


class PlayoffError(ValueError):
    """A playoff that cannot run as configured (over its budget)."""


# ------------------------------------------------------------------------------------ budget
def gpt2_params(pcfg: ProxyConfig, vocab_size: int) -> int:
    """Parameters of the proxy model `pcfg` builds (tied embeddings): token and position
    embeddings, 12 d^2 + 13 d per layer, the final layer norm."""
    p = preset(pcfg.preset)
    d, layers = p["n_embd"], p["n_layer"]
    return vocab_size * d + pcfg.seq_len * d + layers * (12 * d * d + 13 * d) + 2 * d


def run_cost(pcfg: ProxyConfig, vocab_size: int) -> float:
    """A run's training compute up to the constant: tokens x parameters."""
    return float(pcfg.tokens) * gpt2_params(pcfg, vocab_size)


def anchor_run_count(scfg: SearchConfig) -> int:
    """Runs the anchors add: the natural mixture's seeds, the best observed's beyond its own."""
    a = scfg.playoff.anchor_seeds
    return a + max(0, a - scfg.seeds) if a else 0


def budget(scfg: SearchConfig, vocab_size: int, n_finalists: int | None = None) -> dict:
    """The playoff's cost and limit in proxy-run equivalents."""
    pc = scfg.playoff
    n = len(pc.finalists) if n_finalists is None else n_finalists
    per_transfer = run_cost(scfg.finalist_proxy, vocab_size) / run_cost(scfg.proxy, vocab_size)
    search_runs = sum(scfg.iterations) * scfg.seeds
    anchors = anchor_run_count(scfg)
    return {
        "search_runs": search_runs,
        "limit": round(pc.budget_share * search_runs, 4),
        "anchor_runs": anchors,
        "transfer_runs": n * pc.seeds,
        "transfer_run_cost": round(per_transfer, 4),
        "cost": round(anchors + n * pc.seeds * per_transfer, 4),
    }


def check_budget(scfg: SearchConfig, vocab_size: int, n_finalists: int | None = None) -> dict:
    """`budget`, or PlayoffError naming the numbers when the playoff would cost more."""
    b = budget(scfg, vocab_size, n_finalists)
    if b["cost"] > b["limit"] + 1e-9:
        pc = scfg.playoff
        raise PlayoffError(
            f"search.playoff would cost {b['cost']:.1f} proxy-run equivalents ({b['transfer_runs']} transfer "
            f"runs of {b['transfer_run_cost']:.2f} each + {b['anchor_runs']} anchor runs), more than "
            f"search.playoff.budget_share {pc.budget_share} of the search's {b['search_runs']} proxy runs "
            f"({b['limit']:.1f}): lower search.playoff.tokens_factor (search.transfer_proxy's tokens when "
            f"it is null), playoff.seeds, playoff.anchor_seeds or the number of playoff.finalists, raise "
            f"playoff.budget_share, or set search.playoff.enabled: false"
        )
    return b


# --------------------------------------------------------------------------------- finalists
def kl_to_prior(W: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """KL(w || prior) of each row, in nats (0 log 0 = 0; inf where w > 0 and the prior is 0)."""
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    p = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(W > 0, W * np.log(W / p), 0.0)
    return terms.sum(axis=1)


def finalists(
    scfg: SearchConfig,
    fitted: pred.Fitted,
    C: np.ndarray,
    prior: np.ndarray,
    obs: bootstrap.Observations,
    region: dict | None = None,
) -> list[dict]:
    """The configured finalists in priority order, equal mixtures merged (`also`); C are the
    candidates within the trust `region` (`bootstrap.final_candidates`)."""
    pc = scfg.playoff
    predicted = fitted.predict(C)
    order = fitted.rank(C, predicted)
    position = np.empty(len(C), dtype=np.int64)
    position[order] = np.arange(len(C))
    penalised = predicted - pc.kl_lambda * kl_to_prior(C, prior)
    b = obs.best()
    pick = {
        "predicted": lambda: C[order[0]],
        "kl_prior": lambda: C[np.lexsort((position, -penalised))[0]],
        "top_mean": lambda: bootstrap.pick("top_mean", scfg, prior, C, order, obs.X, region or {}),
        "best_observed": lambda: obs.X[b],
        "best_fitted": lambda: obs.X[bootstrap.best_fitted_index(fitted, obs)],
    }
    out: list[dict] = []
    seen: dict[bytes, dict] = {}
    for name in pc.finalists:
        w = np.asarray(pick[name](), dtype=np.float64)
        key = mixture_keys(w, scfg.weight_floor)[0]
        if key in seen:
            seen[key]["also"].append(name)
            continue
        entry = {
            "name": name,
            "weights": w.tolist(),
            "predicted": float(fitted.predict(w[None])[0]),
            "kl_prior": float(kl_to_prior(w, prior)[0]),
            "also": [],
        }
        if name == "best_observed":
            entry["observed"] = float(obs.y[b])
        seen[key] = entry
        out.append(entry)
    return out


def choose_finalists(
    scfg: SearchConfig, prior: np.ndarray, obs: bootstrap.Observations, seed: int, estimate: pred.Estimate | None = None
) -> tuple[list[dict], dict | None]:
    """The finalists from the search's observations, with the same predictor and candidates as
    `bootstrap.final`; with fewer than 3 observed mixtures, or no candidate in the trust region,
    only the best observed (no predictor)."""
    C, region = bootstrap.final_candidates(scfg, prior, obs, seed) if len(obs) >= bootstrap.MIN_FIT_RUNS else (None, {})
    if C is None or not len(C):
        if "best_observed" not in scfg.playoff.finalists or not len(obs):
            return [], None
        b = obs.best()
        w = obs.X[b]
        return [
            {
                "name": "best_observed",
                "weights": w.tolist(),
                "predicted": None,
                "kl_prior": float(kl_to_prior(w, prior)[0]),
                "also": [],
                "observed": float(obs.y[b]),
            }
        ], None
    # the predictor `bootstrap.final` fits: the same fit again (deterministic per seed), as the
    # playoff is planned in a task of its own before the search's finish
    fitted = bootstrap.fit_predictor(scfg, obs, seed, estimate)
    return finalists(scfg, fitted, C, prior, obs, region), fitted.report()


# -------------------------------------------------------------------------------------- jobs
def mixture_hash(mixture: dict[str, float]) -> str:
    """The mixture's short hash, as in the search's run ids (`steps.run_id`)."""
    blob = ",".join(f"{c}={mixture[c]:.6f}" for c in sorted(mixture))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def anchor_jobs(scfg: SearchConfig, seed: int, names: list[str], prior: np.ndarray, obs) -> list[dict]:
    """Proxy-scale replicates: the natural mixture with seeds seed+0..a-1, the best observed with
    the seeds its search runs did not use (seed+seeds..a-1)."""
    a = scfg.playoff.anchor_seeds
    if a == 0 or not len(obs):
        return []
    jobs = []
    for name, w, seeds in (
        ("natural", np.asarray(prior) / np.sum(prior), range(a)),
        ("best_observed", obs.X[obs.best()], range(scfg.seeds, a)),
    ):
        mixture = dict(zip(names, [float(x) for x in w]))
        h = mixture_hash(mixture)
        for s in seeds:
            jobs.append(
                {
                    "run_id": f"anchor-{name}-{h}-s{s}",
                    "iteration": -1,
                    "index": 0,
                    "mixture": mixture,
                    "seed": seed + s,
                    "proxy_section": "proxy",
                    "anchor": name,
                }
            )
    return jobs


def finalist_jobs(scfg: SearchConfig, seed: int, names: list[str], finals: list[dict]) -> list[dict]:
    """Every finalist at the playoff's scale (`finalist_proxy`), seeds seed+0..playoff.seeds-1
    (the same for all)."""
    jobs = []
    for i, f in enumerate(finals):
        mixture = dict(zip(names, [float(x) for x in f["weights"]]))
        h = mixture_hash(mixture)
        for s in range(scfg.playoff.seeds):
            jobs.append(
                {
                    "run_id": f"playoff-{f['name']}-{h}-s{s}",
                    "iteration": -1,
                    "index": i,
                    "mixture": mixture,
                    "seed": seed + s,
                    "proxy_section": "playoff",
                    "finalist": f["name"],
                }
            )
    return jobs


def plan(
    scfg: SearchConfig,
    seed: int,
    names: list[str],
    prior: np.ndarray,
    obs: bootstrap.Observations,
    vocab_size: int,
    estimate: pred.Estimate | None = None,
) -> dict:
    """What `proposals/playoff.json` holds: the finalists, the budget and the jobs (anchors first).
    With fewer than two distinct finalists there is nothing to play off: only the anchors run."""
    finals, predictor = choose_finalists(scfg, prior, obs, seed, estimate)
    playing = len(finals) >= 2
    b = check_budget(scfg, vocab_size, len(finals) if playing else 0)
    skipped = None
    if not playing:
        skipped = f"{len(finals)} distinct finalist(s) of {scfg.playoff.finalists}: nothing to play off"
    jobs = anchor_jobs(scfg, seed, names, prior, obs) + (finalist_jobs(scfg, seed, names, finals) if playing else [])
    return {"finalists": finals, "predictor": predictor, "budget": b, "skipped": skipped, "jobs": jobs}


# ------------------------------------------------------------------------------------- noise
# the finalist that is `bootstrap.final`'s own choice, by its `method`
SEARCH_CHOICE = {
    "best": "predicted",
    "top_mean": "top_mean",
    "best_observed": "best_observed",
    "best_fitted": "best_fitted",
}


def decide(entries: list[dict], noise_z: float, prefer: str | None = None) -> dict:
    """The playoff's outcome. `entries`: finalists in priority order, each with `name`, `kl_prior`
    and `scores` (finite transfer scores). The top mean, the finalists tied with it within the
    noise, the winner and why: among the tied, `prefer` (the search's own choice) when it is one
    of them, else the most prior-like."""
    scored = [e for e in entries if e["scores"]]
    if not scored:
        return {
            "winner": None,
            "top": None,
            "tied": [],
            "sd": None,
            "df": 0,
            "margin": None,
            "reason": "no finalist has a finished transfer run",
        }
    sd, df = pooled_sd([e["scores"] for e in scored])
    prio = {e["name"]: i for i, e in enumerate(entries)}
    mean = {e["name"]: float(np.mean(e["scores"])) for e in scored}
    top = max(scored, key=lambda e: (mean[e["name"]], -e["kl_prior"], -prio[e["name"]]))

    def margin(e: dict) -> float:
        return noise_z * (sd or 0.0) * math.sqrt(1 / len(top["scores"]) + 1 / len(e["scores"]))

    tied = [e for e in scored if mean[top["name"]] - mean[e["name"]] <= margin(e)]
    winner = min(tied, key=lambda e: (e["name"] != prefer, e["kl_prior"], prio[e["name"]]))
    m = margin(top)
    noise = (
        f"noise margin {m:.4f} = {noise_z:g} x seed sd {sd:.4f} x sqrt(1/n + 1/n)"
        if sd is not None
        else ("no seed-noise estimate (no finalist has two finished runs): every difference counts")
    )
    w = winner["name"]
    if len(tied) == 1:
        rest = sorted((e for e in scored if e is not winner), key=lambda e: -mean[e["name"]])
        beats = f", {mean[w] - mean[rest[0]['name']]:.4f} above {rest[0]['name']}" if rest else ""
        reason = f"{w} has the highest mean transfer score ({mean[w]:.4f}{beats}; {noise})"
    else:
        why = "the search's own choice" if w == prefer else f"the most prior-like (KL {winner['kl_prior']:.3f})"
        reason = (
            f"{len(tied)} finalists are within the noise of the top ({top['name']} {mean[top['name']]:.4f}; "
            f"{noise}): {', '.join(e['name'] for e in tied)}; {why}, {w}, is committed"
        )
    return {
        "winner": w,
        "top": top["name"],
        "tied": [e["name"] for e in tied],
        "sd": sd,
        "df": df,
        "margin": m,
        "reason": reason,
    }


def _mean_metrics(runs: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r.get("metrics", {})})
    out = {}
    for k in keys:
        v = [r["metrics"][k] for r in runs if r.get("metrics", {}).get(k) is not None]
        if v:
            out[k] = float(np.mean(v))
    return out


def record(
    scfg: SearchConfig,
    names: list[str],
    stored: dict,
    runs: dict[str, dict],
    search_runs,
    obs,
    search_method: str | None = None,
) -> dict:
    """mixture.json's `playoff`: the finalists (weights, prediction, KL to the prior, transfer
    score per seed, mean and sd, mean metrics), the noise at both scales, the tie group, the
    winner and why. `stored`: `plan`'s output; `runs`: the finished playoff runs by run id;
    `search_method`: `bootstrap.final`'s method (whose finalist a tie keeps, `tie_break`)."""
    entries = []
    for f in stored["finalists"]:
        mine = sorted(
            (runs[j["run_id"]] for j in stored["jobs"] if j.get("finalist") == f["name"]), key=lambda r: r["seed"]
        )
        scores = [r["score"] for r in mine if r.get("score") is not None]
        entries.append(
            {
                **f,
                "weights": dict(zip(names, [float(x) for x in f["weights"]])),
                "seeds": [r["seed"] for r in mine],
                "seed_scores": [r.get("score") for r in mine],
                "scores": scores,
                "mean": float(np.mean(scores)) if scores else None,
                "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                "metrics": _mean_metrics(mine),
                "run_ids": [r["run_id"] for r in mine],
            }
        )
    anchors = [runs[j["run_id"]] for j in stored["jobs"] if j.get("anchor")]
    alias = {a: f["name"] for f in stored["finalists"] for a in [f["name"], *f["also"]]}
    prefer = (
        alias.get(SEARCH_CHOICE.get(search_method or "", "")) if scfg.playoff.tie_break == "search_choice" else None
    )
    outcome = decide(entries, scfg.playoff.noise_z, prefer) if stored.get("skipped") is None else None
    for e in entries:
        e.pop("scores")
    return {
        "finalists": entries,
        "winner": outcome["winner"] if outcome else None,
        "tied": outcome["tied"] if outcome else [],
        "reason": outcome["reason"] if outcome else stored["skipped"],
        "noise": {
            "transfer": {k: outcome[k] for k in ("sd", "df", "margin")} if outcome else None,
            "proxy": proxy_noise(scfg, names, search_runs, anchors, obs),
            "noise_z": scfg.playoff.noise_z,
        },
        "seeds": scfg.playoff.seeds,
        "tie_break": {"rule": scfg.playoff.tie_break, "search_choice": prefer},
        "budget": stored["budget"],
        "proxy": scfg.finalist_proxy.model_dump(mode="json"),
        "target_part": "select",
    }


def apply(result: dict, rec: dict, names: list[str]) -> dict:
    """`bootstrap.final`'s result with the playoff's winner committed (its choice kept as
    `search_choice`); unchanged but for `playoff` when there was no winner."""
    if rec["winner"] is None:
        return {**result, "playoff": rec}
    win = next(f for f in rec["finalists"] if f["name"] == rec["winner"])
    return {
        **result,
        "weights": [win["weights"][c] for c in names],
        "method": "playoff",
        "reason": f"playoff: {rec['reason']}",
        "predicted": win["predicted"],
        "search_choice": {
            "method": result["method"],
            "reason": result.get("reason"),
            "weights": dict(zip(names, result["weights"])),
        },
        "playoff": rec,
    }


def run_playoff(
    scfg: SearchConfig,
    prior: np.ndarray,
    obs: bootstrap.Observations,
    proxy_objective: Callable[[np.ndarray, int], float],
    transfer_objective: Callable[[np.ndarray, int], float],
    seed: int = 0,
    vocab_size: int = 4096,
    search_method: str | None = None,
) -> dict:
    """The playoff in one process after `bootstrap.run_search` (tests and benchmarks: objectives
    `(weights, seed) -> score` stand in for proxy and transfer runs; each observed mixture counts
    as one search run). Returns `record`'s dict; `apply` commits its winner."""
    names = [f"c{i:02d}" for i in range(len(prior))]
    stored = plan(scfg, seed, names, prior, obs, vocab_size)
    runs = {}
    for j in stored["jobs"]:
        w = np.array([j["mixture"][c] for c in names])
        f = proxy_objective if j["proxy_section"] == "proxy" else transfer_objective
        runs[j["run_id"]] = {**j, "score": float(f(w, j["seed"])), "metrics": {}}
    search_runs = [{"mixture": dict(zip(names, x.tolist())), "score": float(y)} for x, y in zip(obs.X, obs.y)]
    return record(scfg, names, stored, runs, search_runs, obs, search_method)
