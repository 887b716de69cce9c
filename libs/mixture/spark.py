"""The Spark session the `curate` stage runs on (`local[*]` by default, any master URL works),
and the one place that says which environment Spark's Python processes need: the CLI, the
spark-submit job and the Airflow task all take it from `environment`."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping


def environment(master: str = "local[*]", env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set (unless already set) what Spark's processes need in `env` (default: this process's
    environment): Python workers run this interpreter, so they import the same `mixture` and
    packages as the driver; a local master binds to the loopback address."""
    env = os.environ if env is None else env
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


# The S3 settings executors need to read inputs through mixture.storage. On a cluster the workers
# do not have the driver's environment: the driver passes these on (spark.executorEnv.*, which
# Spark's UI and event log redact by name: secret, token).
EXECUTOR_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def session(master: str | None, app: str = "climb", partitions: int = 8):
    """A session for `master` (None: whatever spark-submit configured); executors get the
    driver's S3 settings (`EXECUTOR_ENV`)."""
    environment(master or "")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if master or not _submitted_name():
        builder = builder.appName(app)  # spark-submit --name (e.g. the Airflow run's) wins
    for name in EXECUTOR_ENV:
        if os.environ.get(name):
            builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    if master:
        builder = (
            builder.master(master)
            .config("spark.sql.shuffle.partitions", str(partitions))
            .config("spark.default.parallelism", str(partitions))
        )
    spark = (
        builder.config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    if (master or "").startswith("local"):
        quiet_task_errors(spark)
    return spark


def _submitted_name() -> bool:
    """Whether spark-submit named the application (its settings reach the driver's JVM)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the JVM's settings are what SparkConf loads
    return SparkConf().contains("spark.app.name")


def quiet_task_errors(spark) -> None:
    """In local mode a failed task is logged by the executor and by the scheduler (and by the block
    manager when the task was filling a cached block), the Python worker's traceback included, and
    then raised in the driver with the same text: the raise is what `climb` reports (one line; `-v`
    prints it whole), so those logs are turned off."""
    jvm = spark.sparkContext._jvm
    off = jvm.org.apache.logging.log4j.Level.OFF
    for name in (
        "org.apache.spark.executor.Executor",
        "org.apache.spark.scheduler.TaskSetManager",
        "org.apache.spark.storage.BlockManager",
    ):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, off)
