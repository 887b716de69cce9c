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


def _scfg(rule: str, weights: dict[str, float], min_distance: float) -> SearchConfig:
    return SearchConfig(
        iterations=[16, 8, 6],
        candidates=5000,
        top_n=32,
        top_k=32,
        predictor=dict(candidates=["ridge", "ridge_sqrt", "mixing_law"]),
        acquisition=dict(rule=rule, min_distance=min_distance),
        target=dict(weights=weights),
        trust_region=0.0,  # the final anywhere, as measured below
        final="top_mean",
    )


@pytest.mark.slow
def test_ei_and_ucb_find_better_mixtures_than_a_random_subset_of_the_top_n():
    """The same budget (30 noisy runs) on 20 problems with a three-component target and known
    mixing laws; regret = the best noiseless score minus the final mixture's. Measured: mean
    regret 0.094 for the paper's top_random (`min_distance: 0`), 0.060 ei (better on 14 problems,
    worse on 5), 0.048 ucb (16 / 4), with the final chosen anywhere (`trust_region: 0`); with the
    default trust region, 0.096, 0.056 (10 / 9) and 0.047 (12 / 7). top_random with its picks kept
    0.02 apart (the default) 0.095 (6 / 4), 0.05 apart 0.081 (10 / 5): neutral here, where no
    iteration collapses into one corner. On the single-score objective (`calibrated`)
    bench/search_synthetic.py finds no significant difference: this is where the rules help, not a
    claim that they always do."""
    regret: dict[str, list[float]] = {"top_random": [], "ei": [], "ucb": []}
    for seed in range(20):
        prior = np.random.default_rng(100 + seed).dirichlet(np.full(10, 2.0))
        obj = random_components(prior, seed=seed)
        best = obj.optimum_value()
        for rule in regret:
            distance = 0.0 if rule == "top_random" else 0.02
            out, _, reports = bootstrap.run_search(_scfg(rule, obj.weights, distance), prior, obj, seed=seed)
            regret[rule].append(best - obj.value(np.array(out["weights"])))
            assert all(r["acquisition"]["rule"] == rule for r in reports[1:])
    base = np.array(regret["top_random"])
    for rule in ("ei", "ucb"):
        r = np.array(regret[rule])
        assert r.mean() < 0.8 * base.mean(), (rule, r, base)
        assert np.sum(r < base - 1e-9) >= 2 * np.sum(r > base + 1e-9), (rule, r, base)


def _corner_candidates():
    """20 candidates ranked best first: the top 10 copies of one corner a hair apart (Hellinger
    < 0.01 from each other), then 10 spread ones."""
    rng = np.random.default_rng(0)
    corner = np.zeros(K)
    corner[0] = 1.0
    copies = [0.999 * corner + 0.001 * rng.dirichlet(np.ones(K)) for _ in range(10)]
    spread = sample_mixtures(rng, np.full(K, 1 / K), 10)
    return np.vstack([copies, spread]), np.arange(20)


def test_top_random_replaces_copies_of_one_corner_by_the_next_candidates_far_enough():
    C, order = _corner_candidates()
    X = np.full((1, K), 1 / K)  # one trained mixture, far from the corner
    plain, report = A.spread_subset(np.random.default_rng(1), order, C, X, 4, 10, 0.0)
    assert np.all(plain < 10) and _min_gap(C[plain]) < 0.01  # the paper's subset: 4 copies
    assert report["replaced"] == 0
    picks, report = A.spread_subset(np.random.default_rng(1), order, C, X, 4, 10, 0.02)
    assert len(picks) == 4 and _min_gap(C[picks]) >= 0.02
    assert picks[0] == plain[0] and picks[1:].tolist() == [10, 11, 12]  # the best copy, then rank order
    assert report["replaced"] == 3 and report["beyond_top_n"] == 3 and report["distance_relaxed"] == 0


def test_top_random_keeps_the_papers_picks_when_none_is_near_and_skips_trained_mixtures():
    C, order = _corner_candidates()
    far = np.arange(10, 20)  # the spread candidates only: every pair further apart than 0.02
    assert _min_gap(C[far]) > 0.02
    plain, _ = A.spread_subset(np.random.default_rng(3), far, C, C[:0], 4, 8, 0.0)
    same, report = A.spread_subset(np.random.default_rng(3), far, C, C[:0], 4, 8, 0.02)
    np.testing.assert_array_equal(same, plain)  # the same draw as the paper's rule
    assert report["replaced"] == 0
    trained = C[[int(plain[0])]] + 0.0  # the first pick was trained already: it gives its place
    moved, report = A.spread_subset(np.random.default_rng(3), far, C, trained, 4, 8, 0.02)
    assert int(plain[0]) not in moved and set(plain[1:].tolist()) <= set(moved.tolist())
    assert report["replaced"] == 1
    # nothing far enough: the distance gives way, still n distinct picks
    same = np.repeat(C[:1], 6, axis=0)
    picks, report = A.spread_subset(np.random.default_rng(1), np.arange(6), same, C[:0], 3, 4, 0.02)
    assert len(set(picks.tolist())) == 3 and report["distance_relaxed"] == 2
