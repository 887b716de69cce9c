"""A synthetic objective with a known optimum, standing in for a proxy run.

Tests and benchmarks inject it where a proxy would be trained (`steps.run_proxy(...,
objective=...)`, `bootstrap.run_search`), so that the search's logic (sampling, predictor choice,
selection, resume) is checked in milliseconds against a target whose best mixture is known.

The score is minus the squared Hellinger distance to the optimum, scaled, plus seeded Gaussian
noise: diminishing returns in each cluster's weight like a real data-mixing response. The default
scale and noise mimic what was measured with CPU proxies here: a spread (std) of about 0.33 over
random mixtures, about 0.08 between seeds of one mixture. `ComponentObjective` is a target of
several components (the validation text, tasks), each with a known data-mixing law, for the
predictors that fit one law per component.
"""

from __future__ import annotations

import hashlib

import numpy as np


class SyntheticObjective:
    def __init__(self, optimum: np.ndarray, scale: float = 1.0, noise: float = 0.0, names: list[str] | None = None):
        self.optimum = np.asarray(optimum, dtype=np.float64) / np.sum(optimum)
        self.scale = scale
        self.noise = noise
        self.names = names

    def value(self, w: np.ndarray) -> float:
        """The noiseless score (0 at the optimum, negative elsewhere)."""
        w = np.clip(np.asarray(w, dtype=np.float64), 0, None)
        return float(-self.scale * np.sum((np.sqrt(w / w.sum()) - np.sqrt(self.optimum)) ** 2))

    def __call__(self, w: np.ndarray, seed: int) -> float:
        if not self.noise:
            return self.value(w)
        # the noise depends on the seed and the mixture, like re-training one mixture with a seed
        digest = hashlib.sha256(np.round(np.asarray(w, dtype=np.float64), 6).tobytes()).digest()
        rng = np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])
        return self.value(w) + self.noise * float(rng.standard_normal())

    def proxy(self, mixture: dict[str, float], seed: int) -> dict:
        """A proxy run's evaluation for a mixture given by name (`steps.run_proxy`'s objective)."""
        if self.names is None:
            raise ValueError("SyntheticObjective.proxy needs the cluster names")
        w = np.array([mixture.get(c, 0.0) for c in self.names])
        score = self(w, seed)
        return {"metrics": {"synthetic.distance": -score}, "score": score}


def calibrated(
    prior: np.ndarray,
    optimum: np.ndarray,
    spread: float = 0.33,
    noise_ratio: float = 0.25,
    samples: int = 2000,
    seed: int = 0,
    **sampler_kw,
) -> SyntheticObjective:
    """An objective whose scores over random prior mixtures have std `spread`, with seed noise
    `noise_ratio * spread` (measured on CPU proxies: 0.33 and 0.07-0.11)."""
    from mixture.search.sampler import sample_mixtures

    raw = SyntheticObjective(optimum)
    W = sample_mixtures(np.random.default_rng(seed), prior, samples, **sampler_kw)
    sd = float(np.std([raw.value(w) for w in W])) or 1.0
    return SyntheticObjective(optimum, scale=spread / sd, noise=noise_ratio * spread)


class ComponentObjective:
    """A target of several components with known data-mixing laws (Ye et al., 2024): component i's
    loss is L_i(w) = c_i + k_i * exp(t_i . w); a run records -L_i as the component (higher is
    better, as `evaluate` records -bpb) and the score is their weighted mean, with seeded Gaussian
    noise `noise` on each component. The losses are convex in w, so the best mixture on the
    simplex is found exactly (`optimum_value`)."""

    def __init__(self, c: np.ndarray, k: np.ndarray, t: np.ndarray, weights: dict[str, float], noise: float = 0.0):
        self.c, self.k, self.t = (np.asarray(a, dtype=np.float64) for a in (c, k, t))
        self.weights = dict(weights)
        self.names = list(weights)
        self.noise = noise
        total = sum(self.weights.values())
        self.share = np.array([self.weights[n] / total for n in self.names])

    def components(self, w: np.ndarray) -> np.ndarray:
        """The noiseless components (-L_i) of mixture w."""
        w = np.clip(np.asarray(w, dtype=np.float64), 0, None)
        return -(self.c + self.k * np.exp(self.t @ (w / w.sum())))

    def value(self, w: np.ndarray) -> float:
        return float(self.share @ self.components(w))

    def __call__(self, w: np.ndarray, seed: int) -> dict:
        comp = self.components(w)
        if self.noise:
            digest = hashlib.sha256(np.round(np.asarray(w, dtype=np.float64), 6).tobytes()).digest()
            rng = np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little"), 7])
            comp = comp + self.noise * rng.standard_normal(len(comp))
        return {"components": dict(zip(self.names, comp.tolist())), "score": float(self.share @ comp)}

    def optimum_value(self) -> float:
        """The best noiseless score over the simplex (SLSQP on the convex loss, from the centre)."""
        from scipy.optimize import minimize

        n = self.t.shape[1]
        res = minimize(
            lambda w: -self.value(np.clip(w, 1e-12, None)),
            np.full(n, 1.0 / n),
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-12, "maxiter": 500},
        )
        return max(self.value(np.clip(res.x, 0, None)), -float(res.fun))


def random_components(
    prior: np.ndarray, n_components: int = 3, spread: float = 0.33, noise_ratio: float = 0.25, seed: int = 0
) -> ComponentObjective:
    """A ComponentObjective over len(prior) clusters: each component is helped most by a few
    clusters (t_ij < 0: more of cluster j lowers loss i, with diminishing returns), calibrated so
    that the score's std over random prior mixtures is `spread` and its seed noise `noise_ratio *
    spread` (the CPU proxies' figures, as `calibrated`)."""
    from mixture.search.sampler import sample_mixtures

    rng = np.random.default_rng([seed, 0xC0])
    k = len(prior)
    t = -rng.gamma(2.0, 1.0, size=(n_components, k))
    raw = ComponentObjective(
        rng.uniform(1.0, 3.0, n_components),
        rng.uniform(0.5, 2.0, n_components),
        t,
        {f"task{i}": float(rng.uniform(0.5, 1.5)) for i in range(n_components)},
    )
    W = sample_mixtures(np.random.default_rng(seed), prior, 2000)
    scale = spread / (float(np.std([raw.value(w) for w in W])) or 1.0)
    per_component = noise_ratio * spread / float(np.sqrt(np.sum(raw.share**2)))
    return ComponentObjective(raw.c * scale, raw.k * scale, t, raw.weights, noise=per_component)


def make_climblab(uri: str, clusters: dict[str, list[str]], vocab_size: int = 512, seed: int = 0):
    """Commit a small climblab dataset (docs/DATASETS.md "climblab") from texts grouped by cluster
    name, with a byte-level BPE trained on them: for tests and benchmarks that need real token
    shards without running the stages before the search."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mixture import storage
    from mixture.climblab.tokens import encode, eos_id, token_dtype, train_tokenizer, write_token_shard
    from mixture.dataset import DatasetWriter

    texts = [t for docs in clusters.values() for t in docs]
    tok = train_tokenizer(texts, vocab_size)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    dtype = token_dtype(vocab)
    writer = DatasetWriter(uri, "shards", f"synthetic-{seed}", {})
    storage.write_text(writer.path("tokenizer/tokenizer.json"), tok.to_str())
    info = {}
    for name, docs in sorted(clusters.items()):
        n_docs, n_tok = write_token_shard(writer.path(f"{name}/tokens"), encode(tok, docs, eos), dtype)
        with storage.open_write(writer.path(f"{name}/text.parquet")) as f:
            pq.write_table(pa.table({"id": [f"{name}-{i}" for i in range(len(docs))], "text": docs}), f)
        info[name] = {"documents": n_docs, "tokens": n_tok}
    counts = {
        "documents_in": len(texts),
        "documents_out": len(texts),
        "tokens": sum(v["tokens"] for v in info.values()),
        "clusters": len(info),
    }
    return writer.commit(counts, {"clusters": info, "vocab_size": vocab, "eos_id": eos, "dtype": dtype.name})
