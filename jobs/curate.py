"""`spark-submit jobs/curate.py --config FILE`: the `curate` stage as a Spark application.

The same stage function as `climb curate` (through `pipeline.run_stage`), so both commit the same
`annotated` dataset (the `select` stage, which needs no Spark, runs after it as `climb select`).
The Spark session is created first from spark-submit's own settings (`--master`, `--conf`), and
the stage uses it; without spark-submit it falls back to `curate.spark_master`.
Exit status (`mixture.cli.guarded`): 0 when the dataset is committed or up to date, 2 for a
configuration or dataset error or the machine's (a full disk, permission denied: one line), 1
for an endpoint that does not answer (one line: the refresh DAG retries it) and any other failure.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="run even when the dataset is up to date")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    from mixture import pipeline, preflight
    from mixture import spark as spark_env
    from mixture.cli import guarded
    from mixture.config import ConfigError, load_config, parse_overrides
    from mixture.dataset import DatasetError

    def run() -> int:
        cfg = load_config(args.config, parse_overrides(args.set))
        # inputs, credentials and endpoints: one line in seconds, before Spark's start-up
        preflight.check(cfg, pipeline.stage("curate").files)
        spark = spark_env.session(None, "climb-curate")  # master and settings from spark-submit
        try:
            result = pipeline.run_stage(cfg, "curate", force=args.force)
        finally:
            spark.stop()
        print(f"annotated: {'up to date' if result.skipped else 'committed'} {result.dataset.uri}")
        for key, value in result.summary:
            print(f"  {key}: {value}")
        return 0

    # only these exit with 2: the refresh DAG retries any other failure
    return guarded(run, name="curate", errors=(ConfigError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
