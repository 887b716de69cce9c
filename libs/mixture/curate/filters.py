"""Heuristic quality filters: pure functions `text -> None (keep) or the name of the failed rule`.

Four filter families, each switchable, each with thresholds from the config and an `exempt_if`
regex (documents whose text matches skip that filter; nothing about any domain is built in):

- Gopher quality (Rae et al. 2021, "Scaling Language Models", MassiveText rules, App. A): keep
  50-100,000 words, mean word length 3-10, hash-symbol and ellipsis to word ratio <= 0.1 each,
  <= 90% of lines starting with a bullet, <= 30% of lines ending with an ellipsis, >= 80% of words
  with an alphabetic character, >= 2 occurrences of the stop words the/be/to/of/and/that/have/with.
- Gopher repetition (same paper, Table A1): duplicate-line fraction 0.3, duplicate-paragraph
  fraction 0.3, characters in duplicate lines 0.2 and paragraphs 0.2, character share of the most
  frequent 2/3/4-gram 0.20/0.18/0.16, character share of duplicated 5..10-grams 0.15..0.10.
- C4 (Raffel et al. 2020, section 2.2), document level: "lorem ipsum", a curly brace, fewer than
  3 sentences.
- FineWeb (Penedo et al. 2024): lines ending in punctuation >= 0.12, lines of <= 30 characters
  <= 0.67, characters in duplicated lines <= 0.01, newlines per word <= 0.3.

Definitions used here (the papers leave some open): a *word* is a whitespace-separated token;
*lines* are the non-blank lines; *paragraphs* are separated by blank lines; a duplicate line or
paragraph is an occurrence after the first of the same text, and its characters count toward the
duplicate-character fractions; a duplicated n-gram covers the words of every occurrence after the
first; character shares of n-grams are over the characters of all words.

`TextStats` computes each statistic once per document (lazily), so the four filters and the
continuous `q_*` signals (written beside each kept document, so later stages can score quality
without re-reading the raw text: "compute a score once, decide cheaply many times") share work.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from itertools import repeat
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from mixture.config import C4Config, FiltersConfig, FineWebConfig, GopherQualityConfig, GopherRepetitionConfig

PUNCTUATION = string.punctuation + "«»‘’“”…–—•·"
BULLETS = ("•", "‣", "◦", "●", "▪", "▫", "■", "□", "➢", "→", "-", "*", "·", "–")
ELLIPSES = ("...", "…")
# Line endings that FineWeb counts as terminal punctuation (sentence ends and closing quotes).
END_PUNCTUATION = (".", "!", "?", "…", '"', "'", "”", "’")
_BLANK_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_ALNUM = re.compile(r"\w")
_ALPHA = re.compile(r"[^\W\d_]")
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)   # odd 64-bit constant for polynomial n-gram hashes


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """(number of items that repeat an earlier item, characters in those repeats)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for it in items:
        if it in seen:
            n_dup += 1
            chars += len(it)
        else:
            seen.add(it)
    return n_dup, chars


class TextStats:
    """Per-document statistics, each computed once on first use."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def n_words(self) -> int:
        return len(self.words)

    @cached_property
    def lines(self) -> list[str]:
        return [ln.strip() for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _BLANK_SPLIT.split(self.text) if p.strip()]

    # ------------------------------------------------------------------ Gopher quality
    @cached_property
    def bare_words(self) -> list[str]:
        """Words without leading and trailing punctuation (possibly empty)."""
        return list(map(str.strip, self.words, repeat(PUNCTUATION)))

    @cached_property
    def mean_word_length(self) -> float:
        lengths = list(map(len, self.bare_words))
        nonempty = len(lengths) - lengths.count(0)
        return sum(lengths) / nonempty if nonempty else 0.0

    @cached_property
    def hash_word_ratio(self) -> float:
        return self.text.count("#") / max(self.n_words, 1)

    @cached_property
    def ellipsis_word_ratio(self) -> float:
        return (self.text.count("...") + self.text.count("…")) / max(self.n_words, 1)

    @property
    def symbol_word_ratio(self) -> float:
        return max(self.hash_word_ratio, self.ellipsis_word_ratio)

    @cached_property
    def bullet_lines_ratio(self) -> float:
        return sum(ln.startswith(BULLETS) for ln in self.lines) / max(len(self.lines), 1)

    @cached_property
    def ellipsis_lines_ratio(self) -> float:
        return sum(ln.endswith(ELLIPSES) for ln in self.lines) / max(len(self.lines), 1)

    @cached_property
    def alpha_words_ratio(self) -> float:
        return sum(map(bool, map(_ALPHA.search, self.words))) / max(self.n_words, 1)

    @cached_property
    def _lower_bare_words(self) -> Counter:
        return Counter(map(str.lower, self.bare_words))

    def stop_word_count(self, stop_words: frozenset[str]) -> int:
        counts = self._lower_bare_words
        return sum(counts[w] for w in stop_words if w in counts)

    # --------------------------------------------------------------- Gopher repetition
    @cached_property
    def _line_dups(self) -> tuple[int, int]:
        return _dup_stats(self.lines)

    @cached_property
    def _para_dups(self) -> tuple[int, int]:
        return _dup_stats(self.paragraphs)

    @property
    def dup_line_frac(self) -> float:
        return self._line_dups[0] / max(len(self.lines), 1)

    @property
    def dup_line_char_frac(self) -> float:
        return self._line_dups[1] / max(len(self.text), 1)

    @property
    def dup_para_frac(self) -> float:
        return self._para_dups[0] / max(len(self.paragraphs), 1)

    @property
    def dup_para_char_frac(self) -> float:
        return self._para_dups[1] / max(len(self.text), 1)

    @cached_property
    def _word_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        vocab = {w: i for i, w in enumerate(dict.fromkeys(self.words))}
        ids = np.fromiter(map(vocab.__getitem__, self.words), dtype=np.uint64, count=self.n_words)
        lengths = np.fromiter(map(len, self.words), dtype=np.int64, count=self.n_words)
        return ids, lengths

    @cached_property
    def _ngram_hashes(self) -> dict[int, np.ndarray]:
        return {}

    @cached_property
    def _ngram_cache(self) -> dict[tuple[str, int], float]:
        return {}

    def _ngrams(self, n: int) -> np.ndarray:
        """64-bit polynomial hashes of the word n-grams (distinct word tuples collide with
        probability ~2^-64 per pair)."""
        if n not in self._ngram_hashes:
            ids, _ = self._word_arrays
            count = len(ids) - n + 1
            if count <= 0:
                self._ngram_hashes[n] = np.empty(0, dtype=np.uint64)
            else:
                h = np.zeros(count, dtype=np.uint64)
                with np.errstate(over="ignore"):
                    for k in range(n):
                        h = h * _NGRAM_MULT + ids[k:k + count] + np.uint64(1)
                self._ngram_hashes[n] = h
        return self._ngram_hashes[n]

    @cached_property
    def word_chars(self) -> int:
        return int(self._word_arrays[1].sum())

    def top_ngram_char_frac(self, n: int) -> float:
        """Characters covered by the most frequent n-gram (when it occurs more than once) over
        the characters of all words."""
        key = ("top", n)
        if key not in self._ngram_cache:
            self._ngram_cache[key] = self._top_ngram_char_frac(n)
        return self._ngram_cache[key]

    def _top_ngram_char_frac(self, n: int) -> float:
        h = self._ngrams(n)
        if len(h) == 0 or self.word_chars == 0:
            return 0.0
        _, first, counts = np.unique(h, return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < 2:
            return 0.0
        lengths = self._word_arrays[1]
        start = int(first[top])
        chars = int(lengths[start:start + n].sum())
        return min(1.0, chars * int(counts[top]) / self.word_chars)

    def dup_ngram_char_frac(self, n: int) -> float:
        """Characters of the words covered by n-gram occurrences after the first, over the
        characters of all words (overlapping occurrences are counted once)."""
        key = ("dup", n)
        if key not in self._ngram_cache:
            self._ngram_cache[key] = self._dup_ngram_char_frac(n)
        return self._ngram_cache[key]

    def _dup_ngram_char_frac(self, n: int) -> float:
        h = self._ngrams(n)
        if len(h) == 0 or self.word_chars == 0:
            return 0.0
        _, first = np.unique(h, return_index=True)
        repeat = np.ones(len(h), dtype=bool)
        repeat[first] = False
        if not repeat.any():
            return 0.0
        starts = np.flatnonzero(repeat)
        cover = np.zeros(self.n_words + 1, dtype=np.int64)
        np.add.at(cover, starts, 1)
        np.add.at(cover, starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        return float(self._word_arrays[1][covered].sum()) / self.word_chars

    # -------------------------------------------------------------------------- C4
    @cached_property
    def sentences(self) -> int:
        ends = list(_SENTENCE_END.finditer(self.text))
        tail = self.text[ends[-1].end():] if ends else self.text
        return len(ends) + (1 if _ALNUM.search(tail) else 0)

    @cached_property
    def has_lorem_ipsum(self) -> bool:
        return "lorem ipsum" in self.text.lower()

    @cached_property
    def has_curly_brace(self) -> bool:
        return "{" in self.text or "}" in self.text

    # ---------------------------------------------------------------------- FineWeb
    @cached_property
    def punct_line_ratio(self) -> float:
        return sum(ln.endswith(END_PUNCTUATION) for ln in self.lines) / max(len(self.lines), 1)

    def short_line_ratio(self, max_chars: int) -> float:
        return sum(len(ln) <= max_chars for ln in self.lines) / max(len(self.lines), 1)

    @cached_property
    def newlines_per_word(self) -> float:
        return self.text.count("\n") / max(self.n_words, 1)


def _stats(doc: str | TextStats) -> TextStats:
    return doc if isinstance(doc, TextStats) else TextStats(doc)


# ---------------------------------------------------------------------------- filters
def gopher_quality(doc: str | TextStats, cfg: GopherQualityConfig) -> str | None:
    s = _stats(doc)
    if s.n_words < cfg.min_words:
        return "min_words"
    if s.n_words > cfg.max_words:
        return "max_words"
    if s.mean_word_length < cfg.min_mean_word_length:
        return "min_mean_word_length"
    if s.mean_word_length > cfg.max_mean_word_length:
        return "max_mean_word_length"
    if s.symbol_word_ratio > cfg.max_symbol_word_ratio:
        return "symbol_word_ratio"
    if s.bullet_lines_ratio > cfg.max_bullet_lines_ratio:
        return "bullet_lines"
    if s.ellipsis_lines_ratio > cfg.max_ellipsis_lines_ratio:
        return "ellipsis_lines"
    if s.alpha_words_ratio < cfg.min_alpha_words_ratio:
        return "alpha_words"
    if s.stop_word_count(_stop_set(cfg)) < cfg.min_stop_words:
        return "stop_words"
    return None


def gopher_repetition(doc: str | TextStats, cfg: GopherRepetitionConfig) -> str | None:
    s = _stats(doc)
    if s.dup_line_frac > cfg.dup_line_frac:
        return "dup_line_frac"
    if s.dup_para_frac > cfg.dup_para_frac:
        return "dup_para_frac"
    if s.dup_line_char_frac > cfg.dup_line_char_frac:
        return "dup_line_char_frac"
    if s.dup_para_char_frac > cfg.dup_para_char_frac:
        return "dup_para_char_frac"
    for n, limit in sorted(cfg.top_ngram_char_frac.items()):
        if s.top_ngram_char_frac(n) > limit:
            return f"top_{n}gram_char_frac"
    for n, limit in sorted(cfg.dup_ngram_char_frac.items()):
        if s.dup_ngram_char_frac(n) > limit:
            return f"dup_{n}gram_char_frac"
    return None


def c4(doc: str | TextStats, cfg: C4Config) -> str | None:
    s = _stats(doc)
    if cfg.reject_lorem_ipsum and s.has_lorem_ipsum:
        return "lorem_ipsum"
    if cfg.reject_curly_brace and s.has_curly_brace:
        return "curly_brace"
    if s.sentences < cfg.min_sentences:
        return "min_sentences"
    return None


def fineweb(doc: str | TextStats, cfg: FineWebConfig) -> str | None:
    s = _stats(doc)
    if s.punct_line_ratio < cfg.min_punct_line_ratio:
        return "punct_lines"
    if s.short_line_ratio(cfg.short_line_chars) > cfg.max_short_line_ratio:
        return "short_lines"
    if s.dup_line_char_frac > cfg.max_dup_line_char_frac:
        return "dup_line_chars"
    if s.newlines_per_word > cfg.max_newlines_per_word:
        return "newlines_per_word"
    return None


_STOP_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _stop_set(cfg: GopherQualityConfig) -> frozenset[str]:
    key = tuple(cfg.stop_words)
    if key not in _STOP_SETS:
        _STOP_SETS[key] = frozenset(w.lower() for w in key)
    return _STOP_SETS[key]


# Filter families in the order they are applied; a rejected document's reason is the first
# failing family's first failing rule.
FILTERS: dict[str, Callable[[str | TextStats, object], str | None]] = {
    "gopher_quality": gopher_quality,
    "gopher_repetition": gopher_repetition,
    "c4": c4,
    "fineweb": fineweb,
}


def signal_names(cfg: FiltersConfig) -> list[str]:
    """The `q_*` columns, in output order."""
    rep = cfg.gopher_repetition
    return (["q_mean_word_length", "q_symbol_word_ratio", "q_bullet_lines_ratio", "q_ellipsis_lines_ratio",
             "q_alpha_words_ratio", "q_stop_words", "q_dup_line_frac", "q_dup_para_frac",
             "q_dup_line_char_frac", "q_dup_para_char_frac"]
            + [f"q_top_{n}gram_char_frac" for n in sorted(rep.top_ngram_char_frac)]
            + [f"q_dup_{n}gram_char_frac" for n in sorted(rep.dup_ngram_char_frac)]
            + ["q_sentences", "q_punct_line_ratio", "q_short_line_ratio", "q_newlines_per_word"])


def signals(s: TextStats, cfg: FiltersConfig) -> dict[str, float]:
    """Continuous quality signals (higher is not always better: each is the statistic a rule
    thresholds). Computed for every document, whether or not a filter is enabled."""
    rep = cfg.gopher_repetition
    out = {
        "q_mean_word_length": s.mean_word_length,
        "q_symbol_word_ratio": s.symbol_word_ratio,
        "q_bullet_lines_ratio": s.bullet_lines_ratio,
        "q_ellipsis_lines_ratio": s.ellipsis_lines_ratio,
        "q_alpha_words_ratio": s.alpha_words_ratio,
        "q_stop_words": s.stop_word_count(_stop_set(cfg.gopher_quality)) / max(s.n_words, 1),
        "q_dup_line_frac": s.dup_line_frac,
        "q_dup_para_frac": s.dup_para_frac,
        "q_dup_line_char_frac": s.dup_line_char_frac,
        "q_dup_para_char_frac": s.dup_para_char_frac,
    }
    for n in sorted(rep.top_ngram_char_frac):
        out[f"q_top_{n}gram_char_frac"] = s.top_ngram_char_frac(n)
    for n in sorted(rep.dup_ngram_char_frac):
        out[f"q_dup_{n}gram_char_frac"] = s.dup_ngram_char_frac(n)
    out["q_sentences"] = float(s.sentences)
    out["q_punct_line_ratio"] = s.punct_line_ratio
    out["q_short_line_ratio"] = s.short_line_ratio(cfg.fineweb.short_line_chars)
    out["q_newlines_per_word"] = s.newlines_per_word
    return out


@dataclass
class Verdict:
    reason: str | None                       # "filter:<name>:<rule>" of the first failure, or None
    failed: dict[str, str] = field(default_factory=dict)   # every enabled, non-exempt family that fails
    exempt: list[str] = field(default_factory=list)        # families skipped by exempt_if
    signals: dict[str, float] = field(default_factory=dict)
    n_words: int = 0


class FilterChain:
    """The configured filters, with their `exempt_if` patterns compiled once."""

    def __init__(self, cfg: FiltersConfig):
        self.cfg = cfg
        self.families = []
        for name, fn in FILTERS.items():
            sub = getattr(cfg, name)
            if sub.enabled:
                pattern = re.compile(sub.exempt_if) if sub.exempt_if else None
                self.families.append((name, fn, sub, pattern))
        self.signal_names = signal_names(cfg)

    def __call__(self, text: str) -> Verdict:
        s = TextStats(text)
        verdict = Verdict(reason=None, n_words=s.n_words)
        for name, fn, sub, pattern in self.families:
            if pattern is not None and pattern.search(text):
                verdict.exempt.append(name)
                continue
            rule = fn(s, sub)
            if rule is not None:
                verdict.failed[name] = rule
                if verdict.reason is None:
                    verdict.reason = f"filter:{name}:{rule}"
        verdict.signals = signals(s, self.cfg)
        return verdict


def rule_counts(verdicts: list[Verdict]) -> Counter:
    """How many documents each filter rejects on its own (independent of the order)."""
    c: Counter = Counter()
    for v in verdicts:
        for name, rule in v.failed.items():
            c[name] += 1
            c[f"{name}:{rule}"] += 1
    return c
