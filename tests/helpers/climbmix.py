"""Committed ClimbLab, search and config stand-ins for the build, format, loader and publish tests:
a tiny ClimbLab of four clusters with known texts, a search with known weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mixture import storage
from mixture.config import Config, parse_config
from mixture.dataset import DatasetWriter

SOURCES = {"c00": "manpages", "c01": "python-docs", "c02": "dictionary", "c03": "fortunes"}


# ------------------------------------------------------------------------------ fixtures
def make_config(root: Path, **build) -> Config:
    data = {
        "output_root": str(root),
        "input": {"uris": [str(root / "input.jsonl")]},
        "seed": 7,
        "build": {"tokens": 12_000, "shard_docs": 16, **build},
        "tracking": {"experiment": "test"},
    }
    return parse_config(data)


def _commit(root: Path, name: str, stage: str, inputs: dict, counts: dict, extra: dict, files: dict):
    w = DatasetWriter(storage.join(str(root), name), stage, f"{name}-config", inputs)
    for rel, payload in files.items():
        storage.write_bytes(w.path(rel), payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return w


def make_climblab(
    root: Path,
    records: list[dict],
    docs_per_cluster=(12, 10, 14, 6),
    with_upstream: bool = True,
    row_group_size: int | None = None,
    copies: tuple[str, str] | None = None,
    sources: list[str] | None = None,
    curated_version: int = 0,
):
    """A committed climblab (4 clusters of real sample documents, a BPE tokenizer trained on
    them), plus small committed curated and clusters datasets (the build reads them for its card);
    the climblab names them as its inputs only `with_upstream`. `row_group_size`: rows per row
    group of the text.parquet files (default: one row group). `copies=(a, b)`: every document of
    cluster a is in cluster b too (same text, id + "-copy"): exact-text duplicates. `sources`: the
    input URIs the curated manifest records (as `curate` does, as configured); `curated_version`:
    the version its lineage records (none when 0)."""
    from mixture.climblab.tokens import EOS, train_tokenizer

    cur = _commit(root, "curated", "curate", {}, {}, {}, {"docs/part-0.parquet": b"placeholder"})
    curated = cur.commit(
        {
            "documents_in": 120,
            "documents_out": 100,
            "exact_duplicates": 3,
            "near_duplicates": 2,
            "filtered": {"gopher_quality": 10, "c4": 5},
            "quarantined": {"invalid_json": 0},
        },
        {
            **({"sources": sources} if sources else {}),
            **({"lineage": _lineage(curated_version)} if curated_version else {}),
        },
    )
    report = {"clusters": [{"cluster": i, "top_terms": [[f"term{i}a", 0.9], [f"term{i}b", 0.5]]} for i in range(4)]}
    cl = _commit(root, "clusters", "cluster", {"curated": curated.manifest_sha256}, {}, {}, {"report.json": report})
    clusters = cl.commit({"clusters": 4, "pruned_clusters": 1, "pruned_documents": 9})
    inputs = {"curated": curated.manifest_sha256, "clusters": clusters.manifest_sha256} if with_upstream else {}
    by_cluster = {}
    for (name, source), n in zip(SOURCES.items(), docs_per_cluster):
        # the first ~600 characters keep documents short, so a small budget spans many of them
        recs = [{**r, "text": r["text"][:600]} for r in records if r["source"] == source][:n]
        by_cluster[name] = recs
    if copies:
        by_cluster[copies[1]] = by_cluster[copies[1]] + [{**r, "id": f"{r['id']}-copy"} for r in by_cluster[copies[0]]]
    texts = [r["text"] for recs in by_cluster.values() for r in recs]
    tok = train_tokenizer(texts, 300)
    eos = tok.token_to_id(EOS)
    w = DatasetWriter(storage.join(str(root), "climblab"), "shards", "climblab-config", inputs)
    storage.write_text(w.path("tokenizer/tokenizer.json"), tok.to_str())
    info = {}
    for name, recs in by_cluster.items():
        docs = [np.array(tok.encode(r["text"]).ids + [eos], dtype=np.uint16) for r in recs]
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
        Path(w.path(f"{name}/tokens.bin")).write_bytes(np.concatenate(docs).astype("<u2").tobytes())
        with open(w.path(f"{name}/tokens.idx"), "wb") as f:
            np.save(f, offsets)
        pq.write_table(
            pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]}),
            w.path(f"{name}/text.parquet"),
            row_group_size=row_group_size,
        )
        info[name] = {"documents": len(docs), "tokens": int(offsets[-1])}
    total = sum(v["tokens"] for v in info.values())
    n = sum(v["documents"] for v in info.values())
    return w.commit(
        {"documents_in": n, "documents_out": n, "tokens": total, "clusters": len(info)},
        {"clusters": info, "vocab_size": tok.get_vocab_size(), "eos_id": eos, "dtype": "uint16"},
    )


def _lineage(version: int) -> dict:
    return {"version": version, "base": 1, "parent": None, "mode": "incremental", "settings": "curated-settings"}


def make_search(root: Path, climblab, weights: dict[str, float]):
    w = DatasetWriter(
        storage.join(str(root), "search"), "search", "search-config", {"climblab": climblab.manifest_sha256}
    )
    storage.write_json(w.path("mixture.json"), {"weights": weights, "method": "test"})
    return w.commit({"runs": 0, "iterations": 0}, {"mixture": weights})


WEIGHTS = {"c00": 0.4, "c01": 0.3, "c02": 0.2, "c03": 0.1}
