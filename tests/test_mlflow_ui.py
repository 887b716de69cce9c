"""The MLflow UI is where people compare mixtures: a real tracking server, a tiny search logging to
it, and headless Chromium (Debian's package) reading the pages a person would open. Screenshots
are kept under the test's tmp dir and copied to out/test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, _free_port
from helpers.browser import BrowserError, Chromium, find_chromium
from helpers.search import lab_texts, search_config
from mixture import pipeline, tracking
from mixture.search import track

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "out" / "test-artifacts"
PROXY_NAME = re.compile(r"^it(\d)-\d{3} s\d: c\d\d \d+%(, c\d\d \d+%){0,2}$")


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium on PATH: `apt-get install -y chromium` (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a SQLite store and a local artifact folder, on a free loopback port."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(tmp / "server.log", "w")
    args = ["server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--backend-store-uri", f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", str(tmp / "artifacts")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        _stop_group(proc)
        pytest.fail(f"mlflow server did not answer: {(tmp / 'server.log').read_text()[-2000:]}")
    yield url
    _stop_group(proc)
    log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and what it started (its job consumers), all in its own process group."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group did not stop
    except ProcessLookupError:
        pass
    proc.wait()


def _open(b: Chromium, server: str, path: str) -> None:
    """Open `path` as a person's browser would after its first visit: MLflow's assistant panel,
    which opens itself once per browser over a third of the page, closed."""
    b.open(f"{server}/health")
    b.wait_for(lambda t: "OK" in t, 30)
    b.evaluate(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"
    )
    b.open(server + path)


def _keep(path: Path) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, ARTIFACTS / path.name))


def test_the_proxy_runs_and_their_scores_are_there_to_compare(chromium, server, tmp_path, sample_records):
    cfg = search_config(tmp_path, lab_texts(sample_records), server)
    pipeline.run_stage(cfg, "search")

    # the store: the training kind, every proxy named for its iteration and mixture, the same keys
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    exp = client.get_experiment_by_name(track.experiment_name(cfg))
    assert exp.tags[tracking.KIND_TAG] == tracking.KIND_TRAINING
    proxies = client.search_runs([exp.experiment_id], "tags.`climb.kind` = 'proxy'")
    assert len(proxies) == 6  # iterations [4, 2], one seed
    for r in proxies:
        match = PROXY_NAME.match(r.info.run_name)
        assert match and match.group(1) == r.data.tags["climb.iteration"], r.info.run_name
        assert {"score", "component.val", "val.bpb"} <= set(r.data.metrics)
        assert {f"w.c0{k}" for k in range(4)} <= set(r.data.params)
        # the predictor's prediction from the first iteration that has a predictor
        assert ("predicted" in r.data.metrics) == (r.data.tags["climb.iteration"] == "1")
    score = {r.info.run_name: r.data.metrics["score"] for r in proxies}
    predicted = [r.data.metrics["predicted"] for r in proxies if "predicted" in r.data.metrics]
    ids = [r.info.run_id for r in proxies]

    b = Chromium(chromium, tmp_path / "profile")
    try:
        _leaderboard(b, cfg, server, score, predicted, tmp_path)
        _comparison(b, server, exp.experiment_id, ids, score, tmp_path)
    finally:
        b.close()


def _leaderboard(b: Chromium, cfg, server: str, score: dict[str, float], predicted: list[float], tmp_path) -> None:
    """The link `climb` prints lands on the runs table of the training view, not on the GenAI
    overview: every proxy run listed flat, best score first, its score, prediction and weights in
    columns."""
    url = track.leaderboard_url(cfg)
    assert url is not None and url.startswith(server)
    _open(b, server, url[len(server) :])
    try:
        text = b.wait_for(lambda t: all(name in t for name in score) and "w.c03" in t, 90)
    finally:
        b.screenshot(tmp_path / "mlflow-proxy-runs.png")
    _keep(tmp_path / "mlflow-proxy-runs.png")
    where = b.location()
    assert "/runs?" in where and "workflowType=machine_learning" in where and "/overview" not in where
    assert "No data available" not in text and "6 matching runs" in text
    listed = sorted(score, key=text.index)
    assert [score[n] for n in listed] == sorted(score.values(), reverse=True), listed
    header = text[: text.index(listed[0])]  # the columns; the UI orders its Metrics and Parameters groups either way
    assert all(f"\n{c}\n" in header for c in ("predicted", "score", "w.c00", "w.c01", "w.c02", "w.c03")), header
    cells = text[text.index(listed[-1]) :]
    assert all(repr(v) in cells for v in [*score.values(), *predicted])  # the values, in full


def _comparison(b, server: str, exp_id: str, ids: list[str], score: dict[str, float], tmp_path: Path) -> None:
    """MLflow's compare page for the proxy runs shows each one's name, weights and score."""
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([exp_id]), "workflowType": "machine_learning"}
    )
    b.open(f"{server}/#/compare-runs?{query}")
    try:
        text = b.wait_for(lambda t: "Comparing 6 Runs" in t and all(n in t for n in score) and "score" in t, 90)
    except BrowserError:
        b.screenshot(tmp_path / "mlflow-compare.png")
        raise
    # the parameters that differ: the weights (the proxy's settings are the same for every run)
    assert b.evaluate("document.querySelectorAll('[role=switch]').length") == 3  # parameters, metrics, tags
    b.evaluate("document.querySelectorAll('[role=switch]')[0].click()")
    text = b.wait_for(lambda t: "proxy.preset" not in t, 30)
    params = text[text.index("\nParameters\n") : text.index("\nMetrics\n")]
    assert all(f"w.c0{k}" in params for k in range(4)), params
    b.resize(1600, 2000)  # the whole page: plot, names, weights and scores
    time.sleep(2)
    _keep(b.screenshot(tmp_path / "mlflow-compare.png"))
    metrics = text[text.index("\nMetrics\n") :]
    for name, value in score.items():
        assert str(round(value, 3)) in metrics, (name, value)
