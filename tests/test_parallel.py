"""mixture.parallel.fan_out: every job's result in order, and the first failure stops the step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from helpers.processes import descendants, kill_all, wait_gone
from mixture.parallel import fan_out


def test_results_come_back_in_job_order_here_and_in_workers():
    jobs = [(str(i),) for i in range(6)]
    for workers in (1, 2):
        assert fan_out(int, jobs, workers, desc="t", unit="job") == list(range(6))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_first_failure_fails_the_step_and_cancels_the_jobs_not_started(tmp_path, workers):
    """Job 0 fails at once; of the 20 slow jobs after it, only those already handed to a worker
    finish (the pool queues one call beyond its workers)."""
    touched = [tmp_path / f"job-{i}" for i in range(20)]
    jobs = [(["false"],)] + [(["sh", "-c", f"sleep 0.3; touch {p}"],) for p in touched]
    with pytest.raises(subprocess.CalledProcessError):
        fan_out(subprocess.check_call, jobs, workers, desc="t", unit="job")
    ran = sum(p.exists() for p in touched)
    assert ran <= (0 if workers == 1 else 2 * workers + 1)


DRIVER = """
import sys, time
from mixture.parallel import fan_out
fan_out(time.sleep, [(60,)] * 4, 2, desc="t", unit="job")
"""


def test_workers_die_with_a_killed_driver():
    """A driver killed with SIGKILL while its two workers run leaves no process behind (without
    the parent-death signal they slept on for a minute, re-parented to init)."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(procs := descendants(driver.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the workers are past their start-up, sleeping in a job
        procs = descendants(driver.pid)
        assert len(procs) >= 2, procs
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = wait_gone(procs, timeout=3)
    kill_all(left)
    assert left == []
