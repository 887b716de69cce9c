"""The deployment end to end (`make stack`: PostgreSQL, S3, a Spark standalone cluster, an MLflow
server, Airflow 3 with LocalExecutor): the refresh DAG triggered through Airflow's REST API on a
corpus in S3; curation on the Spark cluster's executors; mapped tasks; the ClimbLab asset starting
the search; proxy runs fanned out; the build published to S3 and read back with `ClimbMix`; the
search's runs on the MLflow server with their plots in S3; one proxy task of that search killed
mid-way (SIGKILL of its process) and retried by the scheduler, losing nothing. Then a refresh
with one new input file runs every stage incrementally, and the search it starts publishes a new
version.

Scaled for about 15 minutes on 2 cores: the DAG tests' tiny configuration (the sample corpus's
first 30 documents of every source, then 10 more in the new file; proxy runs 4 + 2 of the
cpu-tiny preset), with the mapped-task sizes of tests/test_dags.py. Skipped, with the reason, when
the stack is not up (`make test`); `.ci/run` starts it, runs these tests with
CLIMB_E2E_REQUIRED=1 (a stack that is not up then fails them) and stops it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import boto3
import pytest
import yaml
from conftest import tiny_config_dict
from helpers.stack import STACK, Airflow, not_up_reason, read_env, spark_application

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REFRESH, SEARCH = "climb_corpus_refresh", "climb_mixture_search"
RUN_S = 900  # one DAG run, at most


@pytest.fixture(scope="module")
def stack():
    if reason := not_up_reason():
        if os.environ.get("CLIMB_E2E_REQUIRED"):  # .ci/run started the stack: not up is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    env, secrets = read_env(STACK / "stack.env"), read_env(STACK / "secrets.env")
    s3_env = {
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": secrets["S3_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": secrets["S3_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    patch = pytest.MonkeyPatch()
    for k, v in s3_env.items():
        patch.setenv(k, v)  # this process reads S3 (uploads, ClimbMix) as a user would
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield {"env": env, "airflow": Airflow(env["AIRFLOW_URL"], secrets["AIRFLOW_ADMIN_PASSWORD"])}
    patch.undo()


def _records(sample_records, first: int, last: int) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r)
    return [r for recs in by_source.values() for r in recs[first:last]]


def _upload(uri: str, records: list[dict]) -> None:
    import json

    bucket, key = uri[len("s3://") :].split("/", 1)
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def _config(root, prefix: str) -> dict:
    data = tiny_config_dict(root, [f"{prefix}/input/"])
    data["run_name"] = "e2e"
    data["embed"].update(shard_docs=20, range_shards=1)  # several mapped embedding tasks
    data["shards"]["part_docs"] = 20  # several mapped tokenization tasks
    data["build"].update(shard_docs=2, bucket_docs=4)  # several mapped scatter/gather tasks
    data["publish"] = {"uri": f"{prefix}/climbmix"}
    data["tracking"] = {"experiment": f"e2e-{root.name}"}
    return data


def _refresh_then_search(airflow: Airflow, config: str) -> dict:
    """Trigger the refresh, wait for it and for the search run its ClimbLab asset event starts."""
    known = {r["dag_run_id"] for r in airflow.runs(SEARCH)}
    started = time.time()
    refresh_id = airflow.trigger(REFRESH, {"config": config})
    refresh = airflow.wait(REFRESH, refresh_id, RUN_S)
    assert refresh["state"] == "success", airflow.task_instances(REFRESH, refresh_id)
    search_id = airflow.wait_new_run(SEARCH, known, 120)
    return {"refresh": refresh_id, "search": search_id, "started": started}


def _task_log(dag_id: str, run_id: str, key: tuple[str, int], attempt: int = 1) -> str:
    path = (
        STACK
        / "airflow"
        / "logs"
        / f"dag_id={dag_id}"
        / f"run_id={run_id}"
        / f"task_id={key[0]}"
        / f"map_index={key[1]}"
        / f"attempt={attempt}.log"
    )
    return path.read_text() if path.exists() else ""


def _kill_running(airflow: Airflow, dag_id: str, run_id: str, task_id: str, timeout_s: float = RUN_S) -> tuple:
    """SIGKILL the process of a first try of the mapped `task_id` while it trains (its log says the
    proxy started: what an OOM kill or a lost machine does to a task); its (task_id, map_index)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        tis = airflow.task_instances(dag_id, run_id)
        for key, ti in sorted(tis.items()):
            if key[0] == task_id and ti["state"] == "running" and ti["pid"] and ti["try_number"] == 1:
                if "proxy cpu-tiny" in _task_log(dag_id, run_id, key):  # training has started
                    os.kill(ti["pid"], signal.SIGKILL)
                    return key
        if airflow.run(dag_id, run_id)["state"] in ("success", "failed"):
            break
        time.sleep(0.3)
    raise AssertionError(f"no running {task_id} task to kill in {dag_id} {run_id}")


@pytest.fixture(scope="module")
def first(stack, sample_records):
    uid = uuid.uuid4().hex[:8]
    root = STACK / "e2e" / uid
    root.mkdir(parents=True)
    prefix = f"s3://climb/e2e-{uid}"
    _upload(f"{prefix}/input/part-1.jsonl", _records(sample_records, 0, 30))
    config = root / "e2e.yaml"
    data = _config(root, prefix)
    config.write_text(yaml.safe_dump(data))
    airflow = stack["airflow"]
    runs = _refresh_then_search(airflow, str(config))
    killed = _kill_running(airflow, SEARCH, runs["search"], "proxy_runs_0")
    search = airflow.wait(SEARCH, runs["search"], RUN_S)
    assert search["state"] == "success", airflow.task_instances(SEARCH, runs["search"])
    return {**runs, "killed": killed, "root": root, "prefix": prefix, "config": config, "data": data, "stack": stack}


def test_curate_ran_on_the_spark_clusters_executors(first):
    """The Spark job is the run's own application on spark://127.0.0.1:7077, and its tasks ran in
    executors on the workers, none in the driver (which local mode would show)."""
    airflow = first["stack"]["airflow"]
    tis = airflow.task_instances(REFRESH, first["refresh"])
    assert tis[("spark_curate", -1)]["state"] == "success"
    events = spark_application(STACK / "spark" / "events", f"climb-curate-{first['refresh']}")
    env = next(e for e in events if e["Event"] == "SparkListenerEnvironmentUpdate")
    assert env["Spark Properties"]["spark.master"] == first["stack"]["env"]["SPARK_MASTER"]
    added = [e for e in events if e["Event"] == "SparkListenerExecutorAdded"]
    assert len(added) == 2  # one executor per worker
    ran = [e["Task Info"]["Executor ID"] for e in events if e["Event"] == "SparkListenerTaskEnd"]
    assert ran and "driver" not in ran
    assert set(ran) == {e["Executor ID"] for e in added}  # both executors did work
    out = airflow.returned(REFRESH, first["refresh"], "curate")
    assert out["skipped"] is False and out["counts"]["documents_in"] > 0


def test_mapped_tasks_mapped_and_the_asset_started_the_search(first):
    airflow = first["stack"]["airflow"]
    refresh = airflow.task_instances(REFRESH, first["refresh"])
    for task in ("embed_range", "shards_part", "shards_merge"):
        mapped = [k[1] for k in refresh if k[0] == task]
        assert len(mapped) > 1 and all(refresh[(task, i)]["state"] == "success" for i in mapped), task
    assert refresh[("announce", -1)]["state"] == "success"
    search_run = airflow.run(SEARCH, first["search"])
    assert search_run["run_type"] == "asset_triggered"
    search = airflow.task_instances(SEARCH, first["search"])
    for i, n in enumerate(first["data"]["search"]["iterations"]):
        runs = [k for k in search if k[0] == f"proxy_runs_{i}"]
        assert len(runs) == n and {search[k]["state"] for k in runs} == {"success"}
    assert [k for k in search if k[0] == "build_scatter"] and ("build_scatter", -1) not in search  # expanded
    assert len([k for k in search if k[0] == "build_gather"]) > 1
    assert search[("build", -1)]["state"] == "success" and search[("publish", -1)]["state"] == "success"


def test_the_published_version_reads_back_from_s3(first):
    from mixture import pipeline
    from mixture.config import load_config
    from mixture.publish.reader import ClimbMix

    mix = ClimbMix(f"{first['prefix']}/climbmix")  # through the `latest` pointer; every file hashed
    mix.verify()
    built = ClimbMix(pipeline.dataset_uri(load_config(first["config"]), "climbmix"))
    assert mix.read_table().num_rows > 0 and mix.read_table().equals(built.read_table())


def _mlflow_runs(stack, experiment: str) -> dict[str, list]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack["env"]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on the MLflow server"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("climb.kind", ""), []).append(r)
    return {"client": client, **by_kind}


def test_the_mlflow_server_has_the_search_runs_nested_and_its_plots_in_s3(first):
    from mixture.config import load_config
    from mixture.search import track

    cfg = load_config(first["config"])
    runs = _mlflow_runs(first["stack"], track.experiment_name(cfg))
    (search,) = runs["search"]
    iterations, proxies = runs["iteration"], runs["proxy"]
    assert len(iterations) == len(cfg.search.iterations) and len(proxies) == sum(cfg.search.iterations)
    assert {r.data.tags["mlflow.parentRunId"] for r in iterations} == {search.info.run_id}
    assert {r.data.tags["mlflow.parentRunId"] for r in proxies} == {r.info.run_id for r in iterations}
    assert all(r.info.status == "FINISHED" for r in [search, *iterations, *proxies])
    # comparable: the same metric keys, and the predictor's prediction from the first iteration
    # that has a predictor (iteration 0's mixtures are drawn before any)
    keys = {frozenset(set(r.data.metrics) - {"predicted"}) for r in proxies}
    assert len(keys) == 1 and "score" in next(iter(keys))
    assert all(("predicted" in r.data.metrics) == (r.data.tags["climb.iteration"] != "0") for r in proxies)
    plots = {a.path for a in runs["client"].list_artifacts(search.info.run_id) if a.path.endswith(".png")}
    assert plots, "the search run has no plots"
    prefix = f"artifacts/{search.info.experiment_id}/{search.info.run_id}/"
    in_s3 = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="mlflow", Prefix=prefix).get("Contents", [])}
    assert {p for p in plots if any(k.endswith("/" + p) for k in in_s3)} == plots


@pytest.fixture(scope="module")
def second(first, sample_records):
    """A new input file, a refresh, and the search its ClimbLab version starts."""
    airflow = first["stack"]["airflow"]
    _upload(f"{first['prefix']}/input/part-2.jsonl", _records(sample_records, 30, 40))
    runs = _refresh_then_search(airflow, str(first["config"]))
    search = airflow.wait(SEARCH, runs["search"], RUN_S)
    assert search["state"] == "success", airflow.task_instances(SEARCH, runs["search"])
    return runs


def test_a_killed_task_is_retried_and_the_run_loses_nothing(first):
    """One proxy task of the first search was SIGKILLed mid-way: the scheduler retried it, the
    run succeeded, and every proxy run is on the MLflow server once (the test above checks the
    runs and the published version)."""
    from mixture.config import load_config
    from mixture.search import track

    airflow = first["stack"]["airflow"]
    ti = airflow.task_instances(SEARCH, first["search"])[first["killed"]]
    assert ti["state"] == "success" and ti["try_number"] == 2  # the kill failed try 1; try 2 finished
    cfg = load_config(first["config"])
    proxies = _mlflow_runs(first["stack"], track.experiment_name(cfg))["proxy"]
    finished = [r.data.tags["climb.run_id"] for r in proxies if r.info.status == "FINISHED"]
    assert sorted(set(finished)) == sorted(finished) and len(finished) == sum(cfg.search.iterations)


def test_a_refresh_with_one_new_file_runs_every_stage_incrementally(first, second):
    from mixture import pipeline
    from mixture.config import load_config
    from mixture.publish.reader import ClimbMix

    airflow = first["stack"]["airflow"]
    cur = airflow.returned(REFRESH, second["refresh"], "curate")
    assert cur["skipped"] is False and cur["incremental"] is True
    assert cur["lineage"]["mode"] == "incremental" and cur["lineage"]["delta"]["files_new"] == 1
    assert cur["lineage"]["delta"]["files_unchanged"] == 1
    for task in ("select", "embed_commit", "cluster", "shards_commit"):
        out = airflow.returned(REFRESH, second["refresh"], task)
        assert out["skipped"] is False and out["incremental"] is True, task
        if "lineage" in out:  # the stages that record a version say what it changed
            assert out["lineage"]["mode"] == "incremental", (task, out["lineage"])
    events = spark_application(STACK / "spark" / "events", f"climb-curate-{second['refresh']}")
    assert {e["Task Info"]["Executor ID"] for e in events if e["Event"] == "SparkListenerTaskEnd"} - {"driver"}
    # the search of the new ClimbLab version: searched again or carried (a small shift), then a
    # new build, published and read back
    finish = airflow.returned(SEARCH, second["search"], "finish")
    assert finish["skipped"] is False and finish["lineage"]["version"] == 2
    cfg = load_config(first["config"])
    built = ClimbMix(pipeline.dataset_uri(cfg, "climbmix"))
    mix = ClimbMix(f"{first['prefix']}/climbmix")  # the new version, through `latest`
    mix.verify()
    assert mix.manifest_sha256 == built.manifest_sha256 and mix.read_table().equals(built.read_table())
