"""`climb publish`: copy the committed ClimbMix dataset to `s3://bucket/prefix/<version>/`.

The published layout is the dataset's own (parquet/, tokens/, tokenizer/, README.md) plus its
`_manifest.json`, under a versioned prefix, and a pointer object `s3://bucket/prefix/latest`
(JSON: version, URI, the manifest's sha256). The guarantees, in the order the steps run:

1. Every data file is uploaded and verified before anything marks the version as complete. A
   reader (`mixture.reader`) treats a version without `_manifest.json` as absent, so a publish
   killed anywhere leaves nothing visible; the next run resumes: files already there with the
   right size and checksum are kept, incomplete multipart uploads and stray objects of the
   killed attempt are removed.
2. Large files go up in multipart uploads (`publish.multipart_chunk_mb`, S3's minimum part is
   5 MiB) with several parts and files in flight (`publish.concurrency`).
3. Requests that fail with throttling (SlowDown, 503), a 5xx or a dropped connection are retried
   by botocore's standard retry mode (exponential backoff with jitter, `publish.max_retries`
   retries per request); on top of that a file whose upload or verification still fails is
   uploaded again, with backoff, a few times.
4. Each object is verified against the manifest's sha256 after upload. Uploads carry SHA-256
   checksums, which S3 checks on receipt of every part; afterwards the object's stored checksum
   is compared with one computed from the local file (for a multipart object S3 stores the
   sha256 of the parts' sha256 digests, not the file's, so that is what is computed; the ETag is
   an MD5 and is not used). An endpoint that keeps no checksum, or `publish.verify: download`,
   makes it re-read the object and hash it.
5. `_manifest.json` is written last (with `If-None-Match: *`, so two publishers cannot both
   commit one version), then the `latest` pointer.
6. Versions are immutable. The version is `publish.version` (or `--version`), else the first 16
   hex digits of the build's content hash (paths, sizes and sha256 of its files). Publishing a
   version that exists with the same content does nothing; with different content it is refused.
7. Credentials come only from the standard AWS provider chain (environment, config files,
   instance roles), which boto3 reads itself; nothing here logs, stores or tracks them, and the
   endpoint URL is logged without any user-info part.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from mixture import storage
from mixture.climbmix import content_hash
from mixture.config import Config
from mixture.dataset import MANIFEST, Dataset, DatasetError
from mixture.versions import LATEST, VERSION_RE as _VERSION_RE

log = logging.getLogger(__name__)

# Re-uploads of one file after botocore's own per-request retries are exhausted or the uploaded
# object fails verification. Small: each one already follows max_retries request retries.
FILE_ATTEMPTS = 3
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                   "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "503"}
# the body arrived damaged (S3 checked the SHA-256 we sent): sending it again can succeed
_TRANSIENT_CODES = {"BadDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch", "IncompleteBody"}


class PublishError(DatasetError):
    """The dataset cannot be published (bad target, version conflict, failed verification)."""


# -------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    bucket: str
    prefix: str             # without leading/trailing slashes; may be empty

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
        raise PublishError("publish.uri must not contain credentials or a port (s3://bucket/prefix); "
                           "credentials come from the AWS environment")
    return Target(parsed.netloc, parsed.path.strip("/"))


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version) or version == LATEST:
        raise PublishError(f"invalid version {version!r}: use letters, digits, '.', '_' or '-' "
                           f"(at most 128, not '{LATEST}')")
    return version


def redact_url(url: str | None) -> str | None:
    """An endpoint URL without user-info, query or fragment (safe to log)."""
    if not url:
        return url
    p = urlparse(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}{':' + str(p.port) if p.port else ''}{p.path}"


# ---------------------------------------------------------------------------------- boto3
def _code(err: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def _status(err: Exception) -> int:
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def _unwrap(err: Exception) -> Exception:
    """boto3's upload_file re-raises a ClientError as S3UploadFailedError (keeping it as the
    context): classify by the S3 error underneath."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    if isinstance(err, S3UploadFailedError) and isinstance(err.__context__, ClientError):
        return err.__context__
    return err


def _retryable(err: Exception) -> bool:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

    err = _unwrap(err)
    if isinstance(err, (ConnectionError, ReadTimeoutError, S3UploadFailedError)):
        return True
    if isinstance(err, ClientError):
        return _status(err) >= 500 or _code(err) in _THROTTLE_CODES | _TRANSIENT_CODES
    return False


def _not_found(err: Exception) -> bool:
    return _code(err) in ("404", "NoSuchKey", "NotFound") or _status(err) == 404


def _backoff(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff (AWS architecture blog), in seconds."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


# ----------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class LocalFile:
    uri: str
    rel: str
    size: int
    sha256: str                  # hex, from the manifest
    full_b64: str                # base64 sha256 of the file
    composite_b64: str | None    # base64 sha256 of the parts' sha256 digests (multipart only)


def part_size(chunk_bytes: int, size: int) -> int:
    """The part size s3transfer uses for a file (it grows the chunk past S3's 10,000 parts)."""
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(chunk_bytes, size)


def describe_local(uri: str, rel: str, size: int, sha256_hex: str, chunk_bytes: int) -> LocalFile:
    """Hash a local (or remote) file in one pass: the whole file, which must match the manifest
    (a corrupted build is not published), and each multipart part."""
    multipart = size >= chunk_bytes
    psize = part_size(chunk_bytes, size) if multipart else max(size, 1)
    full = hashlib.sha256()
    parts: list[bytes] = []
    seen = 0
    with storage.open_read(uri) as f:
        while block := f.read(psize):
            full.update(block)
            parts.append(hashlib.sha256(block).digest())
            seen += len(block)
    if full.hexdigest() != sha256_hex or seen != size:
        raise PublishError(f"{rel}: the local file does not match its manifest checksum; rebuild with "
                           "`climb build --force`")
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() if multipart else None
    return LocalFile(uri, rel, size, sha256_hex, base64.b64encode(full.digest()).decode(), composite)


# ------------------------------------------------------------------------------ one file
class Uploader:
    """Uploads and verifies files of one version; safe to call from several threads."""

    def __init__(self, client, target: Target, version: str, cfg: Config):
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.target = target
        self.version = version
        self.pcfg = cfg.publish
        self.chunk = cfg.publish.multipart_chunk_mb * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=self.chunk, multipart_chunksize=self.chunk,
                                       max_concurrency=cfg.publish.concurrency, use_threads=True)
        self.lock = threading.Lock()
        self.retried = 0

    def key(self, rel: str) -> str:
        return self.target.key(self.version, rel)

    def verify(self, lf: LocalFile) -> str:
        """'ok', 'missing' or a reason for a mismatch."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.target.bucket, Key=self.key(lf.rel), ChecksumMode="ENABLED")
        except ClientError as err:
            if _not_found(err):
                return "missing"
            raise
        if head["ContentLength"] != lf.size:
            return f"size {head['ContentLength']} != {lf.size}"
        if head.get("Metadata", {}).get("sha256") != lf.sha256:
            return "sha256 metadata differs"
        stored = (head.get("ChecksumSHA256") or "").split("-")[0]
        if self.pcfg.verify == "checksum" and stored:
            if stored in (lf.full_b64, lf.composite_b64):
                return "ok"
            return "stored SHA-256 checksum differs"
        # no stored checksum (or asked to): read the object back and hash it
        body = self.client.get_object(Bucket=self.target.bucket, Key=self.key(lf.rel))["Body"]
        h = hashlib.sha256()
        for block in iter(lambda: body.read(8 << 20), b""):
            h.update(block)
        return "ok" if h.hexdigest() == lf.sha256 else "downloaded sha256 differs"

    def upload(self, lf: LocalFile) -> None:
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": lf.sha256},
                 "ContentType": content_type(lf.rel)}
        local = storage.local_path(lf.uri)
        if local is not None:
            self.client.upload_file(local, self.target.bucket, self.key(lf.rel), ExtraArgs=extra, Config=self.transfer)
        else:
            with storage.open_read(lf.uri) as f:
                self.client.upload_fileobj(f, self.target.bucket, self.key(lf.rel), ExtraArgs=extra, Config=self.transfer)

    def put(self, lf: LocalFile) -> bool:
        """Make the object match the local file. True when it was uploaded, False when it was
        already there (a resumed publish)."""
        attempts = 1 + min(FILE_ATTEMPTS - 1, self.pcfg.max_retries)
        last = ""
        for attempt in range(attempts):
            try:
                state = self.verify(lf)
                if state == "ok":
                    return attempt > 0
                if state != "missing":
                    log.info("%s: replacing the object of an earlier attempt (%s)", lf.rel, state)
                self.upload(lf)
                state = self.verify(lf)
                if state == "ok":
                    return True
                last = f"verification failed after upload: {state}"
            except Exception as err:  # noqa: BLE001 - classified just below
                if not _retryable(err):
                    raise PublishError(f"{lf.rel}: upload failed: {_safe_error(err)}") from None
                last = _safe_error(err)
            with self.lock:
                self.retried += 1
            if attempt + 1 < attempts:
                delay = _backoff(attempt)
                log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", lf.rel, last, delay,
                            attempt + 2, attempts)
                time.sleep(delay)
        raise PublishError(f"{lf.rel}: gave up after {attempts} attempts: {last}")


def _safe_error(err: Exception) -> str:
    """An error message without request details (botocore messages hold no credentials, but
    keep it to the code and message)."""
    err = _unwrap(err)
    code = _code(err)
    if code:
        msg = err.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
        return f"{code} ({_status(err)}): {msg}".strip()
    return f"{type(err).__name__}: {err}"


def content_type(rel: str) -> str:
    if rel.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    if rel.endswith(".json"):
        return "application/json"
    if rel.endswith(".md"):
        return "text/markdown; charset=utf-8"
    return "application/octet-stream"


# --------------------------------------------------------------------------- the version
def _files_key(files: list[dict]) -> set[tuple[str, int, str]]:
    return {(f["path"], int(f["bytes"]), f["sha256"]) for f in files}


def _get_json(client, bucket: str, key: str) -> tuple[Any, bytes] | None:
    from botocore.exceptions import ClientError

    try:
        raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if _not_found(err):
            return None
        raise
    return json.loads(raw), raw


def _committed_at(client, bucket: str, key: str) -> float | None:
    """When a version's manifest was written: the microsecond time the publisher stored with it
    (S3's LastModified has only whole seconds), else LastModified."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if _not_found(err):
            return None
        raise
    try:
        return float(head.get("Metadata", {})["committed-at"])
    except (KeyError, ValueError):
        return head["LastModified"].timestamp()


def _list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _abort_incomplete_uploads(client, bucket: str, prefix: str) -> int:
    n = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for u in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            n += 1
    return n


def update_latest(client, target: Target, version: str, manifest_sha256: str, content_sha256: str) -> bool:
    """Point `latest` at `version` unless it points at a version committed after this one (so a
    no-op re-publish of an old version does not move it back, but a publish killed between its
    manifest and the pointer is finished by the next run). True when the pointer was written."""
    key = target.key(LATEST)
    current = _get_json(client, target.bucket, key)
    if current is not None:
        pointed = current[0].get("version")
        if pointed == version:
            return False
        ours = _committed_at(client, target.bucket, target.key(version, MANIFEST))
        theirs = _committed_at(client, target.bucket, target.key(str(pointed), MANIFEST))
        if theirs is not None and ours is not None and theirs > ours:
            log.info("latest stays at %s, committed after %s", pointed, version)
            return False
    body = json.dumps({"version": version, "uri": target.uri(version), "manifest_sha256": manifest_sha256,
                       "content_sha256": content_sha256,
                       "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                      indent=2, sort_keys=True).encode()
    client.put_object(Bucket=target.bucket, Key=key, Body=body, ContentType="application/json",
                      ChecksumAlgorithm="SHA256")
    return True


def _put_manifest(client, target: Target, version: str, raw: bytes, files: list[dict]) -> None:
    """Commit the version: the manifest, only if no other publisher committed it meanwhile."""
    from botocore.exceptions import ClientError

    key = target.key(version, MANIFEST)
    args = dict(Bucket=target.bucket, Key=key, Body=raw, ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(raw).hexdigest(), "committed-at": f"{time.time():.6f}"})
    try:
        client.put_object(IfNoneMatch="*", **args)
    except ClientError as err:
        if _code(err) in ("NotImplemented", "InvalidArgument"):     # endpoints without conditional writes
            client.put_object(**args)
        elif _code(err) in ("PreconditionFailed", "ConditionalRequestConflict") or _status(err) == 412:
            existing = _get_json(client, target.bucket, key)
            if existing is None or _files_key(existing[0].get("files", [])) != _files_key(files):
                raise PublishError(f"version {version} was committed by another publisher with different "
                                   "content while this one was uploading") from None
        else:
            raise
    head = client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
    if _files_key(json.loads(head).get("files", [])) != _files_key(files):
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


def check_target(cfg: Config) -> Target:
    """publish.uri parsed, and its bucket reachable with the environment's credentials."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    try:
        client.head_bucket(Bucket=target.bucket)
    except Exception as err:  # noqa: BLE001
        raise PublishError(f"bucket {target.bucket} is not reachable: {_safe_error(err)}") from None
    return target


def publish_dataset(ds: Dataset, cfg: Config, version: str | None = None) -> PublishReport:
    """Upload, verify and commit one version. The caller holds the version's lease (the runner's
    `pipeline.publish`), so no other publisher writes or cleans up under it meanwhile."""
    t0 = time.time()
    target = check_target(cfg)
    content_sha = content_hash(ds.manifest.files)
    version = resolve_version(ds, cfg, version)
    manifest_raw = storage.read_bytes(ds.path(MANIFEST))
    manifest_sha = hashlib.sha256(manifest_raw).hexdigest()
    files = ds.manifest.files
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    endpoint = redact_url(storage.s3_settings()[0])
    uri = target.uri(version)
    log.info("publishing %d files (%s bytes) to %s%s", len(files), f"{sum(f['bytes'] for f in files):,}",
             uri, f" via {endpoint}" if endpoint else "")

    existing = _get_json(client, target.bucket, target.key(version, MANIFEST))
    if existing is not None:
        _check_same_content(existing[0], files, version, uri)
        moved = update_latest(client, target, version, hashlib.sha256(existing[1]).hexdigest(), content_sha)
        log.info("version %s is already published with the same content: nothing to upload", version)
        return PublishReport(uri, version, len(files), sum(f["bytes"] for f in files), 0, len(files), 0,
                             time.time() - t0, True, moved)

    # not committed: clear what a killed attempt left half-done, keep its finished objects
    aborted = _abort_incomplete_uploads(client, target.bucket, target.key(version) + "/")
    if aborted:
        log.info("aborted %d incomplete multipart upload(s) of an earlier attempt", aborted)
    uploader = Uploader(client, target, version, cfg)
    uploaded, skipped = _upload_all(ds, files, uploader, version, cfg.publish.concurrency)
    total = sum(int(f["bytes"]) for f in files)

    wanted = {uploader.key(f["path"]) for f in files}
    strays = [k for k in _list_keys(client, target.bucket, target.key(version) + "/") if k not in wanted]
    for k in strays:
        client.delete_object(Bucket=target.bucket, Key=k)
    if strays:
        log.info("removed %d object(s) of an earlier attempt that are not in this build", len(strays))

    _put_manifest(client, target, version, manifest_raw, files)
    moved = update_latest(client, target, version, manifest_sha, content_sha)
    secs = time.time() - t0
    log.info("published %s: %d uploaded, %d already there, %d retried, %.1f MB/s", uri, uploaded, skipped,
             uploader.retried, total / 1e6 / max(secs, 1e-9))
    return PublishReport(uri, version, len(files), total, uploaded, skipped, uploader.retried, secs, False, moved)


def _check_same_content(existing: dict, files: list[dict], version: str, uri: str) -> None:
    if _files_key(existing.get("files", [])) == _files_key(files):
        return
    theirs = {f["path"]: f["sha256"] for f in existing.get("files", [])}
    ours = {f["path"]: f["sha256"] for f in files}
    differ = sorted(p for p in set(theirs) | set(ours) if theirs.get(p) != ours.get(p))
    raise PublishError(
        f"version {version} already exists at {uri} with different content ({len(differ)} files "
        f"differ, e.g. {differ[:3]}); published versions are immutable: choose a new version or "
        "leave publish.version unset to use the content hash")


def _upload_all(ds: Dataset, files: list[dict], uploader: "Uploader", version: str,
                concurrency: int) -> tuple[int, int]:
    """Upload (or keep, when verified already) every file; (uploaded, skipped)."""
    def one(f: dict) -> bool:
        # hashing in the worker overlaps reading one file with uploading others
        return uploader.put(describe_local(ds.path(f["path"]), f["path"], int(f["bytes"]), f["sha256"],
                                           uploader.chunk))

    uploaded = skipped = 0
    total = sum(int(f["bytes"]) for f in files)
    with tqdm(total=total, desc=f"publish {version}", unit="B", unit_scale=True) as bar, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
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
    from mixture import tracking
    import mlflow

    with tracking.run(cfg, "publish", tags={"stage": "publish", "noop": str(rep.noop).lower()}):
        mlflow.log_params({"publish.uri": rep.uri, "publish.version": rep.version,
                           "publish.multipart_chunk_mb": cfg.publish.multipart_chunk_mb,
                           "publish.max_retries": cfg.publish.max_retries,
                           "publish.concurrency": cfg.publish.concurrency, "publish.verify": cfg.publish.verify,
                           "publish.endpoint": redact_url(storage.s3_settings()[0]) or "aws"})
        mlflow.log_metrics({"files": rep.files, "bytes": rep.bytes, "uploaded_files": rep.uploaded,
                            "skipped_files": rep.skipped, "retried_files": rep.retried, "seconds": rep.seconds,
                            "mb_per_s": rep.bytes / 1e6 / max(rep.seconds, 1e-9)})
