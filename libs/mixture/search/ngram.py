"""The n-gram estimate: how well a mixture's tokens, counted as a bigram model, predict the target.

A proxy LM of a few million parameters trained on a few hundred thousand tokens has learnt little
beyond which tokens follow which. So before any proxy runs, a mixture's fit to the target can be
estimated from counts: a model that saw T tokens of mixture w (T = the proxy's tokens) has seen
about T * w_c / N_c times each bigram of cluster c (N_c tokens counted), so its interpolated
bigram probability of the target's token t after token s is

    p_w(t | s) = (T * sum_c w_c a_c(s, t) + beta * sum_c w_c u_c(t)) / (T * sum_c w_c b_c(s) + beta)

with a_c(s, t) and b_c(s) the bigram's and the context's relative frequencies in cluster c, u_c(t)
the cluster's add-0.01 unigram probability and beta = `search.ngram.smoothing` x T. The estimate is
the mean log p_w over the target's tokens (nats, higher is better): zero parameters fitted to the
runs, so it ranks mixtures before a single proxy has trained, and the `ngram` predictors
(`mixture.search.predictors.ngram`) fit only its scale and what it misses. Hashed n-gram
statistics to match a target are DSIR's idea (Xie et al., 2023); here they score mixtures, not
documents. Measured on the search-quality benchmark's 12 searches (bench/RESULTS.md): the estimate
alone ranks their proxy runs with Spearman 0.52-0.98 (median 0.84), where the best fitted
predictor of each search reached 0.04-0.92 (median 0.78).

Cost: one pass over at most `max_tokens` tokens of each cluster (evenly spaced blocks) counting only
the bigrams the target has; scoring m mixtures is two [positions x clusters] @ [clusters x m]
products (positions = `search.ngram.positions`). Needs the target's validation text (a target
of tasks only has no estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCKS = 64  # a cluster larger than max_tokens is counted in this many evenly spaced blocks
CHUNK = 4096  # mixtures scored per matrix product


@dataclass
class Estimate:
    """`estimate(W)`: the mean log-probability of the target's tokens under each row's bigram model.
    One row per distinct target bigram, weighted by how often the target has it."""

    numerator: np.ndarray  # [bigrams, clusters]: T * a_c(s, t) + beta * u_c(t)
    context: np.ndarray  # [bigrams, clusters]: T * b_c(s)
    weight: np.ndarray  # [bigrams]: each one's share of the target's positions
    beta: float
    names: list[str]

    def __call__(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        if W.shape[1] != len(self.names):
            raise ValueError(f"the estimate knows {len(self.names)} clusters, the mixtures have {W.shape[1]}")
        out = np.empty(len(W))
        for i in range(0, len(W), CHUNK):
            w = W[i : i + CHUNK].T / W[i : i + CHUNK].sum(axis=1)
            p = (self.numerator @ w) / (self.context @ w + self.beta)
            out[i : i + CHUNK] = self.weight @ np.log(p)
        return out


def sample(tokens: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """The tokens counted: all of them, or BLOCKS evenly spaced blocks of max_tokens in all."""
    n = len(tokens)
    if n <= max_tokens:
        return [np.asarray(tokens)]
    size = max(2, max_tokens // BLOCKS)
    starts = np.linspace(0, n - size, BLOCKS).astype(np.int64)
    return [np.asarray(tokens[s : s + size]) for s in starts]


def cluster_counts(blocks: list[np.ndarray], keys: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Counts in one cluster's blocks of the target's bigrams (`keys`, sorted unique s * vocab + t)
    and of every token; and the tokens counted."""
    pair = np.zeros(len(keys), dtype=np.int64)
    uni = np.zeros(vocab, dtype=np.int64)
    n = 0
    for b in blocks:
        b = b.astype(np.int64)
        n += len(b)
        uni += np.bincount(b, minlength=vocab)[:vocab]
        k = b[:-1] * vocab + b[1:]
        at = np.clip(np.searchsorted(keys, k), 0, len(keys) - 1)
        hit = keys[at] == k
        pair += np.bincount(at[hit], minlength=len(keys))
    return pair, uni, n


def target_pairs(windows: list[np.ndarray], positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, token) at at most `positions` evenly spaced positions of the target's
    windows (a bigram never spans two windows)."""
    ws = [np.asarray(a, dtype=np.int64) for a in windows if len(a) >= 2]
    if not ws:
        raise ValueError("the n-gram estimate needs a target window of at least 2 tokens")
    prev = np.concatenate([a[:-1] for a in ws])
    tok = np.concatenate([a[1:] for a in ws])
    if len(tok) > positions:
        at = np.linspace(0, len(tok) - 1, positions).astype(np.int64)
        prev, tok = prev[at], tok[at]
    return prev, tok


def build(
    shards: dict[str, np.ndarray],
    names: list[str],
    windows: list[np.ndarray],
    vocab: int,
    tokens: int,
    smoothing: float,
    max_tokens: int,
    positions: int,
) -> Estimate:
    """The estimate for mixtures over `names` (their token arrays in `shards`) of a proxy that trains
    on `tokens` tokens, on the target's token windows."""
    prev, tok = target_pairs(windows, positions)
    keys, count = np.unique(prev * vocab + tok, return_counts=True)
    num = np.empty((len(keys), len(names)))
    ctx = np.empty((len(keys), len(names)))
    for j, c in enumerate(names):
        pair, uni, n = cluster_counts(sample(shards[c], max_tokens), keys, vocab)
        n = max(n, 1)
        unigram = (uni[keys % vocab] + 0.01) / (n + 0.01 * vocab)
        num[:, j] = tokens * pair / n + smoothing * tokens * unigram
        ctx[:, j] = tokens * uni[keys // vocab] / n
    return Estimate(num, ctx, count / count.sum(), smoothing * tokens, list(names))


def for_search(cfg, lab, names: list[str]) -> Estimate | None:
    """The estimate for a search of `cfg` over the climblab `lab`, on the target's select part; None
    when `search.ngram` is off, no predictor candidate uses it or the target has no validation text."""
    from mixture.registry import PREDICTORS
    from mixture.search import evaluate

    scfg = cfg.search
    used = any(getattr(PREDICTORS.get(n), "uses_estimate", False) for n in scfg.predictor.candidates)
    if not scfg.ngram.enabled or not used or not scfg.target.val_uris:
        return None
    tgt = evaluate.target_for(scfg.target, lab.tokenizer_path, lab.eos_id, cfg.seed, "select")
    shards = {c: lab.shard(c).tokens for c in names}
    n = scfg.ngram
    return build(shards, names, tgt.val_ids, lab.vocab_size, scfg.proxy.tokens, n.smoothing, n.max_tokens, n.positions)
