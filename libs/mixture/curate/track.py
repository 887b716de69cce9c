"""MLflow records of the two curation stages: one run each (`curate`, `select`) with the config
as params and the counts and statistics of the manifest as metrics, plus the manifest's counts
and extra as a JSON artifact."""

from __future__ import annotations

import logging
from typing import Any

from mixture import tracking
from mixture.config import Config

log = logging.getLogger(__name__)


def metrics(counts: dict[str, Any], extra: dict[str, Any]) -> dict[str, float]:
    """Every number of the counts (but per file) and of the statistics, as flat metric names."""
    out = {k: v for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in ("quarantined", "filtered"):
        out.update({f"{key}.{k}": v for k, v in (counts.get(key) or {}).items()})
    stats = extra.get("filter_stats", {})
    for name, rules in stats.get("first_failure_rules", {}).items():
        out.update({f"rule.{name}.{rule}": n for rule, n in rules.items()})
    out.update({f"rejects_alone.{k}": v for k, v in stats.get("rejects_alone", {}).items()})
    out.update({f"exempted.{k}": v for k, v in stats.get("exempted", {}).items()})
    for name, q in extra.get("signals_kept", {}).items():
        out.update({f"signal.{name}.{k}": v for k, v in q.items()})
    fz = extra.get("fuzzy_dedup", {})
    fz = {**fz.get("annotation", {}), **fz}
    out.update({f"fuzzy.{k}": v for k, v in fz.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out.update({f"seconds.{k}": v for k, v in extra.get("seconds", {}).items()})
    return {k.replace(":", "."): float(v) for k, v in out.items()}


def log_run(cfg: Config, name: str, counts: dict[str, Any], extra: dict[str, Any]) -> str | None:
    """Record one curation stage as an MLflow run; its id, or None when no store is reachable or
    the store fails (`tracking.recorded`: a warning, never the stage's end)."""
    import mlflow

    try:
        tracking.tracking_uri(cfg)
    except ValueError as err:
        log.warning("%s: not logging to MLflow (%s)", name, err)
        return None
    with tracking.recorded(cfg, name), tracking.run(cfg, name, tags={"stage": name}) as run:
        params = tracking.flat_params("curate", cfg.curate.model_dump(mode="json"))
        params.update(tracking.flat_params("input", cfg.input.model_dump(mode="json", exclude={"uris"})))
        params["input.files"] = extra.get("input_files")
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(metrics(counts, extra))
        mlflow.log_dict({"counts": counts, "extra": extra}, f"{name}_counts.json")
        return run.info.run_id
    return None  # the store failed: a warning, and the stage goes on
