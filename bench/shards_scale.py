"""The shards stage (ClimbLab token shards) at several corpus sizes and numbers of workers: wall
seconds, peak memory of the whole process tree, and whether the committed files are the same.

    .venv/bin/python bench/shards_scale.py --demo out/demo [--copies 1 3] [--workers 1 2] \
        [--part-docs 500] [--docs-per-file 1000]

Each run commits a copy of the demo's curated documents and cluster assignments, repeated
`--copies` times under new ids (`<id>~<copy>`, so every cluster grows and its documents interleave
by id), into a fresh output root, then runs `climb shards --force` as a child process with the
demo's tokenizer (`shards.tokenizer`, so no tokenizer is trained and every run tokenizes with the
same one). The child's process tree (the stage and its spawned workers) is sampled with psutil
every 20 ms: the peak of the sum of their resident set sizes is reported.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from mixture import storage
from mixture.curate import documents
from mixture.dataset import DatasetWriter, open_dataset

CLIMB = str(Path(sys.executable).parent / "climb")


def _repeat(table: pa.Table, copies: int) -> pa.Table:
    ids = table.column("id")
    parts = [
        table.set_column(table.schema.get_field_index("id"), "id", pc.binary_join_element_wise(ids, f"~{c}", ""))
        for c in range(copies)
    ]
    return pa.concat_tables(parts)


def _commit(root: Path, name: str, stage: str, files: dict[str, pa.Table]) -> None:
    w = DatasetWriter(str(root / name), stage, "bench", {})
    for rel, table in files.items():
        with storage.open_write(w.path(rel)) as f:
            pq.write_table(pa.Table.from_batches(table.to_batches()), f)
    w.commit({"documents_out": sum(t.num_rows for t in files.values())})


def inputs(demo: Path, root: Path, copies: int, docs_per_file: int) -> int:
    """Commit the demo's curated documents (in files of `docs_per_file`, one row group each, as
    the select stage writes them) and assignments, `copies` times; their number."""
    curated = _repeat(documents.read_table(open_dataset(str(demo / "curated")), ["id", "text"]), copies)
    assign = pq.read_table(open_dataset(str(demo / "clusters")).path("assignments.parquet"), columns=["id", "cluster"])
    files = {
        f"docs/part-{i:05d}.parquet": curated.slice(start, docs_per_file)
        for i, start in enumerate(range(0, curated.num_rows, docs_per_file))
    }
    _commit(root, "curated", "select", files)
    _commit(root, "clusters", "cluster", {"assignments.parquet": _repeat(assign, copies)})
    return curated.num_rows


def _children_cpu() -> float:
    """User + system CPU seconds of every waited-for descendant (the stage and its workers)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(root: Path, demo: Path, workers: int, part_docs: int) -> tuple[float, float, int, dict[str, str], dict]:
    """(seconds, CPU seconds, peak RSS bytes, committed files, counts) of one `climb shards --force`."""
    cfg = {
        "output_root": str(root),
        "shards": {"tokenizer": str(demo / "climblab" / "tokenizer"), "workers": workers, "part_docs": part_docs},
    }
    config = root / "shards.yaml"
    config.write_text(yaml.safe_dump(cfg))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    cmd = [CLIMB, "shards", "--config", str(config), "--force"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.02)
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if child.returncode:
        raise SystemExit(f"climb shards failed with exit status {child.returncode}")
    ds = open_dataset(str(root / "climblab"))
    return seconds, cpu, peak, {f["path"]: f["sha256"] for f in ds.manifest.files}, ds.manifest.counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="out/demo", help="an output root with committed curated, clusters, climblab")
    p.add_argument("--copies", type=int, nargs="+", default=[1, 3])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--part-docs", type=int, default=500)
    p.add_argument("--docs-per-file", type=int, default=1000, help="curated documents per Parquet file")
    args = p.parse_args()
    demo = Path(args.demo)
    print(f"{os.cpu_count()} CPUs, load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        "| corpus | documents | tokens | workers | parts | seconds | CPU s (tree) | peak RSS (tree) "
        "| same files as 1 worker |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for copies in args.copies:
        first: dict[str, str] | None = None
        for workers in args.workers:
            with tempfile.TemporaryDirectory(prefix="climb-bench-") as tmp:
                n = inputs(demo, Path(tmp), copies, args.docs_per_file)
                seconds, cpu, peak, files, counts = run(Path(tmp), demo, workers, args.part_docs)
            first = first if first is not None else files
            parts = -(-n // args.part_docs)
            print(
                f"| demo x{copies} | {n:,} | {counts['tokens']:,} | {workers} | {parts} | {seconds:.1f} | {cpu:.1f} | "
                f"{peak / 2**20:,.0f} MiB | {files == first} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
