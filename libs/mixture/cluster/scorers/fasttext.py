"""fastText quality scorer: CLIMB's own (Diao et al. 2025 score every document with fastText
quality classifiers on a 1-5 scale), from a model file (`cluster.quality.fasttext_model`) when
the `fasttext` package imports. Numeric labels (e.g. __label__0..__label__5) give the expected
label, mapped linearly onto 1-5; a binary model gives 1 + 4 * P(positive label)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from mixture import storage
from mixture.cluster.scorers._base import QualityError, ScoreBatch, Scorer, ScoreSetup, log, to_scale
from mixture.registry import QUALITY_SCORERS

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
        raise QualityError(
            f"fastText labels {names}: cannot tell which label means high quality "
            f"(expected exactly one of {POSITIVE_LABELS}, or numeric labels)"
        )
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
            raise QualityError(
                "cluster.quality asks for a fastText model but the `fasttext` package is not "
                "installed (pip install fasttext-wheel), or use scorer heuristic/classifier"
            ) from None
        import tempfile

        local = storage.local_path(model_uri)
        if local is None:  # fastText loads from a local file only
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


class FastTextBatches:
    def __init__(self, scorer: FastTextScorer, model: str):
        self.scorer, self.model = scorer, model

    def score(self, batch: ScoreBatch) -> np.ndarray:
        return self.scorer.scores(batch.meta.column("text").to_pylist())

    def note(self) -> Any:
        return {"model": self.model}


@QUALITY_SCORERS.register("fasttext")
class FastTextQualityScorer(Scorer):
    order = 30
    needs_text = True  # its batches carry the texts: never all of them at once

    @staticmethod
    def open(setup: ScoreSetup) -> tuple[FastTextBatches | None, Any]:
        qcfg = setup.cfg
        if not qcfg.fasttext_model:
            return None, None
        if not fasttext_available() and not setup.chosen:
            log.warning("fastText scorer skipped: the fasttext package is not installed")
            return None, "skipped: fasttext not installed"
        return FastTextBatches(FastTextScorer(qcfg.fasttext_model), qcfg.fasttext_model), None
