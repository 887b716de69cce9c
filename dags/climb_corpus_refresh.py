"""Corpus refresh: curate -> select -> embed -> cluster -> shards, then announce the new ClimbLab
dataset.

Runs on the schedule in the Airflow Variable `climb_refresh_schedule` (default weekly, no
catch-up), or by hand with the `config` param. Annotation is a Spark job (`spark-submit
jobs/curate.py`, master from the Variable `climb_spark_master`, else the config's
`curate.spark_master`); the selection that applies the filter thresholds to its signals needs no
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
    asset_extra,
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
from airflow.sdk import DAG, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)


@task
def resolve_config(**context: Any) -> str:
    """The run's config file; loading it here fails the run early on an invalid config."""
    path = config_path(context)
    check_config(path)
    return path


@task
def curate(config: str) -> dict[str, Any]:
    """Signals and dedup groups on Spark: spark-submit jobs/curate.py (commits `annotated`)."""
    import os
    import shutil
    import subprocess
    import sys

    from mixture import pipeline
    from mixture import spark as spark_env

    cfg = load_config(config)
    if done := pipeline.current(cfg, "curate"):  # skip the JVM start when nothing changed
        return describe(done, skipped=True, cfg=cfg)
    master = variable("climb_spark_master") or cfg.curate.spark_master
    submit = shutil.which("spark-submit", path=os.path.dirname(sys.executable)) or shutil.which("spark-submit")
    if submit is None:
        raise RuntimeError("spark-submit is not on PATH: install pyspark in the worker's environment")
    env = spark_env.environment(master, dict(os.environ))
    cmd = [
        submit,
        "--master",
        master,
        "--name",
        f"climb-curate-{cfg.run_name}",
        str(PROJECT_ROOT / "jobs" / "curate.py"),
        "--config",
        config,
        *override_args(run_overrides()),  # the run's params reach the Spark job too
    ]
    log.info("running %s", " ".join(cmd))
    returncode = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env).returncode
    if returncode == 2:  # the job's exit status for a configuration or dataset error
        raise AirflowFailException(
            "jobs/curate.py: configuration or dataset error (see the log above); retrying cannot fix it"
        )
    if returncode:
        raise RuntimeError(f"jobs/curate.py failed with exit status {returncode}")
    done = pipeline.current(cfg, "curate")
    if done is None:
        raise RuntimeError("jobs/curate.py exited 0 but no up-to-date annotated dataset is committed")
    return describe(done, skipped=False, cfg=cfg)


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
    annotated = curate(cfg_path)
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
