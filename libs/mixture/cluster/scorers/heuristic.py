"""Heuristic quality scorer: a 1-5 score from the curated `q_*` signals and the filter limits.

Each signal maps to a desirability d in [0, 1] along a piecewise-linear ramp through three
points: d = 0 at a clearly bad value, d = 0.5 at the filter's limit, d = 1 at a clearly good
value. A document's score is 1 + 4 * mean(d) over the signals present, so a document sitting
exactly on every filter threshold scores 3.0, CLIMB's pruning threshold (Diao et al. 2025): a
cluster is pruned when its average document is no better than borderline.

The ramps are declared by the filters themselves (`quality_ramps` of each module in
`mixture.curate.filters`: Gopher's limits, Rae et al. 2021, App. A; C4's, Raffel et al. 2020;
FineWeb's, Penedo et al. 2024), and their limits are the ones the corpus was curated with: the
`select` stage records every enabled filter's settings in the curated manifest's
`extra["filters"]`; a filter not recorded there takes its config model's defaults. The bad and
good ends are given for the default limit and scale with the configured one, so moving
`curate.filters.gopher_quality.min_words` or a FineWeb ratio moves the scorer's midpoint with it.
Columns without a ramp are ignored (and listed in the report); `cluster.quality.heuristic_signals`
adds or replaces ramps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixture.cluster.scorers._base import QualityError, ScoreBatch, Scorer, ScoreSetup, log, to_scale
from mixture.registry import FILTERS, QUALITY_SCORERS


@dataclass(frozen=True)
class Ramp:
    """d = 0 at `bad`, 0.5 at `threshold`, 1 at `good`, linear in between, clipped outside.
    Works in either direction (bad < good: higher is better; bad > good: lower is better)."""

    bad: float
    threshold: float
    good: float

    def __post_init__(self):
        if not (self.bad < self.threshold < self.good or self.bad > self.threshold > self.good):
            raise ValueError(
                f"threshold {self.threshold} must lie strictly between bad {self.bad} and good {self.good}"
            )

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        if self.bad > self.good:  # lower is better: mirror onto an increasing ramp
            return Ramp(-self.bad, -self.threshold, -self.good)(-x)
        return np.interp(x, [self.bad, self.threshold, self.good], [0.0, 0.5, 1.0])


def _ramp(bad: float, limit: float, good: float, default: float) -> Ramp:
    """The declared ramp moved to the configured limit: its ends scale with limit / default (a
    limit of 0, or one that cannot be scaled, keeps the declared ramp)."""
    bad, limit, good, default = float(bad), float(limit), float(good), float(default)
    if limit == default or default == 0 or limit <= 0:
        return Ramp(bad, default, good)
    k = limit / default
    return Ramp(bad * k, limit, good * k)


def filter_ramps(filters: dict[str, Any] | None = None) -> dict[str, tuple[Ramp, ...]]:
    """signal -> ramps from every registered filter's `quality_ramps`, with the limits of
    `filters` ({filter name: its config dict}, as in the curated manifest) or the defaults."""
    table: dict[str, tuple[Ramp, ...]] = {}
    for name in sorted(FILTERS.names(), key=lambda n: (FILTERS.get(n).order, n)):
        flt = FILTERS.get(name)
        default_cfg = flt.config_model()
        given = (filters or {}).get(name)
        cfg = flt.config_model.model_validate(given) if isinstance(given, dict) else default_cfg
        for signal, sides in flt.quality_ramps.items():
            ramps = []
            for bad, limit_of, good in sides:
                default, limit = limit_of(default_cfg), limit_of(cfg)
                if default is not None:
                    ramps.append(_ramp(bad, default if limit is None else limit, good, default))
            if ramps:
                table.setdefault(signal, tuple(ramps))
    return table


# The ramps at the registered filters' default limits.
HEURISTIC_SIGNALS: dict[str, tuple[Ramp, ...]] = filter_ramps()


def heuristic_table(
    overrides: dict[str, tuple[float, float, float]] | None = None, filters: dict[str, Any] | None = None
) -> dict[str, tuple[Ramp, ...]]:
    table = filter_ramps(filters)
    for name, (bad, threshold, good) in (overrides or {}).items():
        table[name] = (Ramp(bad, threshold, good),)
    return table


@dataclass
class HeuristicResult:
    scores: np.ndarray  # float32 [n], 1-5
    used: list[str]  # q_* columns that contributed
    ignored: list[str]  # q_* columns present but not in the table
    no_signal: int  # documents without any finite signal (scored 3.0, neutral)


def heuristic_scores(
    signals: dict[str, np.ndarray],
    overrides: dict[str, tuple[float, float, float]] | None = None,
    filters: dict[str, Any] | None = None,
) -> HeuristicResult:
    """Score documents from whichever q_* columns are present (name -> values, one per doc);
    `filters`: the limits the corpus was curated with ({filter: config dict})."""
    table = heuristic_table(overrides, filters)
    used = sorted(c for c in signals if c in table)
    ignored = sorted(c for c in signals if c.startswith("q_") and c not in table)
    if not used:
        raise QualityError(
            "the heuristic scorer needs q_* quality signals; the curated data has "
            f"{sorted(signals) or 'none'} and it knows {sorted(table)} (the curated data holds the enabled "
            "filters' signals: enable one, or set curate.signals: all)"
        )
    n = len(next(iter(signals.values())))
    total = np.zeros(n)
    present = np.zeros(n)
    for name in used:
        values = np.asarray(signals[name], dtype=np.float64)
        d = np.min([ramp(values) for ramp in table[name]], axis=0)
        ok = np.isfinite(values)
        total += np.where(ok, d, 0.0)
        present += ok
    # A document whose signals are all missing (NaN) gets the neutral 3.0 and is counted.
    mean = np.where(present > 0, total / np.maximum(present, 1), 0.5)
    return HeuristicResult(to_scale(mean), used, ignored, int((present == 0).sum()))


def curated_filters(curated: Any) -> dict[str, Any]:
    """{filter: config dict} the curated dataset was selected with (its manifest's
    `extra["filters"]`), keeping only registered filter names."""
    recorded = (curated.manifest.extra or {}).get("filters") or {}
    return {k: v for k, v in recorded.items() if k in FILTERS and isinstance(v, dict)}


class HeuristicBatches:
    """The heuristic scores batch by batch: each needs only its own q_* signals."""

    def __init__(self, signals: list[str], overrides, filters: dict[str, Any]):
        self.signals, self.overrides, self.filters = signals, overrides, filters
        self.used: set[str] = set()
        self.ignored: set[str] = set()
        self.no_signal = 0

    def score(self, batch: ScoreBatch) -> np.ndarray:
        meta, n = batch.meta, batch.meta.num_rows
        # a file without an optional column: its documents have no value there (NaN)
        signals = {
            c: meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
            if c in meta.column_names
            else np.full(n, np.nan)
            for c in self.signals
        }
        h = heuristic_scores(signals, self.overrides, self.filters)
        self.used.update(h.used)
        self.ignored.update(h.ignored)
        self.no_signal += h.no_signal
        return h.scores

    def note(self) -> Any:
        return {
            "signals_used": sorted(self.used),
            "signals_ignored": sorted(self.ignored),
            "documents_without_signals": self.no_signal,
        }


@QUALITY_SCORERS.register("heuristic")
class HeuristicScorer(Scorer):
    order = 10

    @staticmethod
    def open(setup: ScoreSetup) -> tuple[HeuristicBatches | None, Any]:
        signals = [c for c in setup.columns if c.startswith("q_")]
        if not signals and not setup.chosen:
            return None, None
        filters = curated_filters(setup.curated)
        try:  # the columns alone say whether any signal is known
            heuristic_scores({c: np.zeros(0) for c in signals}, setup.cfg.heuristic_signals, filters)
        except QualityError:
            if setup.chosen:
                raise
            log.warning("heuristic scorer skipped: no known q_* signals in the curated data")
            return None, None
        return HeuristicBatches(signals, setup.cfg.heuristic_signals, filters), None
