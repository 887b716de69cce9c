"""Corpus shapes for `curate_throughput.py` (issue #24): long or short documents, a given share
of them kept by the default filters (or the filters off), any number of documents; and the peak
resident memory of a process tree while a pipeline runs.

A shape is `<length>:<keep>`: length `long` (the sample corpus's documents of at least 1,000
words, median ~1,400) or `short` (pieces of 80-250 words cut from every sample document at line
ends); keep `15`, `50`, `90` (per cent of the non-duplicate documents that this project's default
filters keep, by choosing which documents go in) or `off` (no filter in either pipeline, MinHash
dedup only; the documents as they come). Volume comes from variants: a quarter of a document's
words replaced by random words of the pool's vocabulary (Jaccard ~0.2 to the original: a new
document of the same style, not a near duplicate); every variant is classified again, so the
kept share is what the filters decide. Then 8% more documents are near duplicates of randomly
chosen ones (`curate_dedup`'s edits, insertions, deletions and shuffles at its levels), so both
sides of the 0.8 threshold occur. Ground truth: exact Jaccard of the word 5-gram sets, from the
32-bit shingle hashes of `mixture.curate.minhash.shingle_batch` (a sparse product over the pairs
that share a shingle).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import threading
import time
import zlib

import curate_dedup as cd
import numpy as np

SHAPES = [f"{length}:{keep}" for length in ("long", "short") for keep in ("15", "50", "90", "off")]
NEAR_SHARE = 0.08


def parse_shape(shape: str) -> tuple[str, float | None]:
    length, _, keep = shape.partition(":")
    if length not in ("long", "short") or keep not in ("15", "50", "90", "off"):
        raise SystemExit(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    return length, None if keep == "off" else int(keep) / 100


def _pool(length: str) -> list[str]:
    with gzip.open(cd.SAMPLE, "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    if length == "long":
        return [t for t in docs if len(t.split()) >= 1000]
    pieces = []
    for text in docs:
        lines, words = [], 0
        target = 80 + zlib.crc32(text[:50].encode()) % 170
        for line in text.split("\n"):
            lines.append(line)
            words += len(line.split())
            if words >= target:
                pieces.append("\n".join(lines).strip())
                lines, words = [], 0
    return [p for p in pieces if p]


def _variant(text: str, vocab: list[str], rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 4)):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def passes(texts: list[str]) -> np.ndarray:
    """Whether this project's default filters keep each text (the select stage's decision)."""
    from mixture.config import FiltersConfig
    from mixture.curate.filters import FilterChain, batch_signals

    chain = FilterChain(FiltersConfig())
    names = list(chain.functions)
    n_words, values = batch_signals(texts, chain.functions)
    out = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        signals = dict(zip(names, values[i].tolist()), n_words=float(n_words[i]))
        out[i] = chain.decide(signals, text).reason is None
    return out


def build(shape: str, n_docs: int, seed: int = 0) -> list[dict]:
    """`n_docs` documents of `shape`, shuffled, with ids `<shape>-<n>`."""
    length, keep = parse_shape(shape)
    rng = random.Random(seed)
    pool = _pool(length)
    vocab = [w for t in pool[:300] for w in t.split() if w.isalpha()]
    n_main = n_docs - int(n_docs * NEAR_SHARE)
    want = {True: round(keep * n_main), False: n_main - round(keep * n_main)} if keep is not None else None
    ok = passes(pool) if want else np.ones(len(pool), dtype=bool)
    bases = {True: [t for t, k in zip(pool, ok) if k], False: [t for t, k in zip(pool, ok) if not k]}
    chosen: list[str] = []
    have = {True: 0, False: 0}
    for status in (True, False) if want else ():  # the originals first, as many as fit
        take = bases[status][: want[status]]
        chosen += take
        have[status] += len(take)
    if not want:
        chosen = pool[:n_main]
    while len(chosen) < n_main:
        need = [s for s in (True, False) if want is None or have[s] < want[s]]
        batch = [_variant(rng.choice(bases[rng.choice(need)] if want else pool), vocab, rng) for _ in range(2000)]
        status = passes(batch) if want else np.ones(len(batch), dtype=bool)
        for text, s in zip(batch, status.tolist()):
            if len(chosen) < n_main and (want is None or have[s] < want[s]):
                chosen.append(text)
                have[s] += 1
    near = []
    for _ in range(n_docs - n_main):
        kind = rng.choice(["edit", "insert", "delete", "shuffle", "shuffle+edit", "edit+insert+delete"])
        text = rng.choice(chosen)
        for part in kind.split("+"):
            text = cd._mutate(text, part, rng.choice(cd.LEVELS), rng)
        near.append(text)
    texts = chosen + near
    rng.shuffle(texts)
    tag = shape.replace(":", "")
    return [{"id": f"{tag}-{i:07d}", "text": t} for i, t in enumerate(texts)]


def ground_truth(texts: list[str], threshold: float) -> set[tuple[int, int]]:
    """Pairs (i < j) whose word-5-gram Jaccard (32-bit shingle hashes) is >= threshold."""
    from mixture.curate import minhash
    from scipy import sparse

    parts = [minhash.shingle_batch(texts[lo : lo + 2000], 5) for lo in range(0, len(texts), 2000)]
    hashes = np.concatenate([h for h, _ in parts])
    sizes = np.concatenate([np.diff(o) for _, o in parts])
    cols = np.unique(hashes, return_inverse=True)[1]
    rows = np.repeat(np.arange(len(texts)), sizes)
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(texts), cols.max() + 1))
    inter = (x @ x.T).tocoo()
    keep = inter.row < inter.col
    r, c, v = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = v / (sizes[r] + sizes[c] - v)
    return {(int(a), int(b)) for a, b, j in zip(r, c, jac) if j >= threshold}


class PeakRSS:
    """Peak resident memory of this process and all its descendants (summed, so pages shared
    by forked workers count once per process), sampled every 0.2 s from /proc."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        root = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(root))
            time.sleep(0.2)


def _tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(name))
            rss[int(name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total
