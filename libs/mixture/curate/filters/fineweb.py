"""FineWeb filter (Penedo et al. 2024, "The FineWeb Datasets"): lines ending in punctuation
>= 0.12, lines of <= 30 characters <= 0.67, characters in duplicated lines <= 0.01, newlines per
word <= 0.3. The short-line length is a signal parameter (changing it re-annotates)."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from pydantic import Field

from mixture.config import FilterConfig
from mixture.curate.filters._base import Filter, Signal
from mixture.registry import FILTERS


class FineWebConfig(FilterConfig):
    min_punct_line_ratio: float = Field(0.12, ge=0, le=1)
    short_line_chars: int = Field(30, ge=0)
    max_short_line_ratio: float = Field(0.67, ge=0, le=1)
    max_dup_line_char_frac: float = Field(0.01, ge=0, le=1)
    max_newlines_per_word: float = Field(0.3, ge=0)


@FILTERS.register("fineweb")
class FineWeb(Filter):
    config_model = FineWebConfig
    order = 40
    quality_ramps = {
        "q_punct_line_ratio": ((0.0, attrgetter("min_punct_line_ratio"), 0.5),),
        "q_short_line_ratio": ((1.0, attrgetter("max_short_line_ratio"), 0.2),),
        "q_newlines_per_word": ((0.6, attrgetter("max_newlines_per_word"), 0.05),),
    }

    @staticmethod
    def signals(cfg: FineWebConfig) -> dict[str, Signal]:
        chars = cfg.short_line_chars
        return {
            "q_punct_line_ratio": lambda s: s.punct_line_ratio,
            "q_short_line_ratio": lambda s: s.short_line_ratio(chars),
            "q_dup_line_char_frac": lambda s: s.dup_line_char_frac,
            "q_newlines_per_word": lambda s: s.newlines_per_word,
        }

    @staticmethod
    def signal_params(cfg: FineWebConfig) -> dict[str, Any]:
        return {"short_line_chars": cfg.short_line_chars}

    @staticmethod
    def decide(sig: dict[str, float], cfg: FineWebConfig) -> str | None:
        if sig["q_punct_line_ratio"] < cfg.min_punct_line_ratio:
            return "punct_lines"
        if sig["q_short_line_ratio"] > cfg.max_short_line_ratio:
            return "short_lines"
        if sig["q_dup_line_char_frac"] > cfg.max_dup_line_char_frac:
            return "dup_line_chars"
        if sig["q_newlines_per_word"] > cfg.max_newlines_per_word:
            return "newlines_per_word"
        return None


check = FineWeb.check
