"""`python jobs/proxy.py --config FILE --job JOB.json`: one proxy run as an independent process.

The job is one entry of `mixture.search.steps.propose(ctx, i)` (a GPU worker or an Airflow task
gets it as a JSON file). The run trains and evaluates one proxy through `steps.run_proxy`, the
same function the CLI's search runs, and writes `runs/<run_id>.json` in the search's staging
folder; a run that is already there is returned without training (retries repeat no work).
Prints the run's score and metrics as one JSON line. Exit status (`mixture.cli.guarded`): 0 on
success (a diverged proxy too: its run records the error), 2 for the project's own errors
(configuration, dataset, target, job) and the machine's (a full disk, permission denied), each one
line; 1 for any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run configuration")
    p.add_argument("--job", required=True, help="a JSON file with one job from steps.propose")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from mixture import pipeline, storage
    from mixture.cli import guarded
    from mixture.config import load_config, parse_overrides
    from mixture.search import steps

    def run() -> int:
        cfg = load_config(args.config, parse_overrides(args.set))
        try:
            job = storage.read_json(args.job)
        except (OSError, ValueError) as err:
            raise steps.SearchError(f"cannot read the job file {args.job}: {err}") from None
        if not isinstance(job, dict):
            raise steps.SearchError(f"{args.job} must hold one job object")
        result = steps.run_proxy(pipeline.open_stage(cfg, "search"), job)
        print(json.dumps({"run_id": result["run_id"], "score": result["score"], "metrics": result.get("metrics", {})}))
        return 0

    return guarded(run, name="proxy")


if __name__ == "__main__":
    sys.exit(main())
