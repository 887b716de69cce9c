"""The acquisition rule: expected improvement, upper confidence bound, a batch that spreads, and a
search that finds better mixtures with it than with a random subset of the predicted top N."""

import numpy as np
import pytest
from mixture.config import PredictorConfig, SearchConfig
from mixture.config.search import AcquisitionConfig
from mixture.search import acquisition as A
from mixture.search import bootstrap
from mixture.search import predictor as P
from mixture.search.sampler import pairwise_hellinger, sample_mixtures
from mixture.search.synthetic import calibrated, random_components

K = 6
PCFG = PredictorConfig(candidates=["ridge_sqrt", "gp"], cv_folds=4)


def test_expected_improvement_rewards_both_a_better_mean_and_more_doubt():
    from scipy.stats import norm

    mean, best = np.array([0.0, 0.0, 1.0, -1.0, 0.5]), 0.0
    std = np.array([0.0, 1.0, 0.0, 0.0, 0.5])
    ei = A.expected_improvement(mean, std, best)
    assert ei[0] == 0.0 and ei[2] == 1.0 and ei[3] == 0.0  # no doubt: the plain improvement
    assert ei[1] == pytest.approx(norm.pdf(0.0))  # at the best, worth its doubt
    assert ei[4] == pytest.approx(0.5 * norm.cdf(1.0) + 0.5 * norm.pdf(1.0))
    assert A.expected_improvement(mean, std, best, xi=0.2)[2] == pytest.approx(0.8)
    ucb = A.value(AcquisitionConfig(rule="ucb", ucb_beta=2.0), mean, std, best)
    np.testing.assert_allclose(ucb, mean + 2.0 * std)


def _fitted_on(prior, obj, n=15, seed=0):
    X = sample_mixtures(np.random.default_rng(seed), prior, n)
    y = np.array([obj(w, seed) for w in X])
    return X, y, P.fit_select(X, y, PCFG, seed)


def _problem(seed=0):
    prior = np.random.default_rng(100 + seed).dirichlet(np.full(K, 2.0))
    optimum = sample_mixtures(np.random.default_rng(900 + seed), prior, 1, concentration=(0.3, 0.3))[0]
    return prior, calibrated(prior, optimum)


def _min_gap(W):
    return min(pairwise_hellinger(W[i + 1 :], W[[i]]).min() for i in range(len(W) - 1))


def test_a_batch_spreads_when_the_std_shrinks_at_each_pick():
    prior, obj = _problem(0)
    X, y, fitted = _fitted_on(prior, obj)
    gp = fitted.model if fitted.chosen == "gp" else fitted.runner_up
    C = sample_mixtures(np.random.default_rng(1), prior, 3000)
    mean = fitted.predict(C)
    acfg = AcquisitionConfig(rule="ucb", min_distance=0.0)
    believer = A.pick(acfg, C, mean, gp.posterior(C), float(y.max()), 8)
    fixed = A.pick(acfg, C, mean, A.FixedStd(gp, C), float(y.max()), 8)
    assert len(set(believer["picks"].tolist())) == 8 and len(set(fixed["picks"].tolist())) == 8
    # without the update the batch is the 8 best single values, bunched around one point
    assert _min_gap(C[believer["picks"]]) > 2 * _min_gap(C[fixed["picks"]])
    # the std of later picks is what is left after the earlier ones
    assert believer["stds"][0] == pytest.approx(np.sqrt(gp.posterior(C).var[believer["picks"][0]]))


def test_picks_keep_the_minimum_distance_until_no_candidate_can():
    prior, obj = _problem(1)
    _, y, fitted = _fitted_on(prior, obj)
    C = sample_mixtures(np.random.default_rng(2), prior, 2000)
    gp = fitted.model if fitted.chosen == "gp" else fitted.runner_up
    acfg = AcquisitionConfig(rule="ei", min_distance=0.15)
    out = A.pick(acfg, C, fitted.predict(C), gp.posterior(C), float(y.max()), 6)
    assert out["relaxed"] == 0 and _min_gap(C[out["picks"]]) >= 0.15
    # five candidates all within the distance of each other: the distance gives way, picks stay distinct
    tight = np.tile(prior, (5, 1)) + np.linspace(0, 1e-4, 5)[:, None] * (np.eye(K)[0] - prior)
    out = A.pick(acfg, tight, fitted.predict(tight), gp.posterior(tight), float(y.max()), 4)
    assert sorted(out["picks"].tolist()) == sorted(set(out["picks"].tolist())) and out["relaxed"] == 3


def test_a_predictor_without_a_std_borrows_the_gps():
    prior, obj = _problem(2)
    X = sample_mixtures(np.random.default_rng(0), prior, 15)
    y = np.array([obj(w, 0) for w in X])
    fitted = P.fit_select(X, y, PredictorConfig(candidates=["ridge_sqrt"], cv_folds=4))
    C = sample_mixtures(np.random.default_rng(3), prior, 500)
    picks, report = A.choose(AcquisitionConfig(rule="ucb"), fitted, C, fitted.predict(C), X, y, PCFG, 0, 5)
    assert report["std_from"].startswith("gp (the chosen ridge_sqrt")
    assert len(set(picks.tolist())) == 5 and len(report["picked_std"]) == 5


class _NoStd:
    name = "no_std"

    def predict(self, X):
        return X[:, 0]

    def posterior(self, C):
        raise np.linalg.LinAlgError("the kernel matrix is singular")


def test_without_a_std_the_rule_falls_back_to_top_random_and_says_why():
    X = np.random.default_rng(0).dirichlet(np.ones(K), size=10)
    fitted = P.Fitted("no_std", _NoStd(), None, {}, ["no_std"])
    picks, report = A.choose(AcquisitionConfig(rule="ei"), fitted, X, X[:, 0], X, X[:, 0], PCFG, 0, 3)
    assert picks is None
    assert report == {"rule": "top_random", "asked": "ei", "reason": "no std for ei: the kernel matrix is singular"}


def _scfg(rule: str, weights: dict[str, float], min_distance: float = 0.05) -> SearchConfig:
    return SearchConfig(
        iterations=[16, 8, 6],
        candidates=5000,
        top_n=32,
        top_k=32,
        predictor=dict(candidates=["ridge", "ridge_sqrt", "mixing_law"]),
        acquisition=dict(rule=rule, min_distance=min_distance),
        target=dict(weights=weights),
        trust_region=0.0,  # the final anywhere, as measured below
    )


@pytest.mark.slow
def test_ei_ucb_and_a_spread_subset_find_better_mixtures_than_a_random_subset_of_the_top_n():
    """The same budget (30 noisy runs) on 20 problems with a three-component target and known
    mixing laws; regret = the best noiseless score minus the final mixture's, against the paper's
    plain random subset of the top N (`min_distance: 0`). Measured (the final chosen anywhere,
    `trust_region: 0`): mean regret 0.094 plain, 0.081 top_random spread at the default
    min_distance 0.05 (better on 13 problems, worse on 6), 0.056 ei (14 / 5), 0.048 ucb (16 / 4);
    at min_distance 0.02, ei 0.060 and ucb 0.048. On the single-score objective (`calibrated`)
    bench/search_synthetic.py finds no significant difference between ei, ucb and top_random:
    this is where the rules help, not a claim that they always do."""
    rules = {"plain": ("top_random", 0.0), "spread": ("top_random", 0.05), "ei": ("ei", 0.05), "ucb": ("ucb", 0.05)}
    regret: dict[str, list[float]] = {name: [] for name in rules}
    for seed in range(20):
        prior = np.random.default_rng(100 + seed).dirichlet(np.full(10, 2.0))
        obj = random_components(prior, seed=seed)
        best = obj.optimum_value()
        for name, (rule, distance) in rules.items():
            out, _, reports = bootstrap.run_search(_scfg(rule, obj.weights, distance), prior, obj, seed=seed)
            regret[name].append(best - obj.value(np.array(out["weights"])))
            assert all(r["acquisition"]["rule"] == rule for r in reports[1:])
    base = np.array(regret["plain"])
    for name, factor, odds in (("spread", 0.9, 1.5), ("ei", 0.8, 2), ("ucb", 0.8, 2)):
        r = np.array(regret[name])
        assert r.mean() < factor * base.mean(), (name, r, base)
        assert np.sum(r < base - 1e-9) >= odds * np.sum(r > base + 1e-9), (name, r, base)


def _corner_candidates():
    """20 candidates ranked best first: the top 10 copies of one corner a hair apart (Hellinger
    < 0.01 from each other), then 10 spread ones."""
    rng = np.random.default_rng(0)
    corner = np.zeros(K)
    corner[0] = 1.0
    copies = [0.999 * corner + 0.001 * rng.dirichlet(np.ones(K)) for _ in range(10)]
    spread = sample_mixtures(rng, np.full(K, 1 / K), 10)
    return np.vstack([copies, spread]), np.arange(20)


def test_top_random_spreads_its_picks_beyond_a_corner_the_top_n_sits_in():
    C, order = _corner_candidates()
    X = np.full((1, K), 1 / K)  # one trained mixture, far from the corner
    # the paper's plain subset of the top 10 would train 4 copies of the corner
    assert _min_gap(C[:10]) < 0.01
    picks, report = A.spread_subset(np.random.default_rng(1), order, C, X, 4, 10, 0.05)
    assert len(picks) == 4 and _min_gap(C[picks]) >= 0.05
    assert np.sum(picks < 10) == 1 and report["beyond_top_n"] == 3 and report["distance_relaxed"] == 0
    assert list(picks) == sorted(picks)  # in rank order
    again, _ = A.spread_subset(np.random.default_rng(1), order, C, X, 4, 10, 0.05)
    np.testing.assert_array_equal(picks, again)  # the same draw per seed


def test_top_random_skips_candidates_near_a_trained_mixture_and_gives_way_when_nothing_is_far():
    C, order = _corner_candidates()
    gap = float(pairwise_hellinger(C[10:11], C[11:12])[0, 0])
    X = C[[10]] + 0.0  # the best spread candidate was trained already
    near = pairwise_hellinger(C, X)[:, 0]
    picks, _ = A.spread_subset(np.random.default_rng(1), order, C, X, 4, 10, 0.05)
    assert all(near[picks] >= 0.05) and 10 not in picks
    # a threshold just above every distance: nothing is far enough, picks still come back
    same = np.repeat(C[:1], 6, axis=0)
    picks, report = A.spread_subset(np.random.default_rng(1), np.arange(6), same, X[:0], 3, 4, 0.05)
    assert len(set(picks.tolist())) == 3 and report["distance_relaxed"] == 2
    assert gap > 0.05  # the spread candidates are far enough apart to be taken
