"""The Spark session the `curate` stage runs on (`local[*]` by default, any master URL works),
and the one place that says which environment Spark's Python processes need: the CLI, the
spark-submit job and the Airflow task all take it from `environment`. Also the stage's memory
habits on Spark: a local JVM sorts and shuffles in native memory (small pages), builds persisted
rows and Arrow batches small and reads checkpoints back with Kryo (`LOCAL_SETTINGS`);
`checkpoint` keeps intermediate results on disk, not in the JVM's heap; `collect_arrow` brings
rows to the driver through files, not the heap; `map_batches` runs a per-batch function that gives
its worker's freed memory back (`released`); `local_frame` makes a DataFrame of the driver's rows
without Python workers; `by_value` gives each value of a column a task of its own; `stop` can end
the JVM a session started."""

from __future__ import annotations

import functools
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping

# Arrow's allocator in Spark's Python workers (local: the environment they inherit; a cluster's:
# `spark.executorEnv`): jemalloc, which holds less freed memory between batches than Arrow's
# default (mimalloc): the part writers 30-80 MiB less each (bench/RESULTS.md). Arrow reads it when
# pyarrow is imported, so the driver, which has imported it by then, keeps its own; a user's wins.
ARROW_POOL = "jemalloc"


def environment(master: str = "local[*]", env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set (unless already set) what Spark's processes need in `env` (default: this process's
    environment): Python workers run this interpreter, so they import the same `mixture` and
    packages as the driver, and allocate Arrow memory with `ARROW_POOL`; a local master binds to
    the loopback address."""
    env = os.environ if env is None else env
    env.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)
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


# A local master's one JVM moves only small columns (the texts stay out of it, `mixture.curate.texts`)
# on a few cores: the serial collector keeps its heap near what is live, where G1 (the default on
# machines of 2+ cores) grows it toward `spark.driver.memory` as the corpus grows (bench/RESULTS.md:
# 820 against 970 MiB at 240,000 records, 1,064 against 1,461 at 480,000; the same seconds). Set as
# `spark.driver.defaultJavaOptions`, which a user's `extraJavaOptions` follow; left out where the
# user picks a collector (`picks_a_collector`: the JVM refuses two). A cluster's are its own.
LOCAL_JAVA_OPTIONS = "-XX:+UseSerialGC"
_PICKS_A_COLLECTOR = re.compile(r"-XX:\+Use\w+GC\b")

# A local master's sorts, shuffles and aggregations take their pages from native memory, freed
# when a task ends, not from the JVM's heap, whose pages stay resident once touched (the collector
# keeps them): a larger corpus no longer leaves a larger heap behind (bench/RESULTS.md: with
# `collect_arrow`, the JVM 690-710 against 740-920 MiB in the write of 240,000 records, 530-540
# against 566-573 at 24,000; the same seconds). Past the size a task spills to disk, as on the
# heap. Left out where the user's settings say anything of off-heap memory (`user_sets`).
LOCAL_OFF_HEAP = {"spark.memory.offHeap.enabled": "true", "spark.memory.offHeap.size": "256m"}

# A local master's persisted DataFrames (the curate stage's scan) are built in the heap in columnar
# batches while the Python workers compute their rows, seconds a batch: Spark's 10,000 rows outlive
# the young collections that find them live, and the serial collector promotes them, garbage whose
# old-generation pages then stay resident; 1,000-row batches are promoted less (bench/RESULTS.md:
# at 240,000 records the old generation's largest use 134-156 against 187-203 MB, the JVM in the
# write 638-672 against 706-719 MiB). Left out where the user's settings name it (`user_sets`).
LOCAL_COLUMNAR_BATCH = {"spark.sql.inMemoryColumnarStorage.batchSize": "1000"}

# A local master's checkpoints (`checkpoint`: blocks on disk) are written and read back with
# `spark.serializer`; Spark's default, Java serialization, reads each row through an object stream
# (Java Flight Recorder: ~0.5 GB of the JVM's 4.1 GB of allocations at 240,000 records), and what
# survives a young collection is promoted. Kryo, Spark's advice for speed, reads a row into one
# byte array (bench/RESULTS.md: at 240,000 records the old generation's largest use 92-94 against
# 134-156 MB, the JVM in the write 609-627 against 638-672 MiB; the throughput benchmark's seconds
# within the box's noise). Left out where the user's settings name a serializer.
LOCAL_SERIALIZER = {"spark.serializer": "org.apache.spark.serializer.KryoSerializer"}

# A local master's sorts and shuffles take native pages of 1 MiB (Spark derives 4 MiB from the
# off-heap size and two cores, 1 MiB at eight), and its Arrow batches to and from the Python
# workers hold 2,000 rows instead of 10,000 (measured together, not traced apart; bench/RESULTS.md:
# the curate stage's peak at 240,000 records 1,665-1,677 against 1,701-1,703 MiB, the JVM in the
# write 582-584 against 598-610; at 24,000 1,563-1,572 against 1,578-1,579). Each left out where
# the user sets it.
LOCAL_PAGE = {"spark.buffer.pageSize": "1m"}
LOCAL_ARROW_BATCH = {"spark.sql.execution.arrow.maxRecordsPerBatch": "2000"}

# each group with the settings' family a user's own settings may name (then the group stays out)
LOCAL_SETTINGS = [
    ("spark.memory.offHeap.", LOCAL_OFF_HEAP),
    ("spark.sql.inMemoryColumnarStorage.batchSize", LOCAL_COLUMNAR_BATCH),
    ("spark.serializer", LOCAL_SERIALIZER),
    ("spark.buffer.pageSize", LOCAL_PAGE),
    ("spark.sql.execution.arrow.maxRecordsPerBatch", LOCAL_ARROW_BATCH),
]


def session(master: str | None, app: str = "climb", partitions: int = 8):
    """A session for `master` (None: whatever spark-submit configured); executors get the
    driver's S3 settings (`EXECUTOR_ENV`)."""
    environment(master or "")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if master or not _submitted_name():
        builder = builder.appName(app)  # spark-submit --name (e.g. the Airflow run's) wins
    builder = builder.config("spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL", os.environ["ARROW_DEFAULT_MEMORY_POOL"])
    for name in EXECUTOR_ENV:
        if os.environ.get(name):
            builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    if master:
        builder = (
            builder.master(master)
            .config("spark.sql.shuffle.partitions", str(partitions))
            .config("spark.default.parallelism", str(partitions))
        )
    if (master or "").startswith("local") and not picks_a_collector():
        builder = builder.config("spark.driver.defaultJavaOptions", LOCAL_JAVA_OPTIONS)
    if (master or "").startswith("local"):
        for family, settings in LOCAL_SETTINGS:
            if not user_sets(family):
                for key, value in settings.items():
                    builder = builder.config(key, value)
    spark = (
        builder.config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    if (master or "").startswith("local"):
        quiet_task_errors(spark)
    return spark


def launched_here() -> bool:
    """Whether this process has started a JVM for Spark (PySpark keeps it for every later
    session); false under spark-submit, whose JVM started this process."""
    return _launched_jvm() is not None


def _launched_jvm():
    """The JVM this process started for Spark (a `Popen`), or None."""
    from pyspark import SparkContext

    return getattr(SparkContext._gateway, "proc", None)


def stop(spark, end_jvm: bool = False) -> None:
    """Stop `spark`; with `end_jvm`, also end the JVM this process started for it, which PySpark
    otherwise keeps, heap and all, until the process exits (560-850 MiB after curation:
    bench/RESULTS.md). A later session starts a new one. Under spark-submit nothing is ended."""
    from pyspark import SparkContext

    spark.stop()
    proc = _launched_jvm()
    if not end_jvm or proc is None:
        return
    SparkContext._gateway.shutdown()  # type: ignore[union-attr]  # it started `proc`
    proc.stdin.close()  # the JVM's gateway server exits when its input ends
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    SparkContext._gateway = SparkContext._jvm = None


def picks_a_collector(env: Mapping[str, str] | None = None) -> bool:
    """Whether the user picks the JVM's garbage collector: in the environment's Java or
    spark-submit options, or in `spark-defaults.conf` (then `LOCAL_JAVA_OPTIONS` stay out)."""
    return any(_PICKS_A_COLLECTOR.search(text) for text in _user_settings(env))


def user_sets(family: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether the user's settings name `family` (a setting or its prefix, e.g. `spark.memory.offHeap.`:
    then the `LOCAL_SETTINGS` group of that family stays out)."""
    return any(family in text for text in _user_settings(env))


def _user_settings(env: Mapping[str, str] | None) -> list[str]:
    """Where a user sets a local JVM's options before it starts (`env`, default this process's
    environment): the Java and spark-submit options in the environment, `spark-defaults.conf`."""
    env = os.environ if env is None else env
    texts = [env.get(k, "") for k in ("PYSPARK_SUBMIT_ARGS", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")]
    conf_dir = env.get("SPARK_CONF_DIR") or (os.path.join(env["SPARK_HOME"], "conf") if env.get("SPARK_HOME") else "")
    defaults = os.path.join(conf_dir, "spark-defaults.conf")
    if conf_dir and os.path.isfile(defaults):
        with open(defaults, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return texts


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


def checkpoint(df):
    """`df` computed once and its lineage cut (iterative jobs keep small plans; later steps read
    it again), kept on the executors' local disks: not in the JVM's heap, whose size would then
    grow with the corpus (`spark.driver.memory` bounds it in local mode)."""
    from pyspark import StorageLevel

    return df.localCheckpoint(eager=True, storageLevel=StorageLevel.DISK_ONLY)


def collect_arrow(df, scratch: str):
    """`df`'s rows on the driver as one Arrow table, in partition order, as `df.toArrow()` gives
    them, without the JVM's heap holding them: each partition's rows go from a Python worker to an
    Arrow stream file in a folder under `scratch` (mixture.storage: local or S3), which the driver
    reads back, file by file, and deletes (`toArrow` gathers every partition's batches in the heap
    at once: pages that stay resident, ~130 MiB at 240,000 identify rows, bench/RESULTS.md)."""
    import uuid

    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from mixture import storage

    folder = storage.join(scratch, f"collect.tmp-{uuid.uuid4().hex[:12]}")

    def write(batches: Iterator) -> Iterator:
        first = next(batches, None)
        if first is None:
            return
        uri = storage.join(folder, f"{uuid.uuid4().hex}.arrow")
        with storage.open_write(uri) as f, pa.ipc.new_stream(f, first.schema) as out:
            for batch in itertools.chain([first], batches):
                out.write_batch(batch)
        yield pa.RecordBatch.from_pydict({"uri": [uri]})

    try:
        # the files the successful tasks wrote, in partition order (a retried task's are not listed)
        written = map_batches(df, write, "uri string").collect()
        tables = []
        for row in written:
            with storage.open_read(row["uri"]) as f:
                tables.append(pa.ipc.open_stream(f).read_all())
    finally:
        storage.delete(folder)
    return pa.concat_tables(tables) if tables else to_arrow_schema(df.schema).empty_table()


def map_batches(df, fn: Callable[[Iterator], Iterator], schema):
    """`df.mapInArrow(fn, schema)`, with `fn` `released`: how the stage runs a per-batch function
    on Spark, so none holds its worker's memory after its partition."""
    return df.mapInArrow(released(fn), schema)


def local_frame(spark, rows: list[tuple], schema: str, partitions: int | None = None):
    """The driver's `rows` (tuples in the order of `schema`, a DDL string) as a DataFrame, made in
    the JVM from an Arrow table; with `partitions`, in at most that many partitions (one row each
    while they are fewer). `createDataFrame` of Python rows converts them in Python workers of
    their own: a second daemon and pool of workers beside the `mapInArrow` ones, each keeping
    its memory after (bench/RESULTS.md)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType, _parse_datatype_string

    struct = _parse_datatype_string(schema)
    if not isinstance(struct, StructType):
        raise ValueError(f"not the schema of rows: {schema!r}")
    arrow = to_arrow_schema(struct)
    columns = list(zip(*rows)) if rows else [()] * len(arrow)
    df = spark.createDataFrame(
        pa.Table.from_arrays([pa.array(c, t.type) for c, t in zip(columns, arrow)], schema=arrow)
    )
    if partitions is None:
        return df
    wanted = max(1, min(len(rows), partitions))
    # the JVM slices local rows into at most `defaultParallelism` partitions: a shuffle only if that differs
    return df if wanted == max(1, min(len(rows), spark.sparkContext.defaultParallelism)) else df.repartition(wanted)


_PLACE = "_partition_key"


def by_value(df, column: str, n: int):
    """`df` in `n` partitions, the rows whose `column` (an int in [0, n)) is v in partition v:
    one task per value. `repartition(n, column)` hashes the values (pmod(murmur3(v), n)), so two
    values can share a task while another task gets none (with 3 values: 0 and 2 in one task, the
    write's slowest task twice the rows); here the rows are shuffled on a key whose hash is v
    (`partition_keys`)."""
    from pyspark.sql import functions as F

    keys = F.array(*[F.lit(k) for k in partition_keys(n).tolist()])
    return df.withColumn(_PLACE, F.element_at(keys, F.col(column) + 1)).repartition(n, _PLACE).drop(_PLACE)


def partition_keys(n: int):
    """For each v in [0, n), the smallest int whose row Spark's hash partitioning into n
    partitions places in partition v (numpy int32 array)."""
    import numpy as np

    found = np.full(n, -1, dtype=np.int64)
    start, size = 0, max(64, 4 * n)
    while (found < 0).any():
        k = np.arange(start, start + size, dtype=np.int64)
        part = murmur3_int(k) % n  # numpy's % is Java's pmod for n > 0
        first = np.unique(part, return_index=True)
        todo = found[first[0]] < 0
        found[first[0][todo]] = k[first[1][todo]]
        start, size = start + size, size * 2
    return found.astype(np.int32)


def murmur3_int(values):
    """Spark's `hash` of int values (Murmur3 x86 32-bit, seed 42: `Murmur3_x86_32.hashInt`, the
    hash of its hash partitioning), as numpy int32."""
    import numpy as np

    def rotl(x, r):
        return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

    k = np.asarray(values).astype(np.uint32) * np.uint32(0xCC9E2D51)
    k = rotl(k, 15) * np.uint32(0x1B873593)
    h = rotl(np.uint32(42) ^ k, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    h ^= np.uint32(4)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32)


def released(fn: Callable[[Iterator], Iterator]) -> Callable[[Iterator], Iterator]:
    """A `mapInArrow` function (batches -> batches) that gives its worker's unused memory back to
    the system when its partition is done: Arrow's pool and the C heap keep freed pages for reuse,
    and Spark reuses its Python workers, so without this each one holds the peak of the largest
    partition it ever ran while other steps run (bench/RESULTS.md: the workers ~0.4 GB lower at
    240,000 records)."""

    @functools.wraps(fn)
    def run(batches: Iterator) -> Iterator:
        try:
            yield from fn(batches)
        finally:
            give_back_memory()

    return run


def give_back_memory() -> None:
    """Return this process's freed memory to the system: Arrow's pool, then the C heap
    (glibc's `malloc_trim`; other C libraries keep theirs)."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
