"""The iterative search on a synthetic objective with a known optimum (no proxies trained)."""

import numpy as np
import pytest
from mixture.config import SearchConfig
from mixture.search import bootstrap
from mixture.search.sampler import sample_mixtures
from mixture.search.synthetic import SyntheticObjective, calibrated

K = 12


def _scfg(**kw):
    base = dict(
        iterations=[12, 6, 4],
        candidates=5000,
        top_n=12,
        top_k=16,
        predictor=dict(min_child_samples=3, min_data_in_bin=1, cv_folds=4),
    )
    return SearchConfig(**{**base, **kw})


def _problem(seed):
    prior = np.random.default_rng(100 + seed).dirichlet(np.full(K, 2.0))
    optimum = sample_mixtures(np.random.default_rng(900 + seed), prior, 1, concentration=(0.3, 0.3))[0]
    return prior, calibrated(prior, optimum)


def test_search_converges_towards_the_optimum_better_than_random_search():
    """Same budget (22 runs, same noise): CLIMB's final mixture against the best observed of 22
    random mixtures, judged by the noiseless objective, over three problems."""
    climb, random_best = [], []
    for seed in range(3):
        prior, obj = _problem(seed)
        scfg = _scfg()
        result, obs, reports = bootstrap.run_search(scfg, prior, obj, seed=seed)
        assert len(obs) == sum(scfg.iterations)
        climb.append(obj.value(np.array(result["weights"])))
        R = sample_mixtures(np.random.default_rng([seed, 5]), prior, sum(scfg.iterations))
        observed = [obj(w, seed) for w in R]
        random_best.append(obj.value(R[int(np.argmax(observed))]))
        # later iterations sample where the predictor expects better scores: their runs beat the
        # first (random) iteration's on average
        first = obs.y[: scfg.iterations[0]].mean()
        later = obs.y[scfg.iterations[0] :].mean()
        assert later > first
    assert np.mean(climb) > np.mean(random_best)
    assert sum(c > r for c, r in zip(climb, random_best)) >= 2


def test_selection_trains_only_mixtures_from_the_predicted_top_n():
    prior, obj = _problem(0)
    scfg = _scfg(iterations=[12, 5], top_n=10, acquisition=dict(min_distance=0.0))  # the paper's rule
    W0, _ = bootstrap.propose(scfg, prior, 0, bootstrap.observe([], [], 2e-4), seed=0)
    names = [f"c{i:02d}" for i in range(K)]
    runs = [{"run_id": f"r{j}", "mixture": dict(zip(names, w)), "score": obj(w, 0)} for j, w in enumerate(W0)]
    obs = bootstrap.observe(runs, names, 2e-4)
    W1, report = bootstrap.propose(scfg, prior, 1, obs, seed=0)
    assert len(W1) == 5 and report["top_n"] == 10
    assert min(report["picked_predicted"]) >= report["top_n_threshold"]
    assert report["picked_predicted"] == sorted(report["picked_predicted"], reverse=True)
    # nothing already trained is proposed again
    seen = {tuple(np.round(w, 6)) for w in W0}
    assert not any(tuple(np.round(w, 6)) in seen for w in W1)
    # the same inputs give the same proposals
    W1b, _ = bootstrap.propose(scfg, prior, 1, obs, seed=0)
    np.testing.assert_array_equal(W1, W1b)


def test_final_falls_back_to_the_best_observed_when_the_predictor_cannot_rank():
    prior, _ = _problem(1)
    names = [f"c{i:02d}" for i in range(K)]
    W = sample_mixtures(np.random.default_rng(0), prior, 20)
    noise = np.random.default_rng(1).normal(size=20)  # scores unrelated to weights
    runs = [
        {"run_id": f"r{j:02d}", "mixture": dict(zip(names, w)), "score": s} for j, (w, s) in enumerate(zip(W, noise))
    ]
    out = bootstrap.final(_scfg(), prior, bootstrap.observe(runs, names, 2e-4), seed=0)
    assert out["method"] == "best_observed"
    np.testing.assert_allclose(out["weights"], W[int(np.argmax(noise))])
    assert "Spearman" in out["reason"] or "not above" in out["reason"]
    # a fit that cannot rank is no guide among the trained mixtures either
    fitted = bootstrap.final(_scfg(final="best_fitted"), prior, bootstrap.observe(runs, names, 2e-4), seed=0)
    assert fitted["method"] == "best_observed" and "no guide" in fitted["reason"]
    np.testing.assert_allclose(fitted["weights"], W[int(np.argmax(noise))])


def test_final_uses_the_predictor_when_it_ranks_well():
    prior, obj = _problem(2)
    names = [f"c{i:02d}" for i in range(K)]
    W = sample_mixtures(np.random.default_rng(0), prior, 30)
    runs = [{"run_id": f"r{j:02d}", "mixture": dict(zip(names, w)), "score": obj.value(w)} for j, w in enumerate(W)]
    obs = bootstrap.observe(runs, names, 2e-4)
    out = bootstrap.final(_scfg(final="top_mean"), prior, obs, seed=0)
    assert out["method"] == "top_mean"
    assert out["predicted"] > out["best_observed"]["predicted"]
    assert obj.value(np.array(out["weights"])) > obs.y.max()  # beats every observed mixture
    assert sum(out["weights"]) == pytest.approx(1.0)


def test_seeds_of_one_mixture_are_averaged_and_failed_runs_are_excluded_with_a_reason():
    names = ["a", "b"]
    runs = [
        {"run_id": "x-s0", "mixture": {"a": 0.5, "b": 0.5}, "score": 1.0},
        {"run_id": "x-s1", "mixture": {"a": 0.5, "b": 0.5}, "score": 3.0},
        {"run_id": "y-s0", "mixture": {"a": 1.0, "b": 0.0}, "score": None, "error": "diverged"},
    ]
    obs = bootstrap.observe(runs, names, 2e-4)
    assert len(obs) == 1 and obs.y[0] == 2.0 and obs.run_ids[0] == ["x-s0", "x-s1"]
    assert obs.excluded == [{"run_id": "y-s0", "reason": "diverged"}]


def test_synthetic_objective_noise_is_seeded():
    obj = SyntheticObjective(np.array([0.5, 0.5]), noise=0.1)
    w = np.array([0.2, 0.8])
    assert obj(w, 1) == obj(w, 1) and obj(w, 1) != obj(w, 2)
    assert obj.value(np.array([0.5, 0.5])) == 0.0 > obj.value(w)


def test_projection_of_the_search_wall_time():
    from mixture.search.pool import Projection

    p = Projection(total_runs=10, workers=2)
    assert p.done({"seconds": 30.0}) is None  # one run is too few to project
    line = p.done({"seconds": 50.0})
    assert line and "40 s per proxy run" in line and "8 runs left" in line and "2.7 more minutes" in line
    assert p.done({"seconds": 40.0}) is None  # the estimate did not move much
    assert p.done({"seconds": 400.0}) is not None  # it did: said again


# ------------------------------------------------------------------ components and acquisition
def _component_runs(n=20, seed=0):
    from mixture.search.synthetic import random_components

    prior = np.random.default_rng(100 + seed).dirichlet(np.full(6, 2.0))
    obj = random_components(prior, n_components=2, seed=seed)
    names = [f"c{i:02d}" for i in range(6)]
    W = sample_mixtures(np.random.default_rng(seed), prior, n)
    runs = [{"run_id": f"r{j:02d}", "mixture": dict(zip(names, w)), **obj(w, 0)} for j, w in enumerate(W)]
    return prior, obj, names, runs


def test_observe_averages_components_and_drops_them_unless_every_run_has_them():
    names = ["a", "b"]
    runs = [
        {"run_id": "x-s0", "mixture": {"a": 0.5, "b": 0.5}, "score": 1.0, "components": {"val": -2.0, "qa": 4.0}},
        {"run_id": "x-s1", "mixture": {"a": 0.5, "b": 0.5}, "score": 2.0, "components": {"val": -1.0, "qa": 5.0}},
        {"run_id": "y-s0", "mixture": {"a": 1.0, "b": 0.0}, "score": 0.5, "components": {"val": -3.0, "qa": 4.0}},
    ]
    obs = bootstrap.observe(runs, names, 2e-4)
    np.testing.assert_allclose(obs.components["val"], [-1.5, -3.0])
    np.testing.assert_allclose(obs.components["qa"], [4.5, 4.0])
    shares = bootstrap.contributions(_scfg(target=dict(weights={"val": 1.0, "qa": 1.0})), obs)
    assert shares is not None and np.allclose(shares["val"] + shares["qa"], obs.y)
    # the runs were scored with other weights: the shares do not add up, the score is fitted alone
    assert bootstrap.contributions(_scfg(target=dict(weights={"val": 3.0, "qa": 1.0})), obs) is None
    assert bootstrap.observe(runs + [{**runs[0], "run_id": "z", "components": {}}], names, 2e-4).components == {}


def test_a_component_target_gets_one_law_per_component():
    prior, obj, names, runs = _component_runs()
    scfg = _scfg(target=dict(weights=obj.weights), predictor=dict(candidates=["ridge", "mixing_law_components"]))
    fitted = bootstrap.fit_predictor(scfg, bootstrap.observe(runs, names, 2e-4), seed=0)
    law = fitted.model if fitted.chosen == "mixing_law_components" else fitted.runner_up
    assert sorted(law.laws) == sorted(obj.weights)


def test_propose_by_ei_trains_distinct_mixtures_and_says_how_it_chose():
    prior, obj = _problem(0)
    names = [f"c{i:02d}" for i in range(K)]
    W0 = sample_mixtures(np.random.default_rng(0), prior, 12)
    obs = bootstrap.observe(
        [{"run_id": f"r{j}", "mixture": dict(zip(names, w)), "score": obj(w, 0)} for j, w in enumerate(W0)], names, 2e-4
    )
    scfg = _scfg(iterations=[12, 6], acquisition=dict(rule="ei", min_distance=0.05))
    W1, report = bootstrap.propose(scfg, prior, 1, obs, seed=0)
    acq = report["acquisition"]
    assert len(W1) == 6 and acq["rule"] == "ei" and acq["std_from"].startswith("gp")
    assert len(acq["picked_std"]) == 6 and all(s >= 0 for s in acq["picked_std"])
    gaps = [np.sqrt(0.5 * ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()) for i, a in enumerate(W1) for b in W1[i + 1 :]]
    assert min(gaps) >= 0.05
    assert acq["picked_value"] == sorted(acq["picked_value"], reverse=True)  # each pick lowers the rest
    W1b, _ = bootstrap.propose(scfg, prior, 1, obs, seed=0)
    np.testing.assert_array_equal(W1, W1b)
    # the default draws from the predicted top N, spread out
    _, default = bootstrap.propose(_scfg(iterations=[12, 6]), prior, 1, obs, seed=0)
    assert default["acquisition"]["rule"] == "top_random" and default["acquisition"]["min_distance"] == 0.02


def test_trust_region_keeps_candidates_as_near_a_run_as_runs_are_to_each_other():
    X = np.array([[0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0.5, 0]])
    spacing = bootstrap.nearest_distance(X[:1], X[1:])[0]  # every pair is this far apart
    C = np.array([[0.5, 0.45, 0.05, 0], [0, 0, 0, 1.0]])  # near the first run; a far vertex
    assert bootstrap.nearest_distance(C[:1], X)[0] < spacing < bootstrap.nearest_distance(C[1:], X)[0]
    kept, region = bootstrap.trusted(1.0, C, X)
    assert kept.tolist() == C[:1].tolist() and region["radius"] == pytest.approx(spacing)
    far = bootstrap.nearest_distance(C[1:], X)[0]
    assert len(bootstrap.trusted(1.01 * far / spacing, C, X)[0]) == 2
    assert bootstrap.trusted(0.0, C, X) == (C, {})


def test_trust_region_stops_a_linear_fit_from_choosing_a_corner_no_run_was_near():
    """A linear score (the best mixture is a vertex): without the region (0: the paper) the top-k mean of a ridge
    fit's best candidates goes far from every run; with it, it stays as near as runs are."""
    prior = np.full(8, 1 / 8)
    rng = np.random.default_rng(0)
    X = sample_mixtures(rng, prior, 22)
    y = X @ np.linspace(-1, 1, 8) + rng.normal(0, 0.01, 22)
    obs = bootstrap.Observations(X, y, [[str(i)] for i in range(22)], [])
    plain = _scfg(final="top_mean", trust_region=0.0, predictor=dict(candidates=["ridge"], cv_folds=4))
    far = bootstrap.final(plain, prior, obs, seed=0)
    near = bootstrap.final(plain.model_copy(update={"trust_region": 1.0}), prior, obs, seed=0)
    radius = near["trust_region"]["radius"]
    assert bootstrap.nearest_distance(np.array([far["weights"]]), X)[0] > radius
    assert bootstrap.nearest_distance(np.array([near["weights"]]), X)[0] <= radius
    assert near["method"] == "top_mean" and 0 < near["trust_region"]["kept"] < near["trust_region"]["of"]


def test_final_among_trained_mixtures_best_fitted_discounts_one_lucky_run():
    prior, obj = _problem(2)
    names = [f"c{i:02d}" for i in range(K)]
    W = sample_mixtures(np.random.default_rng(0), prior, 30)
    truth = np.array([obj.value(w) for w in W])
    lucky = int(np.argsort(truth)[len(truth) // 2])  # a middling mixture with a lucky seed
    scores = truth.copy()
    scores[lucky] = truth.max() + 0.5 * (truth.max() - truth.min())
    runs = [
        {"run_id": f"r{j:02d}", "mixture": dict(zip(names, w)), "score": s} for j, (w, s) in enumerate(zip(W, scores))
    ]
    obs = bootstrap.observe(runs, names, 2e-4)
    observed = bootstrap.final(_scfg(final="best_observed"), prior, obs, seed=0)
    fitted = bootstrap.final(_scfg(final="best_fitted"), prior, obs, seed=0)
    assert observed["method"] == "best_observed" and fitted["method"] == "best_fitted"
    np.testing.assert_allclose(observed["weights"], W[lucky])  # the lucky run's mixture
    assert obj.value(np.array(fitted["weights"])) > truth[lucky]  # a truly better trained mixture
    assert any(np.allclose(fitted["weights"], w) for w in W)  # never an untrained one
    assert "trained mixtures" in fitted["reason"]
