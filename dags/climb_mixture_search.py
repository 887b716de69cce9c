"""Mixture search: CLIMB's iterative bootstrapping as Airflow tasks, then build and publish.

Triggered when the corpus refresh announces new ClimbLab shards (asset `climb://datasets/climblab`;
the run uses the config named in the event), or by hand with the `config` param. With
`search.base` on, `base` trains the base proxy every proxy run continues from, before iteration 0;
with `search.experts` on, `expert_runs` trains one merged-cluster expert per cluster from it (mapped
tasks in the `gpu` pool, beside iteration 0's runs; iteration 1 and `finish` screen candidates with
them); both do nothing when off. Per search iteration i: `propose_i` returns the iteration's
proxy jobs (`mixture.search.steps.propose`), and `proxy_runs_i` trains them as dynamically
mapped tasks in the `gpu` pool (`steps.run_proxy`, which reuses a finished run, so a retry or a
re-run repeats no training). The paper's search has 3
iterations (64, 32, 16 proxy runs); a DAG's shape is fixed when it is parsed, so the DAG unrolls
`climb_search_max_iterations` (Variable, default 3) slots, and the slots beyond the config's
`search.iterations` propose nothing and are skipped. With `search.playoff` on, `propose_playoff`
returns the noise-aware final choice's jobs (anchor replicates at proxy scale, the finalists at
transfer scale: `mixture.search.playoff`) and `playoff_runs` trains them as mapped tasks in the same
pool (skipped when the playoff is off). Then `finish` fits the predictors and commits
the search dataset; the ClimbMix build fans out (`mixture.stages.build`): `build_plan` selects
the documents and stages the shuffle's plan, `build_scatter` (one mapped task per part of the
clusters' texts) routes the documents to buckets, `build_buckets` lists the buckets,
`build_gather` (one mapped task per bucket of output shards) writes the shards, and `build`
checks and commits the dataset (and updates the `climb://datasets/climbmix` asset); each mapped
task is idempotent, so a retry redoes nothing finished. Airflow maps at most
`core.max_map_length` tasks (default 1,024): size `build.part_docs` and `build.bucket_docs` so
that parts and buckets stay below it (a 400B-token build of ~1,000-token documents needs
`bucket_docs` of 400,000 or more, or a larger limit). `publish` copies it to `publish.uri`,
skipped when that is unset.
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
    commit_stage,
    config_param,
    config_path,
    load_config,
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


@task(pool=GPU_POOL, queue=GPU_QUEUE)
def base(config: str) -> dict[str, Any]:
    """`search.base`: the base proxy every proxy run continues from, trained once before iteration
    0 (`steps.base`; a retry returns the staged one); nothing when the base is off."""
    from mixture import pipeline
    from mixture.search import steps

    cfg = load_config(config)
    if not cfg.search.base.enabled or pipeline.current(cfg, "search"):
        return {}
    record = steps.base(pipeline.open_stage(cfg, "search")) or {}
    return {k: record.get(k) for k in ("sha256", "steps", "of_steps", "score")}


@task
def expert_jobs(config: str) -> list[dict[str, Any]]:
    """`search.experts`: one job per cluster, continued from the base (none when off)."""
    from mixture import pipeline
    from mixture.search import steps

    cfg = load_config(config)
    if not cfg.search.experts.enabled or pipeline.current(cfg, "search"):
        return []
    return steps.expert_jobs(pipeline.open_stage(cfg, "search"))


@task(trigger_rule=TriggerRule.NONE_FAILED)  # the last slots' mapped tasks may be skipped
def propose_playoff(config: str) -> list[dict[str, Any]]:
    """The playoff's jobs, once every search run is finished; none when search.playoff is off."""
    from mixture import pipeline
    from mixture.search import steps

    cfg = load_config(config)
    if not cfg.search.playoff.enabled or pipeline.current(cfg, "search"):
        return []
    return steps.propose_playoff(pipeline.open_stage(cfg, "search"))


@task(trigger_rule=TriggerRule.NONE_FAILED)  # the last slots' mapped tasks may be skipped
def finish(config: str) -> dict[str, Any]:
    from mixture.search import steps

    return commit_stage(config, "search", steps.finish)


@task
def build_plan(config: str) -> list[dict[str, int]]:
    """Select the documents, draw the global order and stage the shuffle's plan; the parts to
    scatter (none when the build is up to date)."""
    from mixture import pipeline
    from mixture.stages import build

    cfg = load_config(config)
    if pipeline.current(cfg, "climbmix"):
        return []
    return build.plan(pipeline.open_stage(cfg, "climbmix"))["part_list"]


@task(trigger_rule=TriggerRule.NONE_FAILED)  # up to date: no parts, the mapped scatter skipped
def build_buckets(config: str) -> list[dict[str, int]]:
    """The buckets of output shards to gather, from the staged plan (none when up to date)."""
    from mixture import pipeline
    from mixture.climbmix.shuffle import read_plan

    cfg = load_config(config)
    if pipeline.current(cfg, "climbmix"):
        return []
    return read_plan(pipeline.open_stage(cfg, "climbmix").writer)["buckets"]


@task(map_index_template="{{ build_part_name }}")
def build_scatter(config: str, part: dict[str, int]) -> dict[str, int]:
    """Route one part's selected documents to their buckets; a retry keeps a scattered part."""
    from mixture import pipeline
    from mixture.stages import build

    get_current_context()["build_part_name"] = f"part {part['index']}"
    ctx = pipeline.open_stage(load_config(config), "climbmix")
    return {"part": part["index"], "rows": build.scatter(ctx, build.Part(**part))}


@task(map_index_template="{{ build_bucket_name }}")
def build_gather(config: str, bucket: dict[str, int]) -> dict[str, int]:
    """Write one bucket's shards in every format; a retry keeps a written bucket."""
    from mixture import pipeline
    from mixture.stages import build

    last = bucket["first_shard"] + bucket["shards"] - 1
    get_current_context()["build_bucket_name"] = f"shards {bucket['first_shard']}-{last}"
    ctx = pipeline.open_stage(load_config(config), "climbmix")
    record = build.gather(ctx, build.Bucket(**bucket))
    return {"bucket": bucket["index"], **{k: record[k] for k in ("documents", "tokens", "shards")}}


@task(outlets=[CLIMBMIX], trigger_rule=TriggerRule.NONE_FAILED)  # up to date: the mapped tasks skipped
def build(config: str, **context: Any) -> dict[str, Any]:
    """Check what the buckets wrote, finish the formats and commit through the runner."""
    from mixture.stages import build as stage

    built = commit_stage(config, "climbmix", stage.finish)
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
    based = base(cfg_path)
    experts = expert_jobs(cfg_path)
    based >> experts
    # the experts train beside iteration 0's proxies; iteration 1 screens with them
    expert_runs = run_proxy.override(task_id="expert_runs").partial(config=cfg_path).expand(job=experts)
    previous = None
    for i in range(MAX_ITERATIONS):
        # Iteration i > 0 fits its predictor on every earlier run, so it waits for them; a slot
        # after an empty one still runs (NONE_FAILED) and proposes nothing.
        jobs = propose.override(task_id=f"propose_{i}", trigger_rule=TriggerRule.NONE_FAILED)(cfg_path, i)
        runs = run_proxy.override(task_id=f"proxy_runs_{i}").partial(config=cfg_path).expand(job=jobs)
        if previous is not None:
            previous >> jobs
        if i == 0:
            based >> jobs
        if i == 1:
            expert_runs >> jobs
        previous = runs
    playoff_jobs = propose_playoff(cfg_path)
    previous >> playoff_jobs
    playoff_runs = run_proxy.override(task_id="playoff_runs").partial(config=cfg_path).expand(job=playoff_jobs)
    chosen = finish(cfg_path)
    [playoff_runs, expert_runs] >> chosen
    parts = build_plan(cfg_path)
    chosen >> parts
    scattered = build_scatter.partial(config=cfg_path).expand(part=parts)
    buckets = build_buckets(cfg_path)
    scattered >> buckets
    gathered = build_gather.partial(config=cfg_path).expand(bucket=buckets)
    built = build(cfg_path)
    gathered >> built >> publish(cfg_path)
