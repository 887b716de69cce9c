"""The Airflow DAGs: they load without errors or cycles, parse fast without importing the
pipeline, have the shape the pipeline needs (order, pools, fan-out, assets), and run it end to end
with `dag.test()` on a tiny config: every dataset committed, the MLflow runs recorded, the
ClimbLab asset announced once, a second run doing no work, and tasks that fail once and are
retried leaving the same files as a clean run.

Airflow reads its configuration when it is first imported, so the Airflow parts are imported
inside fixtures and tests, after `airflow_home` has pointed it at a private SQLite metadata DB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from conftest import short_jvm_env, tiny_config_dict, write_jsonl

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DAG_FILES = sorted(DAGS.glob("climb_*.py"))
REFRESH, SEARCH = "climb_corpus_refresh", "climb_mixture_search"
REFRESH_DATASETS = ("annotated", "curated", "embeddings", "clusters", "climblab")
SEARCH_DATASETS = ("search", "climbmix")
# Modules a DAG file must not import when it is parsed (the dag-processor parses every file
# every 30 s by default; these take seconds to import and belong inside tasks).
HEAVY = {
    "mixture",
    "torch",
    "pyspark",
    "mlflow",
    "pandas",
    "numpy",
    "pyarrow",
    "transformers",
    "sentence_transformers",
    "lightgbm",
    "faiss",
    "sklearn",
    "tokenizers",
}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A private AIRFLOW_HOME with a migrated SQLite metadata DB, DAGs from dags/."""
    if "airflow" in sys.modules:
        pytest.fail(
            "airflow was imported before its test home was set up: import it only "
            "inside tests that use the airflow_home fixture"
        )
    home = tmp_path_factory.mktemp("airflow-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("AIRFLOW_HOME", str(home))
    patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
    patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    for name in [k for k in os.environ if k.startswith(("AIRFLOW_VAR_", "AIRFLOW_CONN_"))]:
        patch.delenv(name)  # the DAGs' defaults, not whatever the shell has
    # The embedded deployment: the curate job on local Spark, through the spark connection a
    # deployment defines (make stack, docker-compose.yml: the cluster's master); no AWS connection.
    patch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each config's own SQLite store
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, timeout=300)
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def dagbag(airflow_home):
    # The bundle DagBag is what the dag-processor uses: it puts dags/ on sys.path (for _common).
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(str(DAGS), bundle_path=DAGS, bundle_name="dags-folder")


# --------------------------------------------------------------------------------- structure
def test_dagbag_loads_without_import_errors_or_cycles(dagbag):
    from airflow.utils.dag_cycle_tester import check_cycle

    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {REFRESH, SEARCH}
    for dag_id in dagbag.dag_ids:
        check_cycle(dagbag.get_dag(dag_id))  # raises on a cycle


def test_dag_files_parse_fast_without_heavy_imports(airflow_home):
    """Each file's own import time (Airflow's import excluded) under 1 s, and no pipeline,
    Spark, torch or MLflow module imported by parsing."""
    probe = f"""
import json, runpy, sys, time
sys.path.insert(0, {str(DAGS)!r})
import pendulum, airflow.sdk, airflow.sdk.exceptions   # Airflow's own import is not the DAG's
from airflow.sdk import DAG, Asset, Param, TriggerRule, Variable, task
Variable.get("climb_warm_up", default="")              # first metadata-DB connection
out = {{}}
for path in {[str(p) for p in DAG_FILES]!r}:
    before = set(sys.modules)
    t0 = time.perf_counter()
    runpy.run_path(path)
    out[path] = {{"seconds": time.perf_counter() - t0,
                  "new_modules": sorted({{m.split(".")[0] for m in set(sys.modules) - before}})}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {str(p) for p in DAG_FILES} and len(result) == 2
    for path, r in result.items():
        assert r["seconds"] < 1.0, f"{path} took {r['seconds']:.2f} s to parse"
        assert not HEAVY & set(r["new_modules"]), f"{path} imports {HEAVY & set(r['new_modules'])}"


def _downstream(dag, task_id):
    return set(dag.get_task(task_id).downstream_task_ids)


def test_refresh_dag_runs_the_stages_in_order_on_a_schedule(dagbag):
    dag = dagbag.get_dag(REFRESH)
    # curation: the provider's SparkSubmitOperator on the spark_default connection, skipped (by
    # the short-circuit before it) when `annotated` is up to date
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    assert {"curate_plan", "curate"} <= _downstream(dag, "resolve_config")
    assert _downstream(dag, "curate_plan") == {"spark_curate"}
    assert _downstream(dag, "spark_curate") == {"curate"}
    spark_job = dag.get_task("spark_curate")
    assert isinstance(spark_job, SparkSubmitOperator) and spark_job._conn_id == "spark_default"
    assert spark_job.application.endswith("jobs/curate.py")
    assert _downstream(dag, "curate") == {"select"}
    assert _downstream(dag, "select") == {"embed_ranges"}
    assert _downstream(dag, "embed_ranges") == {"embed_range"}
    assert _downstream(dag, "embed_range") == {"embed_commit"}
    assert _downstream(dag, "embed_commit") == {"cluster"}
    assert _downstream(dag, "cluster") == {"shards_parts"}
    assert _downstream(dag, "shards_parts") == {"shards_part"}
    assert _downstream(dag, "shards_part") == {"shards_clusters"}
    assert _downstream(dag, "shards_clusters") == {"shards_merge"}
    assert _downstream(dag, "shards_merge") == {"shards_commit"}
    assert _downstream(dag, "shards_commit") == {"announce"}
    assert dag.get_task("embed_range").pool == "gpu"  # mapped: one GPU slot per range
    assert dag.get_task("embed_range").retries == 2 and dag.get_task("embed_ranges").pool != "gpu"
    assert [a.uri for a in dag.get_task("announce").outlets] == ["climb://datasets/climblab"]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.timetable.expression == "0 0 * * 0"  # @weekly by default
    assert dag.params["config"] == ""


def test_search_dag_unrolls_iterations_with_mapped_proxy_runs(dagbag):
    dag = dagbag.get_dag(SEARCH)
    assets = [a.uri for a in dag.timetable.asset_condition.objects]
    assert assets == ["climb://datasets/climblab"]
    slots = sorted(t.task_id for t in dag.tasks if t.task_id.startswith("propose_") and t.task_id[-1].isdigit())
    assert slots == ["propose_0", "propose_1", "propose_2"]  # the paper's 3 iterations
    for i in range(3):
        runs = dag.get_task(f"proxy_runs_{i}")
        assert runs.is_mapped and runs.pool == "gpu"
        assert _downstream(dag, f"propose_{i}") == {f"proxy_runs_{i}"}
        assert _downstream(dag, f"proxy_runs_{i}") == ({f"propose_{i + 1}"} if i < 2 else {"propose_playoff"})
    assert _downstream(dag, "propose_playoff") == {"playoff_runs"}
    assert dag.get_task("playoff_runs").is_mapped and dag.get_task("playoff_runs").pool == "gpu"
    assert _downstream(dag, "playoff_runs") == {"finish"}
    # search.base / search.experts (off: nothing to do): the base before iteration 0, the experts
    # mapped beside iteration 0, before iteration 1 and the finish
    assert _downstream(dag, "base") == {"expert_jobs", "propose_0"} and dag.get_task("base").pool == "gpu"
    assert _downstream(dag, "expert_jobs") == {"expert_runs"}
    assert dag.get_task("expert_runs").is_mapped and dag.get_task("expert_runs").pool == "gpu"
    assert _downstream(dag, "expert_runs") == {"propose_1", "finish"}
    assert _downstream(dag, "finish") == {"build_plan"}
    assert _downstream(dag, "build_plan") == {"build_scatter"}
    assert _downstream(dag, "build_scatter") == {"build_buckets"}
    assert _downstream(dag, "build_buckets") == {"build_gather"}
    assert _downstream(dag, "build_gather") == {"build"}
    assert dag.get_task("build_scatter").is_mapped and dag.get_task("build_gather").is_mapped
    assert _downstream(dag, "build") == {"publish"}
    assert [a.uri for a in dag.get_task("build").outlets] == ["climb://datasets/climbmix"]
    assert dag.max_active_runs == 1


# ------------------------------------------------------------------------------- end to end
def _forget_mlflow_uri() -> None:
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, and `mixture.tracking` prefers
    that variable to the config's own store: in one process, a second config would log into the
    first one's store. Airflow runs every task in a process of its own; these tests run several
    configs in one, so they drop what MLflow exported before each run."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _run(dagbag, dag_id: str, config: Path, **params):
    """One `dag.test()` run of a DAG, with retries made immediate."""
    _forget_mlflow_uri()
    dag = dagbag.get_dag(dag_id)
    for t in dag.tasks:
        t.retry_delay = timedelta(0)
        t.retry_exponential_backoff = 0
    return dag.test(run_conf={"config": str(config), **params})


def _returned(dag_run) -> dict[str, object]:
    """Each unmapped task's return value (XCom) in the run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, key="return_value", map_indexes=-1))
        return {x.task_id: XComModel.deserialize_value(x) for x in rows}


def _task_states(dag_run) -> dict[tuple[str, int], tuple[str, int]]:
    return {(ti.task_id, ti.map_index): (str(ti.state), ti.try_number) for ti in dag_run.get_task_instances()}


def _asset_events(dag_run) -> list[tuple[str, dict]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == dag_run.run_id))
        return [(e.asset.uri, dict(e.extra or {})) for e in events]


# Wall-clock measurements that reports and run records carry: measured, not computed from the
# inputs, so they are the only content allowed to differ between two runs of the same config.
TIMING_KEYS = {"seconds", "eval_seconds", "tokens_per_s", "started_at", "finished_at"}
DURATION = re.compile(r"\b\d+(?:\.\d+)? s\b")


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _files(cfg, name: str) -> dict[str, str]:
    """Every file of a committed dataset by its manifest checksum; for JSON and Markdown reports
    the checksum of their content with wall-clock timings taken out."""
    from mixture import pipeline
    from mixture.dataset import open_dataset

    ds = open_dataset(pipeline.dataset_uri(cfg, name))
    out = {}
    for f in ds.manifest.files:
        path = f["path"]
        if path.endswith(".json"):
            blob = json.dumps(_without_timings(json.loads(Path(ds.path(path)).read_text())), sort_keys=True)
        elif path.endswith(".md"):
            blob = DURATION.sub("<duration> s", Path(ds.path(path)).read_text())
        else:
            out[path] = f["sha256"]
            continue
        out[path] = "content:" + hashlib.sha256(blob.encode()).hexdigest()
    return out


def _mlflow_runs(cfg, kind: str) -> list:
    """The search's MLflow runs of one kind (search, iteration, proxy) in the config's store."""
    import mlflow
    from mixture import tracking
    from mixture.search import track

    _forget_mlflow_uri()
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    return mlflow.search_runs(
        experiment_names=[track.experiment_name(cfg)],
        filter_string=f"tags.`climb.kind` = '{kind}'",
        output_format="list",
    )


def _write_config(tmp: Path, corpus: Path, output_root: Path | None = None) -> Path:
    data = tiny_config_dict(tmp, [str(corpus)])
    if output_root is not None:
        data["output_root"] = str(output_root)
    # one mapped embed task per shard of 20 documents: 3 on the tiny corpus (57 curated documents)
    data["embed"].update(shard_docs=20, range_shards=1)
    data["shards"]["part_docs"] = 20  # one mapped tokenization task per part of 20 documents: 3
    # several mapped build tasks: one scatter per cluster's texts, one gather per 2 shards of 2
    data["build"].update(shard_docs=2, bucket_docs=4)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_config_that_cannot_run_fails_the_dag_at_once_without_retries(dagbag, tmp_path):
    """An invalid config (refresh) and a search longer than the unrolled iterations (search)
    fail in `resolve_config` on the first try; nothing downstream runs."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_config_dict(tmp_path, ["x.jsonl"]), "unknown_key": 1}))
    long = tmp_path / "long.yaml"
    data = tiny_config_dict(tmp_path, ["x.jsonl"])
    data["search"]["iterations"] = [2, 2, 2, 2]
    long.write_text(yaml.safe_dump(data))
    for dag_id, config in ((REFRESH, bad), (SEARCH, long)):
        run = _run(dagbag, dag_id, config)
        states = _task_states(run)
        assert str(run.state) == "failed"
        assert states[("resolve_config", -1)] == ("failed", 1)
        assert {s for k, (s, _) in states.items() if k[0] != "resolve_config"} == {"upstream_failed"}
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def clean_run(dagbag, tmp_path_factory, sample_records):
    """Both DAGs, one after the other, on a tiny config (the conftest's tiny corpus)."""
    from mixture.config import load_config

    tmp = tmp_path_factory.mktemp("dags-clean")
    by_source: dict[str, list] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r)
    corpus = write_jsonl(tmp / "input" / "tiny.jsonl", [r for recs in by_source.values() for r in recs[:30]])
    config = _write_config(tmp, corpus)
    with pytest.MonkeyPatch.context() as patch:
        # the curate task's spark-submit: a JVM for one small job (conftest.short_jvm_env)
        patch.setenv("JAVA_TOOL_OPTIONS", short_jvm_env(dict(os.environ))["JAVA_TOOL_OPTIONS"])
        refresh = _run(dagbag, REFRESH, config)
    events = _asset_events(refresh)
    search = _run(dagbag, SEARCH, config)
    return {
        "tmp": tmp,
        "corpus": corpus,
        "config": config,
        "cfg": load_config(config),
        "refresh": refresh,
        "search": search,
        "events": events,
    }


@pytest.mark.slow
def test_refresh_dag_commits_every_dataset_and_announces_climblab(clean_run):
    from mixture import pipeline
    from mixture.dataset import open_dataset

    cfg = clean_run["cfg"]
    states = _task_states(clean_run["refresh"])
    assert str(clean_run["refresh"].state) == "success", states
    assert {s for s, _ in states.values()} == {"success"}
    for name in REFRESH_DATASETS:
        open_dataset(pipeline.dataset_uri(cfg, name)).verify()
    from mixture.stages import embed

    embeddings = open_dataset(pipeline.dataset_uri(cfg, "embeddings"))
    ranges = embed.ranges(open_dataset(pipeline.dataset_uri(cfg, "curated")), cfg.embed)
    mapped = sorted(k[1] for k in states if k[0] == "embed_range")
    assert len(ranges) > 1 and mapped == list(range(len(ranges)))  # one mapped task per range
    assert len(embeddings.files("emb-")) == sum(r.shards for r in ranges)
    assert embeddings.manifest.counts["documents_out"] == sum(r.docs for r in ranges)
    climblab = open_dataset(pipeline.dataset_uri(cfg, "climblab"))
    n_parts = -(-climblab.manifest.counts["documents_in"] // cfg.shards.part_docs)
    assert n_parts > 1 and sorted(k[1] for k in states if k[0] == "shards_part") == list(range(n_parts))
    merges = sorted(k[1] for k in states if k[0] == "shards_merge")
    assert merges == list(range(climblab.manifest.counts["clusters"]))  # one mapped merge per cluster
    assert not climblab.files("_parts")  # the runs stay out of the dataset
    assert clean_run["events"] == [
        (
            "climb://datasets/climblab",
            {"config": str(clean_run["config"]), "uri": climblab.uri, "manifest_sha256": climblab.manifest_sha256},
        )
    ]


@pytest.mark.slow
def test_search_dag_commits_the_mixture_and_records_mlflow_runs(clean_run):
    from mixture import pipeline
    from mixture.dataset import open_dataset

    cfg = clean_run["cfg"]
    states = _task_states(clean_run["search"])
    assert str(clean_run["search"].state) == "success", states
    n_runs = cfg.search.iterations  # [4, 2] in the tiny config
    for i, n in enumerate(n_runs):
        mapped = {k: v for k, v in states.items() if k[0] == f"proxy_runs_{i}"}
        assert len(mapped) == n and {s for s, _ in mapped.values()} == {"success"}
    assert states[("proxy_runs_2", -1)][0] == "skipped"  # the slot this config leaves unused
    assert states[("playoff_runs", -1)][0] == "skipped"  # search.playoff is off
    assert states[("publish", -1)][0] == "skipped"  # publish.uri unset
    for name in ("finish", "build_plan", "build_buckets", "build"):
        assert states[(name, -1)][0] == "success"
    climbmix = open_dataset(pipeline.dataset_uri(cfg, "climbmix"))
    shards = climbmix.manifest.extra["shards"]
    gathers = sorted(k[1] for k, (s, _) in states.items() if k[0] == "build_gather" and s == "success")
    held_out = climbmix.manifest.extra["validation"]["shards"]  # the validation split's buckets come after
    assert shards > 2 and gathers == list(range(-(-shards // 2) + -(-held_out // 2)))  # a task per bucket of 2 shards
    scatters = [k for k, (s, _) in states.items() if k[0] == "build_scatter" and s == "success"]
    assert len(scatters) == sum(1 for v in climbmix.manifest.extra["clusters"].values() if v["documents"])
    for name in SEARCH_DATASETS:
        open_dataset(pipeline.dataset_uri(cfg, name)).verify()
    mixture = json.loads(open(open_dataset(pipeline.dataset_uri(cfg, "search")).path("mixture.json")).read())
    assert abs(sum(mixture["weights"].values()) - 1) < 1e-6
    proxies = _mlflow_runs(cfg, "proxy")
    assert len(proxies) == sum(n_runs)  # one per proxy run
    assert len({r.data.tags["climb.run_id"] for r in proxies}) == sum(n_runs)
    assert all("score" in r.data.metrics and r.info.status == "FINISHED" for r in proxies)
    assert len(_mlflow_runs(cfg, "iteration")) == len(n_runs)
    assert [r.info.status for r in _mlflow_runs(cfg, "search")] == ["FINISHED"]


@pytest.mark.slow
def test_a_second_refresh_does_no_work_and_does_not_retrigger_the_search(clean_run, dagbag):
    from mixture import pipeline
    from mixture.dataset import open_dataset

    cfg = clean_run["cfg"]
    before = {n: open_dataset(pipeline.dataset_uri(cfg, n)).manifest_sha256 for n in REFRESH_DATASETS}
    again = _run(dagbag, REFRESH, clean_run["config"])
    states = _task_states(again)
    assert str(again.state) == "success"
    assert states[("announce", -1)][0] == "skipped"
    assert states[("embed_range", -1)][0] == "skipped"  # up to date: no range to embed
    assert states[("shards_part", -1)][0] == "skipped" and states[("shards_merge", -1)][0] == "skipped"
    assert _asset_events(again) == []
    after = {n: open_dataset(pipeline.dataset_uri(cfg, n)).manifest_sha256 for n in REFRESH_DATASETS}
    assert after == before  # nothing recommitted


@pytest.mark.slow
def test_tasks_that_fail_once_and_are_retried_leave_what_a_clean_run_leaves(clean_run, dagbag, tmp_path, monkeypatch):
    """Four injected one-shot failures: one embedding range dies after staging its shard (the
    retry finds it staged), so does one tokenization part of the shards, the embedding stage dies
    after staging every shard, just before its commit (the retry resumes from the staged shards),
    one proxy run dies after finishing its training (the retry must reuse the finished run), and
    one build bucket dies after writing its shards (the retry keeps them), and the build's commit
    fails once after its finish (the retry commits what was finished). Both DAGs still
    succeed, and
    every dataset has the same files as the clean run's: byte for byte, except the wall-clock
    timings in reports and run records."""
    from mixture import pipeline
    from mixture.config import load_config
    from mixture.dataset import DatasetWriter
    from mixture.search import steps

    clean = clean_run["cfg"]
    root = tmp_path / "out"
    # Curation is checked by the clean run; start from its committed output (same config, so up to date).
    for name in ("annotated", "curated"):
        shutil.copytree(pipeline.dataset_uri(clean, name), root / name)
    config = _write_config(tmp_path, clean_run["corpus"], output_root=root)
    cfg = load_config(config)

    def once(name: str) -> bool:
        """True the first time only (a marker file: the state survives the failed attempt)."""
        marker = tmp_path / f"failed-{name}"
        if marker.exists():
            return False
        marker.touch()
        return True

    from mixture.stages import embed

    real_commit, real_run_proxy, real_embed_range = DatasetWriter.commit, steps.run_proxy, embed.embed_range

    def embed_range(curated, writer, r, p, *args, **kwargs):
        out = real_embed_range(curated, writer, r, p, *args, **kwargs)
        if r.index == 1 and once("embed-range"):
            raise RuntimeError("injected failure after a range was staged")
        return out

    def commit(self, *args, **kwargs):
        if self.stage == "embed" and once("embeddings"):
            raise RuntimeError("injected failure before the embeddings commit")
        if self.stage == "build" and once("build-commit"):
            raise RuntimeError("injected failure after the build finished, before its commit")
        return real_commit(self, *args, **kwargs)

    def run_proxy(cfg_, job):
        result = real_run_proxy(cfg_, job)
        if once("proxy"):
            raise RuntimeError("injected failure after a proxy run finished")
        return result

    from mixture.climbmix import shuffle

    real_gather = shuffle.gather_bucket

    def gather_bucket(lab, writer, bucket, *args):
        out = real_gather(lab, writer, bucket, *args)
        if bucket.index == 1 and once("build-bucket"):
            raise RuntimeError("injected failure after a bucket was written")
        return out

    monkeypatch.setattr(DatasetWriter, "commit", commit)
    monkeypatch.setattr(steps, "run_proxy", run_proxy)
    monkeypatch.setattr(shuffle, "gather_bucket", gather_bucket)
    monkeypatch.setattr(embed, "embed_range", embed_range)
    from mixture.climblab import parts

    real_tokenize_part = parts.tokenize_part

    def tokenize_part(inp, writer, part, tok):
        out = real_tokenize_part(inp, writer, part, tok)
        if part.index == 1 and once("shards-part"):
            raise RuntimeError("injected failure after a part was staged")
        return out

    monkeypatch.setattr(parts, "tokenize_part", tokenize_part)
    refresh = _run(dagbag, REFRESH, config)
    search = _run(dagbag, SEARCH, config)
    refresh_states, search_states = _task_states(refresh), _task_states(search)
    assert str(refresh.state) == "success", refresh_states
    assert str(search.state) == "success", search_states
    assert refresh_states[("embed_commit", -1)] == ("success", 2)  # failed once, retried
    assert refresh_states[("embed_range", 1)] == ("success", 2)  # the retry reused its staged shard
    assert {s for k, (s, _) in refresh_states.items() if k[0] == "embed_range"} == {"success"}
    assert refresh_states[("shards_part", 1)] == ("success", 2)  # the retry kept its staged runs
    retried = [k for k, (s, tries) in search_states.items() if k[0] == "proxy_runs_0" and tries == 2]
    assert len(retried) == 1
    assert search_states[("build_gather", 1)] == ("success", 2)  # the retry kept the written bucket
    assert search_states[("build", -1)] == ("success", 2)  # the retry committed the finished build
    assert (tmp_path / "failed-embed-range").exists()
    assert (tmp_path / "failed-embeddings").exists() and (tmp_path / "failed-proxy").exists()
    assert len(_mlflow_runs(cfg, "proxy")) == sum(cfg.search.iterations)  # the retry logged no duplicate
    for name in REFRESH_DATASETS[2:] + SEARCH_DATASETS:
        assert _files(cfg, name) == _files(clean, name), f"{name} differs from the clean run"


# ------------------------------------------------------------------- incremental refreshes
def test_the_full_rebuild_param_turns_incremental_off_in_every_task_and_the_spark_job(dagbag, tmp_path):
    import _common
    from mixture.config import load_config, parse_overrides

    dag = dagbag.get_dag(REFRESH)
    assert dag.params["full_rebuild"] is False  # incremental by default
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, ["x.jsonl"])))
    assert _common.load_config(str(config), {"params": {"full_rebuild": True}}).refresh.incremental is False
    assert _common.load_config(str(config), {"params": {"full_rebuild": False}}).refresh.incremental is True
    assert _common.load_config(str(config), {"params": {}}).refresh.incremental is True
    assert _common.run_overrides() == {}  # outside a task: no run, no override
    args = _common.override_args(_common.run_overrides({"params": {"full_rebuild": True}}))
    assert args == ["--set", "refresh.incremental=false"]  # what spark-submit jobs/curate.py gets
    assert load_config(config, parse_overrides(args[1::2])).refresh.incremental is False


@pytest.mark.slow
def test_a_refresh_shows_each_versions_counts_and_full_rebuild_reaches_the_tasks(clean_run, dagbag, tmp_path):
    """A retraction committed to a copy of the clean run's `annotated`; the refresh DAG, run
    with full_rebuild, reports the version's mode and counts and that the run was not
    incremental, and rebuilds without the retracted documents."""
    from mixture import pipeline
    from mixture.config import load_config
    from mixture.curate import retract as retraction
    from mixture.dataset import open_dataset

    clean = clean_run["cfg"]
    root = tmp_path / "out"
    shutil.copytree(pipeline.dataset_uri(clean, "annotated"), root / "annotated")
    config = _write_config(tmp_path, clean_run["corpus"], output_root=root)
    cfg = load_config(config)
    annotated = open_dataset(pipeline.dataset_uri(cfg, "annotated"))
    kept = open_dataset(pipeline.dataset_uri(clean, "curated"))
    ids = _doc_ids(kept)[:2]
    match = retraction.resolve(annotated, retraction.parse_entries(ids))
    retraction.commit(cfg, annotated, match, "test", pipeline.config_hash(cfg, pipeline.stage("curate"), listing=False))
    run = _run(dagbag, REFRESH, config, full_rebuild=True)
    assert str(run.state) == "success", _task_states(run)
    out = _returned(run)
    cur = out["curate"]
    assert cur["skipped"] is True and cur["incremental"] is False  # up to date: the retraction kept it so
    assert cur["lineage"]["mode"] == "retract" and cur["lineage"]["delta"]["retracted"] == 2
    assert cur["lineage"]["summary"].startswith(f"annotated v{cur['lineage']['version']} (retract): 2 retracted")
    for task in ("select", "cluster", "embed_commit", "shards_commit"):
        assert out[task]["incremental"] is False and out[task]["skipped"] is False, task
        if "lineage" in out[task]:  # the stages that record one say what their version changed
            assert out[task]["lineage"]["summary"].startswith(out[task]["dataset"].rsplit("/", 1)[-1] + " v")
    curated = open_dataset(pipeline.dataset_uri(cfg, "curated"))
    assert curated.manifest.counts["retracted"] == 2
    assert not set(ids) & set(_doc_ids(curated))


def _doc_ids(ds) -> list[str]:
    import pyarrow.parquet as pq

    return sorted(str(i) for f in ds.files("docs/") for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())
