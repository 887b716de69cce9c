"""The published versions under `publish.uri`: listed, and deleted (`climb retract --delete-old`).

A version is deleted holding its lease (`mixture.lease`: no publisher writes it meanwhile), its
manifest first (readers then treat it as absent), then its objects and any unfinished multipart
upload; the version `latest` points at is never deleted.
"""

from __future__ import annotations

import functools
import logging

from mixture import storage
from mixture.config import LATEST, Config
from mixture.config import VERSION_RE as _VERSION_RE
from mixture.dataset import MANIFEST
from mixture.publish.s3 import PublishError, abort_incomplete_uploads, check_version, get_json, list_keys, parse_target

log = logging.getLogger(__name__)


def published_versions(cfg: Config) -> list[str]:
    """The versions under publish.uri (every `<prefix>/<version>/` folder, committed or not)."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    prefix = target.key() + "/" if target.key() else ""

    def once() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix, Delimiter="/")
        names = [p["Prefix"][len(prefix) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]
        return sorted(n for n in names if _VERSION_RE.match(n) and n != LATEST)

    return storage.retry(once, f"list the versions under {target.uri()}")


def delete_version(cfg: Config, version: str) -> int:
    """Delete one published version, holding its lease (no publisher writes it meanwhile): its
    manifest first (readers then treat it as absent), then its objects and any unfinished
    multipart upload. Refused for the version `latest` points at. Returns the objects deleted."""
    from mixture import lease

    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    pointer = get_json(client, target.bucket, target.key(LATEST))
    if pointer is not None and pointer[0].get("version") == check_version(version):
        raise PublishError(f"version {version} is the one `{LATEST}` points at: not deleted")
    c = cfg.concurrency
    try:
        with lease.hold(
            target.uri(), f"version-{version}", wait=c.on_busy == "wait", timeout=c.wait_timeout_s, ttl=c.lease_ttl_s
        ):
            prefix = target.key(version) + "/"
            manifest = target.key(version, MANIFEST)
            keys = sorted(list_keys(client, target.bucket, prefix), key=lambda k: k != manifest)  # manifest first
            for k in keys:
                storage.retry(
                    functools.partial(client.delete_object, Bucket=target.bucket, Key=k),
                    f"delete s3://{target.bucket}/{k}",
                )
            abort_incomplete_uploads(client, target.bucket, prefix)
    except lease.LeaseError as err:
        raise PublishError(str(err)) from None
    log.info("deleted version %s (%d objects)", version, len(keys))
    return len(keys)


def delete_versions_except(cfg: Config, keep: str) -> list[str]:
    """Delete every published version but `keep`, which `latest` must point at. The deleted ones."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    pointer = get_json(client, target.bucket, target.key(LATEST))
    if pointer is None or pointer[0].get("version") != keep:
        raise PublishError(f"`{LATEST}` does not point at version {keep}: no earlier version deleted")
    gone = [v for v in published_versions(cfg) if v != keep]
    for v in gone:
        delete_version(cfg, v)
    return gone
