"""Process trees from /proc (Linux): a driver's descendants, and whether a process still runs."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`: {pid: start time} (the start time tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
            starts[int(entry)] = st[2]
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out[p] = starts[p]
        todo += children.get(p, [])
    return out


def running(procs: dict[int, int]) -> list[int]:
    """Those of `procs` ({pid: start time}) still running (a zombie has finished)."""
    out = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def wait_gone(procs: dict[int, int], timeout: float) -> list[int]:
    """Wait up to `timeout` seconds for `procs` to finish; those still running then."""
    deadline = time.time() + timeout
    while (left := running(procs)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def kill_all(pids: list[int]) -> None:
    """Clean up after a failed check (SIGKILL each process by its id)."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
