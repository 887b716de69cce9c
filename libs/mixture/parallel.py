"""Independent jobs of one stage step, run here or in spawned worker processes.

The embed stage's ranges, the shards' tokenization parts and cluster merges and the build's
scatter parts and gather buckets are lists of jobs that each stage its own files idempotently:
they can run in any order, in parallel and again. On one machine `fan_out` runs them here
(`workers` <= 1) or in `workers` spawned processes (CUDA and torch threads do not survive a
fork); under Airflow each job is a mapped task instead, and the engines' own retries apply.
`shard_ranges` cuts a stage's documents into such jobs: contiguous ranges of whole shards.

The first failed job fails the step at once: jobs not yet started are cancelled, the running ones
finish (what they stage is kept, a rerun reuses it), and the error is raised.

Workers never outlive their driver (`pool`, also the search's proxy pool): each asks the kernel to
kill it when the process that started it dies (`PR_SET_PDEATHSIG` on Linux; elsewhere a thread
that watches its parent), so a driver killed with SIGKILL leaves no worker training on, and none
writing into a staging folder whose lease nobody holds any more.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm


@dataclass(frozen=True)
class ShardRange:
    """Shards `first_shard ..` (`shards` of them): documents `first_doc ..` (`docs` of them). A
    job's unit of work (an embedding range, a build bucket); `to_dict` is its task argument."""

    index: int
    first_shard: int
    shards: int
    first_doc: int
    docs: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def shard_ranges(n_docs: int, shard_docs: int, range_shards: int) -> list[ShardRange]:
    """Ranges of `range_shards` consecutive shards of `shard_docs` documents covering `n_docs`
    documents (the last shard and range may be shorter; none is empty)."""
    n_shards = -(-n_docs // shard_docs)
    out = []
    for index, first in enumerate(range(0, n_shards, range_shards)):
        shards = min(range_shards, n_shards - first)
        first_doc = first * shard_docs
        out.append(ShardRange(index, first, shards, first_doc, min(shards * shard_docs, n_docs - first_doc)))
    return out


def fan_out(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    *,
    desc: str,
    unit: str,
    weights: Sequence[int] | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    on_result: Callable[[Any], None] | None = None,
) -> list[Any]:
    """`fn(*job)` for every job, in order of the jobs; `weights` (default 1 a job) drive the
    progress bar; `initializer(*initargs)` runs once in each process that runs jobs (this one
    too when `workers` <= 1); `on_result` sees each result as it is collected."""
    weights = list(weights) if weights is not None else [1] * len(jobs)
    n = min(workers, len(jobs))
    results: list[Any] = []
    with tqdm(total=sum(weights), desc=desc, unit=unit) as bar:

        def collect(result: Any, weight: int) -> None:
            if on_result is not None:
                on_result(result)
            results.append(result)
            bar.update(weight)

        if n <= 1:
            if initializer is not None:
                initializer(*initargs)
            for job, w in zip(jobs, weights):
                collect(fn(*job), w)
            return results
        with pool(n, initializer, initargs) as workers_pool:
            futures = [workers_pool.submit(fn, *job) for job in jobs]
            try:
                for future, w in zip(futures, weights):
                    collect(future.result(), w)
            except BaseException:
                workers_pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes (CUDA and torch threads do not survive a fork) that
    die with this one; `initializer(*initargs)` runs once in each."""
    return ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """In a worker: be killed (SIGKILL) when the process `parent` that started it dies. Linux: the
    kernel's parent-death signal; elsewhere a daemon thread that checks the parent every 0.2 s."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before the signal was asked for
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="die-with-parent").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)
