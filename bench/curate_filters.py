"""Heuristic filters on the sample corpus: what the defaults reject, per source and per rule, and
what the settings recommended for the demo profile (configs/demo.yaml) keep instead.

The filters are the stage's own pure functions (`mixture.curate.filters.FilterChain`, the code the
Spark stage runs per document), so the counts equal the stage's `filtered` counts on the same
input before deduplication. `source` is read only to report per-source survival.

The paper-default thresholds were tuned for English web pages: on a corpus of man pages, code,
dictionaries and glossaries they reject whole domains (C4's curly-brace rule removes almost all of
the Jargon File and the GCIDE dictionary, FineWeb's 1% duplicate-line characters removes the
dictionary, code fails the punctuation and symbol rules). The recommended settings keep every
rule in force but exempt documents whose *shape* is code or a glossary from the rules that
assume prose, and relax two FineWeb limits; Gopher repetition and quality still reject.

    .venv/bin/python bench/curate_filters.py [--corpus data/sample/corpus.jsonl.gz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml
from mixture.config import FiltersConfig
from mixture.curate.filters import FilterChain

REPO = Path(__file__).resolve().parents[1]

# Code: a line that opens a Python def/class/import or a Perl sub/my/our declaration.
CODE = (
    r"^\s*(?:(?:def|class) \w+.*:\s*$|import [\w.]+\s*$|from [\w.]+ import |sub \w+ *\{"
    r"|(?:my|our) [$@%]\w+)"
)
# Glossary: five consecutive "term: definition" lines.
GLOSSARY = r"(?:^[^\n:]{1,60}: [^\n]+\n){5}"
RECOMMENDED = {
    "gopher_quality": {"exempt_if": f"(?m){CODE}"},
    "c4": {"reject_curly_brace": False, "exempt_if": f"(?m){CODE}|{GLOSSARY}"},
    "fineweb": {"max_dup_line_char_frac": 0.2, "max_short_line_ratio": 0.8, "exempt_if": f"(?m){CODE}|{GLOSSARY}"},
}


def evaluate(records: list[dict], cfg: FiltersConfig) -> dict:
    chain = FilterChain(cfg)
    per_source: dict[str, Counter] = defaultdict(Counter)
    first, alone, exempt = Counter(), Counter(), Counter()
    t0 = time.perf_counter()
    for r in records:
        v = chain(r["text"])
        src = per_source[r.get("source") or "?"]
        src["documents"] += 1
        src["kept"] += v.reason is None
        if v.reason:
            _, name, rule = v.reason.split(":")
            first[name] += 1
            first[f"{name}:{rule}"] += 1
        for name, rule in v.failed.items():
            alone[name] += 1
            alone[f"{name}:{rule}"] += 1
        for name in v.exempt:
            exempt[name] += 1
    seconds = time.perf_counter() - t0
    return {
        "per_source": per_source,
        "first": first,
        "alone": alone,
        "exempt": exempt,
        "kept": sum(c["kept"] for c in per_source.values()),
        "docs_per_s": len(records) / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "sample" / "corpus.jsonl.gz"))
    args = ap.parse_args(argv)
    with gzip.open(args.corpus, "rt") as f:
        records = [json.loads(line) for line in f]
    profiles = {"defaults": FiltersConfig(), "recommended": FiltersConfig.model_validate(RECOMMENDED)}
    results = {name: evaluate(records, cfg) for name, cfg in profiles.items()}
    n = len(records)

    print(f"{n} documents from {args.corpus}\n")
    print(f"{'source':16s} " + "  ".join(f"{p:>18s}" for p in profiles))
    for src in sorted(results["defaults"]["per_source"]):
        cells = []
        for p in profiles:
            c = results[p]["per_source"][src]
            cells.append(f"{c['kept']:5d}/{c['documents']:<5d} {100 * c['kept'] / c['documents']:5.1f}%")
        print(f"{src:16s} " + "  ".join(f"{c:>18s}" for c in cells))
    print(
        f"{'all':16s} "
        + "  ".join(f"{results[p]['kept']:5d}/{n:<5d} {100 * results[p]['kept'] / n:5.1f}%".rjust(18) for p in profiles)
    )

    print("\nrejections per filter: first failure (what the stage counts) / on its own (independent)")
    names = ["gopher_quality", "gopher_repetition", "c4", "fineweb"]
    print(f"{'filter':20s} " + "  ".join(f"{p:>22s}" for p in profiles))
    for name in names:
        print(
            f"{name:20s} "
            + "  ".join(f"{results[p]['first'][name]:>10d} / {results[p]['alone'][name]:<9d}" for p in profiles)
        )
    rules = sorted({k for p in profiles for k in results[p]["alone"] if ":" in k})
    print("\nper rule (first failure / on its own)")
    for rule in rules:
        print(
            f"  {rule:42s} "
            + "  ".join(f"{results[p]['first'][rule]:>6d} / {results[p]['alone'][rule]:<6d}" for p in profiles)
        )
    print(
        "\nexempted by exempt_if: " + ", ".join(f"{k} {v}" for k, v in sorted(results["recommended"]["exempt"].items()))
    )
    print("filter throughput (1 core): " + ", ".join(f"{p} {results[p]['docs_per_s']:.0f} docs/s" for p in profiles))
    print("\nrecommended curate.filters for configs/demo.yaml:")
    print(yaml.safe_dump({"curate": {"filters": RECOMMENDED}}, sort_keys=False, width=200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
