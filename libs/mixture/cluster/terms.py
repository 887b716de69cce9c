"""What a cluster's texts say: its top TF-IDF terms, its most typical documents, short
snippets, and an estimate of its tokens per word.

Top terms are the highest mean TF-IDF weights over a sample of a cluster's documents (IDF over
every sampled document, English stop words removed). With no embeddings (the user's groups) the
snippets are the sampled documents nearest their cluster's mean TF-IDF vector. Tokens per word
come from the embedding model's own tokenizer on the sample (code has more tokens per word than
prose); the estimate is informative only. Used by the cluster report (`mixture.cluster.report`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOP_TERMS = 12
SNIPPETS = 3
SNIPPET_CHARS = 300


def _tfidf(texts_by_cluster: dict[int, list[str]]) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(TF-IDF matrix, owning cluster per row, vocabulary) of the sampled documents (IDF over all
    of them), or None when there is nothing to weigh."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    order = sorted(texts_by_cluster)
    docs = [t for c in order for t in texts_by_cluster[c]]
    owner = np.array([c for c in order for _ in texts_by_cluster[c]])
    if not docs:
        return None
    vec = TfidfVectorizer(
        stop_words="english",
        sublinear_tf=True,
        max_features=50_000,
        token_pattern=r"(?u)\b[^\W\d_][^\W\d_]{2,}\b",
        max_df=0.5 if len(docs) > 20 else 1.0,
        min_df=2 if len(docs) > 50 else 1,
    )
    try:
        m = vec.fit_transform(docs)
    except ValueError:  # no term survives (e.g. only stop words)
        return None
    return m, owner, np.array(vec.get_feature_names_out())


def top_terms(texts_by_cluster: dict[int, list[str]], n_terms: int = TOP_TERMS) -> dict[int, list[tuple[str, float]]]:
    """Highest mean TF-IDF terms per cluster (IDF over all the sampled documents)."""
    return terms_and_typical(texts_by_cluster, n_terms)[0]


def terms_and_typical(
    texts_by_cluster: dict[int, list[str]], n_terms: int = TOP_TERMS, n_typical: int = SNIPPETS
) -> tuple[dict[int, list[tuple[str, float]]], dict[int, list[int]]]:
    """Per cluster its top TF-IDF terms, and the positions in its list of its most typical
    documents (highest cosine to the cluster's mean TF-IDF vector: the snippets when there are no
    embeddings to find the documents nearest a centroid)."""
    order = sorted(texts_by_cluster)
    fitted = _tfidf(texts_by_cluster)
    if fitted is None:
        return {c: [] for c in order}, {c: list(range(min(n_typical, len(texts_by_cluster[c])))) for c in order}
    m, owner, vocab = fitted
    terms, typical = {}, {}
    for c in order:
        rows = m[owner == c]
        mean = np.asarray(rows.mean(axis=0)).ravel()
        best = np.argsort(-mean, kind="stable")[:n_terms]
        terms[c] = [(str(vocab[j]), round(float(mean[j]), 4)) for j in best if mean[j] > 0]
        typical[c] = np.argsort(-np.asarray(rows @ mean).ravel(), kind="stable")[:n_typical].tolist()
    return terms, typical


def snippet(text: str) -> str:
    """The text on one line, cut at a word boundary after at most SNIPPET_CHARS characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."


def token_counter(model: str | None):
    """A function text list -> token count with the embedding model's tokenizer, or None."""
    if not model:
        return None
    try:
        from transformers import AutoTokenizer

        from mixture.cluster.encoder import read_model_spec, resolve_model

        tok = AutoTokenizer.from_pretrained(str(read_model_spec(resolve_model(model)).path), local_files_only=True)
    except Exception as err:  # the estimate is informative only: say so and go on
        log.warning("token estimate skipped: %s", err)
        return None

    def count(texts: list[str]) -> int:
        if not texts:
            return 0
        enc = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return sum(len(x) for x in enc)

    return count


def tokens_per_word(model: str | None, sampled: dict[int, list[str]]) -> dict[int, float]:
    """Tokens per word of each cluster's sample (code has more tokens per word than prose)."""
    count = token_counter(model)
    if count is None:
        return {}
    return {c: count(t) / max(sum(len(x.split()) for x in t), 1) for c, t in sampled.items()}
