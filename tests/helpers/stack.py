"""The local deployment (`make stack`) as the end-to-end tests see it: its settings from
out/stack/ (stack.env: URLs; secrets.env: the generated credentials, read here and never
printed), Airflow's REST API (Airflow 3: /api/v2, a JWT from /auth/token, the simple auth
manager's admin), and Spark's event logs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "out" / "stack"
DONE = {"success", "failed"}


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def not_up_reason() -> str | None:
    """Why the stack cannot be used (None when it is up and Airflow reports every part healthy)."""
    if not (STACK / "stack.env").exists() or not (STACK / "secrets.env").exists():
        return "the local stack is not up (make stack starts it; .ci/run does)"
    url = read_env(STACK / "stack.env")["AIRFLOW_URL"]
    try:
        health = requests.get(f"{url}/api/v2/monitor/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        return f"the local stack is not up: no Airflow at {url} (make stack starts it)"
    sick = [k for k in ("metadatabase", "scheduler", "triggerer", "dag_processor") if health[k]["status"] != "healthy"]
    return f"the local stack's Airflow is not healthy: {', '.join(sick)}" if sick else None


class Airflow:
    """Airflow's REST API with the admin's token."""

    def __init__(self, url: str, password: str):
        self.url = url
        r = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        r.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        r = self.session.get(f"{self.url}/api/v2/{path}", params=params, timeout=60)
        r.raise_for_status()
        return r.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        r = self.session.post(
            f"{self.url}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=60
        )
        r.raise_for_status()
        return r.json()["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"dags/{dag_id}/dagRuns", limit=100, order_by="-run_after")["dag_runs"]

    def wait(self, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.time() + timeout_s
        while (run := self.run(dag_id, run_id))["state"] not in DONE:
            if time.time() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {run['state']} after {timeout_s:.0f}s")
            time.sleep(5)
        return run

    def wait_new_run(self, dag_id: str, known: set[str], timeout_s: float) -> str:
        """The id of a run of `dag_id` not in `known` (e.g. one an asset event started)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            new = [r["dag_run_id"] for r in self.runs(dag_id) if r["dag_run_id"] not in known]
            if new:
                return new[0]
            time.sleep(3)
        raise TimeoutError(f"no new run of {dag_id} within {timeout_s:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        tis = self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]
        return {(t["task_id"], t["map_index"]): t for t in tis}

    def returned(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (its XCom)."""
        entry = self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value


def _event_files(path: Path) -> list[Path] | None:
    """An application's event log files, in order; None while it runs. Spark 4 writes a folder
    per application (rolling logs: `eventlog_v2_<app>/events_<n>_<app>`, `appstatus_<app>` with
    `.inprogress` while it runs); a single file without rolling."""
    if path.is_dir():
        if any(p.name.endswith(".inprogress") for p in path.iterdir()):
            return None
        return sorted(path.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
    return None if path.name.endswith(".inprogress") else [path]


def _read(path: Path) -> str:
    """An event log file's text (Spark 4 compresses them with zstd by default)."""
    if path.suffix != ".zstd":
        return path.read_text()
    import zstandard

    with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
        return r.read().decode()


def spark_application(event_dir: Path, name: str) -> list[dict[str, Any]]:
    """The events of the finished Spark application called `name`, from its event log."""
    for path in sorted(event_dir.iterdir()):
        files = _event_files(path)
        if not files:
            continue
        events = [json.loads(line) for f in files for line in _read(f).splitlines() if line.strip()]
        start = next((e for e in events if e["Event"] == "SparkListenerApplicationStart"), None)
        if start and start["App Name"] == name:
            return events
    raise AssertionError(f"no finished Spark application called {name} in {event_dir}")
