"""The search's steps, callable one by one: `base`, `expert_jobs`, `propose`, `run_proxy`,
`propose_playoff`, `finish`.

After a corpus refresh whose clusters' token shares barely moved, `propose` proposes nothing and
`finish` carries the committed search over (`mixture.search.carry.decide`, the one decision).

The CLI (`climb search`, `mixture.stages.search`) and Airflow (one task per step, proxy runs fanned
out) call the same functions on the stage's context, so both run the same code:

    ctx = pipeline.open_stage(cfg, "search")          # entry points open the stage
    base(ctx)                                          # search.base: the shared base proxy, once
    [run_proxy(ctx, j) for j in expert_jobs(ctx)]     # search.experts: one expert per cluster
    for i in range(len(cfg.search.iterations)):
        jobs = propose(ctx, i)                         # needs every run of iterations < i
        results = [run_proxy(ctx, j) for j in jobs]    # any order, any process, any machine
    for j in propose_playoff(ctx):                     # search.playoff on: anchors, finalists
        run_proxy(ctx, j)
    pipeline.commit(ctx, finish(ctx))                  # fit, choose, write mixture.json; commit

State lives only in the search's staging folder (`ctx.writer`: the same folder for the same config
and inputs, so separate processes share it):
`proposals/iter-<i>.json` (the jobs of iteration i, written once: a retried `propose` returns the
same jobs; `proposals/playoff.json` alike for the playoff), `runs/<run_id>.json` (one finished
proxy each, written atomically: a retried or resumed `run_proxy` returns it without training),
`base/` and `experts/` (`mixture.search.base`, `mixture.search.experts`: states and records, the
same way). Commit moves the folder into the dataset. With `search.base` on, every proxy job names
the base it continues from.

Run ids are `it<i>-<j>-<mixture hash>-s<seed>`: the hash ties a finished run file to its mixture.
Proxy seeds are `cfg.seed + s` for the s-th repeat of every mixture (common random numbers: the
same initial weights for all mixtures, so differences between runs come from the data).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from mixture import storage
from mixture.config import Config, ProxyConfig
from mixture.contract import StageContext, StageOutput
from mixture.search import base as base_proxy
from mixture.search import bootstrap, carry, experts, ngram, playoff, proxy, records

if TYPE_CHECKING:
    from mixture.dataset import Dataset, DatasetWriter

log = logging.getLogger(__name__)

# An objective stands in for training a proxy: (mixture by cluster name, seed) -> {"metrics", "score"}
Objective = Callable[[dict[str, float], int], dict]


class SearchError(RuntimeError):
    """A step called out of order, or a search state that cannot continue."""


# ------------------------------------------------------------------------------------ state
def _lab(inputs: dict):
    from mixture.climblab import ClimbLab

    return ClimbLab(inputs["climblab"])


def names_and_prior(lab) -> tuple[list[str], np.ndarray]:
    tpc = lab.checked_tokens_per_cluster()
    names = sorted(tpc)
    prior = np.array([tpc[c] for c in names], dtype=np.float64)
    if prior.sum() <= 0:
        raise SearchError("the climblab dataset has no tokens")
    return names, prior / prior.sum()


def run_id(iteration: int, index: int, mixture: dict[str, float], seed_index: int) -> str:
    blob = ",".join(f"{c}={mixture[c]:.6f}" for c in sorted(mixture))
    return f"it{iteration}-{index:03d}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}-s{seed_index}"


def search_key(writer: DatasetWriter) -> str:
    """The staging folder's name: one per config + inputs, shared by every step."""
    return storage.basename(writer.staging)


def proposals_rel(iteration: int) -> str:
    return f"proposals/iter-{iteration}.json"


def read_proposals(writer: DatasetWriter, iteration: int) -> dict | None:
    rel = proposals_rel(iteration)
    return storage.read_json(writer.path(rel)) if writer.has(rel) else None


def read_run(writer: DatasetWriter, rid: str) -> dict | None:
    rel = f"runs/{rid}.json"
    return storage.read_json(writer.path(rel)) if writer.has(rel) else None


def finished_runs(writer: DatasetWriter, upto: int) -> list[dict]:
    """Every run of iterations < upto; SearchError naming what is missing when one is not done."""
    runs, missing = [], []
    for i in range(upto):
        prop = read_proposals(writer, i)
        if prop is None:
            raise SearchError(f"iteration {i} was never proposed: call propose(cfg, {i}) first")
        for job in prop["jobs"]:
            r = read_run(writer, job["run_id"])
            if r is None:
                missing.append(job["run_id"])
            else:
                runs.append(r)
    if missing:
        raise SearchError(
            f"{len(missing)} proxy runs of earlier iterations are not finished "
            f"(e.g. {missing[:3]}): run them with run_proxy first"
        )
    return runs


def tracker(cfg: Config, writer: DatasetWriter):
    """The search's MLflow records; a store that fails is a warning, never the search's end."""
    from mixture import tracking
    from mixture.search.track import SearchTracker

    return tracking.Tracked(cfg, "search", lambda: SearchTracker(cfg, search_key(writer)))


# ----------------------------------------------------------------------------------- propose
def propose(ctx: StageContext, iteration: int) -> list[dict]:
    """The jobs of iteration `iteration` (0-based). Deterministic for the same config and the same
    earlier results, and written once: calling it again returns the stored jobs."""
    cfg, inputs, writer = ctx.cfg, ctx.inputs, ctx.writer
    n_iter = len(cfg.search.iterations)
    if not 0 <= iteration < n_iter:
        raise SearchError(f"iteration {iteration} is out of range: the search has {n_iter}")
    if carry.decide(ctx).carry:
        return []  # the committed search still holds: `finish` carries it over
    stored = read_proposals(writer, iteration)
    if stored is not None:
        return stored["jobs"]
    lab = _lab(inputs)
    names, prior = names_and_prior(lab)
    if iteration == 0 and cfg.search.playoff.enabled:  # refuse a playoff over budget before any training
        playoff.check_budget(cfg.search, lab.vocab_size)
    runs = finished_runs(writer, iteration)
    obs = bootstrap.observe(runs, names, cfg.search.weight_floor)
    extra = {"base": base_proxy.ref(writer.staging)} if cfg.search.base.enabled else {}
    screen = experts.screener(cfg, writer, lab, names)
    estimate = ngram.for_search(cfg, lab, names) if bootstrap.fits_predictor(iteration, len(obs)) else None
    W, report = bootstrap.propose(cfg.search, prior, iteration, obs, cfg.seed, screen=screen, estimate=estimate)
    predicted = report.get("picked_predicted") or [None] * len(W)
    jobs = []
    for j, (w, p) in enumerate(zip(W, predicted)):
        mixture = dict(zip(names, [float(x) for x in w]))
        for s in range(cfg.search.seeds):
            jobs.append(
                {
                    "run_id": run_id(iteration, j, mixture, s),
                    "iteration": iteration,
                    "index": j,
                    "mixture": mixture,
                    "seed": cfg.seed + s,
                    "proxy_section": "proxy",
                    "predicted": p,
                    **extra,
                }
            )
    report["excluded"] = obs.excluded
    _track_iteration(cfg, writer, iteration, report, jobs, names, prior, runs)
    storage.write_json(writer.path(proposals_rel(iteration)), {"iteration": iteration, "jobs": jobs, "report": report})
    log.info("search: iteration %d proposes %d proxy runs (%s)", iteration, len(jobs), report["method"])
    return jobs


# ------------------------------------------------------------------------- base and experts
def base(ctx: StageContext) -> dict | None:
    """Train the base proxy once before iteration 0 (`search.base`, `mixture.search.base`), or
    return the staged one; None when the base is off or the committed search is carried over."""
    cfg = ctx.cfg
    if not cfg.search.base.enabled or carry.decide(ctx).carry:
        return None
    lab = _lab(ctx.inputs)
    names, prior = names_and_prior(lab)
    return base_proxy.ensure(cfg, ctx.writer, lab, dict(zip(names, [float(x) for x in prior])))


def expert_jobs(ctx: StageContext) -> list[dict]:
    """The merged-expert jobs (`search.experts`, `mixture.search.experts`), one per cluster, after
    the base; none when experts are off or the committed search is carried over."""
    cfg = ctx.cfg
    if not cfg.search.experts.enabled or carry.decide(ctx).carry:
        return []
    names, prior = names_and_prior(_lab(ctx.inputs))
    return experts.jobs(cfg, names, prior, base_proxy.ref(ctx.writer.staging))


def job_uri(writer: DatasetWriter, job: dict) -> str:
    """Where a job's result is staged: runs/<run_id>.json, or experts/<cluster>.json."""
    return writer.path(experts.rel(job["cluster"]) if job.get("kind") == "expert" else f"runs/{job['run_id']}.json")


def _top_table(report: dict, names: list[str], rows: int = 20) -> str:
    lines = ["| rank | predicted | largest weights |", "|---:|---:|---|"]
    for t in report.get("top", [])[:rows]:
        w = np.asarray(t["weights"])
        top = np.argsort(-w)[:5]
        lines.append(
            f"| {t['rank']} | {t['predicted']:.4f} | "
            + ", ".join(f"{names[k]} {w[k]:.3f}" for k in top if w[k] > 0)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _track_iteration(cfg, writer, iteration, report, jobs, names, prior, runs) -> None:
    from mixture.search import plots

    t = tracker(cfg, writer)
    logged = t.logged_proxies()
    for r in runs:  # runs that another process finished (Airflow workers)
        t.log_proxy(r, logged)
    proposed = np.array([[j["mixture"][c] for c in names] for j in jobs])
    files: dict[str, bytes | str] = {
        f"iter-{iteration}-weights.png": plots.weights(
            names,
            {"prior": prior.tolist(), "proposed (mean)": proposed.mean(axis=0).tolist()},
            f"iteration {iteration}: proposed mixtures",
        )
    }
    pr = report.get("predictor")
    if pr:
        chosen = pr["chosen"]
        files[f"iter-{iteration}-scatter.png"] = plots.scatter(
            report["y"],
            report["oof"][chosen],
            f"iteration {iteration}: {chosen}, CV Spearman {pr['cv'][chosen]['spearman']:.2f}",
        )
        files[f"iter-{iteration}-top.md"] = _top_table(report, names)
    t.log_iteration(iteration, report, jobs, files)


# --------------------------------------------------------------------------------- run_proxy
def evaluate_mixture(
    cfg: Config,
    dataset: Dataset,
    mixture: dict[str, float],
    seed: int,
    pcfg: ProxyConfig,
    device: str | None = None,
    base_ref: dict | None = None,
    part: str = "select",
) -> dict:
    """Train one proxy on `mixture` (continued from the base `base_ref` names, when given) and
    evaluate it on the target's `part` (`select`: what the search chooses by; `report`: what
    results are reported on): the run's record minus ids."""
    segment = base_proxy.continued(cfg.search, *base_proxy.load(base_ref)) if base_ref is not None else None
    lab = _lab({"climblab": dataset})
    return proxy.train_and_evaluate(cfg, lab, mixture, seed, pcfg, device, segment, part=part)[0]


def check_job(job: dict, names: list[str]) -> None:
    for key in ("run_id", "iteration", "mixture", "seed"):
        if key not in job:
            raise SearchError(f"job {job.get('run_id', '?')}: missing {key!r}")
    unknown = set(job["mixture"]) - set(names)
    if unknown:
        raise SearchError(f"job {job['run_id']}: unknown clusters {sorted(unknown)}")
    total = sum(job["mixture"].values())
    if any(w < 0 for w in job["mixture"].values()) or abs(total - 1) > 1e-6:
        raise SearchError(f"job {job['run_id']}: weights must be non-negative and sum to 1 (sum {total})")


def execute(cfg: Config, job: dict, out_uri: str, dataset: Dataset, objective: Objective | None = None) -> dict:
    """Run one job unless `out_uri` already holds its result; write the result atomically.
    A merged-expert job (`kind: expert`) trains an expert (`mixture.search.experts`)."""
    if job.get("kind") == "expert":
        return experts.execute(cfg, job, out_uri, dataset)
    section = job.get("proxy_section", "proxy")
    sections = {"proxy": "proxy", "transfer_proxy": "transfer_proxy", "playoff": "finalist_proxy"}
    if section not in sections:
        raise SearchError(f"job {job.get('run_id', '?')}: proxy_section must be one of {sorted(sections)}")
    pcfg: ProxyConfig = getattr(cfg.search, sections[section])
    part = job.get("target_split", "select")  # the baselines' transfer runs report on "report"
    if part not in ("select", "report"):
        raise SearchError(f"job {job.get('run_id', '?')}: target_split must be 'select' or 'report'")
    if storage.exists(out_uri):
        done = storage.read_json(out_uri)
        if (
            done.get("mixture") != job["mixture"]
            or done.get("seed") != job["seed"]
            or done.get("proxy") != pcfg.model_dump(mode="json")
            or done.get("target_split", "select") != part
        ):
            raise SearchError(
                f"{out_uri} holds a different run than job {job['run_id']} "
                f"(another mixture, seed, proxy configuration or target part)"
            )
        return done
    names = sorted(_lab({"climblab": dataset}).tokens_per_cluster)
    check_job(job, names)
    base_of = job.get("base") if section == "proxy" else None
    if cfg.search.base.enabled and section == "proxy" and not base_of:
        raise SearchError(f"job {job['run_id']}: search.base is enabled but the job names no base to continue from")
    t0 = time.time()
    if objective is not None:
        result = dict(objective(job["mixture"], job["seed"]))
    else:
        try:
            result = evaluate_mixture(cfg, dataset, job["mixture"], job["seed"], pcfg, base_ref=base_of, part=part)
        except FloatingPointError as err:
            # a diverged proxy is recorded (and left out of the predictor with this reason), not
            # allowed to fail a search that has other runs to learn from
            log.warning("search: proxy %s diverged: %s", job["run_id"], err)
            result = {"metrics": {}, "score": None, "error": f"diverged: {err}"}
    score = result.get("score")
    out = {
        **job,
        **result,
        "proxy": pcfg.model_dump(mode="json"),
        "score": float(score) if score is not None and np.isfinite(score) else None,
        "seconds": round(time.time() - t0, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(out_uri, without_timings(out))
    log.info("search: proxy %s finished in %.1f s", job["run_id"], out["seconds"])
    return out  # with its timings: for the projection and MLflow


# Wall-clock measurements of a run (top level, and of its training): returned to the caller, which
# logs them (the run log, MLflow), never staged, so that a run's record is a function of its job.
TIMINGS = ("seconds", "eval_seconds", "finished_at", "tokens_per_s")


def without_timings(run: dict) -> dict:
    """The run's record as it is staged and committed: no wall-clock timings."""
    out = {k: v for k, v in run.items() if k not in TIMINGS}
    if isinstance(run.get("train"), dict):
        out["train"] = {k: v for k, v in run["train"].items() if k not in TIMINGS}
    return out


def run_proxy(ctx: StageContext, job: dict, objective: Objective | None = None) -> dict:
    """Train and evaluate one proxy for `job` (from `propose`); idempotent: a run whose JSON is
    staged already is returned without training. `objective` replaces the proxy (tests); an expert
    job trains its expert."""
    return execute(ctx.cfg, job, job_uri(ctx.writer, job), ctx.inputs["climblab"], objective)


# ----------------------------------------------------------------------------------- playoff
PLAYOFF_REL = "proposals/playoff.json"


def propose_playoff(ctx: StageContext) -> list[dict]:
    """The playoff's jobs (`mixture.search.playoff`): anchor replicates at proxy scale, then the
    finalists at transfer scale; none when `search.playoff` is off or the search is carried over.
    Needs every search run; written once, so a retried call returns the stored jobs."""
    cfg, writer = ctx.cfg, ctx.writer
    if not cfg.search.playoff.enabled or carry.decide(ctx).carry:
        return []
    if writer.has(PLAYOFF_REL):
        return storage.read_json(writer.path(PLAYOFF_REL))["jobs"]
    lab = _lab(ctx.inputs)
    names, prior = names_and_prior(lab)
    runs = finished_runs(writer, len(cfg.search.iterations))
    obs = bootstrap.observe(runs, names, cfg.search.weight_floor)
    estimate = ngram.for_search(cfg, lab, names)
    plan = playoff.plan(cfg.search, cfg.seed, names, prior, obs, lab.vocab_size, estimate)
    storage.write_json(writer.path(PLAYOFF_REL), plan)
    log.info(
        "search: playoff of %d finalists (%s) and %d anchor runs: %.1f of %.1f proxy-run equivalents",
        len(plan["finalists"]),
        ", ".join(f["name"] for f in plan["finalists"]),
        plan["budget"]["anchor_runs"],
        plan["budget"]["cost"],
        plan["budget"]["limit"],
    )
    return plan["jobs"]


def _playoff(ctx: StageContext, result: dict, names: list[str], runs: list[dict], obs) -> dict:
    """`result` with the playoff's winner applied and its record under `playoff`."""
    writer = ctx.writer
    if not writer.has(PLAYOFF_REL):
        raise SearchError("search.playoff is on but the playoff was never proposed: call propose_playoff first")
    stored = storage.read_json(writer.path(PLAYOFF_REL))
    found = {j["run_id"]: read_run(writer, j["run_id"]) for j in stored["jobs"]}
    missing = [rid for rid, r in found.items() if r is None]
    if missing:
        raise SearchError(
            f"{len(missing)} playoff runs are not finished (e.g. {missing[:3]}): run them with run_proxy first"
        )
    done = {rid: r for rid, r in found.items() if r is not None}
    rec = playoff.record(ctx.cfg.search, names, stored, done, runs, obs, result["method"])
    return playoff.apply(result, rec, names)


# ------------------------------------------------------------------------------------ finish
def finish(ctx: StageContext) -> StageOutput:
    """Fit the predictors on every run, choose the final mixture, stage iterations.json,
    mixture.json and the plots, log to MLflow, record the lineage; the caller commits
    (`pipeline.commit`). A committed search that still holds after a corpus refresh is carried
    over instead (`mixture.search.carry`)."""
    if (kept := carry.carry_or_none(ctx)) is not None:
        return kept
    return carry.record_search(ctx, _finish_search(ctx))


def _finish_search(ctx: StageContext) -> StageOutput:
    cfg, writer = ctx.cfg, ctx.writer
    lab = _lab(ctx.inputs)
    names, prior = names_and_prior(lab)
    n_iter = len(cfg.search.iterations)
    runs = finished_runs(writer, n_iter)
    obs = bootstrap.observe(runs, names, cfg.search.weight_floor)
    screen, estimate = experts.screener(cfg, writer, lab, names), ngram.for_search(cfg, lab, names)
    result = bootstrap.final(cfg.search, prior, obs, cfg.seed, screen=screen, estimate=estimate)
    if cfg.search.playoff.enabled:
        result = _playoff(ctx, result, names, runs, obs)

    iterations = records.iteration_records(all_proposals(writer, n_iter), runs)
    final_entry = {
        "predictor": result.get("predictor"),
        "method": result["method"],
        "reason": result.get("reason"),
        "observed": len(obs),
        "excluded": obs.excluded,
    }
    storage.write_json(writer.path("iterations.json"), {"iterations": iterations, "final": final_entry})
    mixture = records.mixture_record(cfg, names, prior, result, runs, len(obs))
    storage.write_json(writer.path("mixture.json"), mixture)
    files = records.final_plots(names, prior, result, iterations)
    for name, data in files.items():
        storage.write_bytes(writer.path(f"plots/{name}"), data)
    _track_final(cfg, writer, runs, result, files)
    target = records.target_record(cfg, lab)
    storage.write_json(writer.path("target.json"), target)

    best = result["best_observed"]
    counts = {"runs": len(runs), "iterations": n_iter}
    if "playoff" in result:
        counts["playoff_runs"] = len(storage.read_json(writer.path(PLAYOFF_REL))["jobs"])
    extra = {
        "mixture": mixture["weights"],
        "method": result["method"],
        "predictor": mixture["predictor"],
        "cv_spearman": mixture["cv_spearman"],
        "best_observed_score": best["score"],
    }
    summary = records.summary(cfg, result, mixture, iterations, len(runs))
    if val := target.get("val"):
        summary.insert(
            1,
            (
                "target",
                f"{val['tokens']:,} validation tokens from {val['documents']} of "
                f"{val['of_documents']} documents ({val['sampling']})",
            ),
        )
    return StageOutput(counts, extra, summary)


def all_proposals(writer: DatasetWriter, n_iter: int) -> list[dict]:
    """What every iteration proposed; SearchError when one never was."""
    out = []
    for i in range(n_iter):
        proposals = read_proposals(writer, i)
        if proposals is None:
            raise SearchError(f"iteration {i} was never proposed")
        out.append(proposals)
    return out


def _track_final(cfg: Config, writer: DatasetWriter, runs: list[dict], result: dict, files: dict) -> None:
    t = tracker(cfg, writer)
    logged = t.logged_proxies()
    for r in runs:
        t.log_proxy(r, logged)
    if result.get("playoff"):
        t.log_playoff(result["playoff"])
    t.log_final(
        {**result, "runs": len(runs)}, {**files, "mixture.json": storage.read_text(writer.path("mixture.json"))}
    )
