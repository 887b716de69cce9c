"""`gp`: a Gaussian-process surrogate with an explicit noise term, the predictor with a std.

A GP prior over the score as a function of the mixture (scikit-learn's GaussianProcessRegressor):
kernel = amplitude * Matern 5/2 (or RBF) with one length scale + a white noise term whose level is
fitted with the rest, so repeated or nearby proxies that disagree by their seed noise are averaged
instead of interpolated. Inputs are sqrt(weights) by default (`predictor.gp_features`): the
Hellinger geometry, in which a cluster going from 0 to 1% moves a mixture as far as one going from
25 to 30%, as diminishing returns would. Scores are standardised before the fit (mean 0, std 1)
and the hyperparameters maximise the marginal likelihood from 1 + `predictor.gp_restarts` starts
(seeded). `predict_std` is the std of the predicted mean (the noise term left out): it grows away
from the observed mixtures, which is what the acquisition rule (`mixture.search.acquisition`)
trades against the mean. `posterior` gives the covariance over a fixed candidate set, updated
pick by pick as if each pick had been observed at its predicted mean (a "kriging believer": the
mean stays, the variance near the pick shrinks), so a batch of picks spreads out.
"""

from __future__ import annotations

import warnings

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS


class Posterior:
    """The GP's joint posterior over candidates C: the variance of each (score units), and
    `condition(j)`, the update after a noisy observation at candidate j."""

    def __init__(self, gp: GPPredictor, C: np.ndarray):
        from scipy.linalg import solve_triangular

        self.gp = gp
        self.F = gp.features(C)
        k1 = gp.model.kernel_.k1  # the signal part (the white term is 0 between distinct inputs)
        self.V = solve_triangular(gp.model.L_, k1(gp.X_train, self.F), lower=True)  # [n_train, |C|]
        self.var = np.clip(k1.diag(self.F) - np.sum(self.V * self.V, axis=0), 0, None) * gp.sd**2
        self.U: list[np.ndarray] = []

    def condition(self, j: int) -> None:
        k1 = self.gp.model.kernel_.k1
        col = (k1(self.F, self.F[[j]])[:, 0] - self.V.T @ self.V[:, j]) * self.gp.sd**2
        for u in self.U:
            col -= u * u[j]
        u = col / np.sqrt(max(col[j], 0.0) + self.gp.noise)
        self.U.append(u)
        self.var = np.clip(self.var - u * u, 0, None)


@PREDICTORS.register("gp")
class GPPredictor:
    name = "gp"
    simplicity = 5

    def __init__(self, cfg: PredictorConfig | None = None, seed: int = 0):
        self.cfg = cfg or PredictorConfig()
        self.seed = seed

    def features(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.sqrt(np.clip(X, 0, None)) if self.cfg.gp_features == "sqrt" else X

    def _kernel(self):
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

        shape = (
            Matern(length_scale=1.0, length_scale_bounds=(1e-2, 1e2), nu=2.5)
            if self.cfg.gp_kernel == "matern"
            else RBF(length_scale=1.0, length_scale_bounds=(1e-2, 1e2))
        )
        return ConstantKernel(1.0, (1e-2, 1e2)) * shape + WhiteKernel(0.1, (1e-5, 1e1))

    def fit(self, X: np.ndarray, y: np.ndarray) -> GPPredictor:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        y = np.asarray(y, dtype=np.float64)
        self.mu, self.sd = float(np.mean(y)), float(np.std(y)) or 1.0
        self.X_train = self.features(X)
        gp = GaussianProcessRegressor(
            self._kernel(), normalize_y=False, n_restarts_optimizer=self.cfg.gp_restarts, random_state=self.seed
        )
        with warnings.catch_warnings():  # a hyperparameter at its bound is a fit, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = gp.fit(self.X_train, (y - self.mu) / self.sd)
        self.noise = float(self.model.kernel_.k2.noise_level) * self.sd**2  # seed noise variance, score units
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self.features(X)), dtype=np.float64) * self.sd + self.mu

    def predict_std(self, X: np.ndarray) -> np.ndarray:
        """The std of the predicted mean score (without the seed noise)."""
        return np.sqrt(Posterior(self, X).var)

    def posterior(self, C: np.ndarray) -> Posterior:
        return Posterior(self, C)

    def hyperparameters(self) -> dict:
        k = self.model.kernel_
        return {
            "amplitude": float(k.k1.k1.constant_value) * self.sd**2,
            "length_scale": float(k.k1.k2.length_scale),
            "noise_sd": float(np.sqrt(self.noise)),
        }
