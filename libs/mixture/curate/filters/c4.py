"""C4 filter (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2),
document level: reject "lorem ipsum", a curly brace, fewer than 3 sentences."""

from __future__ import annotations

from operator import attrgetter

from pydantic import Field

from mixture.config import FilterConfig
from mixture.curate.filters._base import Filter, Signal
from mixture.registry import FILTERS


class C4Config(FilterConfig):
    min_sentences: int = Field(3, ge=0)
    reject_lorem_ipsum: bool = True
    reject_curly_brace: bool = True


@FILTERS.register("c4")
class C4(Filter):
    config_model = C4Config
    order = 30
    quality_ramps = {"q_sentences": ((0.0, attrgetter("min_sentences"), 10.0),)}

    @staticmethod
    def signals(cfg: C4Config) -> dict[str, Signal]:
        return {
            # `* 1.0`, not float(): the same function serves one TextStats and a BatchStats.
            "has_lorem_ipsum": lambda s: s.has_lorem_ipsum * 1.0,
            "has_curly_brace": lambda s: s.has_curly_brace * 1.0,
            "q_sentences": lambda s: s.sentences * 1.0,
        }

    @staticmethod
    def decide(sig: dict[str, float], cfg: C4Config) -> str | None:
        if cfg.reject_lorem_ipsum and sig["has_lorem_ipsum"]:
            return "lorem_ipsum"
        if cfg.reject_curly_brace and sig["has_curly_brace"]:
            return "curly_brace"
        if sig["q_sentences"] < cfg.min_sentences:
            return "min_sentences"
        return None


check = C4.check
