"""Gopher quality filter (Rae et al. 2021, "Scaling Language Models", MassiveText rules, App. A).

Keep 50-100,000 words, mean word length 3-10, hash-symbol and ellipsis to word ratio <= 0.1 each,
<= 90% of lines starting with a bullet, <= 30% of lines ending with an ellipsis, >= 80% of words
with an alphabetic character, >= 2 occurrences of the stop words the/be/to/of/and/that/have/with.

The stop-word rule counts occurrences, so the stored signal is the count (`stop_words`); the
share of words (`q_stop_words`) is stored too, for the quality scorers.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from mixture.config import FilterConfig
from mixture.curate.filters._base import Filter, Signal
from mixture.curate.filters._stats import stop_set
from mixture.registry import FILTERS


class GopherQualityConfig(FilterConfig):
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, gt=0)
    min_mean_word_length: float = Field(3.0, ge=0)
    max_mean_word_length: float = Field(10.0, gt=0)
    max_symbol_word_ratio: float = Field(0.1, ge=0)
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1)
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1)
    min_stop_words: int = Field(2, ge=0)
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]

    @model_validator(mode="after")
    def _ranges(self) -> GopherQualityConfig:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("min_mean_word_length must not exceed max_mean_word_length")
        return self


@FILTERS.register("gopher_quality")
class GopherQuality(Filter):
    config_model = GopherQualityConfig
    order = 10
    # (bad, threshold field, good): the bad/good ends spread documents that pass a rule, e.g.
    # mean word length 3-10 passes Gopher, 4-7 is prose. Stop words: the rule asks for 2
    # occurrences, about 2% of a short document; English prose has about 15%.
    quality_ramps = {
        "q_mean_word_length": (
            (1.5, attrgetter("min_mean_word_length"), 4.0),
            (15.0, attrgetter("max_mean_word_length"), 7.0),
        ),
        "q_symbol_word_ratio": ((0.3, attrgetter("max_symbol_word_ratio"), 0.0),),
        "q_bullet_lines_ratio": ((1.0, attrgetter("max_bullet_lines_ratio"), 0.1),),
        "q_ellipsis_lines_ratio": ((0.6, attrgetter("max_ellipsis_lines_ratio"), 0.0),),
        "q_alpha_words_ratio": ((0.4, attrgetter("min_alpha_words_ratio"), 0.95),),
        "q_stop_words": ((0.0, lambda cfg: cfg.min_stop_words / 100, 0.12),),  # share of 100 words
    }

    @staticmethod
    def signals(cfg: GopherQualityConfig) -> dict[str, Signal]:
        stops = stop_set(cfg.stop_words)
        return {
            "q_mean_word_length": lambda s: s.mean_word_length,
            "q_symbol_word_ratio": lambda s: s.symbol_word_ratio,
            "q_bullet_lines_ratio": lambda s: s.bullet_lines_ratio,
            "q_ellipsis_lines_ratio": lambda s: s.ellipsis_lines_ratio,
            "q_alpha_words_ratio": lambda s: s.alpha_words_ratio,
            "q_stop_words": lambda s: s.stop_word_count(stops) / np.maximum(s.n_words, 1),
            "stop_words": lambda s: s.stop_word_count(stops),
        }

    @staticmethod
    def signal_params(cfg: GopherQualityConfig) -> dict[str, Any]:
        return {"stop_words": sorted(stop_set(cfg.stop_words))}

    @staticmethod
    def decide(sig: dict[str, float], cfg: GopherQualityConfig) -> str | None:
        n_words, mean_len = sig["n_words"], sig["q_mean_word_length"]
        if n_words < cfg.min_words:
            return "min_words"
        if n_words > cfg.max_words:
            return "max_words"
        if mean_len < cfg.min_mean_word_length:
            return "min_mean_word_length"
        if mean_len > cfg.max_mean_word_length:
            return "max_mean_word_length"
        if sig["q_symbol_word_ratio"] > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"
        if sig["q_bullet_lines_ratio"] > cfg.max_bullet_lines_ratio:
            return "bullet_lines"
        if sig["q_ellipsis_lines_ratio"] > cfg.max_ellipsis_lines_ratio:
            return "ellipsis_lines"
        if sig["q_alpha_words_ratio"] < cfg.min_alpha_words_ratio:
            return "alpha_words"
        if sig["stop_words"] < cfg.min_stop_words:
            return "stop_words"
        return None


check = GopherQuality.check
