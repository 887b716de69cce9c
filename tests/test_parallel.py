"""mixture.parallel.fan_out: every job's result in order, and the first failure stops the step."""

from __future__ import annotations

import subprocess

import pytest
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
