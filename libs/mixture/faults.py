"""Operating-system and environment failures as one line: what failed, where, and what to do.

A full disk, a file the run may not read, a read-only folder, a database that cannot be written
(the MLflow SQLite store) or an endpoint that does not answer are not bugs of the code: the user
fixes them and runs again. `describe(err)` finds such a failure in an exception or in anything it
was raised from (`__cause__`, `__context__`; a Spark job's Java error by its message) and says it
in one line that names the file or resource and what to do; `cli.guarded` prints it on stderr with
exit status 2 (`-v` shows the traceback). Where the caller knows more than the error (the runner
knows the stage and its staging folder), `translated` re-raises the failure as a `ResourceError`
with that context.

What nothing committed loses: the datasets' contract (`mixture.dataset`) commits a stage's output
only whole, so after any of these failures the committed datasets are the ones before the run,
and the run, started again once the cause is fixed, resumes what its resumable stages staged.

Where a stage knows how much it will write before it writes it, `check_free` refuses to start on a
disk with less free space than that (one line, before any bulk write), rather than fail half-way.

Every line goes through `redact`: a URL in it keeps its scheme, host, port and path, never a
user-info part (`user:secret@`).
"""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DENIED = {errno.EACCES, errno.EPERM}
READ_ONLY = {errno.EROFS}
# What the same failures say where only a message is left (a Java stack trace, a driver's text).
TEXTS = (
    ("No space left on device", "disk"),
    ("Disk quota exceeded", "disk"),
    ("database or disk is full", "database-full"),
    ("unable to open database file", "database-open"),
    ("attempt to write a readonly database", "database-open"),
    ("Read-only file system", "read-only"),
    ("Permission denied", "denied"),
)
# Exceptions (by class name: no import of their packages) that mean an endpoint did not answer.
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "NewConnectionError",
    "MaxRetryError",
    "ConnectionRefusedError",
}
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/'\"@]+@)?([^\s'\")]+)")
_PATH = re.compile(r"(?:file:)?(/[^\s'\",:;)\]]+)")


class ResourceError(RuntimeError):
    """An operating-system or environment failure, said in one line with its context."""

    def __init__(self, line: str, transient: bool = False):
        super().__init__(line)
        self.transient = transient


@dataclass(frozen=True)
class Fault:
    line: str  # what failed, where, and what to do
    transient: bool = False  # may pass by itself (an endpoint down): a scheduler may retry


def redact(text: str) -> str:
    """`text` with the user-info of every URL in it removed (`s3://key:secret@host/x` ->
    `s3://host/x`)."""
    return _URL.sub(lambda m: f"{m.group(1)}://{m.group(3)}", text)


def chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and what it was raised from or during, outermost first, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def describe(err: BaseException, where: str | None = None) -> Fault | None:
    """The failure in one line when `err` is (or was raised from) an operating-system or
    environment failure; None for anything else (a bug keeps its traceback). `where`: the file
    or resource to name when the error names none."""
    errors = list(chain(err))
    for e in errors:
        if isinstance(e, OSError) and e.errno is not None and (fault := _os_fault(e, where)):
            return fault
    for e in errors:
        if any(c.__name__ in UNREACHABLE for c in type(e).__mro__):
            return _unreachable(e)
    for e in errors:
        text = str(e)
        for needle, kind in TEXTS:
            if needle in text:
                return _by_kind(kind, _path_in(text, needle) or where)
    return None


def _os_fault(e: OSError, where: str | None) -> Fault | None:
    path = e.filename if isinstance(e.filename, str) else (e.filename.decode() if e.filename else None)
    kind = (
        "disk"
        if e.errno in DISK_FULL
        else "denied"
        if e.errno in DENIED
        else "read-only"
        if e.errno in READ_ONLY
        else None
    )
    if kind is None and isinstance(e, ConnectionRefusedError):
        return _unreachable(e)
    return _by_kind(kind, path or where) if kind else None


def _by_kind(kind: str, path: str | None) -> Fault:
    at = redact(path) if path else None
    if kind == "disk":
        disk = f"the disk holding {at}" if at else f"a disk this run writes to (its output, or {tempfile.gettempdir()})"
        return Fault(
            f"no space left on {disk}: free space there (or point output_root at a larger disk) and run "
            "again; the committed datasets are intact and the run resumes what it staged"
        )
    if kind == "denied":
        return Fault(
            f"permission denied: {at or 'a file or folder of this run'}: give the user running climb access to "
            "it (read for an input, write for the output folder)"
        )
    if kind == "read-only":
        where = at or "a folder this run writes to"
        return Fault(f"{where} is on a read-only file system: point output_root at a writable folder")
    if kind == "database-full":
        where = at or "(the MLflow store)"
        return Fault(f"the database {where} cannot grow: its disk is full; free space and run again")
    return Fault(
        f"the database {at or '(the MLflow store)'} cannot be opened or written: check that its folder exists and "
        "is writable (tracking.uri)"
    )


def _unreachable(e: BaseException) -> Fault:
    m = _URL.search(str(e)) or _URL.search(str(getattr(e, "kwargs", "")))
    endpoint = redact(m.group(0)) if m else "an endpoint this run uses"
    return Fault(
        f"the endpoint {endpoint} is not reachable ({type(e).__name__}): check the URL (AWS_ENDPOINT_URL, "
        "tracking.uri) and that the service is up, then run again",
        transient=True,
    )


def _path_in(text: str, needle: str) -> str | None:
    """The file path named on the message's line that says `needle` (a Java IOException's
    `/path (Permission denied)`), if any."""
    line = next(ln for ln in text.splitlines() if needle in ln)
    m = _PATH.search(line.replace(needle, ""))
    return m.group(1) if m and len(m.group(1)) > 1 else None


@contextmanager
def translated(context: str, where: str | None = None) -> Iterator[None]:
    """Re-raise an operating-system or environment failure of the block as a `ResourceError`
    `<context>: <line>` (naming `where` when the error names no file); anything else as it is."""
    try:
        yield
    except ResourceError:
        raise
    except Exception as err:
        fault = describe(err, where)
        if fault is None:
            raise
        raise ResourceError(f"{context}: {fault.line}", fault.transient) from err


def check_free(path: str | None, need: int, what: str) -> None:
    """Raise a `ResourceError` when the disk holding the local `path` (None: not local, nothing
    to check) has less than `need` bytes free."""
    if path is None or need <= 0:
        return
    from pathlib import Path

    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise ResourceError(
            f"{what}: needs at least {_size(need)} more on the disk holding {path}, which has {_size(free)} free: "
            "free space there (or point output_root at a larger disk) and run again"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
