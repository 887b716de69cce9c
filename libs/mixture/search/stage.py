"""The `search` stage: CLIMB's iterative mixture search over the ClimbLab clusters.

Runs the steps of steps.py in one process, the way an Airflow DAG runs them as tasks: for each
iteration `propose` the jobs, train the proxies that are not finished yet (`search.workers`
processes, each with `search.proxy.threads` torch threads), then `finalize` (fit the predictors,
choose the mixture, write mixture.json and iterations.json) and let the pipeline commit.

Resumable: a killed search keeps its staged proposals and finished runs (the pipeline registers the
stage as resumable); the next `climb search` reuses them and trains only what is missing.
Paper budget (Diao et al., 2025): iterations 64/32/16; `configs/demo.yaml` scales it to 2 cores.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from tqdm import tqdm

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

    def __enter__(self) -> "ProxyRunner":
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                            initializer=_init_worker, initargs=(self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, items: list[tuple[dict, str]], dataset, objective=None, on_done=None,
            desc: str = "proxies") -> list[dict]:
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
            pending: set[Future] = {self.pool.submit(_execute, self.cfg, job, uri, dataset, objective)
                                    for job, uri in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    r = f.result()          # a failed proxy fails the stage; finished runs stay staged
                    results.append(r)
                    if on_done:
                        on_done(r)
                    bar.update()
            return results
        finally:
            bar.close()


def run(ctx, objective: steps.Objective | None = None):
    """The stage function (`mixture.search.stage:run`). `objective` replaces proxy training (tests)."""
    cfg: Config = ctx.cfg
    writer, dataset = ctx.writer, ctx.inputs["climblab"]
    t = steps.tracker(cfg, writer)
    logged = t.logged_proxies()
    reused = 0
    with ProxyRunner(cfg, cfg.search.workers, cfg.search.proxy.threads) as runner:
        for i in range(len(cfg.search.iterations)):
            jobs = steps.propose(cfg, i)
            todo = [j for j in jobs if steps.read_run(writer, j["run_id"]) is None]
            reused += len(jobs) - len(todo)
            for j in jobs:                       # finished before a kill: log what was not logged
                if j not in todo:
                    t.log_proxy(steps.read_run(writer, j["run_id"]), logged)
            runner.run([(j, writer.path(f"runs/{j['run_id']}.json")) for j in todo], dataset, objective,
                       on_done=lambda r: t.log_proxy(r, logged), desc=f"search iteration {i}")
            if todo:
                log.info("search: iteration %d: %d proxy runs trained, %d reused", i, len(todo),
                         len(jobs) - len(todo))
    out = steps.finalize(cfg, ctx.inputs, writer)
    out.extra["reused_runs"] = reused
    out.summary.insert(1, ("resumed", f"{reused} finished runs reused") if reused else ("resumed", "no"))
    return out
