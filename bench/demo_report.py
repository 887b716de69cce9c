"""Run the demo from scratch and report its wall time and the size of every stage's output.

    .venv/bin/python bench/demo_report.py [--config configs/demo.yaml] [--keep]

Removes the config's output_root first (unless --keep), runs `climb run`, then reads each
committed manifest: files, bytes, counts, and the stage's own wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime

from mixture import pipeline
from mixture.config import load_config
from mixture.dataset import DatasetError, open_dataset


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--keep", action="store_true", help="keep existing outputs (measures a rerun)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if not args.keep:
        shutil.rmtree(cfg.output_root, ignore_errors=True)
    t0 = time.time()
    climb = os.path.join(os.path.dirname(sys.executable), "climb")
    subprocess.run([climb, "run", "--config", args.config], check=True)
    wall = time.time() - t0
    print(f"\ndemo wall time: {wall:.0f} s on {os.cpu_count()} cores\n")
    print(f"{'dataset':<12} {'seconds':>8} {'files':>6} {'MB':>8}  counts")
    for s in pipeline.STAGES:
        try:
            ds = open_dataset(pipeline.dataset_uri(cfg, s.dataset))
        except DatasetError:  # a stage `climb run` does not run (baselines, publish without a target)
            continue
        m = ds.manifest
        secs = (datetime.fromisoformat(m.finished_at) - datetime.fromisoformat(m.started_at)).total_seconds()
        mb = sum(f["bytes"] for f in m.files) / 1e6
        counts = {k: v for k, v in m.counts.items() if not isinstance(v, dict)}
        print(f"{s.dataset:<12} {secs:>8.0f} {len(m.files):>6} {mb:>8.2f}  {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
