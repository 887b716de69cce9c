"""`climb publish`: copy the committed ClimbMix dataset to `s3://bucket/prefix/<version>/`.

The published layout is the dataset's own (parquet/, tokens/, tokenizer/, README.md) plus its
`_manifest.json`, under a versioned prefix, and a pointer object `s3://bucket/prefix/latest`
(JSON: version, URI, the manifest's sha256). The guarantees, in the order the steps run:

1. Every data file is uploaded and verified before anything marks the version as complete. A
   reader (`mixture.publish.reader`) treats a version without `_manifest.json` as absent, so a publish
   killed anywhere leaves nothing visible; the next run resumes: files already there with the
   right size and checksum are kept, incomplete multipart uploads and stray objects of the
   killed attempt are removed.
2. Large files go up in multipart uploads (`publish.multipart_chunk_mb`, S3's minimum part is
   5 MiB) with several parts and files in flight (`publish.concurrency`).
3. Requests that fail with throttling (SlowDown, 503), a 5xx or a dropped connection are retried
   by botocore's standard retry mode (exponential backoff with jitter, `publish.max_retries`
   retries per request); on top of that every S3 operation here (reads of JSON objects and their
   bodies, listings, deletes, the manifest and its read-back, the pointer) goes through the one
   retry policy `storage.retry`, which also retries a response body dropped mid-read, and a file
   whose upload or verification still fails is verified and uploaded again, with backoff.
4. Each object is verified against the manifest's sha256 after upload. Uploads carry SHA-256
   checksums; an endpoint that validates them on receipt (probed once per endpoint and process:
   a small PUT with a deliberately wrong checksum must be refused) lets the object's stored
   checksum be compared with one computed from the local file (for a multipart object S3 stores
   the sha256 of the parts' sha256 digests, so that is what is computed; the ETag is an MD5 and
   is not used). An endpoint that does not validate checksums (moto, some S3-compatible servers:
   its stored checksum is only what the client sent), that keeps none, or `publish.verify:
   download` makes it read the object back and hash it; the log says which mode ran. An object
   that fails verification (a byte flipped in flight, an object damaged in S3 by an earlier
   attempt) is uploaded again: nothing of an uncommitted version is trusted unverified.
5. Just before the commit every object is checked to be still the one verified (same ETag and
   size), so objects written by anyone else meanwhile (a publisher that lost its lease) are
   never committed. Then `_manifest.json` is written (with `If-None-Match: *`, so two
   publishers cannot both commit one version) and read back, then the `latest` pointer. Two
   publishers of one version take turns on the version's lease (`pipeline.publish`); no
   publisher deletes objects of a version without holding its lease.
6. Versions are immutable. The version is `publish.version` (or `--version`), else the first 16
   hex digits of the build's content hash (paths, sizes and sha256 of its files). Publishing a
   version that exists with the same content does nothing; with different content it is refused.
7. Credentials come only from the standard AWS provider chain (environment, config files,
   instance roles), which boto3 reads itself; nothing here logs, stores or tracks them, and the
   endpoint URL is logged without any user-info part.

One file's upload and verification (steps 2 to 4) is `mixture.publish.upload`, the target and
the object reads `mixture.publish.s3`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime

from tqdm import tqdm

from mixture import storage
from mixture.config import LATEST, Config
from mixture.dataset import MANIFEST, Dataset, content_hash
from mixture.publish.s3 import (
    PublishError,
    Target,
    abort_incomplete_uploads,
    check_target,
    check_version,
    committed_at,
    get_json,
    head_object,
    list_keys,
    redact_url,
)
from mixture.publish.upload import Uploader, describe_local, validates_checksums

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the version
def _files_key(files: list[dict]) -> set[tuple[str, int, str]]:
    return {(f["path"], int(f["bytes"]), f["sha256"]) for f in files}


def update_latest(client, target: Target, version: str, manifest_sha256: str, content_sha256: str) -> bool:
    """Point `latest` at `version` unless it points at a version committed after this one (so a
    no-op re-publish of an old version does not move it back, but a publish killed between its
    manifest and the pointer is finished by the next run). True when the pointer was written."""
    key = target.key(LATEST)
    current = get_json(client, target.bucket, key)
    if current is not None:
        pointed = current[0].get("version")
        if pointed == version:
            return False
        ours = committed_at(client, target.bucket, target.key(version, MANIFEST))
        theirs = committed_at(client, target.bucket, target.key(str(pointed), MANIFEST))
        if theirs is not None and ours is not None and theirs > ours:
            log.info("latest stays at %s, committed after %s", pointed, version)
            return False
    body = json.dumps(
        {
            "version": version,
            "uri": target.uri(version),
            "manifest_sha256": manifest_sha256,
            "content_sha256": content_sha256,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        indent=2,
        sort_keys=True,
    ).encode()
    storage.retry(
        lambda: client.put_object(
            Bucket=target.bucket, Key=key, Body=body, ContentType="application/json", ChecksumAlgorithm="SHA256"
        ),
        f"write {target.uri(LATEST)}",
    )
    return True


def _check_unchanged(client, uploader: Uploader, files: list[dict]) -> None:
    """Just before the commit, every object must still be the one that was verified (same ETag
    and size). Under the version's lease nothing else writes there; this catches a publisher
    that lost its lease (paused past its expiry) and anything else that wrote meanwhile, so a
    version whose objects do not match its manifest is never committed."""
    changed = []
    for f in files:
        head = head_object(client, uploader.target.bucket, uploader.key(f["path"]))
        if head is None or head["ETag"] != uploader.etags.get(f["path"]) or head["ContentLength"] != int(f["bytes"]):
            changed.append(f["path"])
    if changed:
        raise PublishError(
            f"version {uploader.version}: {len(changed)} object(s) changed after they were verified "
            f"(e.g. {changed[:3]}; another publisher wrote them?); nothing was committed: run again"
        )


def _put_manifest(client, target: Target, version: str, raw: bytes, files: list[dict]) -> None:
    """Commit the version: the manifest, only if no other publisher committed it meanwhile. A
    retried PUT whose first try did land meets its own manifest, with the same files."""
    from botocore.exceptions import ClientError

    key = target.key(version, MANIFEST)
    args = dict(
        Bucket=target.bucket,
        Key=key,
        Body=raw,
        ContentType="application/json",
        ChecksumAlgorithm="SHA256",
        Metadata={"sha256": hashlib.sha256(raw).hexdigest(), "committed-at": f"{time.time():.6f}"},
    )
    what = f"commit {target.uri(version, MANIFEST)}"
    try:
        storage.retry(lambda: client.put_object(IfNoneMatch="*", **args), what)
    except ClientError as err:
        code = storage.s3_error_code(err)
        if code in ("NotImplemented", "InvalidArgument"):  # endpoints without conditional writes
            storage.retry(lambda: client.put_object(**args), what)
        elif code in ("PreconditionFailed", "ConditionalRequestConflict") or storage.s3_status(err) == 412:
            existing = get_json(client, target.bucket, key)
            if existing is None or _files_key(existing[0].get("files", [])) != _files_key(files):
                raise PublishError(
                    f"version {version} was committed by another publisher with different "
                    "content while this one was uploading"
                ) from None
        else:
            raise
    back = get_json(client, target.bucket, key)
    if back is None or _files_key(back[0].get("files", [])) != _files_key(files):
        raise PublishError(f"the manifest of version {version} does not read back as written")


# ------------------------------------------------------------------------------- publish
@dataclass
class PublishReport:
    uri: str
    version: str
    files: int
    bytes: int
    uploaded: int
    skipped: int
    retried: int
    seconds: float
    noop: bool
    latest_updated: bool


def resolve_version(ds: Dataset, cfg: Config, version: str | None = None) -> str:
    """The version to publish: `version`, else publish.version, else the build's content hash."""
    return check_version(version or cfg.publish.version or content_hash(ds.manifest.files)[:16])


def verification_mode(client, target: Target, cfg: Config) -> str:
    """How uploaded objects are verified, logged: by their stored checksum only when the endpoint
    is known to validate checksums on upload (else the checksum is what the client sent, and a
    byte flipped in flight would pass), otherwise by reading them back."""
    if cfg.publish.verify == "download":
        log.info("verification: download (publish.verify: download)")
        return "download"
    if validates_checksums(client, target):
        log.info("verification: stored SHA-256 checksums (the endpoint validates them on upload)")
        return "checksum"
    log.info(
        "verification: download (the endpoint does not validate checksums on upload, so a stored "
        "checksum proves nothing)"
    )
    return "download"


def publish_dataset(ds: Dataset, cfg: Config, version: str | None = None) -> PublishReport:
    """Upload, verify and commit one version. The caller holds the version's lease (the runner's
    `pipeline.publish`), so no other publisher writes or cleans up under it meanwhile."""
    t0 = time.time()
    target = check_target(cfg)
    content_sha = content_hash(ds.manifest.files)
    version = resolve_version(ds, cfg, version)
    manifest_raw = storage.retry(lambda: storage.read_bytes(ds.path(MANIFEST)), f"read {ds.path(MANIFEST)}")
    files = ds.manifest.files
    total = sum(int(f["bytes"]) for f in files)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    endpoint = redact_url(storage.s3_settings()[0])
    uri = target.uri(version)
    log.info(
        "publishing %d files (%s bytes) to %s%s", len(files), f"{total:,}", uri, f" via {endpoint}" if endpoint else ""
    )

    existing = get_json(client, target.bucket, target.key(version, MANIFEST))
    if existing is not None:
        _check_same_content(existing[0], files, version, uri)
        moved = update_latest(client, target, version, hashlib.sha256(existing[1]).hexdigest(), content_sha)
        log.info("version %s is already published with the same content: nothing to upload", version)
        return PublishReport(uri, version, len(files), total, 0, len(files), 0, time.time() - t0, True, moved)

    uploader = Uploader(client, target, version, cfg, verification_mode(client, target, cfg))
    uploaded, skipped = _upload_version(ds, files, uploader, cfg.publish.concurrency)
    _check_unchanged(client, uploader, files)
    _put_manifest(client, target, version, manifest_raw, files)
    moved = update_latest(client, target, version, hashlib.sha256(manifest_raw).hexdigest(), content_sha)
    secs = time.time() - t0
    log.info(
        "published %s: %d uploaded, %d already there, %d retried, %.1f MB/s",
        uri,
        uploaded,
        skipped,
        uploader.retried,
        total / 1e6 / max(secs, 1e-9),
    )
    return PublishReport(uri, version, len(files), total, uploaded, skipped, uploader.retried, secs, False, moved)


def _upload_version(ds: Dataset, files: list[dict], uploader: Uploader, concurrency: int) -> tuple[int, int]:
    """Everything before the commit of a version that is not committed: clear what a killed
    attempt left half-done (keeping its finished objects), upload and verify every file, remove
    objects that are not in this build. (uploaded, skipped)."""
    client, bucket, prefix = uploader.client, uploader.target.bucket, uploader.target.key(uploader.version) + "/"
    aborted = abort_incomplete_uploads(client, bucket, prefix)
    if aborted:
        log.info("aborted %d incomplete multipart upload(s) of an earlier attempt", aborted)
    uploaded, skipped = _upload_all(ds, files, uploader, uploader.version, concurrency)
    wanted = {uploader.key(f["path"]) for f in files}
    strays = [k for k in list_keys(client, bucket, prefix) if k not in wanted]
    for k in strays:
        storage.retry(functools.partial(client.delete_object, Bucket=bucket, Key=k), f"remove s3://{bucket}/{k}")
    if strays:
        log.info("removed %d object(s) of an earlier attempt that are not in this build", len(strays))
    return uploaded, skipped


def _check_same_content(existing: dict, files: list[dict], version: str, uri: str) -> None:
    if _files_key(existing.get("files", [])) == _files_key(files):
        return
    theirs = {f["path"]: f["sha256"] for f in existing.get("files", [])}
    ours = {f["path"]: f["sha256"] for f in files}
    differ = sorted(p for p in set(theirs) | set(ours) if theirs.get(p) != ours.get(p))
    raise PublishError(
        f"version {version} already exists at {uri} with different content ({len(differ)} files "
        f"differ, e.g. {differ[:3]}); published versions are immutable: choose a new version or "
        "leave publish.version unset to use the content hash"
    )


def _upload_all(ds: Dataset, files: list[dict], uploader: Uploader, version: str, concurrency: int) -> tuple[int, int]:
    """Upload (or keep, when verified already) every file; (uploaded, skipped)."""

    def one(f: dict) -> bool:
        # hashing in the worker overlaps reading one file with uploading others
        lf = storage.retry(
            lambda: describe_local(ds.path(f["path"]), f["path"], int(f["bytes"]), f["sha256"], uploader.chunk),
            f"read {f['path']}",
        )
        return uploader.put(lf)

    uploaded = skipped = 0
    total = sum(int(f["bytes"]) for f in files)
    with (
        tqdm(total=total, desc=f"publish {version}", unit="B", unit_scale=True) as bar,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        futures = {pool.submit(one, f): f for f in files}
        for fut in as_completed(futures):
            try:
                did_upload = fut.result()
            except Exception:
                for other in futures:
                    other.cancel()
                raise
            uploaded += did_upload
            skipped += not did_upload
            bar.update(int(futures[fut]["bytes"]))
    return uploaded, skipped


def track(cfg: Config, rep: PublishReport) -> None:
    """Record the publication as an MLflow run (target, version, sizes, speed; no credentials)."""
    import mlflow

    from mixture import tracking

    with (
        tracking.recorded(cfg, "publish"),
        tracking.run(cfg, "publish", tags={"stage": "publish", "noop": str(rep.noop).lower()}),
    ):
        mlflow.log_params(
            {
                "publish.uri": rep.uri,
                "publish.version": rep.version,
                "publish.multipart_chunk_mb": cfg.publish.multipart_chunk_mb,
                "publish.max_retries": cfg.publish.max_retries,
                "publish.concurrency": cfg.publish.concurrency,
                "publish.verify": cfg.publish.verify,
                "publish.endpoint": redact_url(storage.s3_settings()[0]) or "aws",
            }
        )
        mlflow.log_metrics(
            {
                "files": rep.files,
                "bytes": rep.bytes,
                "uploaded_files": rep.uploaded,
                "skipped_files": rep.skipped,
                "retried_files": rep.retried,
                "seconds": rep.seconds,
                "mb_per_s": rep.bytes / 1e6 / max(rep.seconds, 1e-9),
            }
        )
