"""A pool of proxy-training processes: the search stage and the baselines stage run their jobs here.

Jobs run in this process (workers = 1) or in spawned processes (`search.workers`, each with
`search.proxy.threads` torch threads); the pool is kept across iterations so workers import torch
once. Under Airflow the same jobs are mapped tasks instead (`dags/climb_mixture_search.py`).
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from tqdm import tqdm

from mixture import parallel
from mixture.config import Config
from mixture.search import steps

log = logging.getLogger(__name__)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute(cfg: Config, job: dict, out_uri: str, dataset, objective) -> dict:
    return steps.execute(cfg, job, out_uri, dataset, objective)


class ProxyRunner:
    """Runs jobs in this process (workers = 1) or in a pool of spawned processes (CUDA and torch
    threads do not survive fork), keeping the pool across iterations (workers import torch once)."""

    def __init__(self, cfg: Config, workers: int, threads: int):
        self.cfg = cfg
        self.workers = workers
        self.threads = threads
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProxyRunner:
        if self.workers > 1:
            # spawned workers that die with this process (`mixture.parallel.pool`)
            self.pool = parallel.pool(self.workers, _init_worker, (self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(
        self, items: list[tuple[dict, str]], dataset, objective=None, on_done=None, desc: str = "proxies"
    ) -> list[dict]:
        """Run (job, output uri) pairs; `on_done(result)` in this process as each finishes."""
        results: list[dict] = []
        bar = tqdm(total=len(items), desc=desc, unit="run")
        try:
            if self.pool is None:
                for job, uri in items:
                    r = _execute(self.cfg, job, uri, dataset, objective)
                    results.append(r)
                    if on_done:
                        on_done(r)
                    bar.update()
                return results
            pending: set[Future] = {
                self.pool.submit(_execute, self.cfg, job, uri, dataset, objective) for job, uri in items
            }
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    r = f.result()  # a failed proxy fails the stage; finished runs stay staged
                    results.append(r)
                    if on_done:
                        on_done(r)
                    bar.update()
            return results
        finally:
            bar.close()


class Projection:
    """The search's projected wall time, measured on this machine: after the first finished runs,
    the mean seconds per proxy run times the runs left, divided by the workers. Printed once, then
    again if the estimate moves by more than half."""

    def __init__(self, total_runs: int, workers: int, after: int = 2):
        self.left = total_runs
        self.workers = max(1, workers)
        self.after = after
        self.seconds: list[float] = []
        self.said: float | None = None

    def done(self, run: dict) -> str | None:
        """Record one finished run (its `seconds`); the line to print, when there is one."""
        self.left -= 1
        if run.get("seconds"):
            self.seconds.append(float(run["seconds"]))
        if len(self.seconds) < self.after or self.left <= 0:
            return None
        per_run = sum(self.seconds) / len(self.seconds)
        eta = per_run * self.left / self.workers
        if self.said is not None and abs(eta - self.said) < 0.5 * self.said:
            return None
        self.said = eta
        return (
            f"search: {per_run:.0f} s per proxy run on this machine; {self.left} runs left on "
            f"{self.workers} worker(s): about {eta / 60:.1f} more minutes"
        )
