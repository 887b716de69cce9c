"""A weekly refresh: adding one input file to a corpus of ten, incrementally vs a full rerun.

The sample corpus (data/sample/corpus.jsonl.gz) is shuffled (seeded) and split into 10 input
files. Run A curates, embeds, clusters and shards the first 9 files from an empty output root,
then the 10th file arrives and the same command runs again: a refresh (`refresh.incremental`,
the default) that reads only the new file, dedups it against the earlier documents, embeds only
its documents, assigns them to the existing centroids and appends them to the ClimbLab shards.
Run B is what a user would do without refreshes: the whole pipeline from an empty output root
over all 10 files. Both go through ClimbLab (curate, select, embed, cluster, shards) on the demo
config. Prints every stage's wall time, the ratio, and checks that the refresh kept the same
documents as the full run.

    .venv/bin/python bench/refresh.py [--config configs/demo.yaml] [--files 10] [--set KEY=VALUE]
        [--corpus DIR_OR_FILE] [--models DIR]

`--corpus` takes another corpus (JSON lines, gzipped or not: a file or a folder of them), e.g.
the scale benchmark's (`bench/scale.py`); `--models` a `_models/` folder to copy into both output
roots before the clocks start (the static embedder distilled once, `embed.model_type: static`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"


def split_corpus(folder: Path, files: int, corpus: Path = SAMPLE, seed: int = 0) -> list[Path]:
    sources = sorted(corpus.glob("*.jsonl*")) if corpus.is_dir() else [corpus]
    records = [json.loads(line) for src in sources for line in (gzip.open if src.suffix == ".gz" else open)(src, "rt")]
    random.Random(seed).shuffle(records)
    folder.mkdir(parents=True)
    paths = []
    for k in range(files):
        path = folder / f"dump-{k:02d}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[k::files]))
        paths.append(path)
    return paths


def run(config: str, overrides: dict, root: Path, inputs: Path) -> tuple[float, list]:
    from mixture import pipeline
    from mixture.config import load_config

    cfg = load_config(
        config,
        {
            **overrides,
            "output_root": str(root / "out"),
            "input.uris": [str(inputs)],
            "tracking.uri": f"sqlite:///{root}/mlflow.db",
        },
    )
    t0 = time.perf_counter()
    results = pipeline.run_all(cfg, until="shards")
    return time.perf_counter() - t0, results


def kept_ids(results) -> set[str]:
    import pyarrow.parquet as pq

    curated = next(r.dataset for r in results if r.stage == "select")
    return {i for f in curated.files("docs/") for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}


def line(label: str, seconds: float, results) -> str:
    stages = ", ".join(f"{r.stage} {'-' if r.skipped else f'{r.seconds:.1f}'}" for r in results)
    return f"{label:28s} {seconds:7.1f} s   ({stages})"


def main() -> None:
    from mixture.config import parse_overrides as _overrides

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--corpus", type=Path, default=SAMPLE)
    p.add_argument("--models", type=Path, default=None, help="a _models/ folder copied into each output root")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    over = _overrides(args.set)
    tmp = Path(tempfile.mkdtemp(prefix="climb-refresh-bench-"))
    paths = split_corpus(tmp / "all", args.files, args.corpus)
    for root in (tmp / "a", tmp / "b") if args.models else ():
        shutil.copytree(args.models, root / "out" / "_models")
    grow = tmp / "grow"
    grow.mkdir()
    for path in paths[:-1]:
        shutil.copy(path, grow / path.name)
    first_s, first = run(args.config, over, tmp / "a", grow)
    shutil.copy(paths[-1], grow / paths[-1].name)
    refresh_s, refresh = run(args.config, over, tmp / "a", grow)
    full_s, full = run(args.config, over, tmp / "b", tmp / "all")
    print(line(f"A: first {args.files - 1} files (full)", first_s, first))
    print(line("A: + 1 file (refresh)", refresh_s, refresh))
    print(line(f"B: all {args.files} files (full)", full_s, full))
    print(f"refresh / full rerun: {refresh_s / full_s:.3f}  ({full_s / refresh_s:.1f}x faster)")
    modes = {r.stage: (r.dataset.manifest.extra.get("lineage") or {}).get("mode") for r in refresh}
    print(f"refresh modes: {modes}")
    a, b = kept_ids(refresh), kept_ids(full)
    print(
        f"curated documents: refresh {len(a):,}, full {len(b):,}; only in the refresh {len(a - b)}, only in the "
        f"full run {len(b - a)} (an earlier document survives over a new duplicate with a smaller id)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
