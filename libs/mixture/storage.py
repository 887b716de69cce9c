"""One IO layer for local paths and `s3://bucket/prefix` URIs.

Every read and write of the pipeline goes through here, on top of `pyarrow.fs` (no extra S3
dependency, and Arrow's readers and writers take its filesystems directly). S3 settings come from
the standard AWS environment and config files: credentials from the usual provider chain, the
endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (e.g. MinIO or a local S3 server), the
region from `AWS_REGION` / `AWS_DEFAULT_REGION`. Nothing here logs a credential.

Writes of whole files are atomic for readers: locally a temporary file is renamed over the target;
on S3 a PUT becomes visible only when complete.

`retry(call, what)` is the one retry policy of the S3 reads and writes done here and in the
publisher and the reader: a request that fails with throttling, a 5xx, a dropped connection or a
response body dropped mid-read is tried again with full-jitter exponential backoff. botocore and
Arrow retry a failed request themselves, but not a body that breaks off after the response
started, nor a multi-step operation (upload then verify) whose last step fails.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible endpoints (MinIO, local servers) expect path-style addressing.
        kwargs["force_virtual_addressing"] = False
    if region:
        kwargs["region"] = region
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=8)
    return pafs.S3FileSystem(**kwargs)


def s3_settings() -> tuple[str | None, str | None]:
    """(endpoint URL, region) from the standard AWS environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return endpoint, region


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client(max_retries: int, concurrency: int = 4):
    """A boto3 S3 client from the standard AWS environment, with botocore's standard retry mode
    (exponential backoff with jitter on throttling, 5xx and connection errors)."""
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint, region = s3_settings()
    kwargs: dict[str, Any] = {
        "retries": {"max_attempts": max_retries + 1, "mode": "standard"},
        "max_pool_connections": max(10, 2 * concurrency * concurrency),
        "connect_timeout": 10,
        "read_timeout": 120,
    }
    if endpoint:
        # S3-compatible endpoints (MinIO, local servers) expect path-style addressing
        kwargs["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client("s3", region_name=region, config=BotoConfig(**kwargs))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow filesystem for a URI and the path inside it."""
    if is_s3(uri):
        parsed = urlparse(uri)
        return _s3(*s3_settings()), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def _to_uri(uri_like: str, path: str) -> str:
    if is_s3(uri_like):
        return "s3://" + path
    return path


def join(base: str, *parts: str) -> str:
    if is_s3(base) or "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    if is_s3(uri):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(uri.rstrip("/"))


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/"))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return info.size


def modified(uri: str) -> str:
    """The file's modification time (ISO, from the listing: S3's LastModified), '' when unknown."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return info.mtime.isoformat() if info.mtime is not None else ""


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Files under a folder (sorted), or the file itself."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    return sorted(_to_uri(uri, i.path) for i in infos if i.type == pafs.FileType.File)


def expand(uris: list[str]) -> list[str]:
    """Files named by a list of files, folders and globs (`*`, `?` in the last parts). Sorted,
    without hidden files or files starting with `_` (Spark/Arrow markers, manifests)."""
    out: list[str] = []
    for uri in uris:
        if any(c in uri for c in "*?["):
            root = uri
            while any(c in basename(root) for c in "*?[") or any(c in root for c in "*?["):
                root = parent(root)
            out += [f for f in list_files(root) if fnmatch.fnmatch(f, uri)]
        else:
            out += list_files(uri)
    return sorted({f for f in out if not basename(f).startswith((".", "_"))})


def delete(uri: str) -> None:
    """Remove a file or a folder and everything under it; missing is fine."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Rename a file or folder (local: atomic rename; S3: copy then delete)."""
    fs, s = filesystem(src)
    _, d = filesystem(dst)
    if not is_s3(src):
        Path(d).parent.mkdir(parents=True, exist_ok=True)
        os.replace(s, d)
        return
    info = fs.get_file_info(s)
    if info.type == pafs.FileType.File:
        fs.copy_file(s, d)
        fs.delete_file(s)
        return
    for f in list_files(src):
        rel = f[len(src.rstrip("/")) + 1 :]
        fs.copy_file(filesystem(f)[1], posixpath.join(d, rel))
    fs.delete_dir(s)


def link(src: str, dst: str) -> None:
    """Make `dst` a file with `src`'s bytes without moving them through this process: a hard
    link locally (a copy when the two are on different devices), a server-side copy on S3
    (CopyObject). How a new version of a dataset keeps the unchanged files of the previous one."""
    fs, s = filesystem(src)
    _, d = filesystem(dst)
    if is_s3(src) != is_s3(dst):
        raise ValueError(f"link: {src} and {dst} are not on the same file system")
    if is_s3(src):
        fs.copy_file(s, d)
        return
    Path(d).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(d):
        os.remove(d)
    try:
        os.link(s, d)
    except OSError:
        shutil.copy2(s, d)


@contextmanager
def open_read(uri: str) -> Iterator[IO[bytes]]:
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as f:
        yield f


@contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """Write a file atomically: readers see the old file or the whole new one, never a part."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        # compression=None: pyarrow would otherwise gzip any key ending in .gz a second time
        with fs.open_output_stream(path, compression=None) as f:
            yield f
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_npy(uri: str):
    """A .npy array: memory-mapped when the file is local (the page cache, not the heap), else
    read whole."""
    import numpy as np

    local = local_path(uri)
    if local is not None:
        return np.load(local, mmap_mode="r", allow_pickle=False)
    with open_read(uri) as f:
        return np.load(f, allow_pickle=False)


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    with open_write(uri) as f:
        f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


HASH_BLOCK = 8 << 20  # bytes read at a time when hashing or copying


def iter_blocks(f: IO[bytes], chunk: int = HASH_BLOCK) -> Iterator[bytes]:
    """The file's bytes in blocks of at most `chunk`, to the end."""
    while block := f.read(chunk):
        yield block


def sha256_stream(source: IO[bytes] | Iterable[bytes], sink: Callable[[bytes], Any] | None = None) -> str:
    """Hex SHA-256 of a readable binary file (read in blocks to its end) or of an iterable of
    byte blocks. `sink`, when given, receives every block too (copy while hashing). The one
    streaming hash of the project: the manifests, the reader's checks and the publisher use it."""
    blocks = iter_blocks(source) if hasattr(source, "read") else source  # type: ignore[arg-type]
    h = hashlib.sha256()
    for block in blocks:
        h.update(block)
        if sink is not None:
            sink(block)
    return h.hexdigest()


def read_jsonl(uri: str) -> list[tuple[int, Any]]:
    """(line number, record) of every non-blank line of a JSON-lines file (`.gz` decompressed);
    ValueError naming the file and line for a line that is not JSON. For small side files
    (targets, reference documents); the corpus itself is read by `mixture.curate.ingest`."""
    import gzip

    raw = read_bytes(uri)
    if uri.endswith(".gz"):
        raw = gzip.decompress(raw)
    out = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{uri}:{n}: not valid JSON ({err.msg})") from None
    return out


def sha256(uri: str) -> str:
    """Hex SHA-256 of a file, local or on S3, streamed."""
    with open_read(uri) as f:
        return sha256_stream(f)


def identity(uri: str, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """What tells a file's version apart: {size, checksum, mtime_ns}. On S3 the checksum is the
    object's ETag (one HEAD request, no read); locally the SHA-256 of the bytes, reused from
    `known` (an earlier identity of the same file) when the size and mtime are unchanged."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        head = s3_client(3).head_object(Bucket=bucket, Key=key)
        return {"size": int(head["ContentLength"]), "checksum": "etag:" + head["ETag"].strip('"'), "mtime_ns": 0}
    st = os.stat(filesystem(uri)[1])
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return {"size": st.st_size, "checksum": known["checksum"], "mtime_ns": st.st_mtime_ns}
    return {"size": st.st_size, "checksum": "sha256:" + sha256(uri), "mtime_ns": st.st_mtime_ns}


def local_path(uri: str) -> str | None:
    """The local filesystem path of a URI, or None for remote URIs."""
    if is_s3(uri):
        return None
    return filesystem(uri)[1]


# ------------------------------------------------------------------------------------ retries
RETRY_ATTEMPTS = 5  # tries of one operation by `retry` (each request inside has its own retries)
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
}
# the body arrived damaged (S3 checked the SHA-256 we sent): sending it again can succeed
DAMAGED_CODES = {"BadDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch", "IncompleteBody"}
# what Arrow's S3 errors say when the network, not the request, failed
_ARROW_TRANSIENT = (
    "NETWORK_CONNECTION",
    "curlCode",
    "HTTP status 5",
    "SLOW_DOWN",
    "THROTTLING",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "REQUEST_TIMEOUT",
    "Connection reset",
)


class Transient(RuntimeError):
    """A failure that trying again can fix, raised by the caller's own checks (an object that
    does not verify right after its upload)."""


def s3_error_code(err: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(err, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def s3_status(err: BaseException) -> int:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def unwrap(err: BaseException) -> BaseException:
    """boto3's upload_file re-raises a ClientError as S3UploadFailedError (keeping it as the
    context): the S3 error underneath."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(err, S3UploadFailedError) and s3_error_code(err.__context__ or err):
        return err.__context__  # type: ignore[return-value]
    return err


def transient(err: BaseException) -> bool:
    """Whether trying the same operation again can succeed."""
    import http.client

    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError, NoCredentialsError
    from urllib3.exceptions import HTTPError as Urllib3Error

    err = unwrap(err)
    if isinstance(err, NoCredentialsError):
        return False
    if isinstance(
        err,
        (
            Transient,
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            S3UploadFailedError,
            Urllib3Error,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    if s3_error_code(err) or s3_status(err):
        return s3_status(err) >= 500 or s3_error_code(err) in _THROTTLE_CODES | DAMAGED_CODES
    if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return any(s in str(err) for s in _ARROW_TRANSIENT)
    return False


def backoff(attempt: int, base: float = 0.5, cap: float = 20.0) -> float:
    """Full-jitter exponential backoff (AWS architecture blog), in seconds."""
    return random.uniform(0, min(cap, base * 2**attempt))


def describe_error(err: BaseException) -> str:
    """An error as one short line: the S3 code and message, or the exception's type and text
    (botocore messages hold no credentials; this keeps them to the code and message)."""
    err = unwrap(err)
    if code := s3_error_code(err):
        msg = err.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
        return f"{code} ({s3_status(err)}): {msg}".strip()
    return f"{type(err).__name__}: {err}"


def retry(
    call: Callable[[], T],
    what: str,
    attempts: int = RETRY_ATTEMPTS,
    on_retry: Callable[[BaseException], Any] | None = None,
) -> T:
    """`call()`, tried up to `attempts` times while it fails with a transient error (`transient`);
    the last error, or the first permanent one, is raised as it is."""
    attempts = max(1, attempts)
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt + 1 >= attempts or not transient(err):
                raise
            if on_retry is not None:
                on_retry(err)
            delay = backoff(attempt)
            log.warning(
                "%s: %s; retrying in %.1f s (attempt %d of %d)", what, describe_error(err), delay, attempt + 2, attempts
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
