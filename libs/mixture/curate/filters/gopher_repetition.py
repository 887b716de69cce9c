"""Gopher repetition filter (Rae et al. 2021, "Scaling Language Models", Table A1).

Limits: duplicate-line fraction 0.3, duplicate-paragraph fraction 0.3, characters in duplicate
lines 0.2 and paragraphs 0.2, character share of the most frequent 2/3/4-gram 0.20/0.18/0.16,
character share of duplicated 5..10-grams 0.15..0.10. The n-gram sizes are signal parameters
(adding a size re-annotates); the limits are thresholds (changing one only re-selects).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from pydantic import Field, field_validator

from mixture.config import FilterConfig
from mixture.curate.filters._base import Filter, Signal
from mixture.registry import FILTERS

TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherRepetitionConfig(FilterConfig):
    dup_line_frac: float = Field(0.3, ge=0, le=1)
    dup_para_frac: float = Field(0.3, ge=0, le=1)
    dup_line_char_frac: float = Field(0.2, ge=0, le=1)
    dup_para_char_frac: float = Field(0.2, ge=0, le=1)
    top_ngram_char_frac: dict[int, float] = dict(TOP_NGRAMS)
    dup_ngram_char_frac: dict[int, float] = dict(DUP_NGRAMS)

    @field_validator("top_ngram_char_frac", "dup_ngram_char_frac")
    @classmethod
    def _ngram_fracs(cls, v: dict[int, float]) -> dict[int, float]:
        for n, frac in v.items():
            if n < 1 or not 0 <= frac <= 1:
                raise ValueError(f"n-gram sizes must be >= 1 and fractions in [0, 1], got {n}: {frac}")
        return dict(sorted(v.items()))


def _top(n: int) -> Signal:
    return lambda s: s.top_ngram_char_frac(n)


def _dup(n: int) -> Signal:
    return lambda s: s.dup_ngram_char_frac(n)


def _ngram_ramps(kind: str, defaults: dict[int, float], good: float) -> dict[str, tuple]:
    """Ramps of the n-gram shares: bad at twice the default limit, good at `good`."""

    def limit(n: int):
        return lambda cfg: getattr(cfg, f"{kind}_ngram_char_frac").get(n)

    return {f"q_{kind}_{n}gram_char_frac": ((2 * t, limit(n), good),) for n, t in defaults.items()}


@FILTERS.register("gopher_repetition")
class GopherRepetition(Filter):
    config_model = GopherRepetitionConfig
    order = 20
    quality_ramps = {
        "q_dup_line_frac": ((0.6, attrgetter("dup_line_frac"), 0.0),),
        "q_dup_para_frac": ((0.6, attrgetter("dup_para_frac"), 0.0),),
        "q_dup_line_char_frac": ((0.4, attrgetter("dup_line_char_frac"), 0.0),),
        "q_dup_para_char_frac": ((0.4, attrgetter("dup_para_char_frac"), 0.0),),
        **_ngram_ramps("top", TOP_NGRAMS, 0.05),
        **_ngram_ramps("dup", DUP_NGRAMS, 0.0),
    }

    @staticmethod
    def signals(cfg: GopherRepetitionConfig) -> dict[str, Signal]:
        out: dict[str, Signal] = {
            "q_dup_line_frac": lambda s: s.dup_line_frac,
            "q_dup_para_frac": lambda s: s.dup_para_frac,
            "q_dup_line_char_frac": lambda s: s.dup_line_char_frac,
            "q_dup_para_char_frac": lambda s: s.dup_para_char_frac,
        }
        out.update((f"q_top_{n}gram_char_frac", _top(n)) for n in sorted(cfg.top_ngram_char_frac))
        out.update((f"q_dup_{n}gram_char_frac", _dup(n)) for n in sorted(cfg.dup_ngram_char_frac))
        return out

    @staticmethod
    def signal_params(cfg: GopherRepetitionConfig) -> dict[str, Any]:
        return {"top_ngrams": sorted(cfg.top_ngram_char_frac), "dup_ngrams": sorted(cfg.dup_ngram_char_frac)}

    @staticmethod
    def decide(sig: dict[str, float], cfg: GopherRepetitionConfig) -> str | None:
        if sig["q_dup_line_frac"] > cfg.dup_line_frac:
            return "dup_line_frac"
        if sig["q_dup_para_frac"] > cfg.dup_para_frac:
            return "dup_para_frac"
        if sig["q_dup_line_char_frac"] > cfg.dup_line_char_frac:
            return "dup_line_char_frac"
        if sig["q_dup_para_char_frac"] > cfg.dup_para_char_frac:
            return "dup_para_char_frac"
        for n, limit in sorted(cfg.top_ngram_char_frac.items()):
            if sig[f"q_top_{n}gram_char_frac"] > limit:
                return f"top_{n}gram_char_frac"
        for n, limit in sorted(cfg.dup_ngram_char_frac.items()):
            if sig[f"q_dup_{n}gram_char_frac"] > limit:
                return f"dup_{n}gram_char_frac"
        return None


check = GopherRepetition.check
