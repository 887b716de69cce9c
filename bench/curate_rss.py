"""Peak resident memory of `climb curate` + `climb select` per process kind and per step (the
curate stage's steps as it logs them, then select), on one corpus shape of `curate_shapes.py`
(issue #24: what grows with the corpus). The corpus is built in a child process, so this one
never holds the texts.

The process tree is sampled from /proc every 0.2 s: the driver (this Python process), the JVM and
the Spark Python workers, each kind's anonymous and file-backed (memory-mapped files) pages apart;
with `--trace`, also the driver's Python allocations (tracemalloc peak) and Arrow's pool (its
largest size) per stage.

    .venv/bin/python bench/curate_rss.py short:off 24000
    .venv/bin/python bench/curate_rss.py short:off 48000 --curate '{"driver_rows": 0}' --trace
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_throughput as ct  # noqa: E402


def tree_rss() -> dict[str, int]:
    """Resident bytes per kind of process under this one (driver, jvm, workers), and each kind's
    anonymous (`<kind>_anon`) and file-backed (`<kind>_file`: memory-mapped files, which the page
    cache can drop and which count once per process that maps them) parts; `<kind>_processes`: how
    many processes of the kind were running."""
    kids: dict[int, list[int]] = {}
    cmds: dict[int, str] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmds[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        kids.setdefault(int(fields[1]), []).append(int(name))
    out: dict[str, int] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        kind = "driver" if pid == os.getpid() else "jvm" if "java" in cmds.get(pid, "") else "workers"
        for key, value in status_rss(pid).items():
            name = kind if key == "rss" else f"{kind}_{key}"
            out[name] = out.get(name, 0) + value
        out[f"{kind}_processes"] = out.get(f"{kind}_processes", 0) + 1
        todo += kids.get(pid, [])
    out["total"] = sum(out.get(k, 0) for k in ("driver", "jvm", "workers"))
    return out


def status_rss(pid: int) -> dict[str, int]:
    """A process's resident bytes: in all, anonymous and file-backed (from /proc/<pid>/status)."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in keys:
                    out[keys[key]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


CURATE_STEPS = ["read_and_signals", "dedup_groups", "write", "commit"]  # `annotate._Timer`'s steps, in order


class StepPhases(logging.Handler):
    """Moves the sampler to the curate stage's next step when the stage logs one as done."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def emit(self, record):
        msg = record.getMessage()
        for i, name in enumerate(CURATE_STEPS[:-1]):
            if msg.startswith(f"curate: {name} done"):
                self.sampler.phase = f"curate: {CURATE_STEPS[i + 1]}"


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.phase = "setup"
        self.peaks: dict[str, dict[str, int]] = {}

    def run(self):
        while True:
            peak = self.peaks.setdefault(self.phase, {})
            for kind, value in tree_rss().items():
                peak[kind] = max(peak.get(kind, 0), value)
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape")
    ap.add_argument("docs", type=int)
    ap.add_argument("--curate", default="{}", help="curate settings (JSON) added to the run's")
    ap.add_argument("--trace", action="store_true", help="tracemalloc and Arrow pool peaks per stage")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="curate-rss-"))
    # built and written in a child process: this one never holds the texts (`curate_throughput.prepared`)
    ct.prepared(args.shape, args.docs, argparse.Namespace(seed=0, truth_max=0, threshold=0.8), tmp / "in")
    import mlflow
    import pyarrow as pa
    from mixture import pipeline
    from mixture import spark as spark_env

    spark_env.session("local[2]", "curate-rss", ct.WORKERS * 2)
    filters_off = args.shape.endswith(":off")
    cfg = ct.ours_config(tmp / "in", tmp / "out", tmp / "mlflow.db", filters_off, json.loads(args.curate))
    mlflow.MlflowClient(cfg.tracking.uri).search_experiments()
    sampler = Sampler()
    sampler.start()
    logging.getLogger("mixture.curate").setLevel(logging.INFO)
    logging.getLogger("mixture.curate").addHandler(StepPhases(sampler))
    time.sleep(1)
    seconds, traced = {}, {}
    for stage in ("curate", "select"):
        sampler.phase = f"curate: {CURATE_STEPS[0]}" if stage == "curate" else stage
        if args.trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        pipeline.run_stage(cfg, stage, force=True)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        if args.trace:
            traced[stage] = {
                "python_peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20),
                "arrow_pool_max_mib": round(pa.default_memory_pool().max_memory() / 2**20),
            }
            tracemalloc.stop()
        time.sleep(0.5)
    steps = pipeline.current(cfg, "curate").manifest.extra.get("seconds")
    mib = {
        phase: {k: v if k.endswith("_processes") else round(v / 2**20) for k, v in p.items()}
        for phase, p in sampler.peaks.items()
    }
    print(
        json.dumps(
            {
                "shape": args.shape,
                "docs": args.docs,
                "curate": json.loads(args.curate),
                "seconds": seconds,
                "curate_steps": steps,
                "traced": traced,
                "peak_rss_mib": mib,
            }
        )
    )


if __name__ == "__main__":
    main()
