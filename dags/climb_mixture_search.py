"""Mixture search: CLIMB's iterative bootstrapping as Airflow tasks, then build and publish.

Triggered when the corpus refresh announces new ClimbLab shards (asset `climb://datasets/climblab`;
the run uses the config named in the event), or by hand with the `config` param. Per search
iteration i: `propose_i` returns the iteration's proxy jobs (`mixture.search.steps.propose`), and
`proxy_runs_i` trains them as dynamically mapped tasks in the `gpu` pool (`steps.run_proxy`, which
reuses a finished run, so a retry or a re-run repeats no training). The paper's search has 3
iterations (64, 32, 16 proxy runs); a DAG's shape is fixed when it is parsed, so the DAG unrolls
`climb_search_max_iterations` (Variable, default 3) slots, and the slots beyond the config's
`search.iterations` propose nothing and are skipped. Then `finish` fits the predictors and commits
the search dataset, `build` writes ClimbMix (and updates the `climb://datasets/climbmix` asset),
and `publish` copies it to `publish.uri`, skipped when that is unset.
"""

from __future__ import annotations

from typing import Any

import pendulum
from _common import (
    CLIMBLAB,
    CLIMBMIX,
    DEFAULT_ARGS,
    GPU_POOL,
    GPU_QUEUE,
    asset_extra,
    check_config,
    config_param,
    config_path,
    describe,
    load_config,
    run_stage,
    variable,
)
from airflow.sdk import DAG, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

MAX_ITERATIONS = int(variable("climb_search_max_iterations"))


@task
def resolve_config(**context: Any) -> str:
    """The run's config file, checked before any proxy trains: it must load, and its search must
    fit in the iterations this DAG unrolls."""
    path = config_path(context)
    n = len(check_config(path).search.iterations)
    if n > MAX_ITERATIONS:
        raise AirflowFailException(
            f"{path} has {n} search iterations but this DAG unrolls {MAX_ITERATIONS}: "
            f"set the Airflow Variable climb_search_max_iterations to {n} or more"
        )
    return path


@task
def propose(config: str, iteration: int) -> list[dict[str, Any]]:
    from mixture import pipeline
    from mixture.search import steps

    cfg = load_config(config)
    if iteration >= len(cfg.search.iterations) or pipeline.current(cfg, "search"):
        return []  # a slot this config does not use, or the search is already committed
    return steps.propose(pipeline.open_stage(cfg, "search"), iteration)


@task(pool=GPU_POOL, queue=GPU_QUEUE, map_index_template="{{ proxy_run }}")
def run_proxy(config: str, job: dict[str, Any]) -> dict[str, Any]:
    """One proxy run; the full record (loss curve, timings) stays in the search's staging folder
    and MLflow, the XCom keeps what the UI shows."""
    from mixture import pipeline
    from mixture.search import steps

    get_current_context()["proxy_run"] = job["run_id"]  # names the mapped task in the UI
    result = steps.run_proxy(pipeline.open_stage(load_config(config), "search"), job)
    return {k: result.get(k) for k in ("run_id", "iteration", "score", "seconds")}


@task(trigger_rule=TriggerRule.NONE_FAILED)  # the last slots' mapped tasks may be skipped
def finish(config: str) -> dict[str, Any]:
    from mixture import pipeline
    from mixture.search import steps

    cfg = load_config(config)
    if done := pipeline.current(cfg, "search"):
        return describe(done, skipped=True)
    ctx = pipeline.open_stage(cfg, "search")
    return describe(pipeline.commit(ctx, steps.finish(ctx)), skipped=False)


@task(outlets=[CLIMBMIX])
def build(config: str, **context: Any) -> dict[str, Any]:
    built = run_stage(config, "climbmix")
    context["outlet_events"][CLIMBMIX].extra = asset_extra(config, built)
    return built


@task
def publish(config: str) -> str:
    cfg = load_config(config)
    if not cfg.publish.uri:
        raise AirflowSkipException("publish.uri is not set: nothing to publish")
    from mixture import pipeline

    return str(pipeline.publish(cfg))


with DAG(
    dag_id="climb_mixture_search",
    description="search the ClimbLab cluster mixture with proxy models, build and publish ClimbMix",
    doc_md=__doc__,
    schedule=[CLIMBLAB],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # proxy runs of one config share the search's staging folder
    default_args=DEFAULT_ARGS,
    params={"config": config_param()},
    tags=["climb"],
) as dag:
    cfg_path = resolve_config()
    previous = None
    for i in range(MAX_ITERATIONS):
        # Iteration i > 0 fits its predictor on every earlier run, so it waits for them; a slot
        # after an empty one still runs (NONE_FAILED) and proposes nothing.
        jobs = propose.override(task_id=f"propose_{i}", trigger_rule=TriggerRule.NONE_FAILED)(cfg_path, i)
        runs = run_proxy.override(task_id=f"proxy_runs_{i}").partial(config=cfg_path).expand(job=jobs)
        if previous is not None:
            previous >> jobs
        previous = runs
    chosen = finish(cfg_path)
    previous >> chosen
    built = build(cfg_path)
    chosen >> built >> publish(cfg_path)
