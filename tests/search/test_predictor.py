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
    for name in CFG.candidates:
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
    assert set(a.report()["cv"]) == set(CFG.candidates)
    assert a.chosen == a.order[0]
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    with pytest.raises(ValueError, match="at least 3"):
        P.fit_select(X[:2], y[:2], CFG)
