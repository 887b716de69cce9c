"""Selection rerun vs full curation: what "score once, decide many times" saves when a threshold
moves (Dolma's tagger/mixer split; CLIMB's curation is the first stage of its pipeline).

Runs `curate` (Spark: signals and dedup groups) and `select` (no Spark) on the demo config from
an empty output folder, then changes one filter threshold and runs the two stages again: `curate`
is up to date, only `select` runs. Prints both wall times, the documents kept, and their ratio;
fails unless the rerun ran `select` alone.

    .venv/bin/python bench/select_rerun.py [--config configs/demo.yaml] [--set KEY=VALUE]
        [--change curate.filters.gopher_quality.min_words=400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, overrides: dict, output_root: str) -> tuple[float, list]:
    from mixture import pipeline
    from mixture.config import load_config

    cfg = load_config(
        config, {**overrides, "output_root": output_root, "tracking.uri": f"sqlite:///{output_root}/mlflow.db"}
    )
    t0 = time.perf_counter()
    results = pipeline.run_all(cfg, until="curated")
    return time.perf_counter() - t0, results


def main() -> None:
    from mixture.config import parse_overrides as _overrides

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--change", default="curate.filters.gopher_quality.min_words=400", help="the threshold to move (KEY=VALUE)"
    )
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = _overrides(args.set)
    changed = {**base, **_overrides([args.change])}
    root = tempfile.mkdtemp(prefix="climb-select-bench-")
    try:
        full_s, full = run(args.config, base, root)
        rerun_s, rerun = run(args.config, changed, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for label, seconds, results in (("full curation", full_s, full), ("threshold rerun", rerun_s, rerun)):
        stages = ", ".join(f"{r.stage} {'up to date' if r.skipped else f'{r.seconds:.1f} s'}" for r in results)
        out = results[-1].dataset.manifest.counts
        print(f"{label:16s} {seconds:7.1f} s   ({stages}; kept {out['documents_out']:,} of {out['documents_in']:,})")
    assert [r.skipped for r in rerun] == [True, False], "the rerun must run select only"
    print(f"change: {args.change}; rerun / full = {rerun_s / full_s:.3f} ({full_s / rerun_s:.0f}x faster)")


if __name__ == "__main__":
    main()
