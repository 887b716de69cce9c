"""Heuristic quality filters, one module each, registered in `mixture.registry.FILTERS`.

Modules, one per built-in filter (thresholds from the papers; each module's docstring has the
numbers): `gopher_quality` (Rae et al. 2021, App. A), `gopher_repetition` (Rae et al. 2021,
Table A1), `c4` (Raffel et al. 2020, section 2.2), `fineweb` (Penedo et al. 2024); and `_base.py`
(what a filter is), `_stats.py` (the text statistics the filters share, computed once),
`_batch.py` (the same statistics for a batch of documents at once, in numpy: what the curate stage runs)
and `_codepoints.py` (its character classes and array helpers).

Each filter is switchable and has an `exempt_if` regex (documents whose text matches skip that
filter; nothing about any domain is built in). Adding a filter is one new module here (`_base.py`
says what it holds); nothing else changes: the config accepts its name, the curate stage computes
its signals, the select stage applies its decision.

Filters run in `order` (then by name); a rejected document's reason is the first failing
filter's first failing rule, `filter:<name>:<rule>`. The signals of the enabled filters are
computed for every document ("compute a score once, decide cheaply many times"), so moving a
threshold or an exemption only re-runs the selection; switching a filter on or off changes which
signals the annotation holds (with every filter off it holds none: MinHash dedup only) and
annotates again, unless `curate.signals: all` stores every registered filter's (`every` below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mixture.curate.filters._base import Filter, Signal
from mixture.curate.filters._batch import BatchStats, batch_signals
from mixture.curate.filters._stats import TextStats, stats
from mixture.registry import FILTERS

if TYPE_CHECKING:
    from mixture.config import FilterConfig, FiltersConfig

__all__ = [
    "BatchStats",
    "Filter",
    "FilterChain",
    "Signal",
    "TextStats",
    "Verdict",
    "batch_signals",
    "compute_signals",
    "filter_config",
    "missing_signals",
    "registered",
    "signal_filters",
    "signal_functions",
    "signal_names",
    "signal_params",
    "stats",
    "stored_signal_names",
]


def registered() -> list[tuple[str, type[Filter]]]:
    """Every registered filter in chain order."""
    items = [(name, FILTERS.get(name)) for name in FILTERS.names()]
    return sorted(items, key=lambda item: (item[1].order, item[0]))


def filter_config(cfg: FiltersConfig, name: str) -> FilterConfig:
    """The configured settings of filter `name`; its defaults when the config predates it."""
    value = (cfg.model_extra or {}).get(name)
    return value if value is not None else FILTERS.get(name).config_model()


def enabled_settings(cfg: FiltersConfig) -> dict[str, dict[str, Any]]:
    """Every enabled filter's settings as JSON (what the curated manifest records as `filters`)."""
    settings = {name: filter_config(cfg, name) for name, _ in registered()}
    return {name: c.model_dump(mode="json") for name, c in settings.items() if c.enabled}


def signal_filters(cfg: FiltersConfig, every: bool = False) -> list[tuple[str, type[Filter]]]:
    """The filters whose signals the annotation computes, in chain order: the enabled ones (with
    `every`, `curate.signals: all`: every registered one)."""
    return [(name, flt) for name, flt in registered() if every or filter_config(cfg, name).enabled]


def signal_functions(cfg: FiltersConfig, every: bool = False) -> dict[str, Signal]:
    """The signals of `signal_filters`, in chain order (a shared name is computed once)."""
    out: dict[str, Signal] = {}
    for name, flt in signal_filters(cfg, every):
        for sig, fn in flt.signals(filter_config(cfg, name)).items():
            out.setdefault(sig, fn)
    return out


def stored_signal_names(cfg: FiltersConfig, every: bool = False) -> list[str]:
    """The signal columns of the `annotated` dataset (float64, exact), besides `n_words`."""
    return list(signal_functions(cfg, every))


def signal_names(cfg: FiltersConfig, every: bool = False) -> list[str]:
    """The `q_*` columns written beside each curated document, in output order."""
    return [n for n in signal_functions(cfg, every) if n.startswith("q_")]


def signal_params(cfg: FiltersConfig, every: bool = False) -> dict[str, Any]:
    """What the stored signals depend on (part of the `curate` stage's hash): per filter of
    `signal_filters`, its signal names and the config fields that change what they measure.
    Thresholds are absent; the filter's presence is not (it says which signals are held)."""
    out = {}
    for name, flt in signal_filters(cfg, every):
        sub = filter_config(cfg, name)
        out[name] = {"signals": list(flt.signals(sub)), **flt.signal_params(sub)}
    return out


def missing_signals(held: list[str], cfg: FiltersConfig) -> dict[str, list[str]]:
    """Per enabled filter, the signals its decisions read that `held` (an annotation's stored
    signal columns) lacks: why switching it on annotates again."""
    out = {}
    for name, flt in signal_filters(cfg):
        lacking = [s for s in flt.signals(filter_config(cfg, name)) if s not in held]
        if lacking:
            out[name] = lacking
    return out


def compute_signals(s: TextStats, functions: dict[str, Signal]) -> dict[str, float]:
    """`n_words` and every signal of one document, as Python floats (float64)."""
    out = {"n_words": float(s.n_words)}
    out.update((name, float(fn(s))) for name, fn in functions.items())
    return out


@dataclass
class Verdict:
    reason: str | None  # "filter:<name>:<rule>" of the first failure, or None
    failed: dict[str, str] = field(default_factory=dict)  # every enabled, non-exempt filter that fails
    exempt: list[str] = field(default_factory=list)  # filters skipped by exempt_if
    signals: dict[str, float] = field(default_factory=dict)  # the q_* signals
    n_words: int = 0
    stored: dict[str, float] = field(default_factory=dict)  # every signal the decisions read


class FilterChain:
    """The enabled filters of a config, with their `exempt_if` patterns compiled once.

    `decide(signals, text)` is the selection (stored signals, the text only for `exempt_if`);
    calling the chain on a text computes the signals live and then decides the same way."""

    def __init__(self, cfg: FiltersConfig):
        self.cfg = cfg
        self.filters = []
        for name, flt in registered():
            sub = filter_config(cfg, name)
            if sub.enabled:
                pattern = re.compile(sub.exempt_if) if sub.exempt_if else None
                self.filters.append((name, flt, sub, pattern))
        self.functions = signal_functions(cfg)
        self.signal_names = signal_names(cfg)

    def decide(self, signals: dict[str, float], text: str) -> Verdict:
        verdict = Verdict(reason=None, n_words=int(signals["n_words"]))
        for name, flt, sub, pattern in self.filters:
            if pattern is not None and pattern.search(text):
                verdict.exempt.append(name)
                continue
            rule = flt.decide(signals, sub)
            if rule is not None:
                verdict.failed[name] = rule
                if verdict.reason is None:
                    verdict.reason = f"filter:{name}:{rule}"
        return verdict

    def __call__(self, text: str) -> Verdict:
        values = compute_signals(TextStats(text), self.functions)
        verdict = self.decide(values, text)
        verdict.signals = {n: values[n] for n in self.signal_names}
        verdict.stored = values
        return verdict
