"""Corpus refresh: curate -> select -> embed -> cluster -> shards, then announce the new ClimbLab
dataset.

Runs on the schedule in the Airflow Variable `climb_refresh_schedule` (default weekly, no
catch-up), or by hand with the `config` param. Annotation is a Spark job (`spark-submit
jobs/curate.py`, master from the Variable `climb_spark_master`, else the config's
`curate.spark_master`); the selection that applies the filter thresholds to its signals needs no
Spark; embedding runs in the `gpu` pool; every step but the Spark job is the stage function the
CLI runs. When the shards differ from the last announced ones, `announce` updates the asset
`climb://datasets/climblab`, which triggers the mixture search DAG.
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
    config_param,
    config_path,
    describe,
    load_config,
    run_stage,
    variable,
)
from airflow.sdk import DAG, task
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
        return describe(done, skipped=True)
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
    return describe(done, skipped=False)


@task
def select(config: str) -> dict[str, Any]:
    """Filter thresholds and dedup decisions on the annotated documents (no Spark)."""
    return run_stage(config, "select")


@task(pool=GPU_POOL, queue=GPU_QUEUE)
def embed(config: str) -> dict[str, Any]:
    return run_stage(config, "embeddings")


@task
def cluster(config: str) -> dict[str, Any]:
    return run_stage(config, "clusters")


@task
def shards(config: str) -> dict[str, Any]:
    return run_stage(config, "climblab")


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
    params={"config": config_param()},
    tags=["climb"],
) as dag:
    cfg_path = resolve_config()
    annotated = curate(cfg_path)
    curated = select(cfg_path)
    embedded = embed(cfg_path)
    clustered = cluster(cfg_path)
    climblab = shards(cfg_path)
    annotated >> curated >> embedded >> clustered >> climblab
    announce(cfg_path, climblab)
