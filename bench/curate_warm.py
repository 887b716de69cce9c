"""Seconds of `climb curate` + `climb select` run again and again in one process (a warm JVM and
warm Python workers), on one corpus shape of `curate_shapes.py`: for telling apart two versions
of the code on the fixed costs of small runs, which one cold run per process hides (the JVM's
warm-up is 10 s). Run it for each checkout in turn, alternating, and compare the medians of the
warm runs (the first is cold and left out).

    .venv/bin/python bench/curate_warm.py short:off 24000 --runs 7
    PYTHONPATH=<other checkout>/libs .venv/bin/python bench/curate_warm.py short:off 24000 --runs 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_throughput as ct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape")
    ap.add_argument("docs", type=int)
    ap.add_argument("--runs", type=int, default=7, help="runs in all, the first cold")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-warm-") as folder:  # the corpus and the runs
        tmp = Path(folder)
        # built in a child process, as the other curate benches do
        ct.prepared(args.shape, args.docs, argparse.Namespace(seed=0, truth_max=0, threshold=0.8), tmp / "in")
        from mixture import pipeline
        from mixture import spark as spark_env

        spark_env.session("local[2]", "curate-warm", ct.WORKERS * 2)
        cfg = ct.ours_config(tmp / "in", tmp / "out", tmp / "mlflow.db", args.shape.endswith(":off"))
        seconds = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            pipeline.run_stage(cfg, "curate", force=True)
            pipeline.run_stage(cfg, "select", force=True)
            seconds.append(round(time.perf_counter() - t0, 2))
            print(f"run {len(seconds)}: {seconds[-1]} s", file=sys.stderr, flush=True)
    warm_median = statistics.median(seconds[1:]) if len(seconds) > 1 else None
    print(json.dumps({"shape": args.shape, "docs": args.docs, "seconds": seconds, "warm_median": warm_median}))


if __name__ == "__main__":
    main()
