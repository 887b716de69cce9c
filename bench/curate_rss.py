"""Peak resident memory of `climb curate` + `climb select` per process kind and per stage, on one
corpus shape of `curate_shapes.py` (issue #24: what grows with the corpus).

The process tree is sampled from /proc every 0.2 s: the driver (this Python process: anonymous
and file-backed pages apart), the JVM, and the Spark Python workers; with `--trace`, also the
driver's Python allocations (tracemalloc peak) and Arrow's pool (its largest size) per stage.

    .venv/bin/python bench/curate_rss.py short:off 24000
    .venv/bin/python bench/curate_rss.py short:off 48000 --curate '{"driver_rows": 0}' --trace
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_shapes as cs  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss() -> dict[str, int]:
    """Resident bytes per kind of process under this one (driver, jvm, workers)."""
    kids: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        kids.setdefault(int(fields[1]), []).append(int(name))
        info[int(name)] = (int(fields[21]) * PAGE, cmd)
    out: dict[str, int] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        rss, cmd = info.get(pid, (0, ""))
        kind = "driver" if pid == os.getpid() else "jvm" if "java" in cmd else "workers"
        out[kind] = out.get(kind, 0) + rss
        todo += kids.get(pid, [])
    out["total"] = sum(out.values())
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile")):
                out["driver_" + line.split(":")[0][3:].lower()] = int(line.split()[1]) * 1024
    return out


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
    docs = cs.build(args.shape, args.docs)
    tmp = Path(tempfile.mkdtemp(prefix="curate-rss-"))
    (tmp / "in").mkdir()
    for i, part in enumerate((docs[: len(docs) // 2], docs[len(docs) // 2 :])):
        (tmp / "in" / f"part-{i}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    del docs
    import mlflow
    import pyarrow as pa
    from mixture import pipeline
    from mixture import spark as spark_env
    from mixture.config import parse_config
    from mixture.curate.filters import registered

    spark_env.session("local[2]", "curate-rss", 4)
    curate = {"spark_master": "local[2]", "partitions": 4, **json.loads(args.curate)}
    if args.shape.endswith(":off"):
        curate["filters"] = {name: {"enabled": False} for name, _ in registered()}
    cfg = parse_config(
        {
            "run_name": "rss",
            "output_root": str(tmp / "out"),
            "input": {"uris": [str(tmp / "in" / "*.jsonl")]},
            "curate": curate,
            "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        }
    )
    mlflow.MlflowClient(cfg.tracking.uri).search_experiments()
    sampler = Sampler()
    sampler.start()
    time.sleep(1)
    seconds, traced = {}, {}
    for stage in ("curate", "select"):
        sampler.phase = stage
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
    mib = {phase: {k: round(v / 2**20) for k, v in p.items()} for phase, p in sampler.peaks.items()}
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
