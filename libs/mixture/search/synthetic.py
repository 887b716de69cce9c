"""A synthetic objective with a known optimum, standing in for a proxy run.

Tests and benchmarks inject it where a proxy would be trained (`steps.run_proxy(...,
objective=...)`, `bootstrap.run_search`), so that the search's logic (sampling, predictor choice,
selection, resume) is checked in milliseconds against a target whose best mixture is known.

The score is minus the squared Hellinger distance to the optimum, scaled, plus seeded Gaussian
noise: diminishing returns in each cluster's weight like a real data-mixing response. The default
scale and noise mimic what was measured with CPU proxies here: a spread (std) of about 0.33 over
random mixtures, about 0.08 between seeds of one mixture.
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
