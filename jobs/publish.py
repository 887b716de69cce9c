"""Publish the committed ClimbMix dataset to S3 (the task an Airflow DAG or a cron job runs).

    python jobs/publish.py --config configs/demo.yaml [--version V] [--set publish.uri=s3://b/p]

Prints the published version's URI; exits non-zero on any failure. S3 credentials and the
endpoint come from the standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys

from mixture import preflight
from mixture.cli import guarded
from mixture.config import load_config, parse_overrides
from mixture.pipeline import publish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--version", default=None, help="default: publish.version, else the content hash")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def run() -> int:
        cfg = load_config(args.config, parse_overrides(args.set))
        preflight.check(cfg, publish=True)  # credentials, endpoint, bucket: one line, fast
        print(publish(cfg, version=args.version))
        return 0

    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
