"""Static embeddings: a model2vec model distilled locally from the configured encoder.

Model2Vec (Tulkens & van Dongen, 2024) distils a sentence encoder into one vector per token of its
vocabulary (each token passed through the encoder alone, then PCA to `pca_dims` and Zipf
weighting); a document's vector is the mean of its tokens' vectors. It encodes whole documents at
hundreds per second on one CPU core (no 256-token truncation), for CPU machines and very large
corpora; `bench/embed_static.py` measures its speed and clustering quality against the encoder.

`embed.model_type: static` selects it. Distillation runs here, from the local model folder
(`mixture.cluster.encoder.resolve_model`: nothing is downloaded), once per source model and settings: the
result is cached under `<output_root>/_models/<hash>/`, where the hash covers the source model's
files, the model2vec version and `pca_dims`. Each file is written atomically and
`provenance.json` last, so a folder without it is an interrupted distillation and is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixture import storage
from mixture.cluster.encoder import EmbedError, resolve_model
from mixture.config import EmbedConfig

log = logging.getLogger(__name__)

MODELS = "_models"
PROVENANCE = "provenance.json"


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's relative file names and contents (the source model's identity)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(storage.sha256_stream(f).encode())
    return h.hexdigest()


def provenance(cfg: EmbedConfig) -> dict:
    """What the distilled model is made from; its `hash` names the cache folder."""
    try:
        import model2vec
    except ImportError:
        raise EmbedError("embed.model_type=static needs model2vec: pip install 'model2vec==0.10.0'") from None
    source = resolve_model(cfg.model)
    facts = {
        "source_model": cfg.model,
        "source_sha256": folder_digest(source),
        "model2vec_version": model2vec.__version__,
        "pca_dims": cfg.static_pca_dims,
    }
    facts["hash"] = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return facts


def model_uri(output_root: str, facts: dict) -> str:
    return storage.join(output_root, MODELS, facts["hash"])


def ensure_model(output_root: str, cfg: EmbedConfig) -> dict:
    """The cached static model's provenance (with its `uri`), distilling it first when missing.
    Two processes distilling at once write the same files; each write is atomic."""
    facts = provenance(cfg)
    uri = model_uri(output_root, facts)
    marker = storage.join(uri, PROVENANCE)
    if storage.exists(marker):
        return {**storage.read_json(marker), "uri": uri}
    from model2vec.distill import distill

    source = resolve_model(cfg.model)
    log.info("distilling a static model from %s (pca_dims=%s) into %s", source, cfg.static_pca_dims, uri)
    model = distill(model_name=str(source), pca_dims=cfg.static_pca_dims)
    with tempfile.TemporaryDirectory(prefix="model2vec-") as tmp:
        model.save_pretrained(tmp)
        for path in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            storage.write_bytes(storage.join(uri, str(path.relative_to(tmp))), path.read_bytes())
    storage.write_json(marker, facts)  # last: the folder is complete
    return {**facts, "uri": uri}


@dataclass
class StaticEmbedder:
    """Mean of the distilled token vectors over the whole document, L2-normalised."""

    model: object
    facts: dict
    batch_size: int = 1024
    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def load(cls, facts: dict) -> StaticEmbedder:
        from model2vec import StaticModel

        local = storage.local_path(facts["uri"])
        if local is not None:
            return cls(StaticModel.from_pretrained(local), facts)
        with tempfile.TemporaryDirectory(prefix="model2vec-") as tmp:
            for uri in storage.list_files(facts["uri"]):
                rel = uri[len(facts["uri"]) :].lstrip("/")
                Path(tmp, rel).parent.mkdir(parents=True, exist_ok=True)
                Path(tmp, rel).write_bytes(storage.read_bytes(uri))
            return cls(StaticModel.from_pretrained(tmp), facts)

    @property
    def dim(self) -> int:
        return int(self.model.dim)  # type: ignore[attr-defined]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]; every token of every document counts (max_length=None)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(  # type: ignore[attr-defined]
            list(texts), max_length=None, batch_size=self.batch_size, show_progress_bar=False, use_multiprocessing=False
        )
        out = np.asarray(out, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
