"""Mixture sampling: Dirichlet draws around the clusters' token shares.

Follows CLIMB (Diao et al., 2025, Sec. 3 and App. on the search space) and RegMix (Liu et al.,
2024): a mixture is a Dirichlet draw whose mean is the clusters' token prior sharpened with a
temperature (prior**0.5, renormalised, so small clusters get a fair chance), and whose
concentration is drawn log-uniformly from [0.1, 5.0] so that both near-one-hot and near-prior
mixtures are explored. A mixture that would repeat a cluster more than `epoch_cap` (15) times its
natural share is rejected (the pre-training run would see that cluster for too many epochs), weights
below 2e-4 are zeroed and the rest rounded to multiples of 2e-4, and duplicates are removed.

Everything here is a pure function of its arguments and a `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np


def sharpen(prior: np.ndarray, temperature: float) -> np.ndarray:
    """prior**temperature renormalised (temperature < 1 flattens the prior towards uniform)."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError("the prior must be a non-empty, non-negative vector with a positive sum")
    t = np.where(p > 0, p, 0.0) ** temperature
    t[p == 0] = 0.0
    return t / t.sum()


def _log_dirichlet(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """Row-wise Dirichlet draws, computed in log space.

    With concentration 0.1 spread over 20 clusters each alpha is ~0.005 and plain gamma draws
    underflow to 0. Gamma(a) = Gamma(a + 1) * U**(1/a) (Marsaglia & Tsang) keeps the logarithm
    finite, and a softmax over each row gives the normalised mixture."""
    with np.errstate(divide="ignore"):
        log_g = np.log(rng.standard_gamma(alpha + 1.0)) + np.log(rng.random(alpha.shape)) / alpha
    log_g[alpha <= 0] = -np.inf
    log_g -= log_g.max(axis=1, keepdims=True)
    w = np.exp(log_g)
    return w / w.sum(axis=1, keepdims=True)


def quantize(weights: np.ndarray, floor: float) -> np.ndarray:
    """Zero weights below `floor` and round the rest to multiples of `floor`, keeping the sum at
    exactly 1 (largest remainders get the leftover units). `floor` 0 only renormalises."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    w = np.where(w < floor, 0.0, w)
    w = w / w.sum(axis=1, keepdims=True)
    if floor <= 0:
        return w
    units_total = int(round(1.0 / floor))
    raw = w * units_total
    units = np.floor(raw).astype(np.int64)
    # a kept weight never rounds to 0: it was >= floor, so it keeps at least one unit
    units = np.where((w > 0) & (units == 0), 1, units)
    short = units_total - units.sum(axis=1)
    rem = np.where(w > 0, raw - units, -np.inf)
    rank = np.argsort(np.argsort(-rem, axis=1, kind="stable"), axis=1, kind="stable")
    units = units + ((rank < short[:, None]) & (w > 0))
    # a row whose "at least one unit" bumps overshot: take units back from its largest weights
    for i in np.nonzero(short < 0)[0]:
        k = int(-short[i])
        for j in np.argsort(-units[i], kind="stable"):
            take = min(k, units[i, j] - 1)
            units[i, j] -= take
            k -= take
            if k == 0:
                break
    return units / units_total


def mixture_keys(w: np.ndarray, floor: float) -> list[bytes]:
    """Hashable identities of quantised mixtures (each row's weights in floor units)."""
    step = floor if floor > 0 else 1e-9
    units = np.ascontiguousarray(np.rint(np.atleast_2d(w) / step).astype(np.int64))
    return [row.tobytes() for row in units]


def sample_mixtures(
    rng: np.random.Generator,
    prior: np.ndarray,
    n: int,
    *,
    temperature: float = 0.5,
    concentration: tuple[float, float] = (0.1, 5.0),
    epoch_cap: float = 15.0,
    floor: float = 2e-4,
    exclude: set[bytes] | None = None,
    center: np.ndarray | None = None,
    max_tries: int = 200,
) -> np.ndarray:
    """`n` distinct quantised mixtures `[n, k]` (rows sum to 1).

    `center` (optional, `[m, k]`) draws around given mixtures instead of the sharpened prior:
    each draw picks one row as the Dirichlet mean (used to refine around the best mixtures).
    Mixtures in `exclude` (keys from `mixture_keys`) are not returned. Raises when the caps leave
    too few distinct mixtures to reach `n`."""
    prior = np.asarray(prior, dtype=np.float64)
    prior = prior / prior.sum()
    k = len(prior)
    mean = sharpen(prior, temperature)
    cap = epoch_cap * prior
    lo, hi = np.log(concentration[0]), np.log(concentration[1])
    seen = set(exclude or ())
    out: list[np.ndarray] = []
    batch = max(64, int(n * 1.5))
    for _ in range(max_tries):
        conc = np.exp(rng.uniform(lo, hi, size=batch))[:, None]
        if center is None:
            means = np.broadcast_to(mean, (batch, k))
        else:
            c = np.atleast_2d(center)
            means = c[rng.integers(0, len(c), size=batch)]
            # a centre's zero weights stay reachable: a little of the prior keeps every alpha > 0
            means = 0.9 * means + 0.1 * mean
            conc = conc * k  # around a known mixture: concentrate more than around the prior
        w = quantize(_log_dirichlet(rng, conc * means), floor)
        ok = (w <= cap + 1e-12).all(axis=1)
        w = w[ok]
        for row, key in zip(w, mixture_keys(w, floor)):
            if key in seen:
                continue
            seen.add(key)
            out.append(row)
            if len(out) == n:
                return np.stack(out)
    raise ValueError(
        f"could only sample {len(out)} of {n} distinct mixtures within the caps "
        f"(epoch_cap={epoch_cap}, {k} clusters); raise epoch_cap or lower the count"
    )


def pairwise_hellinger(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The Hellinger distance of every row of A to every row of B (len(A) x len(B)), by the
    expanded product (no len(A) x len(B) x clusters array); clipped so rounding never gives NaN."""
    ra, rb = np.sqrt(np.clip(A, 0, None)), np.sqrt(np.clip(B, 0, None))
    sq = (ra * ra).sum(1)[:, None] + (rb * rb).sum(1)[None, :] - 2 * ra @ rb.T
    return np.sqrt(np.clip(0.5 * sq, 0, None))
