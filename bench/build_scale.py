"""Benchmark: the ClimbMix build at two sizes, peak RSS and seconds, before and after the
external shuffle (`mixture.climbmix.shuffle`).

    .venv/bin/python bench/build_scale.py [--copies 25 75] [--old-ref REF] [--workers 1]
        [--shard-docs 10000] [--bucket-docs 20000]

Needs the demo's committed ClimbLab (`make demo`: `out/demo/climblab`, 10 clusters, 2,027
documents, 4.2M tokens). For each size a synthetic but realistic ClimbLab is committed in a
temporary folder: every cluster of the demo's repeated `--copies` times (ids suffixed `#copy`,
the token shard repeated with it; `text.parquet` in row groups of 65,536 rows as the shards
stage writes it), with the demo's own search mixture (`out/demo/search/mixture.json`) and a
token budget equal to the synthetic ClimbLab's tokens (some clusters are upsampled, others
subsampled). Then `climb build` (formats parquet and tokens, `--shard-docs` documents a shard)
runs in a child process, once with this checkout's `libs/` and once with `libs/` of `--old-ref`
(default: the commit before the external shuffle; `git archive` into a temporary folder),
while the parent samples the RSS of the child and its workers with psutil every 20 ms (all of
it, and the anonymous part: RSS less file-backed pages such as the memory-mapped token shards
and Arrow files, which the kernel can drop). Prints wall seconds, both peaks, and whether the
two builds committed the same files (content hash).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "out" / "demo"
OLD_REF = "b61faf2"  # the build that held every sampled cluster's text in memory
ROW_GROUP = 1 << 16


def commit_upstream(root: Path) -> dict[str, str]:
    """Small committed curated and clusters datasets (the build's card reads them)."""
    from mixture import storage
    from mixture.dataset import DatasetWriter

    cur = DatasetWriter(str(root / "curated"), "select", "bench", {})
    storage.write_bytes(cur.path("docs/part-0.parquet"), b"placeholder")
    curated = cur.commit({"documents_in": 0, "documents_out": 0})
    cl = DatasetWriter(str(root / "clusters"), "cluster", "bench", {"curated": curated.manifest_sha256})
    shutil.copy(DEMO / "clusters" / "report.json", cl.path("report.json"))
    clusters = cl.commit({"clusters": 10})
    return {"curated": curated.manifest_sha256, "clusters": clusters.manifest_sha256}


def copy_cluster(demo, w, name: str, copies: int) -> dict[str, int]:
    """One cluster of the demo's ClimbLab repeated `copies` times, written copy by copy."""
    texts = demo.texts(name)
    shard = demo.shard(name)
    tokens, offsets = np.asarray(shard.tokens), shard.offsets
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(w.path(f"{name}/text.parquet"), schema) as out:
        buffered: list[pa.Table] = []
        for c in range(copies):
            ids = pa.array([f"{i}#{c}" for i in texts.column("id").to_pylist()], pa.string())
            buffered.append(pa.table([ids, texts.column("text").combine_chunks()], schema=schema))
            if sum(t.num_rows for t in buffered) >= ROW_GROUP or c == copies - 1:
                out.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP)
                buffered = []
    with open(w.path(f"{name}/tokens.bin"), "wb") as f:
        for _ in range(copies):
            f.write(tokens.tobytes())
    n, total = len(offsets) - 1, int(offsets[-1])
    big = np.concatenate([offsets[:-1] + c * total for c in range(copies)] + [[copies * total]]).astype(np.int64)
    with open(w.path(f"{name}/tokens.idx"), "wb") as f:
        np.save(f, big)
    return {"documents": n * copies, "tokens": total * copies}


def make_inputs(root: Path, copies: int) -> int:
    """The synthetic ClimbLab (+ search, curated, clusters); its tokens."""
    from mixture import storage
    from mixture.climblab import ClimbLab
    from mixture.dataset import DatasetWriter, open_dataset

    demo = ClimbLab(open_dataset(str(DEMO / "climblab")))
    w = DatasetWriter(str(root / "climblab"), "shards", "bench", commit_upstream(root))
    storage.write_bytes(w.path("tokenizer/tokenizer.json"), storage.read_bytes(demo.tokenizer_path))
    info = {c: copy_cluster(demo, w, c, copies) for c in demo.clusters}
    n = sum(v["documents"] for v in info.values())
    tokens = sum(v["tokens"] for v in info.values())
    extra = {**demo.info, "clusters": info}
    lab = w.commit({"documents_in": n, "documents_out": n, "tokens": tokens, "clusters": len(info)}, extra)
    s = DatasetWriter(str(root / "search"), "search", "bench", {"climblab": lab.manifest_sha256})
    shutil.copy(DEMO / "search" / "mixture.json", s.path("mixture.json"))
    s.commit({"runs": 0, "iterations": 0})
    return tokens


def child(args_json: str) -> None:
    """The measured process: one `climb build` of the committed inputs."""
    from mixture.config import parse_config
    from mixture.dataset import content_hash
    from mixture.pipeline import run_stage

    a = json.loads(args_json)
    cfg = parse_config({"output_root": a["root"], "seed": 0, "build": a["build"], "tracking": {"experiment": "b"}})
    t0 = time.perf_counter()
    ds = run_stage(cfg, "build", force=True).dataset
    print(
        json.dumps(
            {
                "stage_seconds": time.perf_counter() - t0,
                "documents": ds.manifest.counts["documents"],
                "tokens": ds.manifest.counts["tokens"],
                "content_hash": content_hash(ds.manifest.files),
            }
        )
    )


def measure(libs: Path, root: Path, build: dict) -> dict:
    """Run the build in a child process with `libs` first on its path; seconds, peak RSS of the
    process tree (psutil, 20 ms) and what it committed."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(libs), "TOKENIZERS_PARALLELISM": "false"}
    payload = json.dumps({"root": str(root), "build": build})
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", payload], env=env, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]
    parent = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            try:
                mem = [p.memory_info() for p in [parent, *parent.children(recursive=True)]]
                peak[0] = max(peak[0], sum(m.rss for m in mem))
                peak[1] = max(peak[1], sum(m.rss - m.shared for m in mem))  # anonymous: not file pages
            except psutil.Error:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    thread.join()
    if proc.returncode:
        raise SystemExit(f"the build failed (libs {libs})")
    mb = {"peak_rss_mb": peak[0] / 2**20, "peak_anon_mb": peak[1] / 2**20}
    return {"seconds": wall, **mb, **json.loads(out.strip().splitlines()[-1])}


def old_libs(ref: str, into: Path) -> Path:
    """libs/ of commit `ref` (git archive), for the before measurement."""
    blob = subprocess.run(["git", "archive", ref, "libs"], cwd=ROOT, check=True, capture_output=True).stdout
    archive = into / "libs.tar"
    archive.write_bytes(blob)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "libs"


def run_size(copies: int, args, old: Path | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="build-scale-") as tmp:
        root = Path(tmp)
        budget = make_inputs(root, copies)
        base = {"tokens": budget, "shard_docs": args.shard_docs}
        new = {**base, "workers": args.workers, "bucket_docs": args.bucket_docs}
        for label, libs, build in (("before", old, base), ("after", ROOT / "libs", new)):
            if libs is None:
                continue
            r = measure(libs, root, build)
            rows.append({"copies": copies, "code": label, **r})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, nargs="+", default=[25, 75])
    ap.add_argument("--old-ref", default=OLD_REF, help="'' to measure this checkout only")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--shard-docs", type=int, default=10_000)
    ap.add_argument("--bucket-docs", type=int, default=20_000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    if not (DEMO / "climblab" / "_manifest.json").exists():
        raise SystemExit(f"{DEMO / 'climblab'} is not committed: run `make demo` first")
    with tempfile.TemporaryDirectory(prefix="build-scale-old-") as tmp:
        old = old_libs(args.old_ref, Path(tmp)) if args.old_ref else None
        rows = [r for copies in args.copies for r in run_size(copies, args, old)]
    report(rows, args)


def report(rows: list[dict], args) -> None:
    print(
        f"\nshards of {args.shard_docs:,} documents, formats parquet + tokens; after: "
        f"build.bucket_docs {args.bucket_docs:,}, build.workers {args.workers}"
    )
    print(
        "| ClimbLab copies | documents built | tokens built | code | wall s | peak RSS MB | peak anon MB "
        "| content hash |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['copies']} | {r['documents']:,} | {r['tokens']:,} | {r['code']} | {r['seconds']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['content_hash'][:12]} |"
        )
    for code in ("before", "after"):
        mine = [r for r in rows if r["code"] == code]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            rss, anon = b["peak_rss_mb"] / a["peak_rss_mb"], b["peak_anon_mb"] / a["peak_anon_mb"]
            secs = b["seconds"] / a["seconds"]
            print(
                f"{code}: {a['documents']:,} -> {b['documents']:,} documents: peak RSS x{rss:.2f}, "
                f"peak anonymous x{anon:.2f}, time x{secs:.2f}"
            )
    same = {r["copies"]: len({x["content_hash"] for x in rows if x["copies"] == r["copies"]}) == 1 for r in rows}
    print("same committed files before and after:", same)


if __name__ == "__main__":
    main()
