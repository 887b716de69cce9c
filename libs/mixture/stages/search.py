"""The `search` stage: CLIMB's iterative mixture search over the ClimbLab clusters.

Runs the steps of `mixture.search.steps` in one process, the way the Airflow DAG runs them as
tasks: the base proxy and the cluster experts when `search.base`/`search.experts` are on (the
experts in the pool), then for each iteration `propose` the jobs, train the proxies that are not finished yet (a
process pool, `mixture.search.pool`), then `finish` (fit the predictors, choose the mixture, stage
mixture.json and iterations.json); the runner commits.

Re-run only when it must (`mixture.search.carry`): after a corpus refresh that only moved the
clusters' token shares by `refresh.search_share_shift` or less, the committed search is carried
over as a new version (its files kept) instead of training any proxy.

With `search.playoff` on, the playoff runs after the last iteration (`steps.propose_playoff`:
anchor replicates and the finalists at transfer scale, the same pool) and `finish` commits its
winner (`mixture.search.playoff`).

Resumable: a killed search keeps its staged proposals and finished runs (the stage is registered
as resumable); the next `climb search` reuses them and trains only what is missing.
Paper budget (Diao et al., 2025): iterations 64/32/16; `configs/demo.yaml` scales it to 2 cores.
"""

from __future__ import annotations

import logging

from mixture import storage
from mixture.contract import StageContext, StageOutput
from mixture.search import steps
from mixture.search.carry import carry_or_none
from mixture.search.pool import Projection, ProxyRunner

log = logging.getLogger(__name__)


def run(ctx: StageContext, objective: steps.Objective | None = None) -> StageOutput:
    """`objective` replaces proxy training (tests). A committed search that still holds after a
    corpus refresh is carried over (`carry_or_none`: the same decision the Airflow tasks take)."""
    if (kept := carry_or_none(ctx)) is not None:
        return kept
    cfg, writer = ctx.cfg, ctx.writer
    t = steps.tracker(cfg, writer)
    logged = t.logged_proxies()
    reused, trained = 0, [0.0]
    eta = Projection(sum(cfg.search.iterations) * cfg.search.seeds, cfg.search.workers)

    def on_done(r: dict) -> None:
        trained[0] += float(r.get("seconds") or 0)
        t.log_proxy(r, logged)
        if line := eta.done(r):
            log.info("%s", line)

    with ProxyRunner(cfg, cfg.search.workers, cfg.search.proxy.threads) as runner:
        steps.base(ctx)  # search.base: trained once, before iteration 0 (Airflow: the `base` task)
        experts = [(j, steps.job_uri(writer, j)) for j in steps.expert_jobs(ctx)]
        if todo_experts := [(j, uri) for j, uri in experts if not storage.exists(uri)]:
            runner.run(todo_experts, ctx.inputs["climblab"], desc="cluster experts")
        for i in range(len(cfg.search.iterations)):
            jobs = steps.propose(ctx, i)
            todo = [j for j in jobs if steps.read_run(writer, j["run_id"]) is None]
            reused += len(jobs) - len(todo)
            eta.left -= len(jobs) - len(todo)
            for j in jobs:  # finished before a kill: log what was not logged
                if j not in todo:
                    t.log_proxy(steps.read_run(writer, j["run_id"]), logged)
            runner.run(
                [(j, writer.path(f"runs/{j['run_id']}.json")) for j in todo],
                ctx.inputs["climblab"],
                objective,
                on_done=on_done,
                desc=f"search iteration {i}",
            )
            if todo:
                log.info("search: iteration %d: %d proxy runs trained, %d reused", i, len(todo), len(jobs) - len(todo))
        reused += _playoff(ctx, runner, objective)
    out = steps.finish(ctx)
    out.extra["reused_runs"] = reused
    out.extra["seconds"] = {"proxies": round(trained[0], 1)}  # timings: the manifest's, not the files
    out.summary.insert(1, ("resumed", f"{reused} finished runs reused") if reused else ("resumed", "no"))
    return out


def _playoff(ctx: StageContext, runner: ProxyRunner, objective: steps.Objective | None) -> int:
    """The playoff's anchor and finalist runs (`search.playoff`; none when off), those not
    finished yet; returns how many were reused."""
    jobs = steps.propose_playoff(ctx)
    todo = [j for j in jobs if steps.read_run(ctx.writer, j["run_id"]) is None]
    if todo:
        runner.run(
            [(j, ctx.writer.path(f"runs/{j['run_id']}.json")) for j in todo],
            ctx.inputs["climblab"],
            objective,
            desc="search playoff",
        )
    return len(jobs) - len(todo)
