"""Mixture sampling: Dirichlet around the sharpened prior, caps, floors, dedup, reproducibility."""

import numpy as np
import pytest
from mixture.search.sampler import mixture_keys, quantize, sample_mixtures, sharpen

PRIOR = np.array([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.015, 0.005])


def test_rows_are_mixtures_on_the_floor_grid():
    W = sample_mixtures(np.random.default_rng(0), PRIOR, 2000)
    assert W.shape == (2000, len(PRIOR))
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-9)
    units = W / 2e-4
    np.testing.assert_allclose(units, np.rint(units), atol=1e-6)  # multiples of 2e-4
    assert W[W > 0].min() >= 2e-4 - 1e-12  # nothing between 0 and the floor


def test_quantize_zeroes_weights_below_the_floor_and_keeps_the_sum():
    w = np.array([[0.00019, 0.00021, 0.3, 0.69960]])
    q = quantize(w, 2e-4)[0]
    assert q[0] == 0.0  # below the floor: zeroed
    assert q[1] == pytest.approx(2e-4)  # just above: kept, one unit
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    # many tiny kept weights force the largest to give units back
    q = quantize(np.array([[0.00021] * 10 + [0.9979]]), 2e-4)[0]
    assert (q[:10] == pytest.approx(2e-4)) and q.sum() == pytest.approx(1.0, abs=1e-12)


def test_mean_follows_the_prior_sharpened_with_temperature():
    # (removing duplicates thins the repeated near-one-hot draws on big clusters a little)
    W = sample_mixtures(np.random.default_rng(1), PRIOR, 20000, epoch_cap=1e9)
    target = sharpen(PRIOR, 0.5)
    np.testing.assert_allclose(W.mean(axis=0), target, atol=0.03)
    # temperature 0.5 flattens: the smallest cluster gets far more than its natural share
    assert W.mean(axis=0)[-1] > 3 * PRIOR[-1]
    W1 = sample_mixtures(np.random.default_rng(1), PRIOR, 20000, temperature=1.0, epoch_cap=1e9)
    np.testing.assert_allclose(W1.mean(axis=0), PRIOR, atol=0.03)


def test_epoch_cap_rejects_mixtures_that_repeat_a_cluster_too_often():
    rng = np.random.default_rng(2)
    uncapped = sample_mixtures(rng, PRIOR, 3000, epoch_cap=1e9)
    assert (uncapped / PRIOR).max() > 15  # without the cap the small clusters exceed 15x
    capped = sample_mixtures(np.random.default_rng(2), PRIOR, 3000, epoch_cap=15)
    ratio = capped / PRIOR
    assert ratio.max() <= 15 + 1e-9
    assert ratio.max() > 10  # the cap binds, it does not empty the clusters


def test_same_seed_same_mixtures_other_seed_other_mixtures():
    a = sample_mixtures(np.random.default_rng(7), PRIOR, 50)
    b = sample_mixtures(np.random.default_rng(7), PRIOR, 50)
    c = sample_mixtures(np.random.default_rng(8), PRIOR, 50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_duplicates_and_excluded_mixtures_are_never_returned():
    prior = np.array([0.5, 0.3, 0.2])
    # near one-hot draws repeat constantly at tiny concentration: only distinct rows come back
    W = sample_mixtures(np.random.default_rng(3), prior, 3, concentration=(1e-3, 1e-3))
    assert len(set(mixture_keys(W, 2e-4))) == 3
    # caps that no mixture can meet (every weight below 0.45 of two clusters): a clear error
    with pytest.raises(ValueError, match="distinct mixtures"):
        sample_mixtures(np.random.default_rng(3), np.array([0.5, 0.5]), 1, epoch_cap=0.9, max_tries=20)
    first = sample_mixtures(np.random.default_rng(4), PRIOR, 20)
    again = sample_mixtures(np.random.default_rng(4), PRIOR, 20, exclude=set(mixture_keys(first, 2e-4)))
    assert not set(mixture_keys(first, 2e-4)) & set(mixture_keys(again, 2e-4))


def test_concentration_range_spans_peaked_and_flat_mixtures():
    W = sample_mixtures(np.random.default_rng(5), PRIOR, 4000, epoch_cap=1e9)
    top = W.max(axis=1)
    assert (top > 0.9).mean() > 0.05  # concentration near 0.1: almost one cluster
    assert (top < 0.5).mean() > 0.2  # concentration near 5: spread like the prior


def test_centered_draws_stay_near_their_centre():
    centre = np.array([[0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
    W = sample_mixtures(np.random.default_rng(6), PRIOR, 500, center=centre, epoch_cap=1e9)
    assert W[:, 2:4].sum(axis=1).mean() > 0.6


def test_bad_priors_are_refused():
    with pytest.raises(ValueError):
        sharpen(np.array([0.0, 0.0]), 0.5)
    with pytest.raises(ValueError):
        sharpen(np.array([0.5, -0.1]), 0.5)
