"""One file of a version uploaded and verified in S3 (`mixture.publish.publisher` runs them).

Large files go up in multipart uploads (`publish.multipart_chunk_mb`, S3's minimum part is 5 MiB)
with several parts in flight (`publish.concurrency`), carrying SHA-256 checksums. Each object
is verified against the manifest's sha256 after upload: by the stored checksum when the endpoint
validates checksums on receipt (`validates_checksums`: probed once per endpoint and process, a
small PUT with a deliberately wrong checksum must be refused; for a multipart object S3 stores
the sha256 of the parts' sha256 digests, so that is what `describe_local` computes), else by
reading the object back. A file whose upload or verification fails is verified and uploaded
again through `storage.retry`, with backoff (`Uploader.put`). `Uploader.etags` keeps each
verified object's ETag for the check just before the commit.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import uuid
from dataclasses import dataclass

from mixture import storage
from mixture.config import Config
from mixture.publish.s3 import PublishError, Target, not_found

log = logging.getLogger(__name__)

# Tries of one file (verify, upload, verify) through `storage.retry`, after botocore's own
# per-request retries: a body dropped mid-read or an object that fails verification costs one.
FILE_ATTEMPTS = 5


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
                log.info("checksum probe answered %s: not trusting stored checksums", storage.describe_error(err))
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
            if not_found(err):
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
                raise PublishError(
                    f"{lf.rel}: gave up after {attempts} attempts: {storage.describe_error(err)}"
                ) from None
            raise PublishError(f"{lf.rel}: upload failed: {storage.describe_error(err)}") from None
        return uploaded[0]


def content_type(rel: str) -> str:
    if rel.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    if rel.endswith(".json"):
        return "application/json"
    if rel.endswith(".md"):
        return "text/markdown; charset=utf-8"
    return "application/octet-stream"
