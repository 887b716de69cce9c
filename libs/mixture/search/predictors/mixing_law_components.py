"""`mixing_law_components`: one data-mixing law per target component, summed into the score.

Ye et al. (2024), "Data Mixing Laws": the loss of one validation domain follows
L_i(w) = c_i + k_i * exp(sum_j t_ij w_j) in the training mixture w; a target made of several
domains is their weighted sum. So each component of the target (the validation text, each task;
`evaluate` records them in a run's `components`, higher is better) gets its own law, and the
prediction of the score is the sum of the components' shares (`predictor.fit_select`'s
`components`). A run that recorded only its score is one component: the score itself.

Each law is fitted on the component standardised to mean 0, std 1, as z = a - exp(b + t . w)
(c = a, k = -exp(b) in the component's own units: the loss law L = c' + k' exp(t . w), k' > 0, seen
as the higher-is-better -L; a task's accuracy or log-probability saturates the same way). The
other sign, a score growing exponentially, is not fitted: it is unbounded, and its top candidates
are corners of the simplex far from every run (measured on the synthetic benchmark: a final
mixture 1.3 below the optimum where climb's was 0.0003). The fit is BFGS on a Huber loss
(threshold `predictor.law_huber` std: one diverged or lucky proxy does not bend the law) plus an
L2 penalty `predictor.law_l2` on b and t (fewer runs than parameters stay fittable), from t = 0
and `predictor.law_restarts` - 1 seeded random t; the lowest objective wins. Since the weights sum
to 1, t is known only up to a common shift (b takes it up): `params` reports t centred, with k
rescaled to match.
"""

from __future__ import annotations

import numpy as np

from mixture.config import PredictorConfig
from mixture.registry import PREDICTORS

EXP_CLIP = 50.0  # exponents beyond this are clipped (exp(50) ~ 5e21: far past any real law)
SIGN = -1.0  # component = a - exp(b + t . w): bounded above, as a -loss or an accuracy is
MAX_ITER = 300  # BFGS iterations per start (a good start converges in < 100)


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The Huber loss of each residual and its derivative."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), np.clip(r, -delta, delta)


class Law:
    """One component's law, fitted on standardised values."""

    def __init__(self, l2: float, delta: float, restarts: int, seed: int):
        self.l2, self.delta, self.restarts, self.seed = l2, delta, restarts, seed

    def _objective(self, p: np.ndarray, X: np.ndarray, z: np.ndarray, sign: float) -> tuple[float, np.ndarray]:
        a, b, t = p[0], p[1], p[2:]
        e = np.exp(np.clip(b + X @ t, -EXP_CLIP, EXP_CLIP))
        loss, psi = huber(a + sign * e - z, self.delta)
        g = psi * sign * e
        grad = np.concatenate([[psi.sum(), g.sum() + self.l2 * b], X.T @ g + self.l2 * t])
        return float(loss.sum() + 0.5 * self.l2 * (b * b + t @ t)), grad

    def fit(self, X: np.ndarray, v: np.ndarray) -> Law:
        from scipy.optimize import minimize

        self.mu, self.sd = float(np.mean(v)), float(np.std(v)) or 1.0
        z = (v - self.mu) / self.sd
        rng = np.random.default_rng(self.seed)
        k = X.shape[1]

        def run(sign: float, t0: np.ndarray) -> tuple[float, float, np.ndarray]:
            p0 = np.concatenate([[z.mean() - sign, 0.0], t0])
            res = minimize(
                self._objective, p0, args=(X, z, sign), jac=True, method="BFGS", options={"maxiter": MAX_ITER}
            )
            return float(res.fun), sign, res.x

        best = run(SIGN, np.zeros(k))
        for _ in range(self.restarts - 1):
            best = min(best, run(SIGN, np.asarray(rng.normal(0.0, 1.0, k))), key=lambda r: r[0])
        _, self.sign, self.p = best
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        e = np.exp(np.clip(self.p[1] + X @ self.p[2:], -EXP_CLIP, EXP_CLIP))
        return (self.p[0] + self.sign * e) * self.sd + self.mu

    def params(self) -> dict:
        """c, k and the centred t of L(w) = c + k * exp(t . w), in the component's own units."""
        t = self.p[2:]
        shift = float(t.mean())
        k = self.sign * self.sd * float(np.exp(self.p[1] + shift))
        return {"c": float(self.p[0] * self.sd + self.mu), "k": k, "t": (t - shift).tolist()}


@PREDICTORS.register("mixing_law_components")
class MixingLawComponentsPredictor:
    name = "mixing_law_components"
    simplicity = 4
    uses_components = True

    def __init__(self, cfg: PredictorConfig | None = None, seed: int = 0):
        self.cfg = cfg or PredictorConfig()
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, components: dict[str, np.ndarray] | None = None
    ) -> MixingLawComponentsPredictor:
        parts = components or {"score": y}
        c = self.cfg
        self.laws = {
            name: Law(c.law_l2, c.law_huber, c.law_restarts, self.seed).fit(X, np.asarray(v, dtype=np.float64))
            for name, v in sorted(parts.items())
        }
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.sum([law.predict(X) for law in self.laws.values()], axis=0)

    def params(self) -> dict[str, dict]:
        return {name: law.params() for name, law in self.laws.items()}
