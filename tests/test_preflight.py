"""Errors users read: a bad input, endpoint or credential is one line on stderr, exit status 2,
no traceback, within 5 s of start (before any Spark start-up), and a secret planted in a URI
appears nowhere: not in the output, the logs, the output folder or MLflow."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLIMB = str(Path(sys.executable).parent / "climb")
SECRET = "s3cr3t-PLANTED-f00"


def _config(tmp_path: Path, uris: list[str], **extra) -> Path:
    conf = tmp_path / "run.yaml"
    conf.write_text(
        yaml.safe_dump(
            {"output_root": str(tmp_path / "out"), "input": {"uris": uris}, "tracking": {"experiment": "test"}, **extra}
        )
    )
    return conf


def _run(args: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO, env=env or dict(os.environ))
    return proc, time.time() - t0


def _one_line(proc: subprocess.CompletedProcess, secs: float, *needles: str) -> str:
    """The command failed the way a user should see it: exit 2, one line, fast."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert secs < 5, f"took {secs:.1f} s"
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_input_path(tmp_path):
    missing = str(tmp_path / "no-such.jsonl")
    line = _one_line(
        *_run([CLIMB, "curate", "--config", str(_config(tmp_path, [missing]))]), "input.uris", missing, "does not exist"
    )
    assert line.startswith("climb: ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("_manifest.json"))


def test_input_folder_without_files_and_glob_without_match(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "_SUCCESS").write_text("")  # markers are not inputs
    _one_line(
        *_run([CLIMB, "curate", "--config", str(_config(tmp_path, [str(empty)]))]),
        "input.uris",
        str(empty),
        "folder with no files",
    )
    glob = str(tmp_path / "*.jsonl")
    _one_line(*_run([CLIMB, "curate", "--config", str(_config(tmp_path, [glob]))]), "input.uris", "matches no files")


def test_malformed_yaml_is_one_line(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("output_root: out\ninput:\n  uris: [a.jsonl\ncurate: {partitions: 2}\n")
    _one_line(*_run([CLIMB, "curate", "--config", str(conf)]), "not valid YAML", "line ")


def test_missing_s3_key_and_bucket(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/corpus/missing.jsonl"
    _one_line(*_run([CLIMB, "curate", "--config", str(_config(tmp_path, [uri]))]), "input.uris", uri, "does not exist")
    uri = "s3://no-such-bucket-anywhere/x.jsonl"
    _one_line(
        *_run([CLIMB, "curate", "--config", str(_config(tmp_path, [uri]))]),
        "input.uris",
        "bucket no-such-bucket-anywhere does not exist",
    )


def test_unreachable_endpoint(tmp_path, s3_endpoint):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    conf = _config(tmp_path, ["s3://bucket/corpus/"])
    _one_line(*_run([CLIMB, "curate", "--config", str(conf)], env), "input.uris", "not reachable", f"127.0.0.1:{port}")
    # a publish against it fails as fast, through the job entry point too
    conf = _config(tmp_path, [str(tmp_path)], publish={"uri": "s3://bucket/mix"})
    job = str(REPO / "jobs" / "publish.py")
    proc, secs = _run([sys.executable, job, "--config", str(conf)], env)
    assert proc.returncode == 2 and "publish.uri" in proc.stderr and "not reachable" in proc.stderr, proc.stderr
    assert secs < 5 and "Traceback" not in proc.stderr


def test_absent_s3_credentials(tmp_path, s3_endpoint, s3_bucket):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    conf = _config(tmp_path, [f"s3://{s3_bucket}/corpus/"])
    _one_line(*_run([CLIMB, "curate", "--config", str(conf)], env), "input.uris", "credentials are not set")


def test_spark_job_checks_before_spark_starts(tmp_path):
    missing = str(tmp_path / "nope")
    proc, secs = _run([sys.executable, str(REPO / "jobs" / "curate.py"), "--config", str(_config(tmp_path, [missing]))])
    assert proc.returncode == 2 and secs < 5, (proc.stderr, secs)
    assert f"curate: input.uris: {missing} does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_a_secret_in_an_input_uri_appears_nowhere(tmp_path, verbose):
    uri = f"s3://USER:{SECRET}@bucket/x"
    conf = _config(tmp_path, [uri], tracking={"experiment": "test"})
    proc, secs = _run([CLIMB] + (["-v"] if verbose else []) + ["curate", "--config", str(conf)])
    assert proc.returncode == 2 and secs < 5, proc.stderr
    assert "input.uris" in proc.stderr and "must not contain credentials" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and "USER" not in proc.stderr
    if not verbose:
        assert "Traceback" not in proc.stderr
    # nothing written anywhere holds it (logs, MLflow's store, datasets): only the config itself
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != conf:
            assert SECRET.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ inputs that hold nothing
def _no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or not list(out.rglob("_manifest.json")), "a dataset was committed"


def test_an_empty_input_file_is_refused_before_any_stage_commits(tmp_path):
    empty = tmp_path / "in" / "empty.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    for command in ("curate", "run"):
        proc, secs = _run([CLIMB, command, "--config", str(_config(tmp_path, [str(empty)]))])
        _one_line(proc, secs, "input.uris", "no document", "every one empty")
        _no_manifest(tmp_path)


def test_an_input_whose_every_record_would_be_quarantined_is_refused(tmp_path, sample_records):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n\n{not json\n")
    (folder / "b.jsonl").write_text('{"id": "x", "text": "   "}\n')
    (folder / "c.jsonl").write_text("")
    line = _one_line(
        *_run([CLIMB, "curate", "--config", str(_config(tmp_path, [str(folder)]))]), "input.uris", "no document"
    )
    assert "3 files" in line and "blank_line 2" in line and "malformed_json 1" in line and "empty_text 1" in line
    # one real document among them is enough
    (folder / "d.jsonl").write_text(json.dumps(sample_records[0]) + "\n")
    assert check_documents_passes(tmp_path, [str(folder)])


def check_documents_passes(tmp_path: Path, uris: list[str]) -> bool:
    from mixture import preflight
    from mixture.config import load_config

    preflight.check(load_config(_config(tmp_path, uris)), ["input.uris"])
    return True


def _unreadable(path: Path) -> list[str]:
    """The command prefix under which `path` (mode 000) cannot be read: none for a user, and for
    root (CI, containers) the same root without the capabilities that bypass file permissions."""
    path.chmod(0)
    if os.geteuid() != 0:
        return []
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run(drop + ["cat", str(path)], capture_output=True)
    if shutil.which("setpriv") is None or probe.returncode == 0:
        pytest.skip("cannot make a file unreadable here (root without setpriv to drop CAP_DAC_OVERRIDE)")
    return drop


def test_a_file_the_run_cannot_read_in_a_folder_it_can_is_one_line(tmp_path, sample_records):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(sample_records[0]) + "\n")
    locked = folder / "b.jsonl"
    locked.write_text(json.dumps(sample_records[1]) + "\n")
    prefix = _unreadable(locked)
    conf = str(_config(tmp_path, [str(folder)]))
    line = _one_line(*_run(prefix + [CLIMB, "curate", "--config", conf]), "input.uris", str(locked), "permission")
    assert "read access" in line
    _no_manifest(tmp_path)
    # past the checks (an output folder it may not write), the runner's error path says the same
    # in one line, and -v gives the traceback
    locked.chmod(0o644)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    out.chmod(0o555)
    proc, secs = _run(prefix + [CLIMB, "curate", "--config", conf])
    _one_line(proc, secs, "permission denied", str(out), "give the user running climb access")
    proc, _ = _run(prefix + [CLIMB, "-v", "curate", "--config", conf])
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "PermissionError" in proc.stderr
    out.chmod(0o755)


# ------------------------------------------------------------------------------ endpoints
def test_credentials_in_the_endpoint_url_are_refused_without_printing_them(tmp_path):
    conf = _config(tmp_path, ["s3://bucket/corpus/"])
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env = {**os.environ, name: f"http://operator:{SECRET}@127.0.0.1:9"}
        for args in (["curate", "--config", str(conf)], ["-v", "curate", "--config", str(conf)]):
            proc, secs = _run([CLIMB] + args, env)
            assert proc.returncode == 2 and secs < 5, proc.stderr
            assert f"{name} must not contain credentials" in proc.stderr
            assert SECRET not in proc.stdout + proc.stderr and "operator" not in proc.stdout + proc.stderr


def test_a_dead_mlflow_server_is_one_line(tmp_path, tiny_corpus):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = _config(tmp_path, [str(tiny_corpus)], tracking={"experiment": "t", "uri": f"http://127.0.0.1:{port}"})
    _one_line(*_run([CLIMB, "curate", "--config", str(conf)]), "tracking.uri", "not reachable", f"127.0.0.1:{port}")


def test_the_heuristic_scorer_without_any_stored_signal_is_refused_before_the_run(tmp_path, sample_records):
    """Every filter off stores no q_* signal: `climb run` (which reaches the cluster stage and its
    default heuristic scorer) stops at once; curating alone, or with every signal kept, does not."""
    from mixture import preflight
    from mixture.config import load_config

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(sample_records[0]) + "\n")
    off = {n: {"enabled": False} for n in ("gopher_quality", "gopher_repetition", "c4", "fineweb")}
    conf = _config(tmp_path, [str(folder)], curate={"filters": off})
    _one_line(*_run([CLIMB, "run", "--config", str(conf)]), "cluster.quality.scorer", "curate.signals: all")
    _no_manifest(tmp_path)
    cluster_keys = ["input.uris", "cluster.mapping"]
    preflight.check(load_config(conf), ["input.uris"])  # curate and select alone
    for fix in ({"curate": {"filters": off, "signals": "all"}}, {"curate": {"filters": {**off, "c4": {}}}}):
        preflight.check(load_config(_config(tmp_path, [str(folder)], **fix)), cluster_keys)
