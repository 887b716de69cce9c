"""Create the deployment's S3 buckets if they do not exist (compose service `minio-init`).

    python infra/minio/create_buckets.py climb mlflow

Endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), which compose fills from .env. Retries while the
object store starts; exits non-zero if a bucket cannot be created.
"""

from __future__ import annotations

import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def create_buckets(names: list[str], wait_s: float = 60.0) -> list[str]:
    """The buckets that were created (existing ones are left as they are)."""
    s3 = boto3.client("s3")
    deadline = time.time() + wait_s
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            if time.time() > deadline:
                raise
            time.sleep(2)
    created = []
    for name in names:
        if name in existing:
            continue
        try:
            s3.create_bucket(Bucket=name)
            created.append(name)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    return created


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: create_buckets.py BUCKET [BUCKET ...]")
    made = create_buckets(sys.argv[1:])
    print(f"buckets: {', '.join(sys.argv[1:])} (created: {', '.join(made) or 'none'})")
