"""The statistics of `_stats.TextStats` for a batch of documents at once, in numpy over the
code points of the whole batch: the same values, bit for bit (tests/curate/test_filters.py
compares every signal on tricky texts), without a per-document Python loop over words, lines or
n-grams.

The texts are joined and viewed as UTF-32 code points (so lengths are Python's `len`); a
per-code-point table says which classes a character is in (Python's own `str.isspace`, the
filters' punctuation, the regexes' `\\w` and letters, ...), filled from Python on first sight of
a character, so the definitions stay the ones `TextStats` uses. Words, lines and paragraphs are
spans of code points; equal strings are found by 64-bit hashes of their code points (distinct
strings collide with probability ~2^-64 per pair, as the n-gram hashes of `TextStats` do). The
word n-grams hash each document's word ids in the order the words first occur, exactly as
`TextStats` does, so a tie for the most frequent n-gram is broken the same way.

A signal function of a filter is called once on a `BatchStats` (each property is an array over
the documents); one that does not give such an array (a filter added later that reads something
only `TextStats` has) is computed document by document (`batch_signals`).
"""

from __future__ import annotations

import numpy as np

from mixture.curate.filters._codepoints import (
    _NL,
    ALPHA,
    BULLET,
    CLOSE,
    END,
    HSPACE,
    PUNCT,
    SENT,
    SPACE,
    WORD,
    _doc_salts,
    _dups,
    _first_at_or_after,
    _next,
    _prev,
    _ratio,
    _runs,
    _seg_sum,
    _splitmix64,
    _tables,
)
from mixture.curate.filters._stats import _NGRAM_MULT, TextStats, ngram_hashes


class BatchStats:
    """The `TextStats` of many documents: each property is an array with one value per
    document, equal to what `TextStats(text)` gives for that document."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.n_docs = n = len(texts)
        self.lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        self.doc_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.doc_off[1:])
        self.cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self.cls = _tables().classes(self.cp)
        self.space = (self.cls & SPACE) != 0
        self.bound = np.zeros(len(self.cp) + 1, dtype=bool)  # True where a document starts (and at the end)
        self.bound[self.doc_off] = True
        self._memo: dict = {}

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _keyed(self, h: np.ndarray, doc: np.ndarray) -> np.ndarray:
        """One 64-bit key per (document, hash): equal keys mean equal strings in one document."""
        return h ^ self._once("salts", lambda: _doc_salts(self.n_docs))[doc]

    def _doc_of(self, pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.doc_off, pos, side="right") - 1

    def _count(self, mask: np.ndarray) -> np.ndarray:
        """Characters per document where `mask` holds (a rare character: counted where it is)."""
        return np.bincount(self._doc_of(np.flatnonzero(mask)), minlength=self.n_docs)

    def _span_hashes(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """64-bit hashes of the code points cp[starts[i]:ends[i]] (`minhash._string_hashes`'
        polynomial: one prefix sum per batch serves words, lines and paragraphs)."""
        from mixture.curate.minhash import _LEN_MIX, _power_tables

        if "prefix" not in self._memo:
            pw, ipw = _power_tables(len(self.cp) + 1)
            g = np.zeros(len(self.cp) + 1, dtype=np.uint64)
            with np.errstate(over="ignore"):
                np.cumsum(self.cp * pw[: len(self.cp)], out=g[1:])
            self._memo["prefix"] = (g, ipw)
        g, ipw = self._memo["prefix"]
        with np.errstate(over="ignore"):
            h = (g[ends] - g[starts]) * ipw[starts]
            h ^= (ends - starts).astype(np.uint64) * _LEN_MIX
        return _splitmix64(h)

    # -------------------------------------------------------------------------- words
    @property
    def _words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, document, offsets per document) of the whitespace-separated words."""

        def compute():
            ns = ~self.space
            n = len(ns)
            starts = np.flatnonzero(ns & (_prev(self.space) | self.bound[:n]))
            ends = np.flatnonzero(ns & (_next(self.space) | self.bound[1:])) + 1
            off = np.searchsorted(starts, self.doc_off)
            doc = np.repeat(np.arange(self.n_docs), np.diff(off))
            return starts, ends, doc, off

        return self._once("words", compute)

    @property
    def n_words(self) -> np.ndarray:
        off = self._words[3]
        return off[1:] - off[:-1]

    @property
    def word_chars(self) -> np.ndarray:
        return self._once("word_chars", lambda: np.diff(self._word_len_cum[self._words[3]]))

    @property
    def _word_len_cum(self) -> np.ndarray:
        """Characters of the words before each word (and of all of them, last)."""

        def compute():
            starts, ends, _, _ = self._words
            c = np.zeros(len(starts) + 1, dtype=np.int64)
            np.cumsum(ends - starts, out=c[1:])
            return c

        return self._once("word_len_cum", compute)

    @property
    def _bare(self) -> tuple[np.ndarray, np.ndarray]:
        """(first character, length) of each word without leading and trailing punctuation."""

        def compute():
            starts, ends, _, _ = self._words
            first, last = starts.copy(), ends - 1
            for pos, step in ((first, 1), (last, -1)):  # most words have no punctuation to strip
                todo = np.flatnonzero((self.cls[pos] & PUNCT) != 0)
                while len(todo):
                    pos[todo] += step
                    todo = todo[first[todo] <= last[todo]]
                    todo = todo[(self.cls[pos[todo]] & PUNCT) != 0]
            return first, np.maximum(last - first + 1, 0)

        return self._once("bare", compute)

    @property
    def mean_word_length(self) -> np.ndarray:
        off = self._words[3]
        lengths = self._bare[1]
        total, nonempty = _seg_sum(lengths, off), _seg_sum(lengths > 0, off)
        return np.where(nonempty > 0, total / np.maximum(nonempty, 1), 0.0)

    @property
    def hash_word_ratio(self) -> np.ndarray:
        return _ratio(self._count(self.cp == ord("#")), self.n_words)

    @property
    def ellipsis_word_ratio(self) -> np.ndarray:
        dot = self.cp == ord(".")
        n = len(dot)
        starts = np.flatnonzero(dot & (~_prev(dot) | self.bound[:n]))
        ends = np.flatnonzero(dot & (~_next(dot) | self.bound[1:])) + 1
        triples = np.bincount(self._doc_of(starts), weights=(ends - starts) // 3, minlength=self.n_docs)
        return _ratio(triples.astype(np.int64) + self._count(self.cp == 0x2026), self.n_words)

    @property
    def symbol_word_ratio(self) -> np.ndarray:
        return np.maximum(self.hash_word_ratio, self.ellipsis_word_ratio)

    @property
    def alpha_words_ratio(self) -> np.ndarray:
        starts, _, _, off = self._words
        if len(starts) == 0:
            return np.zeros(self.n_docs)
        # From one word's start to the next only that word's characters can be letters.
        has = np.logical_or.reduceat((self.cls & ALPHA) != 0, starts)
        return _ratio(_seg_sum(has, off), self.n_words)

    def stop_word_count(self, stop_words: frozenset[str]) -> np.ndarray:
        return self._once(("stop", stop_words), lambda: self._stop_word_count(stop_words))

    def _stop_word_count(self, stop_words: frozenset[str]) -> np.ndarray:
        """Occurrences of the lower-cased bare words in `stop_words`. Lower case per character is
        Python's `str.lower` for ASCII stop words (no other character lowers to ASCII alone);
        with other stop words, documents with a non-ASCII character are counted by `TextStats`."""
        starts, ends, doc, _ = self._words
        first, length = self._bare
        lower = _tables().lower
        out = np.zeros(self.n_docs, dtype=np.int64)
        for word in stop_words:
            sel = np.flatnonzero(length == len(word))
            match = np.ones(len(sel), dtype=bool)
            for k, ch in enumerate(word):
                match &= lower[self.cp[first[sel] + k]] == ord(ch)
            out += np.bincount(doc[sel[match]], minlength=self.n_docs)
        if not all(w.isascii() for w in stop_words):
            for d in np.flatnonzero(self._count(self.cp >= 128) > 0):
                out[d] = TextStats(self.texts[d]).stop_word_count(stop_words)
        return out

    # -------------------------------------------------------------------------- lines
    def _blocks(self, key: str, breaks_of) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first, last character, document) of the stripped, non-blank pieces between the
        break characters at the positions `breaks_of()` gives (a piece also ends at each
        document end): a piece runs from its first word's start to its last word's end."""

        def compute():
            starts, ends, doc, _ = self._words
            cuts = np.union1d(breaks_of(), self.doc_off)
            first_word = np.searchsorted(starts, cuts[:-1])
            last_word = np.searchsorted(ends, cuts[1:], side="right") - 1
            keep = first_word <= last_word
            first_word, last_word = first_word[keep], last_word[keep]
            return starts[first_word], ends[last_word] - 1, doc[first_word]

        return self._once(key, compute)

    @property
    def _lines(self):
        return self._blocks("lines", lambda: np.flatnonzero(self.cp == _NL))

    @property
    def n_lines(self) -> np.ndarray:
        return np.bincount(self._lines[2], minlength=self.n_docs)

    def _line_share(self, mask: np.ndarray) -> np.ndarray:
        return _ratio(np.bincount(self._lines[2][mask], minlength=self.n_docs), self.n_lines)

    @property
    def bullet_lines_ratio(self) -> np.ndarray:
        return self._line_share((self.cls[self._lines[0]] & BULLET) != 0)

    @property
    def ellipsis_lines_ratio(self) -> np.ndarray:
        first, last, _ = self._lines
        cp = self.cp
        dots = (last - first >= 2) & (cp[last] == ord("."))
        dots &= (cp[np.maximum(last - 1, 0)] == ord(".")) & (cp[np.maximum(last - 2, 0)] == ord("."))
        return self._line_share((cp[last] == 0x2026) | dots)

    @property
    def punct_line_ratio(self) -> np.ndarray:
        return self._line_share((self.cls[self._lines[1]] & END) != 0)

    def short_line_ratio(self, max_chars: int) -> np.ndarray:
        first, last, _ = self._lines
        return self._line_share(last - first + 1 <= max_chars)

    @property
    def newlines_per_word(self) -> np.ndarray:
        return _ratio(self._count(self.cp == _NL), self.n_words)

    def _block_dups(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        first, last, doc = self._lines if key == "lines" else self._paragraphs
        return self._once(
            ("dups", key),
            lambda: _dups(self._keyed(self._span_hashes(first, last + 1), doc), doc, last - first + 1, self.n_docs),
        )

    @property
    def dup_line_frac(self) -> np.ndarray:
        return _ratio(self._block_dups("lines")[0], self.n_lines)

    @property
    def dup_line_char_frac(self) -> np.ndarray:
        return _ratio(self._block_dups("lines")[1], self.lengths)

    # --------------------------------------------------------------------- paragraphs
    @property
    def _paragraphs(self):
        return self._blocks("paragraphs", self._paragraph_breaks)

    def _paragraph_breaks(self) -> np.ndarray:
        """A paragraph ends at a newline followed by another one with only spaces, tabs,
        returns, form feeds or vertical tabs between (`_stats._BLANK_SPLIT`)."""
        newlines = np.flatnonzero(self.cp == _NL)
        solid = np.flatnonzero((self.cls & HSPACE) == 0)
        nxt = _first_at_or_after(solid, newlines + 1, len(self.cp))
        doc_end = self.doc_off[self._doc_of(newlines) + 1]
        is_break = (nxt < doc_end) & (self.cp[np.minimum(nxt, max(len(self.cp) - 1, 0))] == _NL)
        return newlines[is_break]

    @property
    def n_paragraphs(self) -> np.ndarray:
        return np.bincount(self._paragraphs[2], minlength=self.n_docs)

    @property
    def dup_para_frac(self) -> np.ndarray:
        return _ratio(self._block_dups("paragraphs")[0], self.n_paragraphs)

    @property
    def dup_para_char_frac(self) -> np.ndarray:
        return _ratio(self._block_dups("paragraphs")[1], self.lengths)

    # ------------------------------------------------------------------------ n-grams
    @property
    def _word_ids(self) -> np.ndarray:
        """Each word's id in its document: distinct words numbered in order of first occurrence
        (`TextStats._word_arrays`)."""

        def compute():
            starts, ends, doc, off = self._words
            order, run_starts, run = _runs(self._keyed(self._span_hashes(starts, ends), doc))
            if len(order) == 0:
                return np.zeros(0, dtype=np.uint64)
            first = np.minimum.reduceat(order, run_starts)  # first occurrence of each distinct word
            rank = np.empty(len(first), dtype=np.int64)
            rank[np.argsort(first)] = np.arange(len(first))
            before = np.searchsorted(np.sort(first), off[:-1])  # distinct words of earlier documents
            ids = np.empty(len(order), dtype=np.uint64)
            ids[order] = (rank[run] - before[doc[order]]).astype(np.uint64)
            return ids

        return self._once("ids", compute)

    def _ngrams_at(self, pos: np.ndarray, n: int) -> np.ndarray:
        """The polynomial hashes of `TextStats._ngrams(n)` of the n-grams starting at word `pos`."""
        return ngram_hashes(self._word_ids, pos, n)

    def _full_ngrams(self, n: int) -> np.ndarray:
        """`_ngrams_at` at every word position that has n - 1 words after it in the batch,
        built from the (n-1)-grams (windows across documents are never used)."""

        def compute():
            ids = self._word_ids
            if n == 1:
                with np.errstate(over="ignore"):
                    return ids + np.uint64(1)
            prev = self._full_ngrams(n - 1)
            with np.errstate(over="ignore"):
                return prev[: len(prev) - 1] * _NGRAM_MULT + ids[n - 1 :] + np.uint64(1)

        return self._once(("full", n), compute)

    def _ngram_starts(self, n: int) -> np.ndarray:
        """Every word position with n words left in its document."""
        _, _, doc, off = self._words
        pos = np.arange(len(doc))
        return pos[pos + n <= off[doc + 1]]

    def _grouped(self, n: int) -> tuple[np.ndarray, ...]:
        """The n-grams that may occur more than once in their document, grouped: (start
        positions, hashes, sort order, run starts, run of each in order, run sizes). When the
        (n-1)-grams are grouped, only the positions where they repeat are looked at: an n-gram
        that repeats starts with an (n-1)-gram that repeats (`TextStats._repeated`'s pruning),
        so every repeated n-gram keeps all its occurrences."""

        def compute():
            _, _, doc, off = self._words
            prev = self._memo.get(("grouped", n - 1))
            if prev is None:
                pos = self._ngram_starts(n)
                h = self._full_ngrams(n)[pos] if n <= 5 else self._ngrams_at(pos, n)
            else:
                p_pos, _, p_order, _, p_run, p_sizes = prev
                multi = np.zeros(len(p_pos), dtype=bool)
                multi[p_order] = p_sizes[p_run] > 1
                pos = p_pos[multi]
                pos = pos[pos + n <= off[doc[pos] + 1]]
                h = self._ngrams_at(pos, n)
            order, starts, run = _runs(self._keyed(h, doc[pos]))
            return pos, h, order, starts, run, np.diff(np.r_[starts, len(order)])

        return self._once(("grouped", n), compute)

    def _repeated(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(start of every n-gram occurrence whose n-gram occurs more than once in its document,
        whether it is an occurrence after the first): `TextStats._repeated`."""

        def compute():
            pos, _, order, starts, run, sizes = self._grouped(n)
            if len(order) == 0:
                return pos, np.zeros(0, dtype=bool)
            first = np.minimum.reduceat(order, starts)
            multi = np.zeros(len(pos), dtype=bool)
            multi[order] = sizes[run] > 1
            later = np.zeros(len(pos), dtype=bool)
            later[order] = order != first[run]
            return pos[multi], later[multi]

        return self._once(("repeated", n), compute)

    def dup_ngram_char_frac(self, n: int) -> np.ndarray:
        starts, ends, doc, off = self._words
        pos, later = self._repeated(n)
        s = pos[later]
        cover = np.cumsum(np.bincount(s, minlength=len(doc) + 1) - np.bincount(s + n, minlength=len(doc) + 1))
        covered = _seg_sum(np.where(cover[: len(doc)] > 0, ends - starts, 0), off)
        return np.where(self.word_chars > 0, covered / np.maximum(self.word_chars, 1), 0.0)

    def top_ngram_char_frac(self, n: int) -> np.ndarray:
        """`TextStats.top_ngram_char_frac`: the most frequent n-gram when it occurs more than
        once (ties: the smallest hash), from its first occurrence."""
        _, _, doc, _ = self._words
        pos, h, order, run_starts, _, counts = self._grouped(n)
        out = np.zeros(self.n_docs)
        if len(order) == 0:
            return out
        first = np.minimum.reduceat(order, run_starts)  # index into pos of the first occurrence
        run_doc, run_h = doc[pos[first]], h[first]
        top = np.zeros(self.n_docs, dtype=np.int64)
        np.maximum.at(top, run_doc, counts)
        tied = np.flatnonzero((counts == top[run_doc]) & (counts >= 2))
        smallest = np.full(self.n_docs, np.uint64(0xFFFFFFFFFFFFFFFF))
        np.minimum.at(smallest, run_doc[tied], run_h[tied])
        chosen = tied[run_h[tied] == smallest[run_doc[tied]]]
        at, d = pos[first[chosen]], run_doc[chosen]
        chars = self._word_len_cum[at + n] - self._word_len_cum[at]
        out[d] = np.minimum(1.0, (chars * counts[chosen]) / self.word_chars[d])
        return out

    # ---------------------------------------------------------------- C4 and the rest
    @property
    def sentences(self) -> np.ndarray:
        """Matches of `_stats._SENTENCE_END` (a run of sentence-end marks, then closing quotes or
        brackets, then whitespace or the end), plus one when a word character follows the last."""
        cls, n = self.cls, len(self.cp)
        mark = (cls & SENT) != 0
        ends = np.flatnonzero(mark & (~_next(mark) | self.bound[1:])) + 1
        doc = self._doc_of(ends - 1)
        doc_end = self.doc_off[doc + 1]
        after = np.minimum(_first_at_or_after(np.flatnonzero((cls & CLOSE) == 0), ends, n), doc_end)
        match = (after == doc_end) | ((cls[np.minimum(after, max(n - 1, 0))] & SPACE) != 0)
        count = np.bincount(doc[match], minlength=self.n_docs)
        last = self.doc_off[:-1].copy()
        np.maximum.at(last, doc[match], after[match])
        word_at = _first_at_or_after(np.flatnonzero((cls & WORD) != 0), last, n)
        return count + (word_at < self.doc_off[1:])

    @property
    def has_lorem_ipsum(self) -> np.ndarray:
        return np.fromiter(("lorem ipsum" in t.lower() for t in self.texts), dtype=bool, count=self.n_docs)

    @property
    def has_curly_brace(self) -> np.ndarray:
        return self._count((self.cp == ord("{")) | (self.cp == ord("}"))) > 0


CHUNK_CHARS = 1 << 21  # code points per BatchStats: ~40 MB of working arrays


def batch_signals(texts: list[str], functions: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n_words [documents], signals [documents, len(functions)] float64) of `texts`: what
    `compute_signals(TextStats(text), functions)` gives for each, computed `CHUNK_CHARS` code
    points at a time."""
    n_words = np.zeros(len(texts), dtype=np.int64)
    out = np.zeros((len(texts), len(functions)), dtype=np.float64)
    lo = 0
    while lo < len(texts):
        hi, size = lo, 0
        while hi < len(texts) and (hi == lo or size + len(texts[hi]) <= CHUNK_CHARS):
            size += len(texts[hi])
            hi += 1
        n_words[lo:hi], out[lo:hi] = _chunk_signals(texts[lo:hi], functions)
        lo = hi
    return n_words, out


def _chunk_signals(texts: list[str], functions: dict) -> tuple[np.ndarray, np.ndarray]:
    stats = BatchStats(texts)
    out = np.zeros((len(texts), len(functions)), dtype=np.float64)
    singles: list[TextStats] | None = None
    for j, fn in enumerate(functions.values()):
        try:
            value = fn(stats)
        except (AttributeError, TypeError, ValueError):
            value = None
        if isinstance(value, np.ndarray) and value.shape == (len(texts),):
            out[:, j] = value
        else:  # a signal that only `TextStats` can give: one document at a time
            singles = singles if singles is not None else [TextStats(t) for t in texts]
            out[:, j] = [float(fn(s)) for s in singles]
    return stats.n_words, out
