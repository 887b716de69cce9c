"""MLflow tracking: where runs go and the few helpers every stage uses.

Default store: SQLite `mlflow.db` with artifacts in `mlartifacts/` under the output root (a local
root), so `mlflow ui --backend-store-uri sqlite:///<root>/mlflow.db` shows everything with no
server. Any tracking URI works (`tracking.uri`, or MLFLOW_TRACKING_URI when the config leaves it
unset). Params never carry secrets: only config values, and the config holds no credentials.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mixture import storage
from mixture.config import Config


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = storage.local_path(cfg.output_root)
    if root is None:
        raise ValueError("output_root is remote: set tracking.uri to an MLflow server")
    os.makedirs(root, exist_ok=True)
    return f"sqlite:///{os.path.join(root, 'mlflow.db')}"


def artifact_location(cfg: Config) -> str | None:
    """Artifacts beside the default SQLite store; a tracking server keeps its own."""
    root = storage.local_path(cfg.output_root)
    if root is None or not tracking_uri(cfg).startswith("sqlite:///" + root):
        return None
    return os.path.join(root, "mlartifacts")


def setup(cfg: Config, experiment: str | None = None) -> str:
    """Point MLflow at the run's store and experiment; returns the experiment id."""
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restore it, or a second config in
    # the same process would log into the first one's store.
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    name = experiment or cfg.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return mlflow.create_experiment(name, artifact_location=artifact_location(cfg))
    mlflow.set_experiment(name)
    return exp.experiment_id


@contextmanager
def run(
    cfg: Config, name: str, experiment: str | None = None, nested: bool = False, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    import mlflow

    exp_id = setup(cfg, experiment)
    with mlflow.start_run(run_name=name, experiment_id=exp_id, nested=nested, tags=tags) as r:
        yield r


def flat_params(prefix: str, obj: Any) -> dict[str, Any]:
    """Flatten a nested config dict into MLflow params (`a.b.c`)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_params(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        out[prefix] = obj
    return out


def ui_command(cfg: Config) -> str:
    return f"mlflow ui --backend-store-uri '{tracking_uri(cfg)}' --port 5000"
