"""The `baselines` stage (`climb baselines`): the search's mixture against the usual alternatives.

Natural, uniform, best-of-random and RegMix mixtures under the search's proxy budget, every
method's mixture trained at proxy and at transfer scale (`mixture.search.baselines` has the
methods and the paper's numbers). Reads the committed `climblab` and `search` datasets, writes
`baselines` (runs/, results.json, table.md, weights.png), logs an MLflow run beside the search's.
Resumable: finished proxy runs are kept in the staging folder and reused.
"""

from __future__ import annotations

import numpy as np

from mixture import storage, tracking
from mixture.climblab import ClimbLab
from mixture.contract import StageContext, StageOutput
from mixture.search import base, plots, steps
from mixture.search import baselines as B
from mixture.search.pool import ProxyRunner
from mixture.search.track import SearchTracker


def run(ctx: StageContext, objective: steps.Objective | None = None) -> StageOutput:
    """`objective` replaces proxy training (tests)."""
    cfg, writer = ctx.cfg, ctx.writer
    climblab, search = ctx.inputs["climblab"], ctx.inputs["search"]
    names, prior = steps.names_and_prior(ClimbLab(climblab))
    search_runs = [storage.read_json(f) for f in search.files("runs/")]
    search_mixture = storage.read_json(search.path("mixture.json"))

    with ProxyRunner(cfg, cfg.search.workers, cfg.search.proxy.threads) as runner:

        def run_jobs(jobs: list[dict], desc: str) -> list[dict]:
            jobs = base.with_base(cfg, search.uri, jobs)  # search.base: proxy-scale runs continue from it
            return runner.run(
                [(j, writer.path(f"runs/{j['run_id']}.json")) for j in jobs], climblab, objective, desc=desc
            )

        pool, mixtures, regmix_info, obs = B.pool_jobs_and_mixtures(
            cfg, names, prior, search_runs, search_mixture, run_jobs
        )
        finished = run_jobs(B.transfer_jobs(cfg, names, mixtures), "baselines: transfer")

    results = B.results_record(cfg, finished, pool, obs, regmix_info, search_mixture)
    text = B.table(results)
    weights_png = plots.weights(names, {m: np.asarray(mixtures[m]).tolist() for m in B.METHODS}, "baseline mixtures")
    storage.write_json(writer.path("results.json"), results)
    storage.write_text(writer.path("table.md"), text + "\n")
    storage.write_bytes(writer.path("weights.png"), weights_png)
    with tracking.recorded(cfg, "baselines"):
        SearchTracker(cfg, steps.search_key(writer)).log_baselines(
            results, {"table.md": text, "weights.png": weights_png}
        )
    return StageOutput(
        {"methods": len(B.METHODS), "runs": len(finished) + len(pool)},
        {
            "transfer_score": results["transfer_score"],
            "climb_beats_every_baseline": results["climb_beats_every_baseline"],
        },
        [("climb beats every baseline", results["climb_beats_every_baseline"])],
    )
