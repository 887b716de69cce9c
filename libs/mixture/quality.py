"""Per-document quality scores on CLIMB's 1-5 scale, the basis for pruning clusters.

CLIMB (Diao et al., NVIDIA 2025, cluster pruning) scores every document with fastText quality
classifiers (1-5), averages the scores per k-means cluster and drops clusters below 3.0. Three
scorers are available here; every one that can run is stored per document (`score_*` columns of
`assignments.parquet`), and `cluster.quality.scorer` picks the one that drives pruning:

heuristic
    From the curated `q_*` signals (the statistics the Gopher, C4 and FineWeb rules threshold,
    computed once by the curation stage). Each signal maps to a desirability d in [0, 1] along a
    piecewise-linear ramp through three points: d = 0 at a clearly bad value, d = 0.5 at the
    published filter threshold, d = 1 at a clearly good value (table `HEURISTIC_SIGNALS`; the
    thresholds are Gopher's, Rae et al. 2021, App. A; C4's, Raffel et al. 2020; FineWeb's,
    Penedo et al. 2024). A document's score is 1 + 4 * mean(d) over the signals present, so a
    document sitting exactly on every filter threshold scores 3.0, the paper's pruning threshold:
    a cluster is pruned when its average document is no better than borderline. Columns not in
    the table are ignored (and listed in the report); `cluster.quality.heuristic_signals` adds or
    replaces ramps.

classifier
    The DCLM recipe (Li et al. 2024: a fastText classifier of reference-quality text against
    random crawl), on the embeddings instead of n-grams: logistic regression (scikit-learn) of
    the embedded reference documents (`reference_uris`, JSONL with a text field, embedded with
    the same encoder as the corpus) against a random sample of the corpus, with balanced class
    weights. Score = 1 + 4 * P(reference-like): 3.0 is "as likely reference as random corpus".

fasttext
    A fastText model file (`fasttext_model`) when the `fasttext` package imports. Numeric labels
    (e.g. __label__0..__label__5) give the expected label, mapped linearly onto 1-5; a binary
    model gives 1 + 4 * P(positive label).
"""
from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from mixture import storage

log = logging.getLogger(__name__)

SCALE_MIN, SCALE_MAX = 1.0, 5.0


class QualityError(RuntimeError):
    """A scorer was asked for but cannot run; the message says what is missing."""


def to_scale(p: np.ndarray) -> np.ndarray:
    """A value in [0, 1] (a desirability or a probability) onto the paper's 1-5 scale."""
    return (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * np.clip(p, 0.0, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------ heuristic
@dataclass(frozen=True)
class Ramp:
    """d = 0 at `bad`, 0.5 at `threshold`, 1 at `good`, linear in between, clipped outside.
    Works in either direction (bad < good: higher is better; bad > good: lower is better)."""
    bad: float
    threshold: float
    good: float

    def __post_init__(self):
        if not (self.bad < self.threshold < self.good or self.bad > self.threshold > self.good):
            raise ValueError(f"threshold {self.threshold} must lie strictly between bad {self.bad} "
                             f"and good {self.good}")

    def __call__(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        if self.bad > self.good:    # lower is better: mirror onto an increasing ramp
            return Ramp(-self.bad, -self.threshold, -self.good)(-x)
        return np.interp(x, [self.bad, self.threshold, self.good], [0.0, 0.5, 1.0])


# name -> one ramp, or two for a two-sided signal (the document's d is the smaller of the two).
# (bad, threshold, good); thresholds are the published rules', the bad/good ends are chosen to
# spread documents that pass a rule: e.g. mean word length 3-10 passes Gopher, 4-7 is prose.
HEURISTIC_SIGNALS: dict[str, tuple[Ramp, ...]] = {
    # Gopher quality
    "q_mean_word_length": (Ramp(1.5, 3.0, 4.0), Ramp(15.0, 10.0, 7.0)),
    "q_symbol_word_ratio": (Ramp(0.3, 0.1, 0.0),),
    "q_bullet_lines_ratio": (Ramp(1.0, 0.9, 0.1),),
    "q_ellipsis_lines_ratio": (Ramp(0.6, 0.3, 0.0),),
    "q_alpha_words_ratio": (Ramp(0.4, 0.8, 0.95),),
    # share of words that are one of Gopher's 8 stop words (English prose: ~0.15; the rule asks
    # for 2 occurrences, i.e. ~2% of a short document)
    "q_stop_words": (Ramp(0.0, 0.02, 0.12),),
    # Gopher repetition
    "q_dup_line_frac": (Ramp(0.6, 0.3, 0.0),),
    "q_dup_para_frac": (Ramp(0.6, 0.3, 0.0),),
    "q_dup_line_char_frac": (Ramp(0.4, 0.2, 0.0),),
    "q_dup_para_char_frac": (Ramp(0.4, 0.2, 0.0),),
    "q_top_2gram_char_frac": (Ramp(0.4, 0.20, 0.05),),
    "q_top_3gram_char_frac": (Ramp(0.36, 0.18, 0.05),),
    "q_top_4gram_char_frac": (Ramp(0.32, 0.16, 0.05),),
    **{f"q_dup_{n}gram_char_frac": (Ramp(2 * t, t, 0.0),)
       for n, t in {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}.items()},
    # C4: at least 3 sentences
    "q_sentences": (Ramp(0.0, 3.0, 10.0),),
    # FineWeb
    "q_punct_line_ratio": (Ramp(0.0, 0.12, 0.5),),
    "q_short_line_ratio": (Ramp(1.0, 0.67, 0.2),),
    "q_newlines_per_word": (Ramp(0.6, 0.3, 0.05),),
}


def heuristic_table(overrides: dict[str, tuple[float, float, float]] | None = None) -> dict[str, tuple[Ramp, ...]]:
    table = dict(HEURISTIC_SIGNALS)
    for name, (bad, threshold, good) in (overrides or {}).items():
        table[name] = (Ramp(bad, threshold, good),)
    return table


@dataclass
class HeuristicResult:
    scores: np.ndarray            # float32 [n], 1-5
    used: list[str]               # q_* columns that contributed
    ignored: list[str]            # q_* columns present but not in the table
    no_signal: int                # documents without any finite signal (scored 3.0, neutral)


def heuristic_scores(signals: dict[str, np.ndarray],
                     overrides: dict[str, tuple[float, float, float]] | None = None) -> HeuristicResult:
    """Score documents from whichever q_* columns are present (name -> values, one per doc)."""
    table = heuristic_table(overrides)
    used = sorted(c for c in signals if c in table)
    ignored = sorted(c for c in signals if c.startswith("q_") and c not in table)
    if not used:
        raise QualityError("the heuristic scorer needs q_* quality signals; the curated data has "
                           f"{sorted(signals) or 'none'} and it knows {sorted(table)}")
    n = len(next(iter(signals.values())))
    total = np.zeros(n)
    present = np.zeros(n)
    for name in used:
        values = np.asarray(signals[name], dtype=np.float64)
        d = np.min([ramp(values) for ramp in table[name]], axis=0)
        ok = np.isfinite(values)
        total += np.where(ok, d, 0.0)
        present += ok
    # A document whose signals are all missing (NaN) gets the neutral 3.0 and is counted.
    mean = np.where(present > 0, total / np.maximum(present, 1), 0.5)
    return HeuristicResult(to_scale(mean), used, ignored, int((present == 0).sum()))


# ----------------------------------------------------------------------------------- classifier
def read_reference_texts(uris: Sequence[str], text_field: str = "text") -> list[str]:
    """Texts of the reference JSONL files (plain or .gz; local or s3://). A line that is not a
    JSON object with a non-empty string `text` is an error naming the file and line."""
    texts: list[str] = []
    files = storage.expand(list(uris))
    if not files:
        raise QualityError(f"cluster.quality.reference_uris {list(uris)} name no files")
    for uri in files:
        raw = storage.read_bytes(uri)
        if uri.endswith(".gz"):
            raw = gzip.decompress(raw)
        for line_no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise QualityError(f"{uri}:{line_no}: not JSON ({err})") from None
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


# ------------------------------------------------------------------------------------- fastText
POSITIVE_LABELS = ("hq", "high", "high_quality", "pos", "positive", "good", "1", "true", "yes")


def fasttext_label_scores(labels: list[tuple[str, ...]], probs: list[np.ndarray]) -> np.ndarray:
    """Per-document 1-5 score from fastText's (labels, probabilities) with all labels per doc.
    Numeric labels: the expected label, mapped linearly from the smallest..largest label onto
    1-5. Otherwise a binary model: 1 + 4 * P(positive label) (a label in POSITIVE_LABELS)."""
    names = sorted({lab.removeprefix("__label__") for doc in labels for lab in doc})
    numeric = all(re.fullmatch(r"-?\d+(\.\d+)?", n) for n in names) and len(names) > 2
    out = np.empty(len(labels), dtype=np.float64)
    if numeric:
        lo, hi = min(map(float, names)), max(map(float, names))
        for i, (labs, ps) in enumerate(zip(labels, probs)):
            ev = sum(float(lab.removeprefix("__label__")) * p for lab, p in zip(labs, ps)) / max(sum(ps), 1e-12)
            out[i] = (ev - lo) / (hi - lo)
        return to_scale(out)
    positive = [n for n in names if n.lower() in POSITIVE_LABELS]
    if len(positive) != 1:
        raise QualityError(f"fastText labels {names}: cannot tell which label means high quality "
                           f"(expected exactly one of {POSITIVE_LABELS}, or numeric labels)")
    pos = "__label__" + positive[0]
    for i, (labs, ps) in enumerate(zip(labels, probs)):
        out[i] = dict(zip(labs, ps)).get(pos, 0.0)
    return to_scale(out)


def fasttext_available() -> bool:
    try:
        import fasttext  # noqa: F401
    except ImportError:
        return False
    return True


class FastTextScorer:
    def __init__(self, model_uri: str):
        try:
            import fasttext
        except ImportError:
            raise QualityError("cluster.quality asks for a fastText model but the `fasttext` package is not "
                               "installed (pip install fasttext-wheel), or use scorer heuristic/classifier") from None
        import tempfile
        local = storage.local_path(model_uri)
        if local is None:       # fastText loads from a local file only
            self._tmp = tempfile.NamedTemporaryFile(suffix=".bin")
            self._tmp.write(storage.read_bytes(model_uri))
            self._tmp.flush()
            local = self._tmp.name
        if not storage.exists(local):
            raise QualityError(f"fastText model {model_uri} not found")
        self.model = fasttext.load_model(local)

    def scores(self, texts: Iterable[str]) -> np.ndarray:
        labels, probs = [], []
        for text in texts:
            # fastText predicts one line: newlines become spaces. The binding's own predict() is
            # avoided: with numpy 2 its single-line path fails (np.array(copy=False)) and its
            # list path (multilinePredict) repeats the first probability for every label
            # (fasttext-wheel 0.9.2); the per-line binding call returns correct pairs.
            pairs = self.model.f.predict(" ".join(text.split()) + "\n", -1, 0.0, "strict")
            labels.append(tuple(lab for _, lab in pairs))
            probs.append(np.array([p for p, _ in pairs], dtype=np.float64))
        return fasttext_label_scores(labels, probs)


def describe_mapping() -> str:
    """The heuristic table as Markdown rows (for the report)."""
    rows = []
    for name, ramps in HEURISTIC_SIGNALS.items():
        rows.append(f"| `{name}` | " + "; ".join(f"{r.bad:g} -> {r.threshold:g} -> {r.good:g}" for r in ramps) + " |")
    return "\n".join(rows)


__all__ = ["Ramp", "HEURISTIC_SIGNALS", "heuristic_scores", "ReferenceClassifier", "read_reference_texts",
           "FastTextScorer", "fasttext_label_scores", "fasttext_available", "QualityError", "to_scale"]
