"""Publish the committed ClimbMix dataset to S3 (the task an Airflow DAG or a cron job runs).

    python jobs/publish.py --config configs/demo.yaml [--version V] [--set publish.uri=s3://b/p]

Prints the published version's URI; exits non-zero on any failure. S3 credentials and the
endpoint come from the standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
"""
from __future__ import annotations

import argparse
import logging
import sys

import yaml

from mixture.config import ConfigError, load_config
from mixture.dataset import DatasetError
from mixture.publish import publish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--version", default=None, help="default: publish.version, else the content hash")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        overrides = {}
        for pair in args.set:
            if "=" not in pair:
                raise ConfigError(f"--set takes key=value, got {pair!r}")
            key, value = pair.split("=", 1)
            overrides[key] = yaml.safe_load(value)
        print(publish(load_config(args.config, overrides), version=args.version))
        return 0
    except (ConfigError, DatasetError) as err:
        print(f"publish: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
