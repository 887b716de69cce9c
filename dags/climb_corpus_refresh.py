"""Corpus refresh: curate -> select -> embed -> cluster -> shards, then announce the new ClimbLab
dataset.

Runs on the schedule in the Airflow Variable `climb_refresh_schedule` (default weekly, no
catch-up), or by hand with the `config` param. Annotation is a Spark job: `curate_plan` decides
whether it is needed (`annotated` not up to date) and with which arguments, `spark_curate` (the
Spark provider's SparkSubmitOperator) submits jobs/curate.py to the master of the connection
`spark_default` (`local[2]`, `spark://host:7077`, `k8s://...`, `yarn`), and `curate` reports the
committed dataset; the selection that applies the filter thresholds to its signals needs no
Spark; embedding fans out over ranges of shards (`embed_ranges` -> one mapped `embed_range`
task per range in the `gpu` pool, retried and resumed -> `embed_commit`), and so does the
tokenization into ClimbLab shards (`shards_parts` -> one mapped `shards_part` task per part of
`shards.part_docs` documents -> `shards_clusters` -> one mapped `shards_merge` per cluster ->
`shards_commit`; Airflow maps at most `core.max_map_length` tasks, 1,024 by default: size the
ranges and parts below it); every other step but the Spark job is the stage function the CLI runs. When the
shards differ from the last announced ones, `announce` updates the asset
`climb://datasets/climblab`, which triggers the mixture search DAG.

Refreshes are incremental (`refresh.incremental`, on by default): every stage processes only what
changed since the version it last covered (new, changed or deleted input files; retractions).
The param `full_rebuild` (default false) turns that off for one run: every stage then rebuilds
from all its input. Each task logs and returns the version it committed or found, with what its
lineage counted (e.g. `annotated v3 (incremental): +1 new file, 212 new docs`).
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from _common import (
    CLIMBLAB,
    DEFAULT_ARGS,
    GPU_POOL,
    GPU_QUEUE,
    PROJECT_ROOT,
    SPARK_CONN_ID,
    asset_extra,
    aws_environment,
    check_config,
    commit_stage,
    config_param,
    config_path,
    describe,
    full_rebuild_param,
    load_config,
    override_args,
    run_overrides,
    run_stage,
    variable,
)
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)


@task
def resolve_config(**context: Any) -> str:
    """The run's config file; loading it here fails the run early on an invalid config."""
    path = config_path(context)
    check_config(path)
    return path


@task.short_circuit(ignore_downstream_trigger_rules=False)  # skips only the Spark job
def curate_plan(config: str) -> list[str]:
    """The Spark job's arguments (the config, the run's overrides); none when `annotated` is up
    to date, and the Spark job is skipped: no JVM start, no cluster slot."""
    from mixture import pipeline

    if pipeline.current(load_config(config), "curate"):
        return []
    return ["--config", config, *override_args(run_overrides())]  # the run's params reach the job too


class CurateSubmit(SparkSubmitOperator):
    """spark-submit jobs/curate.py to the master of the `spark_default` connection, from the
    project root (a config's relative paths resolve there), with the AWS connection's
    credentials in the driver's environment (its executors get them from the driver:
    mixture.spark). Exit status 2, the job's configuration or dataset error, fails the task
    without retries; any other failure is retried."""

    def execute(self, context: Any) -> None:
        import contextlib
        import os
        import sys

        from mixture import spark as spark_env

        os.environ.update(aws_environment())
        spark_env.environment("", os.environ)  # Python workers run this interpreter
        here = os.path.dirname(sys.executable)  # this environment's spark-submit first
        if not os.environ.get("PATH", "").startswith(here + os.pathsep):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        with contextlib.chdir(PROJECT_ROOT):
            try:
                super().execute(context)
            except Exception:
                proc = getattr(self._hook, "_submit_sp", None)
                if proc is not None and proc.returncode == 2:
                    raise AirflowFailException(
                        "jobs/curate.py: configuration or dataset error (see the log above); retrying cannot fix it"
                    ) from None
                raise


@task(trigger_rule=TriggerRule.NONE_FAILED)  # the Spark job skipped: `annotated` was up to date
def curate(config: str, **context: Any) -> dict[str, Any]:
    """The `annotated` dataset the Spark job committed, or found up to date."""
    from mixture import pipeline

    cfg = load_config(config)
    ran = bool(context["ti"].xcom_pull(task_ids="curate_plan"))
    done = pipeline.current(cfg, "curate")
    if done is None:
        raise RuntimeError("jobs/curate.py exited 0 but no up-to-date annotated dataset is committed")
    return describe(done, skipped=not ran, cfg=cfg)


@task
def select(config: str) -> dict[str, Any]:
    """Filter thresholds and dedup decisions on the annotated documents (no Spark)."""
    return run_stage(config, "select")


@task
def embed_ranges(config: str) -> list[dict[str, int]]:
    """The embedding work split into ranges of shards (none when the embeddings are up to date
    or not needed); a static model is distilled here, once, before the ranges fan out."""
    from mixture import pipeline
    from mixture.stages import embed

    cfg = load_config(config)
    if not cfg.cluster.needs_embeddings or pipeline.current(cfg, "embeddings"):
        return []
    ctx = pipeline.open_stage(cfg, "embeddings")
    embed.static_model(ctx)
    return [r.to_dict() for r in embed.ranges(embed.source(ctx), cfg.embed)]  # only the delta when incremental


@task(pool=GPU_POOL, queue=GPU_QUEUE, map_index_template="{{ embed_range_name }}")
def embed_range(config: str, rng: dict[str, int]) -> dict[str, Any]:
    """One range of shards into the stage's staging folder; a retry resumes its finished shards."""
    from mixture import pipeline
    from mixture.stages import embed

    get_current_context()["embed_range_name"] = f"shards {rng['first_shard']}-{rng['first_shard'] + rng['shards'] - 1}"
    ctx = pipeline.open_stage(load_config(config), "embeddings")
    p = embed.Progress(ctx.cfg.embed, embed.static_model(ctx))
    embed.embed_range(embed.source(ctx), ctx.writer, embed.Range(**rng), p)
    return {"range": rng["index"], "computed": p.computed, "reused": p.reused, "seconds": round(p.seconds, 1)}


@task(trigger_rule=TriggerRule.NONE_FAILED)  # no ranges (up to date, not needed): mapped task skipped
def embed_commit(config: str) -> dict[str, Any]:
    """Commit the staged shards through the runner (lease, manifest written last)."""
    from mixture.stages import embed

    needed = load_config(config).cluster.needs_embeddings
    return commit_stage(config, "embeddings", embed.finish if needed else embed.skipped)


@task
def cluster(config: str) -> dict[str, Any]:
    return run_stage(config, "clusters")


@task
def shards_parts(config: str) -> list[dict[str, int]]:
    """The tokenization split into parts of curated documents (none when the shards are up to
    date); the tokenizer is trained and staged here, once, before the parts fan out."""
    from mixture import pipeline
    from mixture.stages import shards

    cfg = load_config(config)
    if pipeline.current(cfg, "climblab"):
        return []
    return [p.to_dict() for p in shards.parts(pipeline.open_stage(cfg, "climblab"))]


@task(map_index_template="{{ shards_part_name }}")
def shards_part(config: str, part: dict[str, int]) -> dict[str, Any]:
    """One part's documents tokenized into sorted runs per cluster; a retry keeps a finished part."""
    from mixture import pipeline
    from mixture.climblab.parts import Part
    from mixture.stages import shards

    p = Part(**part)
    get_current_context()["shards_part_name"] = f"documents {p.first_doc}-{p.first_doc + p.docs - 1}"
    rec = shards.tokenize_part(pipeline.open_stage(load_config(config), "climblab"), p)
    return {"part": p.index, "computed": rec["computed"], "pruned": rec["pruned"]}


@task(trigger_rule=TriggerRule.NONE_FAILED)  # no parts (up to date): the mapped task was skipped
def shards_clusters(config: str) -> list[int]:
    """The final clusters to merge (none when the shards are up to date)."""
    from mixture import pipeline
    from mixture.stages import shards

    cfg = load_config(config)
    if pipeline.current(cfg, "climblab"):
        return []
    return shards.clusters(pipeline.open_stage(cfg, "climblab"))


@task(map_index_template="{{ shards_merge_name }}")
def shards_merge(config: str, cluster: int) -> dict[str, Any]:
    """One cluster's runs of every part merged by id into its token shard and text file."""
    from mixture import pipeline
    from mixture.climblab import cluster_name
    from mixture.stages import shards

    get_current_context()["shards_merge_name"] = cluster_name(cluster)
    rec = shards.merge_cluster(pipeline.open_stage(load_config(config), "climblab"), cluster)
    return {"cluster": cluster_name(cluster), **rec}


@task(trigger_rule=TriggerRule.NONE_FAILED)  # no clusters (up to date): the mapped task was skipped
def shards_commit(config: str) -> dict[str, Any]:
    """Commit the merged clusters through the runner (lease, manifest written last)."""
    from mixture.stages import shards

    return commit_stage(config, "climblab", shards.finish)


@task(inlets=[CLIMBLAB], outlets=[CLIMBLAB])
def announce(config: str, climblab: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Update the ClimbLab asset (which triggers the search) unless the last event already named
    these exact shards: an unchanged corpus does not start another search."""
    extra = asset_extra(config, climblab)
    last = list(context["inlet_events"][CLIMBLAB].ascending(False).limit(1))
    previous = (last[0].extra or {}) if last else {}
    if all(previous.get(k) == extra[k] for k in ("uri", "manifest_sha256")):
        raise AirflowSkipException(f"{extra['uri']} was already announced with this manifest")
    context["outlet_events"][CLIMBLAB].extra = extra
    return extra


with DAG(
    dag_id="climb_corpus_refresh",
    description="curate, embed, cluster and tokenize the corpus into ClimbLab shards",
    doc_md=__doc__,
    schedule=variable("climb_refresh_schedule") or None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs of one config share staging folders
    default_args=DEFAULT_ARGS,
    params={"config": config_param(), "full_rebuild": full_rebuild_param()},
    tags=["climb"],
) as dag:
    cfg_path = resolve_config()
    spark_job = CurateSubmit(
        task_id="spark_curate",
        conn_id=SPARK_CONN_ID,
        spark_binary="spark-submit",
        application=str(PROJECT_ROOT / "jobs" / "curate.py"),
        application_args=curate_plan(cfg_path),
        name="climb-curate-{{ run_id }}",  # the run's application in Spark's UI and event log
    )
    annotated = curate(cfg_path)
    spark_job >> annotated
    curated = select(cfg_path)
    planned = embed_ranges(cfg_path)
    staged = embed_range.partial(config=cfg_path).expand(rng=planned)
    embedded = embed_commit(cfg_path)
    clustered = cluster(cfg_path)
    parts = shards_parts(cfg_path)
    tokenized = shards_part.partial(config=cfg_path).expand(part=parts)
    to_merge = shards_clusters(cfg_path)
    merged = shards_merge.partial(config=cfg_path).expand(cluster=to_merge)
    climblab = shards_commit(cfg_path)
    annotated >> curated >> planned
    staged >> embedded >> clustered >> parts
    tokenized >> to_merge
    merged >> climblab
    announce(cfg_path, climblab)
