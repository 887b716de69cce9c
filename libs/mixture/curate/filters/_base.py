"""What a filter is: a config model, the signals it needs, and a decision over those signals.

A filter is one module in this package holding one class registered in `mixture.registry.FILTERS`:

    @FILTERS.register("my_filter")
    class MyFilter(Filter):
        config_model = MyFilterConfig           # a `FilterConfig`: enabled, exempt_if, thresholds
        order = 50                              # place in the chain (first failure names the reason)

        @staticmethod
        def signals(cfg) -> dict[str, Signal]:  # name -> function of the shared TextStats
            return {"q_my_ratio": lambda s: s.n_words / max(len(s.lines), 1)}

        @staticmethod
        def decide(signals, cfg) -> str | None: # the rule that failed, or None (keep)
            return "my_ratio" if signals["q_my_ratio"] > cfg.max_ratio else None

The split is DataTrove's filter interface (`filter(doc) -> bool | (False, reason)`) cut in two, as
Dolma's taggers and mixer are: `curate` computes the enabled filters' signals once (Spark; every
registered filter's with `curate.signals: all`) and stores them exactly (float64); `select` calls
`decide` on the stored values, so a threshold change never recomputes a signal, and
`decide(stored) == decide(live)` for every document.

Signal names are one namespace: two filters that declare the same name (FineWeb and Gopher
repetition both use `q_dup_line_char_frac`) mean the same statistic, computed once. Names that
start with `q_` are also written beside each curated document (float32) for the quality scorers.
`n_words` is always present. A config field that changes what a signal measures (a stop-word
list, a line length, a set of n-gram sizes) goes in `signal_params`, which is part of the
`curate` stage's hash; thresholds are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixture.config import FilterConfig
from mixture.curate.filters._stats import TextStats, stats

Signal = Callable[[TextStats], float]


class Filter:
    """Base of the registered filter classes (used as classes, never instantiated)."""

    config_model: type[FilterConfig] = FilterConfig
    order: int = 100
    # The heuristic quality scorer's ramps for this filter's signals: signal -> one (bad,
    # threshold, good) per side, where `threshold(cfg)` reads the config's limit (d = 0.5 there;
    # None: no ramp). `bad` and `good` are given for the default config and scale with the
    # configured limit (mixture.cluster.scorers.heuristic).
    quality_ramps: dict[str, tuple[tuple[float, Callable[[Any], float | None], float], ...]] = {}

    @staticmethod
    def signals(cfg: Any) -> dict[str, Signal]:
        raise NotImplementedError

    @staticmethod
    def signal_params(cfg: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    def decide(signals: dict[str, float], cfg: Any) -> str | None:
        raise NotImplementedError

    @classmethod
    def check(cls, doc: str | TextStats, cfg: Any) -> str | None:
        """The live decision on one text: its signals computed here, then `decide`."""
        s = stats(doc)
        values = {"n_words": float(s.n_words)}
        values.update((name, float(fn(s))) for name, fn in cls.signals(cfg).items())
        return cls.decide(values, cfg)
