"""Predictors of the score from mixture weights: fits, CV Spearman/MAE, explicit tie-breaking."""

import numpy as np
import pytest
from mixture.config import PredictorConfig
from mixture.search import predictor as P

CFG = PredictorConfig(min_child_samples=3, min_data_in_bin=1, cv_folds=5)


def _mixtures(n, k=8, seed=0):
    return np.random.default_rng(seed).dirichlet(np.full(k, 0.7), size=n)


def test_every_candidate_learns_a_structured_response():
    X = _mixtures(60)
    opt = np.sqrt(_mixtures(1, seed=9)[0])
    y = -((np.sqrt(X) - opt) ** 2).sum(axis=1)
    for name in P.usable(CFG.candidates, None):  # the ngram ones: tests/search/test_ngram.py
        r = P.cross_validate(name, X, y, CFG)
        assert r.spearman > 0.5, (name, r)
        assert r.mae < np.std(y), (name, r)


def test_cross_validation_reports_no_ranking_on_noise():
    X = _mixtures(40)
    y = np.random.default_rng(1).normal(size=40)
    spearmans = [P.cross_validate(name, X, y, CFG).spearman for name in ("ridge", "ridge_sqrt")]
    assert max(abs(s) for s in spearmans) < 0.45


def test_mixing_law_recovers_data_from_the_law():
    X = _mixtures(50, k=5, seed=2)
    t = np.array([2.0, -1.0, 0.5, -2.0, 1.0])
    y = -(1.0 + 0.5 * np.exp(X @ t))
    m = P.make("mixing_law", CFG).fit(X, y)
    assert P.spearman(m.predict(X), y) > 0.95
    assert P.cross_validate("mixing_law", X, y, CFG).spearman > 0.8


def test_lightgbm_uses_the_configured_paper_settings_and_early_stopping():
    X = _mixtures(40)
    y = np.random.default_rng(3).normal(size=40)  # nothing to learn: stops early
    m = P.make("lightgbm", PredictorConfig()).fit(X, y)
    params = m.model.get_params()
    assert (
        params["max_depth"],
        params["learning_rate"],
        params["reg_alpha"],
        params["reg_lambda"],
        params["min_child_samples"],
    ) == (4, 0.01, 1.0, 1.0, 5)
    assert m.rounds < 1000
    few = P.make("lightgbm", PredictorConfig()).fit(X[:8], y[:8])  # too few rows to hold out
    assert few.rounds == 1000


def test_spearman_of_a_constant_is_zero_not_nan():
    assert P.spearman(np.ones(10), np.arange(10)) == 0.0
    assert P.spearman(np.arange(10), np.arange(10)) == pytest.approx(1.0)


def test_selection_prefers_spearman_then_mae_then_the_simpler_model():
    r = lambda name, s, mae: P.CVResult(name, s, mae, 5, [])  # noqa: E731
    assert P.choose({"lightgbm": r("lightgbm", 0.9, 1.0), "ridge": r("ridge", 0.8, 0.1)})[0] == "lightgbm"
    # equal Spearman at 3 decimals: the lower MAE wins
    assert (
        P.choose({"lightgbm": r("lightgbm", 0.8001, 0.2), "ridge_sqrt": r("ridge_sqrt", 0.8004, 0.3)})[0] == "lightgbm"
    )
    # equal on both: the simpler model wins, whatever the order they were given in
    tie = {
        "lightgbm": r("lightgbm", 0.7, 0.2),
        "mixing_law": r("mixing_law", 0.7, 0.2),
        "ridge_sqrt": r("ridge_sqrt", 0.7, 0.2),
    }
    assert P.choose(tie) == ["ridge_sqrt", "mixing_law", "lightgbm"]


class _Const:
    name = "const"

    def predict(self, X):
        return np.zeros(len(X))


class _FirstWeight:
    name = "first"

    def predict(self, X):
        return X[:, 0]


def test_ranking_breaks_ties_of_the_chosen_predictor_with_the_runner_up():
    X = _mixtures(30)
    fitted = P.Fitted("const", _Const(), _FirstWeight(), {}, ["const", "first"])
    order = fitted.rank(X)
    np.testing.assert_array_equal(order, np.argsort(-X[:, 0], kind="stable"))
    alone = P.Fitted("const", _Const(), None, {}, ["const"])
    np.testing.assert_array_equal(alone.rank(X), np.arange(30))  # then by row, deterministic


def test_fit_select_is_deterministic_and_reports_every_candidate():
    X = _mixtures(25)
    y = X[:, 0] - X[:, 1] + np.random.default_rng(4).normal(scale=0.05, size=25)
    a, b = P.fit_select(X, y, CFG, seed=0), P.fit_select(X, y, CFG, seed=0)
    assert a.report() == b.report()
    assert set(a.report()["cv"]) == set(P.usable(CFG.candidates, None))
    assert a.chosen == a.order[0]
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    with pytest.raises(ValueError, match="at least 3"):
        P.fit_select(X[:2], y[:2], CFG)


# ------------------------------------------------------------------ per-component mixing laws
def _law_problem(n=60, noise=0.01, seed=0):
    from mixture.search.synthetic import ComponentObjective

    t = np.array([[-2.0, 0.0, -1.0, 0.5, -0.5], [0.0, -3.0, 0.5, -1.0, 0.0]])
    obj = ComponentObjective(np.array([2.0, 1.0]), np.array([1.0, 0.5]), t, {"a": 1.0, "b": 3.0}, noise=noise)
    X = _mixtures(n, k=5, seed=seed)
    runs = [obj(w, 0) for w in X]
    y = np.array([r["score"] for r in runs])
    # each component's share of the score: weight / sum of weights * value
    shares = {c: obj.share[i] * np.array([r["components"][c] for r in runs]) for i, c in enumerate(obj.names)}
    return obj, X, y, shares


def test_mixing_law_components_recovers_each_components_law_from_noisy_runs():
    obj, X, y, shares = _law_problem()
    m = P.fit_one("mixing_law_components", PredictorConfig(law_l2=0.01), 0, X, y, shares)
    assert sorted(m.laws) == ["a", "b"]
    for i, c in enumerate(obj.names):
        got = m.params()[c]
        # the component is -L, scaled by its share: c -> -share * c, k -> -share * k (t unchanged)
        s, t = obj.share[i], obj.t[i]
        assert got["c"] == pytest.approx(-s * obj.c[i], abs=0.05 * s * obj.c[i])
        assert got["k"] * np.exp(-t.mean()) == pytest.approx(-s * obj.k[i], rel=0.1)
        np.testing.assert_allclose(got["t"], t - t.mean(), atol=0.25)
    # the summed prediction tracks the noiseless score on new mixtures
    Z = _mixtures(40, k=5, seed=7)
    assert P.spearman(m.predict(Z), [obj.value(w) for w in Z]) > 0.97


def test_fitting_the_components_ranks_better_than_fitting_their_sum():
    """Two components preferring different clusters: one law cannot bend like their sum."""
    _, X, y, shares = _law_problem(n=40, noise=0.01, seed=3)
    whole = P.cross_validate("mixing_law_components", X, y, CFG)
    parts = P.cross_validate("mixing_law_components", X, y, CFG, components=shares)
    assert parts.spearman > whole.spearman + 0.02  # measured: 0.97 vs 0.93
    assert parts.mae < 0.8 * whole.mae  # measured: 0.017 vs 0.027


def test_the_huber_loss_keeps_the_law_when_one_run_is_wild():
    obj, X, y, _ = _law_problem(n=40, noise=0.01, seed=4)
    y_bad = y.copy()
    y_bad[np.argmax(y)] -= 5 * np.std(y)  # one diverged proxy
    Z = _mixtures(40, k=5, seed=8)
    truth = [obj.value(w) for w in Z]
    robust = P.make("mixing_law_components", PredictorConfig(law_huber=0.5)).fit(X, y_bad)
    squares = P.make("mixing_law_components", PredictorConfig(law_huber=100.0)).fit(X, y_bad)
    assert P.spearman(robust.predict(Z), truth) > 0.9
    assert P.spearman(robust.predict(Z), truth) > P.spearman(squares.predict(Z), truth) + 0.05


def test_components_reach_only_the_predictors_that_use_them_and_must_add_up():
    _, X, y, shares = _law_problem(n=25)
    cfg = PredictorConfig(candidates=["ridge", "mixing_law_components"], cv_folds=5)
    fitted = P.fit_select(X, y, cfg, seed=0, components=shares)
    assert set(fitted.cv) == {"ridge", "mixing_law_components"}
    models = {fitted.chosen: fitted.model, fitted.order[1]: fitted.runner_up}
    assert sorted(models["mixing_law_components"].laws) == ["a", "b"]
    with pytest.raises(ValueError, match="do not add up"):
        P.fit_select(X, y, cfg, components={"a": shares["a"]})
    with pytest.raises(ValueError, match="one value per row"):
        P.fit_select(X, y, cfg, components={"a": shares["a"][:-1], "b": shares["b"]})


# -------------------------------------------------------------------------- Gaussian process
def test_gp_std_is_larger_far_from_the_runs_than_at_them():
    rng = np.random.default_rng(5)
    centre = np.array([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    X = rng.dirichlet(200 * centre + 0.5, size=20)  # every run near one mixture
    y = -((X - centre) ** 2).sum(axis=1) + rng.normal(scale=0.002, size=20)
    gp = P.make("gp", CFG).fit(X, y)
    near, far = gp.predict_std(X), gp.predict_std(np.eye(6)[[4, 5]])  # corners nothing was run at
    assert far.min() > 2 * near.max()  # measured: 0.0035 vs 0.0014
    assert far.min() > 0.5 * np.std(y)  # far away, the prior's spread: as unsure as the scores vary
    # the noise term is fitted, not interpolated: the same mixture twice with different scores
    X2, y2 = np.vstack([X, X[:1]]), np.append(y, y[0] + 0.01)
    gp2 = P.make("gp", CFG).fit(X2, y2)
    assert gp2.hyperparameters()["noise_sd"] > 1e-3
    assert gp2.predict(X2[:1])[0] == pytest.approx(y[0] + 0.005, abs=0.004)


def test_gp_ranks_a_smooth_response_and_is_deterministic():
    X = _mixtures(30)
    opt = np.sqrt(_mixtures(1, seed=9)[0])
    y = -((np.sqrt(X) - opt) ** 2).sum(axis=1) + np.random.default_rng(2).normal(scale=0.02, size=30)
    r = P.cross_validate("gp", X, y, CFG)
    assert r.spearman > 0.8
    a, b = P.make("gp", CFG, seed=1).fit(X, y), P.make("gp", CFG, seed=1).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
