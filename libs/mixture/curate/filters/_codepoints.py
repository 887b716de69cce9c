"""Character classes per code point and the numpy helpers of `_batch.BatchStats`.

A character's classes come from Python's own definitions (`str.isspace`, the filters'
punctuation and markers, the regexes of `_stats`), asked once per process for each character
seen, so the batch statistics and `TextStats` cannot disagree about what a character is.
"""

from __future__ import annotations

import numpy as np

from mixture.curate.filters._stats import (
    _ALNUM,
    _ALPHA,
    BULLETS,
    END_PUNCTUATION,
    PUNCTUATION,
    SENTENCE_CLOSERS,
    SENTENCE_END_CHARS,
)
from mixture.curate.minhash import splitmix64 as _splitmix64

# Line-start and line-end tests are per character: every listed marker is one character.
assert all(len(c) == 1 for c in BULLETS + END_PUNCTUATION), "bullets and end punctuation are single characters"

SPACE, PUNCT, ALPHA, WORD, BULLET, END, SENT, CLOSE, HSPACE, LOWER_MULTI, KNOWN = (1 << k for k in range(11))
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_NL = 10


def _classify(c: int) -> tuple[int, int]:
    """(class bits, lower-cased code point) of one character, from Python's own definitions."""
    ch = chr(c)
    low = ch.lower()
    bits = KNOWN
    bits |= SPACE if ch.isspace() else 0
    bits |= PUNCT if ch in PUNCTUATION else 0
    bits |= ALPHA if _ALPHA.match(ch) else 0
    bits |= WORD if _ALNUM.match(ch) else 0
    bits |= BULLET if ch in BULLETS else 0
    bits |= END if ch in END_PUNCTUATION else 0
    bits |= SENT if ch in SENTENCE_END_CHARS else 0
    bits |= CLOSE if ch in SENTENCE_CLOSERS else 0
    bits |= HSPACE if ch in " \t\r\f\v" else 0
    bits |= LOWER_MULTI if len(low) != 1 else 0
    return bits, ord(low) if len(low) == 1 else 0xFFFFFFFF


class _Tables:
    """Class bits and lower case per code point, filled lazily (most text uses few characters)."""

    def __init__(self):
        self.bits = np.zeros(0x110000, dtype=np.uint16)
        self.lower = np.zeros(0x110000, dtype=np.uint32)
        self.fill(np.arange(128))

    def fill(self, codes: np.ndarray) -> None:
        for c in codes.tolist():
            self.bits[c], self.lower[c] = _classify(c)

    def classes(self, cp: np.ndarray) -> np.ndarray:
        bits = self.bits[cp]
        unknown = (bits & KNOWN) == 0
        if unknown.any():
            self.fill(np.unique(cp[unknown]))
            bits = self.bits[cp]
        return bits


_TABLES: _Tables | None = None


def _tables() -> _Tables:
    global _TABLES
    if _TABLES is None:
        _TABLES = _Tables()
    return _TABLES


def _doc_salts(n_docs: int) -> np.ndarray:
    """A random-looking 64-bit value per document: a hash XOR its document's salt is one key
    per (document, hash) (n-gram hashes are structured polynomials, so the salt is mixed)."""
    with np.errstate(over="ignore"):
        return _splitmix64(np.arange(n_docs, dtype=np.uint64) + _GOLD)


def _runs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, start of each run of equal keys in key[order], run of each element in order)."""
    order = np.argsort(key)
    sk = key[order]
    new = np.r_[True, sk[1:] != sk[:-1]] if len(sk) else np.zeros(0, dtype=bool)
    return order, np.flatnonzero(new), np.cumsum(new) - 1


def _seg_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sums of values[offsets[d]:offsets[d+1]] per segment d (exact for integers)."""
    c = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=c[1:])
    return c[offsets[1:]] - c[offsets[:-1]]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / max(den, 1), as Python divides two ints (both exact in float64 here)."""
    return num.astype(np.float64) / np.maximum(den, 1).astype(np.float64)


def _dups(key: np.ndarray, doc: np.ndarray, lengths: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (items that repeat an earlier item, their characters); items in order."""
    order, starts, run = _runs(key)
    first = np.minimum.reduceat(order, starts) if len(order) else order
    later = np.zeros(len(key), dtype=bool)
    later[order] = order != first[run]
    return (
        np.bincount(doc[later], minlength=n_docs),
        np.bincount(doc[later], weights=lengths[later], minlength=n_docs).astype(np.int64),
    )


def _prev(mask: np.ndarray) -> np.ndarray:
    """mask shifted right by one (True before the first element)."""
    out = np.empty_like(mask)
    if len(mask):
        out[0] = True
        out[1:] = mask[:-1]
    return out


def _next(mask: np.ndarray) -> np.ndarray:
    """mask shifted left by one (True after the last element)."""
    out = np.empty_like(mask)
    if len(mask):
        out[-1] = True
        out[:-1] = mask[1:]
    return out


def _first_at_or_after(positions: np.ndarray, at: np.ndarray, none: int) -> np.ndarray:
    """The first of the sorted `positions` >= each of `at` (`none` when there is none)."""
    k = np.searchsorted(positions, at)
    return (
        np.where(k < len(positions), positions[np.minimum(k, max(len(positions) - 1, 0))], none)
        if len(positions)
        else np.full(len(at), none)
    )
