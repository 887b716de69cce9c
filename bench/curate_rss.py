"""Peak resident memory of `climb curate` + `climb select` per process kind and per step (the
curate stage's steps as it logs them, then select), on one corpus shape of `curate_shapes.py`
(issue #24: what grows with the corpus). The corpus is built in a child process, so this one
never holds the texts.

The stages run as `climb run` runs them: curate starts its Spark session (`local[2]`) and, at its
end, stops it and ends the JVM it started, so select runs without Spark. The process tree is
sampled from /proc every 0.2 s: the driver (this Python process), the JVM and
the Spark Python workers, each kind's anonymous and file-backed (memory-mapped files) pages apart;
with `--trace`, also the driver's Python allocations (tracemalloc peak) and Arrow's pool (its
largest size) per stage.

    .venv/bin/python bench/curate_rss.py short:off 24000
    .venv/bin/python bench/curate_rss.py short:off 48000 --curate '{"driver_rows": 0}' --trace
    .venv/bin/python bench/curate_rss.py short:off 240000 --heap

`<kind>_largest` is the kind's largest single process; `at_peak` the tree's processes at the moment
its total peaked. With `--heap`, the JVM's heap as its collector reports it (`jcmd GC.heap_info`,
every 2 s: a second JVM starts each time, so seconds are not comparable then): the generations'
committed and used KB summed, and the metaspace used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_throughput as ct  # noqa: E402


def tree_rss() -> tuple[dict[str, int], dict[int, tuple[str, int]]]:
    """Resident bytes per kind of process under this one (driver, jvm, workers), and each kind's
    anonymous (`<kind>_anon`) and file-backed (`<kind>_file`: memory-mapped files, which the page
    cache can drop and which count once per process that maps them) parts; `<kind>_processes`: how
    many processes of the kind were running; `<kind>_largest`: its largest process; `pids`: each
    process's (kind, resident bytes)."""
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
    pids: dict[int, tuple[str, int]] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        if cmds.get(pid, "").split(" ", 1)[0] == "jcmd":
            continue  # `--heap`'s own probe (`heap_info`), not the run's
        kind = "driver" if pid == os.getpid() else "jvm" if "java" in cmds.get(pid, "") else "workers"
        rss = status_rss(pid)
        for key, value in rss.items():
            name = kind if key == "rss" else f"{kind}_{key}"
            out[name] = out.get(name, 0) + value
        out[f"{kind}_processes"] = out.get(f"{kind}_processes", 0) + 1
        out[f"{kind}_largest"] = max(out.get(f"{kind}_largest", 0), rss.get("rss", 0))
        pids[pid] = (kind, rss.get("rss", 0))
        todo += kids.get(pid, [])
    out["total"] = sum(out.get(k, 0) for k in ("driver", "jvm", "workers"))
    return out, pids


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
        self.at_peak: tuple[int, str, list] = (0, "", [])
        self.pids: dict[int, tuple[str, int]] = {}  # the last sample's processes

    def run(self):
        while True:
            peak = self.peaks.setdefault(self.phase, {})
            sizes, pids = tree_rss()
            self.pids = pids
            for kind, value in sizes.items():
                peak[kind] = max(peak.get(kind, 0), value)
            if sizes["total"] > self.at_peak[0]:
                self.at_peak = (sizes["total"], self.phase, sorted(pids.values(), key=lambda p: -p[1]))
            time.sleep(0.2)


class HeapSampler(threading.Thread):
    """The JVM's heap per phase of `sampler` (its peaks): `jcmd <pid> GC.heap_info` every 2 s on the
    JVM of the sampler's last sample."""

    def __init__(self, sampler: Sampler):
        super().__init__(daemon=True)
        self.sampler = sampler
        self.peaks: dict[str, dict[str, int]] = {}

    def run(self):
        while True:
            pid = next((p for p, (kind, _) in self.sampler.pids.items() if kind == "jvm"), None)
            if pid is not None:
                heap = heap_info(pid)
                peak = self.peaks.setdefault(self.sampler.phase, {})
                for key, value in heap.items():
                    peak[key] = max(peak.get(key, 0), value)
            time.sleep(2)


def heap_info(pid: int) -> dict[str, int]:
    """KB: the heap's generations committed and used (summed), the metaspace used; {} if jcmd fails."""
    try:
        text = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    gens = re.findall(r"(?:generation|heap)\s+total (\d+)K, used (\d+)K", text)
    meta = re.search(r"Metaspace\s+used (\d+)K", text)
    if not gens:
        return {}
    out = {"heap_committed_kb": sum(int(t) for t, _ in gens), "heap_used_kb": sum(int(u) for _, u in gens)}
    if len(gens) > 1:
        out["old_used_kb"] = int(gens[-1][1])
    if meta:
        out["metaspace_used_kb"] = int(meta.group(1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape")
    ap.add_argument("docs", type=int)
    ap.add_argument("--curate", default="{}", help="curate settings (JSON) added to the run's")
    ap.add_argument("--trace", action="store_true", help="tracemalloc and Arrow pool peaks per stage")
    ap.add_argument("--heap", action="store_true", help="the JVM's heap per step (jcmd, every 2 s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-rss-") as tmp:  # the corpus and the run: 0.6-1.2 GB at 240k
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, tmp: Path) -> None:
    """Build the corpus under `tmp`, run curate and select there, print the peaks as JSON."""
    # built and written in a child process: this one never holds the texts (`curate_throughput.prepared`)
    ct.prepared(args.shape, args.docs, argparse.Namespace(seed=0, truth_max=0, threshold=0.8), tmp / "in")
    import mlflow
    import pyarrow as pa
    from mixture import pipeline

    # no session started here: the stage starts its own and ends it with its JVM, as in `climb
    # curate` and `climb run`
    filters_off = args.shape.endswith(":off")
    cfg = ct.ours_config(tmp / "in", tmp / "out", tmp / "mlflow.db", filters_off, json.loads(args.curate))
    mlflow.MlflowClient(cfg.tracking.uri).search_experiments()
    sampler = Sampler()
    sampler.start()
    heap = HeapSampler(sampler)
    if args.heap:
        heap.start()
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
                "at_peak": {
                    "total_mib": round(sampler.at_peak[0] / 2**20),
                    "step": sampler.at_peak[1],
                    "processes_mib": [[kind, round(rss / 2**20)] for kind, rss in sampler.at_peak[2]],
                },
                "heap_mib": {
                    phase: {k.replace("_kb", ""): round(v / 1024) for k, v in p.items()}
                    for phase, p in heap.peaks.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
