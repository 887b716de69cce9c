"""`python jobs/embed.py --config FILE`: the embedding stage on a GPU (or CPU) worker.

The same stage function as `climb embed` (through `pipeline.run_stage`), so both commit the same
dataset; it runs the ranges of shards in `embed.workers` processes (on a CPU machine each with
`embed.threads` torch threads, default cores / workers), and a killed run resumes from its
finished shards. Exit status (`mixture.cli.guarded`): 0 when the dataset is committed or up to
date, 2 for the project's own errors (configuration, dataset, a model that cannot load) and the
machine's (a full disk, permission denied: `mixture.faults`), each one line; 1 for any other failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="run even when the dataset is up to date")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # models load from local folders only: never reach for the hub
    os.environ["HF_HUB_OFFLINE"] = "1"

    from mixture import pipeline
    from mixture.cli import guarded
    from mixture.config import load_config, parse_overrides

    def run() -> int:
        cfg = load_config(args.config, parse_overrides(args.set))
        result = pipeline.run_stage(cfg, "embed", force=args.force)
        print(f"embeddings: {'up to date' if result.skipped else 'committed'} {result.dataset.uri}")
        for key, value in result.summary:
            print(f"  {key}: {value}")
        return 0

    return guarded(run, name="embed")


if __name__ == "__main__":
    sys.exit(main())
