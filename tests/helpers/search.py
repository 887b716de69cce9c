"""A search over real token shards at test scale: four clusters of sample texts of different
sources, cpu-tiny proxies, a target of held-out texts of the first cluster's source (python code),
for the base and merged-expert tests."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from mixture.config import Config, parse_config
from mixture.search.synthetic import make_climblab

SOURCES = {"c00": "python-code", "c01": "dictionary", "c02": "fortunes", "c03": "manpages"}


def lab_texts(records: list[dict]) -> tuple[dict[str, list[str]], list[str]]:
    """(10 texts per cluster, 10 held-out python-code texts for the target)."""
    by_source = collections.defaultdict(list)
    for r in records:
        by_source[r["source"]].append(r["text"][:3000])
    return {name: by_source[s][:10] for name, s in SOURCES.items()}, by_source["python-code"][50:60]


def search_config(tmp_path: Path, texts: tuple[dict, list[str]], tracking_uri: str, **search) -> Config:
    """The search's config (`search` keys override); commits the climblab and writes the target
    under `tmp_path` on first use."""
    clusters, held_out = texts
    root = tmp_path / "out"
    if not (root / "climblab" / "_manifest.json").exists():
        make_climblab(str(root / "climblab"), clusters, vocab_size=400)
        (tmp_path / "target.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out))
    tiny = {"preset": "cpu-tiny", "tokens": 8192, "batch_size": 4, "seq_len": 64}
    cfg = {
        "iterations": [4, 2],
        "candidates": 500,
        "top_n": 4,
        "top_k": 2,
        "proxy": {**tiny, "data_order": "cluster"},
        "transfer_proxy": tiny,
        "target": {"val_uris": [str(tmp_path / "target.jsonl")], "val_docs": 4, "val_tokens": 2000},
        "predictor": {"candidates": ["ridge"], "cv_folds": 2},
        "playoff": {"enabled": False},  # 6 runs cannot afford one (tests/search/test_playoff.py)
        **search,
    }
    return parse_config(
        {
            "run_name": "search",
            "output_root": str(root),
            "input": {"uris": ["unused"]},
            "search": cfg,
            "tracking": {"experiment": "test", "uri": tracking_uri},
        }
    )
