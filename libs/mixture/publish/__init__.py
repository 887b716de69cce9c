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
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from mixture import storage
from mixture.config import LATEST, Config
from mixture.config import VERSION_RE as _VERSION_RE
from mixture.dataset import MANIFEST, Dataset, DatasetError, content_hash

log = logging.getLogger(__name__)

# Tries of one file (verify, upload, verify) through `storage.retry`, after botocore's own
# per-request retries: a body dropped mid-read or an object that fails verification costs one.
FILE_ATTEMPTS = 5


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


# ---------------------------------------------------------------------------------- boto3
def _not_found(err: Exception) -> bool:
    return storage.s3_error_code(err) in ("404", "NoSuchKey", "NotFound") or storage.s3_status(err) == 404


_safe_error = storage.describe_error


# ----------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class LocalFile:
    uri: str
    rel: str
    size: int
    sha256: str  # hex, from the manifest
    full_b64: str  # base64 sha256 of the file
    composite_b64: str | None  # base64 sha256 of the parts' sha256 digests (multipart only)


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
        raise PublishError(
            f"{rel}: the local file does not match its manifest checksum; rebuild with `climb build --force`"
        )
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() if multipart else None
    return LocalFile(uri, rel, size, sha256_hex, base64.b64encode(full.digest()).decode(), composite)


# ------------------------------------------------------------------------------ one file
_PROBED: dict[str, bool] = {}  # endpoint -> whether it validates checksums (probed once per process)
_PROBE_LOCK = threading.Lock()


def validates_checksums(client, target: Target) -> bool:
    """Whether the endpoint refuses a PUT whose SHA-256 checksum header does not match the body
    (S3 does; moto and some S3-compatible servers store the header as sent, so their stored
    checksum proves nothing about the bytes). Probed once per endpoint per process."""
    endpoint = storage.s3_settings()[0] or "aws"
    with _PROBE_LOCK:
        if endpoint not in _PROBED:
            _PROBED[endpoint] = _probe_checksum_validation(client, target)
        return _PROBED[endpoint]


def _probe_checksum_validation(client, target: Target) -> bool:
    """PUT a small object under `<prefix>/_probe/` with a deliberately wrong checksum."""
    from botocore.exceptions import ClientError

    body = b"checksum validation probe\n"
    wrong = base64.b64encode(hashlib.sha256(b"not the " + body).digest()).decode()
    key = target.key("_probe", f"checksum-{uuid.uuid4().hex}")

    def once() -> bool:
        try:
            client.put_object(Bucket=target.bucket, Key=key, Body=body, ChecksumSHA256=wrong)
        except ClientError as err:
            if storage.s3_error_code(err) in storage.DAMAGED_CODES | {"InvalidDigest"}:
                return True
            if storage.s3_status(err) < 500:
                log.info("checksum probe answered %s: not trusting stored checksums", _safe_error(err))
                return False
            raise
        return False

    validates = storage.retry(once, "checksum validation probe")
    if not validates:
        storage.retry(lambda: client.delete_object(Bucket=target.bucket, Key=key), "remove the checksum probe")
    return validates


class Uploader:
    """Uploads and verifies files of one version; safe to call from several threads. `etags`
    holds the ETag of every object as it was verified, for the check just before the commit."""

    def __init__(self, client, target: Target, version: str, cfg: Config, mode: str = "download"):
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.target = target
        self.version = version
        self.pcfg = cfg.publish
        self.mode = mode  # "checksum": trust the stored checksum; "download": re-read
        self.chunk = cfg.publish.multipart_chunk_mb * 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=self.chunk,
            multipart_chunksize=self.chunk,
            max_concurrency=cfg.publish.concurrency,
            use_threads=True,
        )
        self.lock = threading.Lock()
        self.retried = 0
        self.etags: dict[str, str] = {}

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
        if self.mode == "checksum" and stored:
            if stored not in (lf.full_b64, lf.composite_b64):
                return "stored SHA-256 checksum differs"
            self.etags[lf.rel] = head["ETag"]
            return "ok"
        return self._verify_download(lf)

    def _verify_download(self, lf: LocalFile) -> str:
        """Read the object back and hash it (no stored checksum, an endpoint that does not
        validate checksums, or `publish.verify: download`)."""
        from botocore.exceptions import FlexibleChecksumError

        obj = self.client.get_object(Bucket=self.target.bucket, Key=self.key(lf.rel))
        try:
            digest = storage.sha256_stream(obj["Body"].iter_chunks(storage.HASH_BLOCK))
        except FlexibleChecksumError:
            # botocore checked the bytes against the checksum stored with them: damaged in S3
            # (an endpoint that stored a checksum it did not check) or in flight; upload again
            return "the stored bytes do not match their stored checksum"
        if digest != lf.sha256:
            return "downloaded sha256 differs"
        self.etags[lf.rel] = obj["ETag"]
        return "ok"

    def upload(self, lf: LocalFile) -> None:
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": lf.sha256}, "ContentType": content_type(lf.rel)}
        local = storage.local_path(lf.uri)
        if local is not None:
            self.client.upload_file(local, self.target.bucket, self.key(lf.rel), ExtraArgs=extra, Config=self.transfer)
        else:
            with storage.open_read(lf.uri) as f:
                self.client.upload_fileobj(
                    f, self.target.bucket, self.key(lf.rel), ExtraArgs=extra, Config=self.transfer
                )

    def _put_once(self, lf: LocalFile, uploaded: list[bool]) -> None:
        state = self.verify(lf)
        if state == "ok":
            return
        if state != "missing":
            log.info("%s: replacing the object of an earlier attempt (%s)", lf.rel, state)
        uploaded[0] = True
        self.upload(lf)
        state = self.verify(lf)
        if state != "ok":
            raise storage.Transient(f"verification failed after upload: {state}")

    def _count_retry(self, err: BaseException) -> None:
        with self.lock:
            self.retried += 1

    def put(self, lf: LocalFile) -> bool:
        """Make the object match the local file. True when it was uploaded, False when it was
        already there (a resumed publish)."""
        attempts = 1 + min(FILE_ATTEMPTS - 1, self.pcfg.max_retries)
        uploaded = [False]
        try:
            storage.retry(lambda: self._put_once(lf, uploaded), lf.rel, attempts, on_retry=self._count_retry)
        except Exception as err:  # noqa: BLE001 - classified just below
            if storage.transient(err):
                raise PublishError(f"{lf.rel}: gave up after {attempts} attempts: {_safe_error(err)}") from None
            raise PublishError(f"{lf.rel}: upload failed: {_safe_error(err)}") from None
        return uploaded[0]


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
    """An object's JSON and bytes (None when absent), the whole read retried."""
    from botocore.exceptions import ClientError

    def once() -> tuple[Any, bytes] | None:
        try:
            raw = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as err:
            if _not_found(err):
                return None
            raise
        return json.loads(raw), raw

    return storage.retry(once, f"read s3://{bucket}/{key}")


def _head(client, bucket: str, key: str) -> dict | None:
    """An object's HEAD (None when absent), retried."""
    from botocore.exceptions import ClientError

    def once() -> dict | None:
        try:
            return client.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if _not_found(err):
                return None
            raise

    return storage.retry(once, f"head s3://{bucket}/{key}")


def _committed_at(client, bucket: str, key: str) -> float | None:
    """When a version's manifest was written: the microsecond time the publisher stored with it
    (S3's LastModified has only whole seconds), else LastModified."""
    head = _head(client, bucket, key)
    if head is None:
        return None
    try:
        return float(head.get("Metadata", {})["committed-at"])
    except (KeyError, ValueError):
        return head["LastModified"].timestamp()


def _list_keys(client, bucket: str, prefix: str) -> list[str]:
    def once() -> list[str]:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    return storage.retry(once, f"list s3://{bucket}/{prefix}")


def _abort_incomplete_uploads(client, bucket: str, prefix: str) -> int:
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
        head = _head(client, uploader.target.bucket, uploader.key(f["path"]))
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
            existing = _get_json(client, target.bucket, key)
            if existing is None or _files_key(existing[0].get("files", [])) != _files_key(files):
                raise PublishError(
                    f"version {version} was committed by another publisher with different "
                    "content while this one was uploading"
                ) from None
        else:
            raise
    back = _get_json(client, target.bucket, key)
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


def check_target(cfg: Config) -> Target:
    """publish.uri parsed, and its bucket reachable with the environment's credentials."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    try:
        client.head_bucket(Bucket=target.bucket)
    except Exception as err:  # noqa: BLE001
        raise PublishError(f"bucket {target.bucket} is not reachable: {_safe_error(err)}") from None
    return target


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

    existing = _get_json(client, target.bucket, target.key(version, MANIFEST))
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
    aborted = _abort_incomplete_uploads(client, bucket, prefix)
    if aborted:
        log.info("aborted %d incomplete multipart upload(s) of an earlier attempt", aborted)
    uploaded, skipped = _upload_all(ds, files, uploader, uploader.version, concurrency)
    wanted = {uploader.key(f["path"]) for f in files}
    strays = [k for k in _list_keys(client, bucket, prefix) if k not in wanted]
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

    with tracking.run(cfg, "publish", tags={"stage": "publish", "noop": str(rep.noop).lower()}):
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


# ------------------------------------------------------------------------------ versions
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
    pointer = _get_json(client, target.bucket, target.key(LATEST))
    if pointer is not None and pointer[0].get("version") == check_version(version):
        raise PublishError(f"version {version} is the one `{LATEST}` points at: not deleted")
    c = cfg.concurrency
    try:
        with lease.hold(
            target.uri(), f"version-{version}", wait=c.on_busy == "wait", timeout=c.wait_timeout_s, ttl=c.lease_ttl_s
        ):
            prefix = target.key(version) + "/"
            manifest = target.key(version, MANIFEST)
            keys = sorted(_list_keys(client, target.bucket, prefix), key=lambda k: k != manifest)  # manifest first
            for k in keys:
                storage.retry(
                    functools.partial(client.delete_object, Bucket=target.bucket, Key=k),
                    f"delete s3://{target.bucket}/{k}",
                )
            _abort_incomplete_uploads(client, target.bucket, prefix)
    except lease.LeaseError as err:
        raise PublishError(str(err)) from None
    log.info("deleted version %s (%d objects)", version, len(keys))
    return len(keys)


def delete_versions_except(cfg: Config, keep: str) -> list[str]:
    """Delete every published version but `keep`, which `latest` must point at. The deleted ones."""
    target = parse_target(cfg.publish.uri)
    client = storage.s3_client(cfg.publish.max_retries, cfg.publish.concurrency)
    pointer = _get_json(client, target.bucket, target.key(LATEST))
    if pointer is None or pointer[0].get("version") != keep:
        raise PublishError(f"`{LATEST}` does not point at version {keep}: no earlier version deleted")
    gone = [v for v in published_versions(cfg) if v != keep]
    for v in gone:
        delete_version(cfg, v)
    return gone
