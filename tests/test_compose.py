"""The deployment: docker-compose.yml gives the DAGs everything they read (Airflow Variables and
connections, the `gpu` pool, workers for every queue), keeps credentials in the uncommitted
`.env`, validates with `docker-compose config -q`, and its service files work (the bucket
initialiser against a real S3 endpoint, the shell scripts parse, the images copy what exists).
No Docker engine is needed."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DAG_SOURCES = sorted((REPO / "dags").glob("*.py"))
IMAGE_ROOT = "/opt/climb"  # where the images put the repository (infra/Dockerfile.*)
SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|JWT|ACCESS_KEY|ROOT_USER")
SUBST = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def _airflow_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if _command(s)[:1] == ["airflow"]}


def _defaults(value: str) -> str:
    """A compose value with every ${VAR:-default} replaced by its default."""
    return SUBST.sub(lambda m: m.group(3) if m.group(2) == "-" else "", value)


# ------------------------------------------------------------------ what the DAGs read
def _module_constants(trees: dict[Path, ast.Module]) -> dict[str, object]:
    consts = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    consts[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                try:
                    consts[node.target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return consts


def _dag_reads() -> dict[str, set[str]]:
    """Variables, connections, pools and queues the DAG sources name, found in their syntax trees.
    A read whose name is not a literal fails the scan (except inside the `variable` helper), so
    nothing the DAGs read can hide from this test."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in DAG_SOURCES}
    consts = _module_constants(trees)
    reads: dict[str, set[str]] = {"variables": set(), "connections": set(), "pools": set(), "queues": set()}

    def literal(node) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and isinstance(consts.get(node.id), str):
            return consts[node.id]
        return None

    for path, tree in trees.items():
        helpers = {n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "variable"}
        inside_helper = {id(c) for h in helpers for c in ast.walk(h)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            kind = (
                "variables"
                if name == "variable" or (owner == "Variable" and name == "get")
                else "connections"
                if name == "get_connection" or (owner == "Connection" and name == "get")
                else None
            )
            if kind:
                arg = (
                    node.args[0]
                    if node.args
                    else next((k.value for k in node.keywords if k.arg in ("key", "conn_id")), None)
                )
                value = literal(arg)
                if value is None:
                    assert id(node) in inside_helper, (
                        f"{path.name}:{node.lineno}: a {kind[:-1]} read by a non-literal name"
                    )
                else:
                    reads[kind].add(value)
            for kw in node.keywords:
                if kw.arg in ("pool", "queue") and (value := literal(kw.value)):
                    reads[kw.arg + "s"].add(value)
                if kw.arg in ("conn_id", "aws_conn_id") and (value := literal(kw.value)):
                    reads["connections"].add(value)  # an operator's or a hook's connection
        text = path.read_text()  # Jinja templates: {{ var.value.x }}, {{ conn.x }}
        reads["variables"] |= set(re.findall(r"var\.(?:value|json)\.(\w+)", text))
        reads["connections"] |= set(re.findall(r"\{\{\s*conn\.(\w+)", text))
    reads["declared_variables"] = set(consts.get("VARIABLES", {}))
    return reads


def test_every_variable_and_connection_the_dags_read_is_set_for_every_airflow_service():
    reads = _dag_reads()
    assert {"climb_config", "climb_mlflow_tracking_uri", "climb_refresh_schedule"} <= reads["variables"]
    assert {"spark_default", "aws_default"} <= reads["connections"]
    # Every Variable read is declared with its default in dags/_common.py.
    assert reads["variables"] <= reads["declared_variables"]
    services = _airflow_services(_compose())
    assert {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
    } <= set(services)
    for name, service in services.items():
        env = _env(service)
        for var in reads["declared_variables"]:
            assert f"AIRFLOW_VAR_{var.upper()}" in env, f"{name} does not set Variable {var}"
        for conn in reads["connections"]:
            assert f"AIRFLOW_CONN_{conn.upper()}" in env, f"{name} does not set connection {conn}"


def test_compose_creates_every_pool_and_runs_a_worker_for_every_queue():
    reads = _dag_reads()
    assert reads["pools"] == {"gpu"} and reads["queues"] == {"gpu"}
    init = (REPO / "infra" / "airflow" / "init.sh").read_text()
    for pool in reads["pools"]:
        assert re.search(rf"^airflow pools set {pool} ", init, re.M), f"pool {pool} is never created"
    compose = _compose()
    assert _command(compose["services"]["airflow-init"]) == ["bash", "infra/airflow/init.sh"]
    default_queues, with_gpu_profile = set(), set()
    for service in _airflow_services(compose).values():
        cmd = _command(service)
        if cmd[1:3] == ["celery", "worker"]:
            queues = set(_defaults(cmd[cmd.index("--queues") + 1]).split(","))
            with_gpu_profile |= queues
            if "gpu" not in service.get("profiles", []):
                default_queues |= queues
    # Tasks without a queue go to "default"; the stack without the gpu profile still serves all.
    assert reads["queues"] | {"default"} <= default_queues
    assert reads["queues"] | {"default"} <= with_gpu_profile


def test_credentials_come_from_the_uncommitted_env_file():
    compose = _compose()
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    required = set()
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            refs = SUBST.findall(value)
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):  # a path is no secret
                # a ${VAR:?message} reference: no default a deployment could silently keep
                assert refs and all(op == "?" for _, op, _ in refs), f"{name}: {key} must be ${{VAR:?...}}"
            if "://" in value and "@" in value:  # a URL with credentials in it
                assert all(op == "?" for _, op, _ in refs) and refs, f"{name}: {key} embeds a credential"
            required |= {var for var, op, _ in refs if op == "?"}
    assert required and required <= set(example), f"missing from .env.example: {required - set(example)}"
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in gitignore or "/.env" in gitignore


def _compose_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no variable of the developer's shell leaks into the substitution."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_validates(profile, tmp_path):
    cmd = [
        "docker-compose",
        "--project-directory",
        str(REPO),
        "-f",
        str(COMPOSE),
        "--env-file",
        str(ENV_EXAMPLE),
        *profile,
        "config",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_compose_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    cmd = [
        "docker-compose",
        "--project-directory",
        str(REPO),
        "-f",
        str(COMPOSE),
        "--env-file",
        str(empty),
        "config",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_compose_env(tmp_path), timeout=120)
    assert proc.returncode != 0 and "in .env" in proc.stderr


# ------------------------------------------------------------------------- service files
def test_deployment_run_config_is_valid_and_lands_on_shared_volumes():
    from mixture.config import load_config

    compose = _compose()
    worker = _env(compose["services"]["airflow-worker"])
    path = _defaults(worker["AIRFLOW_VAR_CLIMB_CONFIG"])
    assert path.startswith(IMAGE_ROOT + "/")
    local = REPO / path[len(IMAGE_ROOT) + 1 :]
    cwd = os.getcwd()
    os.chdir(REPO)  # relative paths resolve against the project root, as in the DAGs
    try:
        cfg = load_config(local)
    finally:
        os.chdir(cwd)
    for uri in cfg.input.uris + cfg.search.target.val_uris:
        assert Path(uri).exists(), f"{uri} is not in the repository (the image copies it)"
    # Outputs are written by Airflow workers and Spark executors: the same volume on both.
    mounts = {
        name: {v.split(":")[1] for v in compose["services"][name].get("volumes", [])}
        for name in ("airflow-worker", "spark-worker")
    }
    for name, targets in mounts.items():
        assert any(cfg.output_root.startswith(t + "/") for t in targets), f"{name} cannot see {cfg.output_root}"
    spark = json.loads(_defaults(worker["AIRFLOW_CONN_SPARK_DEFAULT"]))
    assert spark["conn_type"] == "spark" and spark["host"] == "spark://spark-master:7077"
    assert "spark-master" in compose["services"]
    assert cfg.publish.uri and cfg.publish.uri.split("/")[2] in _command(compose["services"]["minio-init"])


def test_create_buckets_against_a_real_s3_endpoint(s3_endpoint):
    import boto3

    script = REPO / "infra" / "minio" / "create_buckets.py"
    first = subprocess.run(
        [sys.executable, str(script), "climb-x", "mlflow-x"], capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert "created: climb-x, mlflow-x" in first.stdout
    again = subprocess.run(
        [sys.executable, str(script), "climb-x", "mlflow-x"], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "created: none" in again.stdout
    names = {b["Name"] for b in boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]}
    assert {"climb-x", "mlflow-x"} <= names
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in first.stdout + first.stderr


def test_service_scripts_parse():
    scripts = sorted((REPO / "infra").rglob("*.sh"))
    assert len(scripts) >= 3
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


@pytest.mark.parametrize(
    "dockerfile,requirements", [("Dockerfile.cpu", "requirements.txt"), ("Dockerfile.cuda", "requirements-gpu.txt")]
)
def test_images_copy_paths_that_exist_and_install_their_requirements(dockerfile, requirements):
    text = (REPO / "infra" / dockerfile).read_text()
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), f"{dockerfile} copies {src}, which does not exist"
    assert re.search(rf"pip install .*-r {re.escape(requirements)}", text)
    assert "-r infra/requirements-deploy.txt" in text
    # the file it installs resolves to the shared pins (no second, drifting copy of them)
    assert "-r requirements-common.txt" in (REPO / requirements).read_text()
