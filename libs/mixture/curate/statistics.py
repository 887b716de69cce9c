"""The curated dataset's statistics (the manifest's extra) and the summary `climb select` prints:
every enabled filter's settings (read by the heuristic quality scorer), per-rule counts, dedup
statistics, quantiles of the kept documents' signals. Pure functions of what `select` decided.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mixture.config import Config
from mixture.curate import accounting
from mixture.curate.filters import enabled_settings
from mixture.dataset import Dataset


def extra(
    annotated: Dataset,
    cfg: Config,
    dec: Any,  # select.Decisions: the filters' per-rule tallies
    select_outcomes: list,
    near_groups: int,
    sample: dict[str, list[np.ndarray]],
    seconds: float,
) -> dict[str, Any]:
    """The manifest's extra: every enabled filter's settings (`filters`, read by the heuristic
    quality scorer), per-rule statistics, dedup statistics, kept-signal quantiles."""
    cur = cfg.curate
    per_filter: Counter[str] = Counter()
    for rule, n in dec.alone.items():
        per_filter[rule.split(":", 1)[0]] += n
    near = sum(n for _, o, n in select_outcomes if o == accounting.NEAR)
    fz = annotated.manifest.extra.get("fuzzy_dedup", {})
    return {
        "filters": enabled_settings(cur.filters),
        "filter_stats": {
            "first_failure_rules": accounting.rule_counts(select_outcomes),
            "rejects_alone": dict(sorted(per_filter.items())),
            "rejects_alone_rules": dict(sorted(dec.alone.items())),
            "exempted": dict(sorted(dec.exempted.items())),
        },
        "fuzzy_dedup": (
            {
                "lsh": fz.get("lsh", {}),
                "annotation": {k: v for k, v in fz.items() if k != "lsh"},
                "near_duplicates": near,
                "groups": near_groups,
            }
            if cur.fuzzy_dedup.enabled
            else {"enabled": False}
        ),
        "exact_dedup": cur.exact_dedup,
        "signals_kept": _quantiles(sample),
        "input_files": annotated.manifest.extra.get("input_files"),
        "sources": annotated.manifest.extra.get("sources"),  # input.uris as configured
        "splits": annotated.manifest.extra.get("splits"),
        "seconds": {"select": round(seconds, 2)},
    }


def _quantiles(sample: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, chunks in sample.items():
        values = np.concatenate(chunks) if chunks else np.empty(0)
        values = values[np.isfinite(values)]
        if len(values):
            p10, p50, p90 = np.quantile(values.astype(np.float64), [0.1, 0.5, 0.9])
            out[name] = {"p10": float(p10), "p50": float(p50), "p90": float(p90)}
    return out


def summary(counts: dict[str, Any], extra: dict[str, Any], cfg: Config, seconds: float) -> list[tuple[str, Any]]:
    fz = extra["fuzzy_dedup"]
    lsh = fz.get("lsh", {})
    return [
        ("documents", f"{counts['documents_in']:,} read, {counts['documents_out']:,} kept in {seconds:.1f} s"),
        ("quarantined", counts["quarantined"] or 0),
        ("filtered", counts["filtered"] or 0),
        ("exact duplicates", counts["exact_duplicates"] if cfg.curate.exact_dedup else "off"),
        (
            "near duplicates",
            f"{counts['near_duplicates']} (MinHash {lsh.get('num_perm')} perms, "
            f"{lsh.get('bands')} bands x {lsh.get('rows')} rows, "
            f"Jaccard >= {cfg.curate.fuzzy_dedup.threshold})"
            if cfg.curate.fuzzy_dedup.enabled
            else "off",
        ),
    ]
