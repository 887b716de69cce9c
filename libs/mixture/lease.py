"""Exclusive leases: one writer per dataset (or published version) at a time.

Two runs of one stage (an Airflow retry while the first attempt still runs, a manual `climb run`
over a scheduled one) share a staging folder and would otherwise delete each other's commits. The
runner holds the dataset's lease from "is it up to date?" to "committed"; a second run waits for
it (then finds the dataset up to date) or fails fast with one line, as the config says.

- Local output roots: an `flock` on `<root>/_leases/<name>.lock`. The kernel drops it when the
  holder dies (kill -9 included), so a killed run's lease is never stale; the file holds the
  owner (host, pid, start time) for the waiting message.
- S3 output roots: a lease object `<root>/_leases/<name>.json` written with a conditional PUT
  (`If-None-Match: *`), renewed by a heartbeat (`If-Match` on its ETag) and expiring after `ttl`
  seconds without one. An expired lease is taken over with `If-Match` on the ETag that was read,
  so of two runs taking over the same stale lease exactly one wins.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from mixture import storage

log = logging.getLogger(__name__)


class LeaseBusy(RuntimeError):
    """Another run holds the lease and the caller asked not to wait (or waited too long)."""


class LeaseError(RuntimeError):
    """The lease object cannot be read or written (permissions, a missing bucket, the endpoint)."""


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", type(err).__name__))


def _owner() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another run"
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"


@contextmanager
def hold(
    root: str, name: str, wait: bool = True, timeout: float = 6 * 3600.0, ttl: float = 120.0, poll: float = 1.0
) -> Iterator[dict]:
    """Hold the lease `name` under the output root `root` for the duration of the block."""
    uri = storage.join(root, "_leases", name)
    impl = _s3_lease if storage.is_s3(uri) else _local_lease
    with impl(uri, wait, timeout, ttl, poll) as owner:
        yield owner


def _wait_message(name: str, owner: dict | None, wait: bool) -> str:
    what = f"{name} is being written by {_describe(owner)}"
    return f"{what}; waiting for it to finish" if wait else f"{what}; try again when it has finished"


# -------------------------------------------------------------------------------------- local
@contextmanager
def _local_lease(uri: str, wait: bool, timeout: float, ttl: float, poll: float) -> Iterator[dict]:
    import fcntl

    path = storage.local_path(uri) or uri
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(fd, os.path.basename(path), wait, timeout, poll)
        owner = _owner()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        try:
            yield owner
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _flock(fd: int, name: str, wait: bool, timeout: float, poll: float) -> None:
    import fcntl

    deadline, told = time.monotonic() + timeout, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            owner = _read_local_owner(fd)
            if not wait or time.monotonic() > deadline:
                raise LeaseBusy(_wait_message(name, owner, False)) from None
            if not told:
                log.warning("%s", _wait_message(name, owner, True))
                told = True
            time.sleep(poll)


def _read_local_owner(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- S3
@contextmanager
def _s3_lease(uri: str, wait: bool, timeout: float, ttl: float, poll: float) -> Iterator[dict]:
    lease = S3Lease(uri + ".json", ttl)
    lease.acquire(wait, timeout, poll)
    try:
        yield lease.owner
    finally:
        lease.release()


class S3Lease:
    """A lease object with an expiry, taken and renewed by conditional PUTs."""

    def __init__(self, uri: str, ttl: float):
        self.bucket, self.key = storage.split_s3(uri)
        self.ttl = ttl
        self.owner = _owner()
        self.etag: str | None = None
        self.client = storage.s3_client(max_retries=5)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "expires": time.time() + self.ttl}).encode()

    def _put(self, **cond) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        body = self._body()
        try:
            self.etag = storage.retry(
                lambda: self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **cond),
                f"write the lease {self.key}",
            )["ETag"]
            return True
        except ClientError as err:
            if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
                return False
            raise LeaseError(f"cannot write the lease s3://{self.bucket}/{self.key}: {_code(err)}") from None
        except BotoCoreError as err:
            raise LeaseError(f"cannot write the lease s3://{self.bucket}/{self.key}: {type(err).__name__}") from None

    def _current(self) -> tuple[dict | None, str | None]:
        """The lease object and its ETag, the whole read retried (a body dropped mid-read too)."""
        from botocore.exceptions import BotoCoreError, ClientError

        def once() -> tuple[dict | None, str | None]:
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
                return json.loads(obj["Body"].read()), obj["ETag"]
            except ClientError as err:
                if _code(err) in ("NoSuchKey", "404"):
                    return None, None
                raise

        try:
            return storage.retry(once, f"read the lease {self.key}")
        except (ClientError, BotoCoreError) as err:
            raise LeaseError(f"cannot read the lease s3://{self.bucket}/{self.key}: {_code(err)}") from None

    def _ours(self, holder: dict | None, etag: str | None) -> bool:
        """Whether the lease object is this run's own: a conditional PUT whose first try landed
        but whose answer was lost fails its condition when retried. Adopts its ETag."""
        if holder and holder.get("token") == self.owner["token"]:
            self.etag = etag
            return True
        return False

    def _try_once(self) -> dict | None:
        """Take the lease if free or expired; else return the holder."""
        if self._put(IfNoneMatch="*"):
            return None
        holder, etag = self._current()
        if holder is None:
            return {}  # released between the two calls: try again
        if self._ours(holder, etag):
            return None
        if holder.get("expires", 0) < time.time() and etag and self._put(IfMatch=etag):
            log.warning("took over the expired lease of %s", _describe(holder))
            return None
        return holder

    def acquire(self, wait: bool, timeout: float, poll: float) -> None:
        deadline, told = time.monotonic() + timeout, False
        name = self.key.rsplit("/", 1)[-1].removesuffix(".json")
        while (holder := self._try_once()) is not None:
            if not wait or time.monotonic() > deadline:
                raise LeaseBusy(_wait_message(name, holder, False))
            if not told and holder:
                log.warning("%s", _wait_message(name, holder, True))
                told = True
            time.sleep(poll)
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self._put(IfMatch=self.etag) and not self._ours(*self._current()):
                log.error("lost the lease %s: another run took it over", self.key)
                return

    def release(self) -> None:
        """Delete the lease object if it is still ours; best effort: if the endpoint fails now,
        the lease expires `ttl` seconds after its last heartbeat, and the run's own error stands."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            holder, etag = self._current()
            if holder and holder.get("token") == self.owner["token"] and etag == self.etag:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as err:  # noqa: BLE001
            log.warning("could not release the lease %s (%s); it expires in %.0f s", self.key, _code(err), self.ttl)
