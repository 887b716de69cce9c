"""The publish target in S3, and the object reads that publishing and deleting versions share.

`publish.uri` parsed into a `Target` (`s3://bucket/prefix`; never with credentials or a port,
which come only from the AWS environment) and checked to be reachable; version names checked
(`config.VERSION_RE`, never `latest`); endpoint URLs redacted for the log. The object reads
(a JSON object, a HEAD, when a version's manifest was committed, a listing, the unfinished
multipart uploads aborted) each go through the one retry policy `storage.retry`, which also
retries a response body dropped mid-read. The publisher is `mixture.publish.publisher`, the
versions' listing and deletion `mixture.publish.versions`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from mixture import storage
from mixture.config import LATEST, Config
from mixture.config import VERSION_RE as _VERSION_RE
from mixture.dataset import DatasetError


class PublishError(DatasetError):
    """The dataset cannot be published (bad target, version conflict, failed verification)."""


# -------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    bucket: str
    prefix: str  # without leading/trailing slashes; may be empty

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}".rstrip("/")


def parse_target(uri: str | None) -> Target:
    if not uri:
        raise PublishError("publish.uri is not set: set it to s3://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
        raise PublishError("publish.uri must look like s3://bucket/prefix")
    if "@" in parsed.netloc or ":" in parsed.netloc:
        # never echo it: the user-info part of a URI is where people paste credentials
        raise PublishError(
            "publish.uri must not contain credentials or a port (s3://bucket/prefix); "
            "credentials come from the AWS environment"
        )
    return Target(parsed.netloc, parsed.path.strip("/"))


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version) or version == LATEST:
        raise PublishError(
            f"invalid version {version!r}: use letters, digits, '.', '_' or '-' (at most 128, not '{LATEST}')"
        )
    return version


def redact_url(url: str | None) -> str | None:
    """An endpoint URL without user-info, query or fragment (safe to log)."""
    if not url:
        return url
    p = urlparse(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}{':' + str(p.port) if p.port else ''}{p.path}"


def check_target(cfg: Config) -> Target:
    """publish.uri parsed, and its bucket reachable with the environment's credentials."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    try:
        client.head_bucket(Bucket=target.bucket)
    except Exception as err:  # noqa: BLE001
        raise PublishError(f"bucket {target.bucket} is not reachable: {storage.describe_error(err)}") from None
    return target


# ------------------------------------------------------------------------------- objects
def not_found(err: Exception) -> bool:
    return storage.s3_error_code(err) in ("404", "NoSuchKey", "NotFound") or storage.s3_status(err) == 404


def get_json(client, bucket: str, key: str) -> tuple[Any, bytes] | None:
    """An object's JSON and bytes (None when absent), the whole read retried."""
    from botocore.exceptions import ClientError

    def once() -> tuple[Any, bytes] | None:
        try:
            raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as err:
            if not_found(err):
                return None
            raise
        return json.loads(raw), raw

    return storage.retry(once, f"read s3://{bucket}/{key}")


def head_object(client, bucket: str, key: str) -> dict | None:
    """An object's HEAD (None when absent), retried."""
    from botocore.exceptions import ClientError

    def once() -> dict | None:
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if not_found(err):
                return None
            raise

    return storage.retry(once, f"head s3://{bucket}/{key}")


def committed_at(client, bucket: str, key: str) -> float | None:
    """When a version's manifest was written: the microsecond time the publisher stored with it
    (S3's LastModified has only whole seconds), else LastModified."""
    head = head_object(client, bucket, key)
    if head is None:
        return None
    try:
        return float(head.get("Metadata", {})["committed-at"])
    except (KeyError, ValueError):
        return head["LastModified"].timestamp()


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    def once() -> list[str]:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    return storage.retry(once, f"list s3://{bucket}/{prefix}")


def abort_incomplete_uploads(client, bucket: str, prefix: str) -> int:
    def once() -> list[dict]:
        pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
        return [u for page in pages for u in page.get("Uploads", [])]

    uploads = storage.retry(once, f"list the multipart uploads under s3://{bucket}/{prefix}")
    for u in uploads:
        storage.retry(
            functools.partial(client.abort_multipart_upload, Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]),
            f"abort the multipart upload of {u['Key']}",
        )
    return len(uploads)
