"""Independent jobs of one stage step, run here or in spawned worker processes.

The embed stage's ranges, the shards' tokenization parts and cluster merges and the build's
scatter parts and gather buckets are lists of jobs that each stage its own files idempotently:
they can run in any order, in parallel and again. On one machine `fan_out` runs them here
(`workers` <= 1) or in `workers` spawned processes (CUDA and torch threads do not survive a
fork); under Airflow each job is a mapped task instead, and the engines' own retries apply.

The first failed job fails the step at once: jobs not yet started are cancelled, the running ones
finish (what they stage is kept, a rerun reuses it), and the error is raised.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from tqdm import tqdm


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
        spawn = mp.get_context("spawn")
        with ProcessPoolExecutor(n, mp_context=spawn, initializer=initializer, initargs=initargs) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            try:
                for future, w in zip(futures, weights):
                    collect(future.result(), w)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results
