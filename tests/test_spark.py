"""The Spark plumbing's memory habits: checkpoints kept on disk, not in the JVM's heap; rows
collected through files; Python workers that give freed memory back when a partition is done; a
local JVM on the serial collector, sorting in native memory, persisting in small batches, reading
checkpoints with Kryo."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from mixture import spark as spark_env

LIBS = str(Path(__file__).resolve().parents[1] / "libs")


def fresh_process(script: str) -> str:
    """`script`'s output, run by a new Python process (its own JVM; no session of the tests')."""
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": LIBS, "PATH": os.environ["PATH"]},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def cached_rdds(spark) -> dict[int, tuple[int, int]]:
    """(bytes in memory, bytes on disk) of each RDD the block manager holds, by id."""
    infos = spark.sparkContext._jsc.sc().getRDDStorageInfo()
    return {info.id(): (info.memSize(), info.diskSize()) for info in infos}


def test_a_checkpoint_holds_its_rows_on_disk_and_none_in_the_jvm_heap(spark):
    df = spark.range(50_000).selectExpr("id", "sha2(CAST(id AS STRING), 512) AS text")
    before = set(cached_rdds(spark))
    kept = spark_env.checkpoint(df)
    assert kept.count() == 50_000 and kept.where("id = 7").first()["text"] == hashlib.sha512(b"7").hexdigest()
    new = [v for k, v in cached_rdds(spark).items() if k not in before]
    assert new and sum(m for m, _ in new) == 0 and sum(d for _, d in new) > 1_000_000
    # Spark's default local checkpoint keeps the same rows in the JVM's memory
    before = set(cached_rdds(spark))
    df.localCheckpoint(eager=True).count()
    assert sum(m for k, (m, _) in cached_rdds(spark).items() if k not in before) > 1_000_000


def test_released_yields_the_same_batches_and_gives_memory_back_even_on_failure(monkeypatch):
    calls = []
    monkeypatch.setattr(spark_env, "give_back_memory", lambda: calls.append(1))
    batches = [pa.record_batch({"x": [i, i + 1]}) for i in range(3)]

    def double(items):
        for b in items:
            yield pa.record_batch({"x": pa.compute.multiply(b.column("x"), 2)})

    out = list(spark_env.released(double)(iter(batches)))
    assert [b.column("x").to_pylist() for b in out] == [[0, 2], [2, 4], [4, 6]] and calls == [1]

    def failing(items):
        yield next(items)
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(spark_env.released(failing)(iter(batches)))
    assert calls == [1, 1]


def test_every_per_batch_function_runs_through_map_batches():
    """`map_batches` is the one place a per-batch function meets Spark: one that called
    `mapInArrow` itself would keep its worker's memory after its partition."""
    pkg = Path(LIBS) / "mixture"
    callers = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if ".mapInArrow(" in p.read_text())
    assert callers == ["spark.py"]


@pytest.mark.parametrize("where", ["C heap", "Arrow pool"])
def test_a_worker_gives_freed_memory_back_to_the_system(where):
    """~300 MB in small blocks, one in 50 kept (so nothing frees whole pages by itself): the
    process holds it after the free, and not after `give_back_memory`."""
    alloc = "np.ones(1000)" if where == "C heap" else "pa.array(np.arange(2000))"
    script = textwrap.dedent(
        f"""
        import numpy as np, pyarrow as pa
        from mixture.spark import give_back_memory
        def rss():
            return next(int(x.split()[1]) >> 10 for x in open("/proc/self/status") if x.startswith("VmRSS"))
        base = rss()
        blocks = [{alloc} for _ in range(40000)]
        keep = blocks[::50]
        del blocks
        held = rss()
        give_back_memory()
        print(base, held, rss())
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": LIBS})
    assert run.returncode == 0, run.stderr
    base, held, after = map(int, run.stdout.split())
    assert held - base > 250  # MiB still held once freed
    assert after - base < (held - base) / 3


def test_a_local_jvm_runs_the_serial_collector(spark):
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    assert {b.getName() for b in beans} == {"Copy", "MarkSweepCompact"}


def test_a_local_jvm_keeps_the_collector_a_user_picked(tmp_path):
    assert not spark_env.picks_a_collector({})
    assert spark_env.picks_a_collector({"PYSPARK_SUBMIT_ARGS": "--driver-java-options -XX:+UseG1GC pyspark-shell"})
    assert spark_env.picks_a_collector({"JAVA_TOOL_OPTIONS": "-Xss4m -XX:+UseZGC"})
    assert not spark_env.picks_a_collector({"JAVA_TOOL_OPTIONS": "-Xss4m -XX:+UseStringDeduplication"})
    (tmp_path / "spark-defaults.conf").write_text("spark.driver.extraJavaOptions -XX:+UseParallelGC\n")
    assert spark_env.picks_a_collector({"SPARK_CONF_DIR": str(tmp_path)})
    assert spark_env.picks_a_collector({"SPARK_HOME": str(tmp_path.parent), "SPARK_CONF_DIR": str(tmp_path)})
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "spark-defaults.conf").write_text("spark.driver.memory 2g\n")
    assert not spark_env.picks_a_collector({"SPARK_HOME": str(tmp_path)})


def test_local_frame_has_the_rows_and_partitions_asked_for(spark):
    rows = [(i, f"s{i}", None if i % 2 else i * 10) for i in range(5)]
    df = spark_env.local_frame(spark, rows, "n int, s string, v bigint", partitions=3)
    assert df.rdd.getNumPartitions() == 3
    assert sorted(tuple(r) for r in df.collect()) == rows
    assert spark_env.local_frame(spark, rows[:2], "n int, s string, v bigint", 8).rdd.getNumPartitions() == 2
    empty = spark_env.local_frame(spark, [], "id string, near_of string")
    assert empty.count() == 0 and empty.columns == ["id", "near_of"]


def test_by_value_gives_each_value_a_partition_of_its_own_where_hashing_shares_one(spark):
    from pyspark.sql import functions as F

    values = spark.range(0, 600).select((F.col("id") % 3).cast("int").alias("b"), "id")

    def partitions_of(df):
        rows = df.select("b", F.spark_partition_id().alias("p")).distinct().collect()
        return sorted((r["b"], r["p"]) for r in rows)

    # Spark's hash partitioning puts values 0 and 2 of 3 in one partition, the third empty
    assert partitions_of(values.repartition(3, "b")) == [(0, 0), (1, 1), (2, 0)]
    placed = spark_env.by_value(values, "b", 3)
    assert partitions_of(placed) == [(0, 0), (1, 1), (2, 2)]
    assert placed.columns == ["b", "id"] and placed.count() == 600
    n = 37
    many = spark.range(0, 5 * n).select((F.col("id") % n).cast("int").alias("b"))
    assert partitions_of(spark_env.by_value(many, "b", n)) == [(v, v) for v in range(n)]
    hashed = spark.range(-50, 50).select(F.col("id").cast("int").alias("v"), F.hash(F.col("id").cast("int")).alias("h"))
    rows = hashed.collect()
    assert spark_env.murmur3_int([r["v"] for r in rows]).tolist() == [r["h"] for r in rows]


def test_local_frame_starts_no_python_worker_where_create_data_frame_does():
    """Python workers (each of a daemon's pool keeps its memory) only for the per-batch functions:
    `createDataFrame` of Python rows starts a daemon and workers of its own."""
    script = textwrap.dedent(
        """
        import psutil
        from mixture import spark as spark_env
        spark = spark_env.session("local[2]", "t", 2)
        def daemons():  # under this process (not another session's)
            n = 0
            for p in psutil.Process().children(recursive=True):
                try:
                    n += "pyspark.daemon" in " ".join(p.cmdline())
                except psutil.Error:  # ended meanwhile
                    pass
            return n
        spark_env.local_frame(spark, [(1, "a"), (2, "b")], "n int, s string", 2).collect()
        first = daemons()
        spark.createDataFrame([(1, "a"), (2, "b")], "n int, s string").collect()
        print(first, daemons())
        """
    )
    first, after = map(int, fresh_process(script).split()[-2:])
    assert first == 0 and after > 0


@pytest.mark.slow
def test_the_curate_stage_ends_the_jvm_it_started_and_keeps_one_it_found():
    """`climb run`'s later stages get the memory of the JVM curation started (PySpark keeps it
    to the process's end otherwise); a JVM the process had already started stays (the tests' own,
    a notebook's). A session started after it was ended works."""
    script = textwrap.dedent(
        """
        import types
        import psutil
        from mixture import spark as spark_env
        from mixture.stages.curate import _spark
        cfg = types.SimpleNamespace(curate=types.SimpleNamespace(spark_master="local[1]", partitions=1))
        def jvms():  # under this process
            return sorted(p.pid for p in psutil.Process().children(recursive=True) if p.name() == "java")
        with _spark(cfg) as spark:
            spark.range(5).count()
            started = jvms()
        ended = jvms()
        spark = spark_env.session("local[1]", "t", 1)
        rows = spark.range(7).count()
        spark.stop()
        found = jvms()
        with _spark(cfg) as spark:
            spark.range(5).count()
        print(len(started), len(ended), rows, len(found), jvms() == found)
        """
    )
    assert fresh_process(script).split()[-5:] == ["1", "0", "7", "1", "True"]


def test_python_workers_allocate_arrow_memory_with_jemalloc(spark):
    """The part writers hold less freed memory with it than with Arrow's default (bench/RESULTS.md)."""

    def pool(batches):
        import pyarrow as pa

        for _ in batches:
            yield pa.RecordBatch.from_pydict({"pool": [pa.default_memory_pool().backend_name]})

    used = {r["pool"] for r in spark_env.map_batches(spark.range(4).repartition(2), pool, "pool string").collect()}
    assert used == {spark_env.ARROW_POOL} == {"jemalloc"}
    assert spark.conf.get("spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL") == "jemalloc"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_collect_arrow_gives_the_rows_to_arrow_gives_and_leaves_no_file(spark, tmp_path, where, request):
    scratch = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/staging"
    df = spark.range(3_000).selectExpr(
        "id", "IF(id % 7 = 0, NULL, CONCAT('doc-', id)) AS name", "sequence(0L, id % 5) AS keys", "id % 3 = 0 AS dup"
    )
    df = df.repartition(4, "dup")  # two of the four partitions get no row
    got = spark_env.collect_arrow(df, scratch)
    want = df.toArrow()
    assert got.column_names == want.column_names and got.num_rows == 3_000
    assert [f.type for f in got.schema] == [f.type for f in want.schema]
    assert got.to_pylist() == want.to_pylist()  # the same rows in the same order
    from mixture import storage

    assert storage.list_files(scratch) == []
    empty = spark_env.collect_arrow(df.where("id < 0"), scratch)
    assert empty.num_rows == 0 and empty.column_names == want.column_names


def test_a_local_session_takes_the_memory_settings_unless_the_user_says_otherwise(spark):
    conf = spark.sparkContext.getConf()
    for _, settings in spark_env.LOCAL_SETTINGS:  # native-memory sorts, small batches and pages, Kryo
        assert {k: spark.conf.get(k) for k in settings} == settings
    assert conf.get("spark.memory.offHeap.enabled") == "true"
    ordered = spark.range(200_000).selectExpr("id", "id % 1000 AS k", "CONCAT('d', id) AS name").orderBy("k", "id")
    persisted = ordered.persist()
    assert persisted.toArrow().column("id").to_pylist()[:3] == [0, 1000, 2000]  # a sort and a persist run with them
    assert spark_env.checkpoint(ordered).toArrow() == persisted.toArrow()  # a checkpoint read back with Kryo
    persisted.unpersist()

    def sizes(batches):
        return (pa.RecordBatch.from_pydict({"n": [b.num_rows]}) for b in batches)

    sent = spark_env.map_batches(spark.range(5000).coalesce(1), sizes, "n long").collect()
    assert sorted(r["n"] for r in sent) == [1000, 2000, 2000]  # a Python worker's batches
    script = textwrap.dedent(
        """
        import os
        os.environ["PYSPARK_SUBMIT_ARGS"] = (
            "--conf spark.memory.offHeap.enabled=false "
            "--conf spark.sql.inMemoryColumnarStorage.batchSize=5000 "
            "--conf spark.serializer=org.apache.spark.serializer.JavaSerializer "
            "--conf spark.buffer.pageSize=4m --conf spark.sql.execution.arrow.maxRecordsPerBatch=7000 pyspark-shell"
        )
        from mixture import spark as spark_env
        spark = spark_env.session("local[1]", "t", 1)
        conf = spark.sparkContext.getConf()
        print(conf.get("spark.memory.offHeap.enabled"), conf.get("spark.memory.offHeap.size", "unset"),
              spark.conf.get("spark.sql.inMemoryColumnarStorage.batchSize"), conf.get("spark.serializer"),
              conf.get("spark.buffer.pageSize"), spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
        """
    )
    java = "org.apache.spark.serializer.JavaSerializer"
    assert fresh_process(script).split()[-6:] == ["false", "unset", "5000", java, "4m", "7000"]
    off_heap = "spark.memory.offHeap."
    assert not spark_env.user_sets(off_heap, {})
    assert not spark_env.user_sets(off_heap, {"PYSPARK_SUBMIT_ARGS": "--conf a=b"})
