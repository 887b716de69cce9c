"""What the two CLIMB DAGs share: where a run's configuration comes from, the Airflow Variables
they read, the assets they announce, and the one way a task calls the library.

Tasks call `mixture.pipeline.run_stage(cfg, name)`, the function `climb STAGE` runs, so a DAG
adds scheduling, fan-out, pools and retries and nothing else. A run's params may override the
config (`run_overrides`: the refresh DAG's `full_rebuild`), the same way in every task; each task
returns and logs the version it committed or found (`describe`: the lineage's mode and counts).
Stages are idempotent (an up-to-date dataset is not rebuilt, a killed one was never
committed), which is what makes retries safe.
The deployment reaches the stages through Airflow's own configuration: the AWS connection
`aws_default` (S3 credentials, endpoint, region) and the Variable `climb_mlflow_tracking_uri`
become the standard environment the stages read (`use_connections`, in every task that loads the
config); Spark's master is the connection `spark_default` of the refresh DAG's SparkSubmitOperator.
Without them (`dag.test()`, a bare Airflow) the tasks run on what their environment has.
Everything heavy (`mixture`, torch, Spark) is imported inside task functions: this module and the
DAG files must parse in well under a second.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, Param, Variable, get_current_context
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

# The checkout the DAGs live in: relative config paths (and the relative paths inside a config)
# are resolved against it, as `climb` resolves them against the folder it runs in. A worker's
# working directory is not fixed by Airflow, so it cannot be the anchor.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Every Airflow Variable the DAGs read, with the default used when it is unset. Read them only
# through `variable()`; docker-compose.yml sets each one (AIRFLOW_VAR_<NAME>), and
# tests/test_compose.py checks that it does.
VARIABLES: dict[str, str] = {
    "climb_config": "configs/demo.yaml",  # run configuration when the run's `config` param is empty
    "climb_mlflow_tracking_uri": "",  # MLflow server for the runs; empty: the config's tracking.uri
    "climb_refresh_schedule": "@weekly",  # corpus refresh schedule; empty: manual runs only
    "climb_search_max_iterations": "3",  # search iterations unrolled in the DAG (the paper: 3)
}

SPARK_CONN_ID = "spark_default"  # the curate job's master (spark://, k8s://, yarn, local[N])
AWS_CONN_ID = "aws_default"  # S3: credentials, and the endpoint_url / region_name extras

GPU_POOL = "gpu"  # embedding and proxy training: slots = GPUs (created by the deployment's init job)
GPU_QUEUE = "gpu"  # Celery queue the GPU workers listen on; LocalExecutor ignores queues

# One asset per dataset that another DAG or team consumes. The asset is fixed at parse time; each
# event's extra names the committed dataset (uri, manifest hash) and the config that made it.
CLIMBLAB = Asset(name="climblab", uri="climb://datasets/climblab")
CLIMBMIX = Asset(name="climbmix", uri="climb://datasets/climbmix")

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "climb",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
}


def variable(name: str) -> str:
    return Variable.get(name, default=VARIABLES[name])


def config_param() -> Param:
    return Param(
        "",
        type="string",
        title="Run configuration",
        description="YAML config path (relative: to the project root). Empty: the config "
        "of the triggering asset event, else the Airflow Variable climb_config, "
        f"else {VARIABLES['climb_config']}.",
    )


def config_path(context: Any) -> str:
    """The run's config file: the `config` param, else the one named by the asset event that
    triggered the run, else the `climb_config` Variable, else configs/demo.yaml. Absolute."""
    path = (context["params"].get("config") or "").strip()
    if not path:
        events = context.get("triggering_asset_events") or {}
        for asset_events in events.values():
            for event in asset_events:
                path = path or (event.extra or {}).get("config", "")
    path = path or variable("climb_config")
    return str(PROJECT_ROOT / path) if not Path(path).is_absolute() else path


def full_rebuild_param() -> Param:
    return Param(
        False,
        type="boolean",
        title="Full rebuild",
        description="Rebuild every dataset from all its input (refresh.incremental: false for this run) "
        "instead of extending the committed versions with what changed.",
    )


def run_overrides(context: Any = None) -> dict[str, Any]:
    """Config overrides from the run's params (`full_rebuild` -> `refresh.incremental: false`);
    `context`: the task's Airflow context, else the current one (none outside a task)."""
    if context is None:
        try:
            context = get_current_context()
        except Exception:  # noqa: BLE001 - not inside a task: no run, no params
            return {}
    return {"refresh.incremental": False} if (context.get("params") or {}).get("full_rebuild") else {}


def override_args(overrides: dict[str, Any]) -> list[str]:
    """The overrides as `--set key=value` arguments (for jobs/*.py)."""
    import json

    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def aws_environment() -> dict[str, str]:
    """The AWS connection as the standard AWS environment variables (empty when the deployment
    defines no `aws_default`): what mixture.storage, boto3 and pyarrow read, and what the curate
    job's driver hands to its executors. Values are never logged."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(AWS_CONN_ID)
    except AirflowNotFoundException:
        return {}
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="s3")
    creds = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    if creds.token:
        env["AWS_SESSION_TOKEN"] = creds.token
    if hook.conn_config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = hook.conn_config.endpoint_url
    if hook.conn_config.region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_config.region_name
    return env


def use_connections() -> None:
    """Point this task process at the deployment's S3 and MLflow server: the AWS connection's
    environment (`aws_environment`) and the Variable `climb_mlflow_tracking_uri` as
    MLFLOW_TRACKING_URI (mixture.tracking prefers it to the config's tracking.uri)."""
    import os

    os.environ.update(aws_environment())
    if uri := variable("climb_mlflow_tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = uri


def load_config(path: str, context: Any = None):
    """The validated config, with the run's overrides (`run_overrides`). Relative paths inside it
    resolve against the project root. The task's environment gets the deployment's connections
    first (`use_connections`)."""
    from mixture.config import load_config as load

    use_connections()

    with contextlib.chdir(PROJECT_ROOT):
        return load(path, run_overrides(context))


def check_config(path: str):
    """The validated config; an invalid one fails the task at once (retrying cannot fix it)."""
    from mixture.config import ConfigError

    try:
        return load_config(path)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from None


def describe(dataset: Any, skipped: bool, cfg: Any = None) -> dict[str, Any]:
    """The small, JSON-safe record of a committed dataset that a task returns (its XCom): with
    the version its lineage records (mode and delta counts: what was new, duplicate, withdrawn,
    retracted) and, given the run's config, whether the run was incremental. The version line
    is logged too (the task's summary)."""
    counts = {k: v for k, v in dataset.manifest.counts.items() if isinstance(v, (int, float, str))}
    out = {"dataset": dataset.uri, "manifest_sha256": dataset.manifest_sha256, "skipped": skipped, "counts": counts}
    if cfg is not None:
        out["incremental"] = bool(cfg.refresh.incremental)
    lineage = (dataset.manifest.extra or {}).get("lineage")
    if lineage:
        out["lineage"] = version_summary(dataset.uri, lineage)
        log.info("%s", out["lineage"]["summary"])
    return out


def version_summary(uri: str, lineage: dict[str, Any]) -> dict[str, Any]:
    """A lineage as a task reports it: version, mode, the delta's counts (numbers only: no text a
    user wrote), and one line, e.g. `annotated v3 (incremental): +1 new file, 212 new docs`."""
    from mixture import storage
    from mixture.cli import describe_delta

    delta = {k: v for k, v in (lineage.get("delta") or {}).items() if isinstance(v, (int, float))}
    name = storage.basename(uri)
    line = f"{name} v{lineage.get('version')} ({lineage.get('mode')}): {describe_delta(delta) or 'nothing changed'}"
    return {"version": lineage.get("version"), "mode": lineage.get("mode"), "delta": delta, "summary": line}


def run_stage(config: str, name: str) -> dict[str, Any]:
    """Run (or find up to date) one pipeline stage; the same call as `climb STAGE`."""
    from mixture import pipeline

    cfg = load_config(config)
    result = pipeline.run_stage(cfg, name)
    for key, value in result.summary:
        log.info("%s: %s: %s", name, key, value)
    return describe(result.dataset, result.skipped, cfg)


def commit_stage(config: str, dataset: str, finish: Any) -> dict[str, Any]:
    """The fan-in task of a mapped stage: the dataset as it is when up to date, else
    `finish(ctx)` of the staged pieces committed through the runner (lease, manifest last)."""
    from mixture import pipeline

    cfg = load_config(config)
    if done := pipeline.current(cfg, dataset):
        return describe(done, skipped=True, cfg=cfg)
    ctx = pipeline.open_stage(cfg, dataset)
    return describe(pipeline.commit(ctx, finish(ctx)), skipped=False, cfg=cfg)


def asset_extra(config: str, described: dict[str, Any]) -> dict[str, Any]:
    return {"config": config, "uri": described["dataset"], "manifest_sha256": described["manifest_sha256"]}
