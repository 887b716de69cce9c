"""MinHash signatures and LSH banding for near-duplicate detection, in numpy and one numba kernel (pure functions).

Follows Broder (1997) for MinHash and the banding scheme of Leskovec, Rajaraman & Ullman
("Mining of Massive Datasets", ch. 3): a pair with Jaccard similarity s shares at least one of b
bands of r rows with probability P(s) = 1 - (1 - s^r)^b. `lsh_params` picks (b, r) for a
threshold t by minimising the weighted false-positive area (integral of P over [0, t]) plus the
false-negative area (integral of 1 - P over [t, 1]), as text-dedup and datasketch do.

Shingles: the text is lowercased, punctuation becomes space, whitespace is collapsed, and the
shingles are the word n-grams (5 by default, as in Gopher/FineWeb near-dedup); a document shorter
than n words is one shingle. Each distinct word of a batch is hashed from its UTF-8 bytes by a
vectorised polynomial hash mod 2^64 (stable across processes, unlike Python's `hash`; not meant to
resist crafted collisions), n-grams combine the word hashes polynomially and a SplitMix64
finaliser mixes them to 32 bits. Permutations are the multiply-add-shift family of Dietzfelbinger (1996):
h(x) = ((a*x + b) mod 2^64) >> 32 for 32-bit x, a odd, which is strongly universal and needs
only uint64 arithmetic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.empty(0, dtype=np.uint32)
SENTINEL = np.uint32(0xFFFFFFFF)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on every element: a cheap, well-mixed 64-bit hash of 64-bit values."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_POLY = np.uint64(0x9E3779B97F4A7C15)
_LEN_MIX = np.uint64(0xD6E8FEB86659FD93)


def _inverse(a: np.uint64) -> np.uint64:
    """Multiplicative inverse of an odd number modulo 2^64 (Newton's iteration)."""
    inv = a
    with np.errstate(over="ignore"):
        for _ in range(6):
            inv = inv * (np.uint64(2) - a * inv)
    return inv


_POLY_INV = _inverse(_POLY)


_POWER_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^j and P^-j mod 2^64 for j < n (cached per process, grown as needed)."""
    size = max(n, 1 << 16)
    cached = next((v for k, v in _POWER_CACHE.items() if k >= size), None)
    if cached is None:
        size = 1 << (size - 1).bit_length()
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, _POLY, dtype=np.uint64), dtype=np.uint64)
            ipw = np.cumprod(np.full(size, _POLY_INV, dtype=np.uint64), dtype=np.uint64)
        one = np.ones(1, dtype=np.uint64)
        cached = (np.concatenate([one, pw[:-1]]), np.concatenate([one, ipw[:-1]]))
        _POWER_CACHE.clear()
        _POWER_CACHE[size] = cached
    return cached


def _string_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """64-bit hashes of the byte strings data[starts[i]:ends[i]] (in increasing position), all
    at once.

    A polynomial hash mod 2^64 (sum of byte_j * P^j) from one cumulative sum over the bytes:
    string i's sum is (G[end] - G[start]) * P^-start, so no Python loop touches a word; its
    length is mixed in and SplitMix64 finalises. Strings are processed in chunks of about
    `chunk_bytes` to bound memory."""
    n = len(starts)
    out = np.empty(n, dtype=np.uint64)
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(ends, starts[lo] + chunk_bytes, side="right"))
        hi = min(max(hi, lo + 1), n)
        base = int(starts[lo])
        seg = data[base : int(ends[hi - 1])].astype(np.uint64)
        pw, ipw = _power_tables(len(seg) + 1)
        s = starts[lo:hi] - base
        e = ends[lo:hi] - base
        with np.errstate(over="ignore"):
            g = np.zeros(len(seg) + 1, dtype=np.uint64)
            np.cumsum(seg * pw[: len(seg)], out=g[1:])
            h = (g[e] - g[s]) * ipw[s]
            h ^= (e - s).astype(np.uint64) * _LEN_MIX
        out[lo:hi] = splitmix64(h)
        lo = hi
    return out


def _utf8_buffers(arr) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of an Arrow string array, as numpy views (large_string offsets)."""
    import pyarrow as pa

    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
    return data, offsets


def shingle_batch(texts, ngram: int = 5, distinct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Shingles of many documents at once: (hashes, offsets) where document d's 32-bit n-gram
    hashes are hashes[offsets[d]:offsets[d+1]] (none when it has no words): sorted and unique, or,
    with `distinct=False`, in text order with repeats (the same set, for `MinHasher`, which takes
    a minimum and needs no sort).

    Words are found and hashed in numpy over the UTF-8 bytes (`_word_spans`: words -> n-gram
    hashes -> unique per document); n-grams never cross document boundaries."""
    words = _word_spans(texts)
    if words is None:
        n_docs = len(texts)
        return _EMPTY, np.zeros(n_docs + 1, dtype=np.int64)
    data, offsets, word_starts, word_ends = words
    n_docs = len(offsets) - 1
    w = _string_hashes(data, word_starts, word_ends)
    counts = np.bincount(np.searchsorted(offsets, word_starts, side="right") - 1, minlength=n_docs).astype(np.int64)
    doc_of_start, h = _ngram_hashes(w, counts, ngram)
    hashed = splitmix64(h) >> _SHIFT32
    if distinct:
        return _unique_per_doc(doc_of_start, hashed, n_docs)
    shingle_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc_of_start, minlength=n_docs), out=shingle_off[1:])
    return hashed.astype(np.uint32), shingle_off


# A word is a run of letters, digits and underscores (Python's \w+) of the lower-cased text. In
# an ASCII byte: a-z, 0-9 and _ are word bytes, A-Z lower-case ones, every other byte a separator
# (a space). Bytes >= 0x80 occur only in documents that went through the Unicode path first, and
# stay: they are parts of letters and numbers there (no byte of a multi-byte character is 0x20).
_WORD_SEPARATORS = r"[^\p{L}\p{N}_]+"
_BYTE_TABLE = np.full(256, 0x20, dtype=np.uint8)
for _chars in (b"abcdefghijklmnopqrstuvwxyz0123456789_", bytes(range(0x80, 0x100))):
    _BYTE_TABLE[np.frombuffer(_chars, dtype=np.uint8)] = np.frombuffer(_chars, dtype=np.uint8)
_BYTE_TABLE[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)] = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8
)


def _word_spans(texts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(normalised UTF-8 bytes, document offsets, word starts, word ends) of the texts: a word is
    a maximal run of non-space bytes inside one document of the normalised bytes; None when no
    document has a word.

    Documents of ASCII only are normalised by one byte table (`_BYTE_TABLE`); the others are
    lower-cased and their runs of non-word characters replaced by a space in Arrow's C++ kernels
    (Unicode letters and numbers), then go through the same table, which leaves them as they
    are. Both give a document the same words: the table keeps separator runs as they are, which
    moves no word's bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = arr.fill_null("")
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())  # the buffers' offsets, and the replace_with_mask below
    data, offsets = _utf8_buffers(arr)
    unicode = _non_ascii_documents(data, offsets)
    if unicode.any():
        cleaned = pc.replace_substring_regex(pc.utf8_lower(arr.filter(pa.array(unicode))), _WORD_SEPARATORS, " ")
        data, offsets = _utf8_buffers(pc.replace_with_mask(arr, pa.array(unicode), cleaned))
    data = _BYTE_TABLE[data[int(offsets[0]) : int(offsets[-1])]]
    offsets = offsets - offsets[0]
    word = data != 0x20
    if not word.any():
        return None
    before = np.empty_like(word)  # the byte before is a word byte of the same document
    before[0] = False
    before[1:] = word[:-1]
    before[offsets[:-1][offsets[:-1] < len(data)]] = False
    after = np.empty_like(word)  # the byte after is a word byte of the same document
    after[-1] = False
    after[:-1] = word[1:]
    after[offsets[1:][offsets[1:] > 0] - 1] = False
    word_starts = np.flatnonzero(word & ~before)
    word_ends = np.flatnonzero(word & ~after) + 1
    return data, offsets, word_starts, word_ends


def _non_ascii_documents(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Which documents (UTF-8 bytes data[offsets[d]:offsets[d+1]]) have a byte >= 0x80."""
    lengths = np.diff(offsets)
    out = np.zeros(len(lengths), dtype=bool)
    filled = np.flatnonzero(lengths > 0)
    if len(filled):
        out[filled] = np.maximum.reduceat(data[: int(offsets[-1])], offsets[:-1][filled]) >= 0x80
    return out


def _ngram_hashes(w: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(document of each shingle, its 64-bit hash) from the word hashes `w` of documents with
    `counts` words each."""
    n_docs = len(counts)
    word_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=word_off[1:])
    # n-gram start positions: every position with n words left in its document, or the first
    # word of a document shorter than n (one shingle of all its words).
    n_starts = np.where(counts >= ngram, counts - ngram + 1, np.minimum(counts, 1))
    doc_of_start = np.repeat(np.arange(n_docs), n_starts)
    start_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(n_starts, out=start_off[1:])
    starts = word_off[doc_of_start] + (np.arange(len(doc_of_start)) - start_off[doc_of_start])
    h = np.zeros(len(starts), dtype=np.uint64)
    short = counts[doc_of_start] < ngram
    with np.errstate(over="ignore"):
        # Full n-grams: a polynomial over shifted slices of all words (windows that cross a
        # document boundary are computed but never selected).
        n_full = len(w) - ngram + 1
        if n_full > 0:
            full = np.zeros(n_full, dtype=np.uint64)
            for k in range(ngram):
                full *= _NGRAM_MULT
                full += w[k : k + n_full]
            h[~short] = full[starts[~short]]
        # Documents shorter than n words: one shingle of all their words.
        for d_start, d_count, i in zip(starts[short], counts[doc_of_start[short]], np.flatnonzero(short)):
            acc = np.uint64(0)
            for k in range(int(d_count)):
                acc = acc * _NGRAM_MULT + w[d_start + k]
            h[i] = acc
    return doc_of_start, h


def _unique_per_doc(doc_of_start: np.ndarray, hashed: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique 32-bit hashes per document, offsets)."""
    keyed = np.sort((doc_of_start.astype(np.uint64) << _SHIFT32) | hashed)
    keyed = keyed[np.r_[True, keyed[1:] != keyed[:-1]]]  # sort + mask: faster than np.unique
    docs = (keyed >> _SHIFT32).astype(np.int64)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, minlength=n_docs), out=offsets[1:])
    return (keyed & _MASK32).astype(np.uint32), offsets


def shingles(text: str, ngram: int = 5) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams of one text (empty when it has no words)."""
    hashes, offsets = shingle_batch([text], ngram)
    return hashes[offsets[0] : offsets[1]]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays."""
    if a.size == 0 or b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


class MinHasher:
    """`num_perm` universal hash functions drawn from `seed`; the same seed gives the same
    signatures on every executor."""

    def __init__(self, num_perm: int, seed: int = 0):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D696E48]))
        self.a = (rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)
        self.num_perm = num_perm

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """[documents, num_perm] uint32 MinHash signatures of a list of shingle arrays."""
        lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
        offsets = np.zeros(len(shingle_sets) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(shingle_sets) if len(shingle_sets) else _EMPTY
        return self.signatures_flat(flat, offsets)

    def signatures_flat(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of documents given as (hashes, offsets) from `shingle_batch` (repeats and
        any order allowed); a document without shingles gets the all-SENTINEL signature (the caller
        skips it). Compiled (`_signature_kernel`): the multiply, add and minimum of each shingle and
        permutation in registers, ~5x less CPU than the same arithmetic as numpy array passes."""
        flat = np.ascontiguousarray(hashes, dtype=np.uint64)
        return _signature_kernel()(flat, np.ascontiguousarray(offsets, dtype=np.int64), self.a, self.b)


def _signatures(hashes, offsets, a, b):  # compiled by `_signature_kernel`: plain loops, uint64 wrap-around
    n_docs, num_perm = offsets.shape[0] - 1, a.shape[0]
    out = np.empty((n_docs, num_perm), np.uint32)
    low = np.empty(num_perm, np.uint64)
    for d in range(n_docs):
        low[:] = np.uint64(0xFFFFFFFFFFFFFFFF)
        for i in range(offsets[d], offsets[d + 1]):
            x = hashes[i]
            for p in range(num_perm):  # the min of the 64-bit values, shifted once: the shift is monotone
                v = a[p] * x + b[p]
                if v < low[p]:
                    low[p] = v
        empty = offsets[d + 1] == offsets[d]
        for p in range(num_perm):
            out[d, p] = SENTINEL if empty else np.uint32(low[p] >> np.uint64(32))
    return out


@functools.cache
def _signature_kernel():
    """`_signatures` compiled by numba on first use in a process (imported here, so that the
    processes that never hash pay nothing), cached on disk where numba finds a writable cache
    folder (then ~0.3 s to load instead of ~1 s to compile), in memory otherwise."""
    import numba

    try:
        return numba.njit(cache=True)(_signatures)
    except RuntimeError:  # numba: "no locator available" (a read-only install without a cache folder)
        return numba.njit(_signatures)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[documents, bands] int64 keys: band j's key hashes the band index and its r values, so
    equal keys in the same band mean equal bands (up to 64-bit collisions)."""
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(sig.shape[0], np.uint64(j + 1) * _NGRAM_MULT, dtype=np.uint64)
            for col in range(j * rows, (j + 1) * rows):
                h = splitmix64(h ^ sig[:, col].astype(np.uint64))
            out[:, j] = h
    return out.view(np.int64)


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class LSHParams:
    num_perm: int
    bands: int
    rows: int
    false_positive_area: float
    false_negative_area: float

    @property
    def effective_threshold(self) -> float:
        """Similarity where the S-curve is steepest, about (1/b)^(1/r)."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def probability(self, s: float) -> float:
        return 1.0 - (1.0 - s**self.rows) ** self.bands


_GRID = np.linspace(0.0, 1.0, 2001)


def _areas(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    p = 1.0 - (1.0 - _GRID**rows) ** bands
    lo, hi = _GRID <= threshold, _GRID >= threshold
    return float(np.trapezoid(p[lo], _GRID[lo])), float(np.trapezoid(1.0 - p[hi], _GRID[hi]))


def best_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> LSHParams:
    best: tuple[float, LSHParams] | None = None
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, fn = _areas(threshold, b, r)
            err = fp_weight * fp + fn_weight * fn
            if best is None or err < best[0] - 1e-12:
                best = (err, LSHParams(num_perm, b, r, fp, fn))
    assert best is not None
    return best[1]


NUM_PERM_CANDIDATES = (64, 128, 192, 256)


def lsh_params(
    threshold: float,
    num_perm: int | None = None,
    bands: int | None = None,
    rows: int | None = None,
    fp_weight: float = 0.5,
    fn_weight: float = 0.5,
    tolerance: float = 0.10,
) -> tuple[LSHParams, list[LSHParams]]:
    """The LSH parameters to use and the trade-off table they were chosen from.

    Given bands and rows, they are used as they are. Otherwise (b, r) minimise the weighted
    FP+FN area for `num_perm`; when `num_perm` is not given either, it is the smallest of
    NUM_PERM_CANDIDATES whose best weighted error is within `tolerance` of the largest's (more
    permutations cost time linearly and buy less and less accuracy)."""
    if bands is not None and rows is not None:
        fp, fn = _areas(threshold, bands, rows)
        chosen = LSHParams(num_perm or bands * rows, bands, rows, fp, fn)
        return chosen, [chosen]
    candidates = [num_perm] if num_perm else list(NUM_PERM_CANDIDATES)
    table = [best_bands_rows(threshold, n, fp_weight, fn_weight) for n in candidates]
    err = [fp_weight * p.false_positive_area + fn_weight * p.false_negative_area for p in table]
    floor = err[-1]
    chosen = next(p for p, e in zip(table, err) if e <= floor * (1 + tolerance))
    return chosen, table


def format_tradeoff(
    threshold: float, chosen: LSHParams, table: list[LSHParams], fp_weight: float, fn_weight: float
) -> str:
    lines = [
        f"MinHash LSH for Jaccard >= {threshold}: weights FP {fp_weight}, FN {fn_weight}",
        "  num_perm  bands x rows  FP area  FN area  weighted  P(detect at t)  steepest at",
    ]
    for p in table:
        mark = " <- chosen" if p == chosen else ""
        cost = fp_weight * p.false_positive_area + fn_weight * p.false_negative_area
        lines.append(
            f"  {p.num_perm:8d}  {p.bands:5d} x {p.rows:<4d}  {p.false_positive_area:7.4f}  "
            f"{p.false_negative_area:7.4f}  {cost:8.4f}"
            f"  {p.probability(threshold):14.3f}  {p.effective_threshold:11.3f}{mark}"
        )
    return "\n".join(lines)
