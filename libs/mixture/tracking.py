"""MLflow tracking: where runs go and the few helpers every stage uses.

Default store: SQLite `mlflow.db` with artifacts in `mlartifacts/` under the output root (a local
root), so `mlflow ui --backend-store-uri sqlite:///<root>/mlflow.db` shows everything with no
server. Any tracking URI works (`tracking.uri`, or MLFLOW_TRACKING_URI when the config leaves it
unset). Params never carry secrets: only config values, and the config holds no credentials.

Tracking is the run's record, not its data: a store that cannot be written (a full disk, a
read-only folder, a database that cannot be opened, a server that stops answering) never fails a
stage nor loses its output. `recorded` (a block) and `Tracked` (an object whose methods log) turn
such a failure into one WARNING line naming the store and what to do, and the stage goes on and
commits as usual (its manifest holds its counts); the next run of a stage that is up to date logs
nothing, so a lost record stays lost: rerun the stage with `--force` once the store is fixed to
record it. (The pre-run checks, `mixture.preflight`, refuse an MLflow server that does not answer
at all.) Removing retracted snippets from MLflow (`mixture.curate.retract`) is not a record but a
duty, and fails the retraction instead.

Every experiment the project uses is tagged `mlflow.experimentKind: custom_model_development`
(MLflow's kind for model training, "Machine learning" in its UI), one created before without the
tag included (a kind a person chose is kept). MLflow 3.17's UI itself opens every experiment in the
view its "GenAI | Model training" switch last showed in that browser (GenAI at first), whatever the
tag says; `experiment_url` links name the training view, so they open on the runs table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mixture import faults, storage
from mixture.config import Config

log = logging.getLogger(__name__)
# Where a failure of the store comes from (an error raised by one of them, or from one of them).
STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "requests", "urllib3", "botocore", "boto3")
# MLflow's experiment-kind tag and its value for model training (the UI's "Machine learning").
KIND_TAG, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"


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
        return mlflow.create_experiment(name, artifact_location=artifact_location(cfg), tags={KIND_TAG: KIND_TRAINING})
    if not exp.tags.get(KIND_TAG):
        mlflow.MlflowClient(tracking_uri(cfg)).set_experiment_tag(exp.experiment_id, KIND_TAG, KIND_TRAINING)
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


def ui_address(cfg: Config) -> str:
    """Where a person opens the UI: the tracking server (no user-info), or `ui_command`'s."""
    uri = tracking_uri(cfg)
    return faults.redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def experiment_url(ui: str, experiment_id: str, **query: str) -> str:
    """An experiment's runs table in MLflow's UI at `ui`, in the model-training view. MLflow 3.17's
    UI chooses between its GenAI and model-training views per browser (its "GenAI | Model training"
    switch, GenAI until a person flips it), whatever the experiment's kind tag says; a link that
    names the view (`workflowType`) opens the runs in any browser."""
    from urllib.parse import urlencode

    return f"{ui}/#/experiments/{experiment_id}/runs?{urlencode({'workflowType': 'machine_learning', **query})}"


def store_failure(err: BaseException) -> bool:
    """Whether `err` is the store failing (MLflow, its database or its server, its artifacts'
    disk), not a bug of the code that logs."""
    for e in faults.chain(err):
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in STORE_MODULES:
            return True
    return False


_warned: set[tuple[str, str]] = set()  # (what, store): said once a process, not once a call


def warn(cfg: Config, what: str, err: BaseException) -> None:
    """The one line a failed store gets: which store, why, and that the data is safe."""
    try:
        store = faults.redact(tracking_uri(cfg))
    except ValueError:
        store = "the MLflow store"
    if (what, store) in _warned:
        return
    _warned.add((what, store))
    fault = faults.describe(err)
    why = fault.line if fault else f"{type(err).__name__}: {faults.redact(str(err)).splitlines()[0][:300]}"
    log.warning(
        "%s: not recorded in MLflow (%s): %s; the stage's data is committed as usual (fix the store, then "
        "run the stage again with --force to record it)",
        what,
        store,
        why,
    )


@contextmanager
def recorded(cfg: Config, what: str) -> Iterator[None]:
    """A block that logs to MLflow: a failure of the store ends the block with a warning, never the
    stage; any other error is raised."""
    try:
        yield
    except Exception as err:
        if not store_failure(err):
            raise
        warn(cfg, what, err)


class Tracked:
    """An object whose methods log to MLflow (`make()` builds it when first used): after the
    store fails once, a warning and no more calls; each call then returns None."""

    def __init__(self, cfg: Config, what: str, make: Callable[[], Any]):
        self._cfg, self._what, self._make = cfg, what, make
        self._obj: Any = None
        self._failed = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._failed:
                return None
            try:
                if self._obj is None:
                    self._obj = self._make()
                return getattr(self._obj, name)(*args, **kwargs)
            except Exception as err:
                if not store_failure(err):
                    raise
                self._failed = True
                warn(self._cfg, self._what, err)
                return None

        return call
