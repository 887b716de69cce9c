"""MinHash signatures and LSH banding for near-duplicate detection, in numpy (pure functions).

Follows Broder (1997) for MinHash and the banding scheme of Leskovec, Rajaraman & Ullman
("Mining of Massive Datasets", ch. 3): a pair with Jaccard similarity s shares at least one of b
bands of r rows with probability P(s) = 1 - (1 - s^r)^b. `lsh_params` picks (b, r) for a
threshold t by minimising the weighted false-positive area (integral of P over [0, t]) plus the
false-negative area (integral of 1 - P over [t, 1]), as text-dedup and datasketch do.

Shingles: the text is lowercased, punctuation becomes space, whitespace is collapsed, and the
shingles are the word n-grams (5 by default, as in Gopher/FineWeb near-dedup); a document shorter
than n words is one shingle. Each word is hashed with BLAKE2b (stable across processes, unlike
Python's `hash`), n-grams combine the word hashes polynomially and a SplitMix64 finaliser mixes
them to 32 bits. Permutations are the multiply-add-shift family of Dietzfelbinger (1996):
h(x) = ((a*x + b) mod 2^64) >> 32 for 32-bit x, a odd, which is strongly universal and needs
only uint64 numpy arithmetic.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.empty(0, dtype=np.uint32)
SENTINEL = np.uint32(0xFFFFFFFF)
_word_cache: dict[str, int] = {}


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z ^ (z >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _word_hashes(words: list[str]) -> np.ndarray:
    out = np.empty(len(words), dtype=np.uint64)
    for i, word in enumerate(words):
        h = _word_cache.get(word)
        if h is None:
            if len(_word_cache) > 2_000_000:    # bound the cache on long-running executors
                _word_cache.clear()
            h = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest(), "little")
            _word_cache[word] = h
        out[i] = h
    return out


def shingle_batch(texts, ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Shingles of many documents at once: (hashes, offsets) where document d's sorted unique
    32-bit n-gram hashes are hashes[offsets[d]:offsets[d+1]] (none when it has no words).

    Normalisation, splitting and word interning run in Arrow's C++ kernels; only the distinct
    words of the batch are hashed in Python, and n-grams never cross document boundaries."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n_docs = len(arr)
    # Words are the runs of letters, digits and underscores (Python's \w+) of the lowercased
    # text: punctuation, symbols and whitespace are all word breaks.
    cleaned = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_lower(arr.fill_null("")), r"[^\p{L}\p{N}_]+", " "),
                           characters=" ")
    words = pc.split_pattern(cleaned, " ")
    # "" splits into one empty word: drop it (a text without words has no shingles).
    counts = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    counts[pc.equal(cleaned, "").to_numpy(zero_copy_only=False)] = 0
    flat = pc.list_flatten(pc.filter(words, pc.not_equal(cleaned, "")))
    if len(flat) == 0:
        return _EMPTY, np.zeros(n_docs + 1, dtype=np.int64)
    encoded = pc.dictionary_encode(flat)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    w = _word_hashes(encoded.dictionary.to_pylist())[indices]
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
                full += w[k:k + n_full]
            h[~short] = full[starts[~short]]
        # Documents shorter than n words: one shingle of all their words.
        for d_start, d_count, i in zip(starts[short], counts[doc_of_start[short]], np.flatnonzero(short)):
            acc = np.uint64(0)
            for k in range(int(d_count)):
                acc = acc * _NGRAM_MULT + w[d_start + k]
            h[i] = acc
    hashed = _splitmix64(h) >> _SHIFT32
    keyed = np.sort((doc_of_start.astype(np.uint64) << _SHIFT32) | hashed)
    keyed = keyed[np.r_[True, keyed[1:] != keyed[:-1]]]     # sort + mask: faster than np.unique
    docs = (keyed >> _SHIFT32).astype(np.int64)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, minlength=n_docs), out=offsets[1:])
    return (keyed & _MASK32).astype(np.uint32), offsets


def shingles(text: str, ngram: int = 5) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams of one text (empty when it has no words)."""
    hashes, offsets = shingle_batch([text], ngram)
    return hashes[offsets[0]:offsets[1]]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays."""
    if a.size == 0 or b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


class MinHasher:
    """`num_perm` universal hash functions drawn from `seed`; the same seed gives the same
    signatures on every executor."""

    def __init__(self, num_perm: int, seed: int = 0, chunk: int = 1 << 15):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D696E48]))
        self.a = (rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) << np.uint64(1)
        self.num_perm = num_perm
        self.chunk = chunk

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """[documents, num_perm] uint32 MinHash signatures of a list of shingle arrays."""
        lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
        offsets = np.zeros(len(shingle_sets) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(shingle_sets) if len(shingle_sets) else _EMPTY
        return self.signatures_flat(flat, offsets)

    def signatures_flat(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of documents given as (hashes, offsets) from `shingle_batch`; a document
        without shingles gets the all-SENTINEL signature (the caller skips it)."""
        n_docs = len(offsets) - 1
        sig64 = np.full((n_docs, self.num_perm), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        if n_docs == 0 or len(hashes) == 0:
            return np.full((n_docs, self.num_perm), SENTINEL, dtype=np.uint32)
        flat = hashes.astype(np.uint64)
        doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
        a, b = self.a[:, None], self.b[:, None]
        for lo in range(0, len(flat), self.chunk):
            x = flat[None, lo:lo + self.chunk]
            docs = doc_of[lo:lo + self.chunk]
            with np.errstate(over="ignore"):
                hv = a * x                                                    # [num_perm, m]
                hv += b
            # min of the 64-bit values, shifted afterwards: the shift is monotone, so this is
            # the min of the 32-bit hashes at a third of the memory traffic.
            starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
            mins = np.minimum.reduceat(hv, starts, axis=1)                    # [num_perm, segments]
            seg_docs = docs[starts]
            sig64[seg_docs] = np.minimum(sig64[seg_docs], mins.T)
        sig = (sig64 >> _SHIFT32).astype(np.uint32)
        sig[np.diff(offsets) == 0] = SENTINEL
        return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[documents, bands] int64 keys: band j's key hashes the band index and its r values, so
    equal keys in the same band mean equal bands (up to 64-bit collisions)."""
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(sig.shape[0], np.uint64(j + 1) * _NGRAM_MULT, dtype=np.uint64)
            for col in range(j * rows, (j + 1) * rows):
                h = _splitmix64(h ^ sig[:, col].astype(np.uint64))
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
        return 1.0 - (1.0 - s ** self.rows) ** self.bands


_GRID = np.linspace(0.0, 1.0, 2001)


def _areas(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    p = 1.0 - (1.0 - _GRID ** rows) ** bands
    lo, hi = _GRID <= threshold, _GRID >= threshold
    return float(np.trapezoid(p[lo], _GRID[lo])), float(np.trapezoid(1.0 - p[hi], _GRID[hi]))


def best_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                    fn_weight: float = 0.5) -> LSHParams:
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


def lsh_params(threshold: float, num_perm: int | None = None, bands: int | None = None,
               rows: int | None = None, fp_weight: float = 0.5, fn_weight: float = 0.5,
               tolerance: float = 0.10) -> tuple[LSHParams, list[LSHParams]]:
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


def format_tradeoff(threshold: float, chosen: LSHParams, table: list[LSHParams],
                    fp_weight: float, fn_weight: float) -> str:
    lines = [f"MinHash LSH for Jaccard >= {threshold}: weights FP {fp_weight}, FN {fn_weight}",
             "  num_perm  bands x rows  FP area  FN area  weighted  P(detect at t)  steepest at"]
    for p in table:
        mark = " <- chosen" if p == chosen else ""
        lines.append(f"  {p.num_perm:8d}  {p.bands:5d} x {p.rows:<4d}  {p.false_positive_area:7.4f}  "
                     f"{p.false_negative_area:7.4f}  {fp_weight * p.false_positive_area + fn_weight * p.false_negative_area:8.4f}"
                     f"  {p.probability(threshold):14.3f}  {p.effective_threshold:11.3f}{mark}")
    return "\n".join(lines)
