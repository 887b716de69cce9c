"""Per-document text statistics shared by every filter, each computed once on first use.

A filter's signals are functions of one `TextStats`, so the filters of a chain (and the `q_*`
signals stored beside each document) share work: words, lines and paragraphs are split once,
word n-gram hashes are computed once per n. Definitions (the papers leave some open): a *word* is
a whitespace-separated token; *lines* are the non-blank lines; *paragraphs* are separated by
blank lines; a duplicate line or paragraph is an occurrence after the first of the same text, and
its characters count toward the duplicate-character fractions; a duplicated n-gram covers the
words of every occurrence after the first; character shares of n-grams are over the characters of
all words.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import cached_property
from itertools import repeat

import numpy as np

PUNCTUATION = string.punctuation + "«»‘’“”…–—•·"
BULLETS = ("•", "‣", "◦", "●", "▪", "▫", "■", "□", "➢", "→", "-", "*", "·", "–")
ELLIPSES = ("...", "…")
# Line endings that FineWeb counts as terminal punctuation (sentence ends and closing quotes).
END_PUNCTUATION = (".", "!", "?", "…", '"', "'", "”", "’")
_BLANK_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")
# A sentence ends with a run of these marks, then any closing quotes or brackets, then
# whitespace or the end of the text.
SENTENCE_END_CHARS = ".!?…"
SENTENCE_CLOSERS = "\"'”’)]"
_SENTENCE_END = re.compile(f"[{re.escape(SENTENCE_END_CHARS)}]+[{re.escape(SENTENCE_CLOSERS)}]*(?=\\s|$)")
_ALNUM = re.compile(r"\w")
_ALPHA = re.compile(r"[^\W\d_]")
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for polynomial n-gram hashes


def ngram_hashes(ids: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """The polynomial hashes of the word-id n-grams starting at `pos` (one TextStats and
    BatchStats share: their signals must agree bit for bit)."""
    h = np.zeros(len(pos), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _NGRAM_MULT + ids[pos + k] + np.uint64(1)
    return h


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
        return sum(map(str.startswith, self.lines, repeat(BULLETS))) / max(len(self.lines), 1)

    @cached_property
    def ellipsis_lines_ratio(self) -> float:
        return sum(map(str.endswith, self.lines, repeat(ELLIPSES))) / max(len(self.lines), 1)

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
                        h = h * _NGRAM_MULT + ids[k : k + count] + np.uint64(1)
                self._ngram_hashes[n] = h
        return self._ngram_hashes[n]

    def _repeated(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(start of every n-gram occurrence whose n-gram occurs more than once, whether it is
        an occurrence after the first), in position order.

        An (n+1)-gram that repeats starts with an n-gram that repeats, so size n+1 only looks at
        the positions that size n found (exact: the other positions can neither repeat nor be
        the first occurrence of a repeat). Most prose has few repeated 5-grams, so sizes 6-10
        cost almost nothing."""
        cache = self._repeat_cache
        if n not in cache:
            prev = cache.get(n - 1)
            if prev is None:
                pos = np.arange(max(self.n_words - n + 1, 0))
                h = self._ngrams(n)
            else:
                pos = prev[0][prev[0] <= self.n_words - n]
                h = self._ngram_at(pos, n)
            order = np.argsort(h, kind="stable")
            sh = h[order]
            new_run = np.r_[True, sh[1:] != sh[:-1]]
            run_id = np.cumsum(new_run) - 1
            sizes = np.bincount(run_id)
            multi = sizes[run_id] > 1
            later = np.zeros(len(h), dtype=bool)
            later[order] = ~new_run
            in_multi = np.zeros(len(h), dtype=bool)
            in_multi[order] = multi
            cache[n] = (pos[in_multi], later[in_multi])
        return cache[n]

    @cached_property
    def _repeat_cache(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return {}

    def _ngram_at(self, pos: np.ndarray, n: int) -> np.ndarray:
        """The hashes `_ngrams(n)` would give at positions `pos` (same polynomial)."""
        return ngram_hashes(self._word_arrays[0], pos, n)

    def _repeat_starts(self, n: int) -> np.ndarray:
        """Start positions of the n-gram occurrences after the first of the same n-gram."""
        pos, later = self._repeated(n)
        return pos[later]

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
        # The most frequent hash (ties: the smallest hash, as np.unique + argmax would pick),
        # from a plain sort: no argsort, the first occurrence is looked up once.
        sh = np.sort(h)
        run_starts = np.flatnonzero(np.r_[True, sh[1:] != sh[:-1]])
        counts = np.diff(np.r_[run_starts, len(sh)])
        top = int(np.argmax(counts))
        if counts[top] < 2:
            return 0.0
        lengths = self._word_arrays[1]
        start = int(np.flatnonzero(h == sh[run_starts[top]])[0])
        chars = int(lengths[start : start + n].sum())
        return min(1.0, chars * int(counts[top]) / self.word_chars)

    def dup_ngram_char_frac(self, n: int) -> float:
        """Characters of the words covered by n-gram occurrences after the first, over the
        characters of all words (overlapping occurrences are counted once)."""
        key = ("dup", n)
        if key not in self._ngram_cache:
            self._ngram_cache[key] = self._dup_ngram_char_frac(n)
        return self._ngram_cache[key]

    def _dup_ngram_char_frac(self, n: int) -> float:
        if self.word_chars == 0:
            return 0.0
        starts = self._repeat_starts(n)
        if len(starts) == 0:
            return 0.0
        cover = np.zeros(self.n_words + 1, dtype=np.int64)
        np.add.at(cover, starts, 1)
        np.add.at(cover, starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        return float(self._word_arrays[1][covered].sum()) / self.word_chars

    # -------------------------------------------------------------------------- C4
    @cached_property
    def sentences(self) -> int:
        ends = list(_SENTENCE_END.finditer(self.text))
        tail = self.text[ends[-1].end() :] if ends else self.text
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
        return sum(map(str.endswith, self.lines, repeat(END_PUNCTUATION))) / max(len(self.lines), 1)

    def short_line_ratio(self, max_chars: int) -> float:
        lengths = self._line_lengths
        return int(np.count_nonzero(lengths <= max_chars)) / max(len(lengths), 1)

    @cached_property
    def _line_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.lines), dtype=np.int64, count=len(self.lines))

    @cached_property
    def newlines_per_word(self) -> float:
        return self.text.count("\n") / max(self.n_words, 1)


def stats(doc: str | TextStats) -> TextStats:
    """The statistics of a text (or the given statistics unchanged)."""
    return doc if isinstance(doc, TextStats) else TextStats(doc)


_STOP_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def stop_set(words: list[str]) -> frozenset[str]:
    """The lower-cased stop-word set (cached per list)."""
    key = tuple(words)
    if key not in _STOP_SETS:
        _STOP_SETS[key] = frozenset(w.lower() for w in key)
    return _STOP_SETS[key]
