"""Compare the datasets of two demo output roots, e.g. before and after a refactor.

    .venv/bin/python bench/demo_compare.py OLD_ROOT NEW_ROOT

Prints whether the kept document ids, the curated part files, the cluster assignments (ids and
cluster columns; quality scores listed separately), the ClimbLab token files, the ClimbMix
parquet and token files and the search's mixture are the same, by sha256 from the manifests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def manifest_files(root: Path, name: str, prefix: str = "", contains: str = "") -> dict[str, str]:
    m = json.loads((root / name / "_manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in m["files"] if f["path"].startswith(prefix) and contains in f["path"]}


def kept_ids(root: Path) -> list[str]:
    out: list[str] = []
    for p in sorted((root / "curated" / "docs").glob("*.parquet")):
        out += pq.read_table(p, columns=["id"]).column("id").to_pylist()
    return out


def assignments(root: Path) -> dict[str, list]:
    return pq.read_table(root / "clusters" / "assignments.parquet").to_pydict()


def main(old: Path, new: Path) -> None:
    a, b = kept_ids(old), kept_ids(new)
    print(f"kept document ids: {'same' if a == b else 'DIFFERENT'} ({len(a):,} vs {len(b):,})")
    same = manifest_files(old, "curated", "docs/") == manifest_files(new, "curated", "docs/")
    print(f"curated part files: {'same bytes' if same else 'DIFFERENT'}")
    x, y = assignments(old), assignments(new)
    for col in sorted(set(x) & set(y)):
        print(f"clusters/assignments.parquet column {col}: {'same' if x[col] == y[col] else 'different'}")
    for name, prefix, contains in (
        ("climblab", "", "tokens."),
        ("climbmix", "parquet/", ""),
        ("climbmix", "tokens/", ""),
    ):
        same = manifest_files(old, name, prefix, contains) == manifest_files(new, name, prefix, contains)
        print(f"{name} {prefix or contains} files: {'same bytes' if same else 'DIFFERENT'}")
    w = [json.loads((r / "search" / "mixture.json").read_text())["weights"] for r in (old, new)]
    print(f"search mixture: {'same' if w[0] == w[1] else 'different'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
