"""Benchmark: the pipeline's stages on real-text corpora of growing size (time, CPU, peak RSS).

    .venv/bin/python bench/scale.py [--sizes 30000 100000 300000] [--work /tmp/climb-scale]

For each size N a corpus of N real documents of 150-500 words is written once under
`<work>/corpus-<N>/` (part-NNNNN.jsonl.gz of 10,000 records; `_corpus.json`, written last, says
how it was made) and reused by later runs with the same settings. Every corpus is cut from one pool
of `--pool` distinct documents (300,000 by default; `<work>/pool-<P>/`, built once, ~8 minutes
and ~1.2 GB of memory on one core): its first documents plus 3% exact or lightly edited copies of
them, as in the sample, so the corpora are nested and have the same mix of sources at every size.
The pool (`mixture.corpus.sample.scale_pool`) holds the sources of `climb corpus sample` plus the kernel's
documentation, the environment's site-packages Python code and the kernel's C files, cut into
shorter documents, no file or document twice, shared out evenly over the sources: the small ones
give all they have, so at 300,000 about 45% is kernel C and 30% Python code (its
`_pool.json` has the counts). It needs these Debian packages
(`apt-get install -y` as root; `climb corpus sample`'s plus linux-doc and linux-source):

    manpages manpages-dev python3.11-doc perl-doc dict-gcide wordnet-base jargon-text fortunes
    debian-policy debian-reference-en linux-doc linux-source

Then the pipeline runs on it in a fresh output root `<work>/run-<N>/`, one stage at a time through
the runner (`pipeline.run_stage(cfg, name)`), each stage in its own child process
(`bench/scale.py --stage-worker CONFIG STAGE`), so that a stage's peak RSS is its own:
curate -> select -> embed -> cluster -> shards -> build. The config is the demo's
(configs/demo.yaml: its filter settings with C code exempt from the prose rules as Python and Perl
are, local[2] Spark, the tokenizer) with
`curate.driver_rows: 0` (the Spark path for the duplicate groups, the one 10^8 documents take,
at every size), `curate.docs_per_file: 20000` (a part file's writer holds its rows while sorting
them: bounded by docs_per_file, 100,000 by default, here set below the smallest size so that every
size runs at the bound), `embed.model_type: static` (distilled once into `<work>/_models/` before any clock starts and
copied into each output root), `cluster.k_init: 1000` (paper; `max_train_points` at its default,
256 x K), the demo's pruning and merge (quality 3.0, merge to 10 clusters), no search: the build
takes a uniform mixture over the ClimbLab clusters (`build.mixture`, a JSON file) and half the
ClimbLab tokens as its budget. The build stage declares the search's dataset as an input even when
`build.mixture` is set, so an empty `search` dataset holding that mixture is committed first
(untimed, as tests/climbmix/test_build.py does).

Measured per stage and size, by the parent: wall seconds; CPU seconds (user + sys of the whole
process tree: the larger of getrusage(RUSAGE_CHILDREN) before/after, which counts every
descendant that was waited for, and the sum over the tree's processes of their last sampled
times, which also sees Spark's JVM); peak RSS (the largest sum of RSS over the process tree,
psutil, every --interval seconds, 0.2 by default); docs/s (N / wall seconds). Printed as a table,
with each stage's growth exponent (slope of log wall time against log N between the two largest
sizes and fitted over all sizes) and the ratios of the two largest sizes' time and peak RSS
against the issue's thresholds (100k -> 300k: peak RSS growth < 25%, time < 3.6x; PASS/FAIL).
`--combine A.json B.json ...` runs nothing and reports the runs of earlier outputs together (run
each size on its own, `--sizes N --out /tmp/scale-N`, so a finished size survives a stopped run);
with `--rerun STAGE ...` it first reruns those stages on each run's output root (after a change to
them) and keeps the other stages' figures.
Writes `<out>.json` and the plots `<out>_time.png`, `<out>_rss.png` (log-log, one line per stage),
`--out bench/scale` by default. Each stage's log is `<work>/run-<N>/_bench/<stage>.log`.

Run time: validated with `--sizes 2000 6000 20000` (2 shared cores, load 4-6: 111 s, 146 s and
269 s of stages). Extrapolated linearly from 6,000 -> 20,000 with that load, the default sizes take
about 6, 16 and 46 minutes of stages (curate ~60% of it: ~5.4 ms of wall and 2.4 CPU-ms per
document), plus ~8 minutes for the pool and ~1.5 for the static model the first time: ~80 minutes,
less on a quiet machine. Run it in the background (`nohup ... > scale.log &`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["curate", "select", "embed", "cluster", "shards", "build"]
CORPUS_SETTINGS = {"min_words": 150, "max_words": 500, "target_words": [150, 400], "dup_frac": 0.03, "seed": 0}
# C code is exempt from the prose rules too, as the demo exempts Python and Perl code: without it
# the kernel's C (about half of the pool) is 98% rejected by gopher_quality; with it, 95% of its
# documents match and ~10% of the prose ones (man pages quoting `#include <...>`).
C_CODE = (
    r'|^\s*(?:#include [<"]|#define \w|return\b[^\n]*;\s*$'
    r"|(?:static |const |unsigned |struct |void |int )[^\n]*[;{(]\s*$)"
)
THRESHOLDS = {"rss_growth": 0.25, "time_ratio": 3.6}  # issue #11: 100k -> 300k documents


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "libs"), e.get("PYTHONPATH", "")])),
    )
    return e


# ------------------------------------------------------------------------------ the corpora
def pool(work: Path, size: int) -> Path:
    """The cached pool of `size` distinct documents that every corpus is cut from."""
    from mixture.corpus import sample as corpora

    folder = work / f"pool-{size}"
    marker = folder / "_pool.json"
    settings = {k: v for k, v in CORPUS_SETTINGS.items() if k != "dup_frac"}
    if marker.exists() and json.loads(marker.read_text()).get("settings") == settings:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    records, counts = corpora.scale_pool(
        size,
        seed=settings["seed"],
        min_words=settings["min_words"],
        max_words=settings["max_words"],
        target_words=tuple(settings["target_words"]),
        log=lambda m: print(f"  pool {size:,}: {m}", flush=True),
    )
    corpora.write_pool(folder, records)
    secs = time.perf_counter() - t0
    marker.write_text(json.dumps({"settings": settings, "counts": counts, "seconds": secs}, indent=1))
    print(f"pool of {size:,} distinct documents in {secs:.0f} s -> {folder}", flush=True)
    return folder


def corpus(work: Path, n: int, pool_size: int) -> Path:
    """The cached corpus of n documents: the pool's first ones plus the copies (built when
    missing or made with other settings)."""
    from mixture.corpus import sample as corpora

    folder = work / f"corpus-{n}"
    marker = folder / "_corpus.json"  # `_`: the curate stage's input listing skips it
    settings = {**CORPUS_SETTINGS, "pool": pool_size}
    if marker.exists() and json.loads(marker.read_text()).get("settings") == settings:
        return folder
    src = pool(work, pool_size)
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    records = corpora.read_jsonl_gz(sorted(src.glob("part-*.jsonl.gz")))
    counts = corpora.write_scale(folder, records, n, seed=CORPUS_SETTINGS["seed"], dup_frac=CORPUS_SETTINGS["dup_frac"])
    secs = time.perf_counter() - t0
    marker.write_text(json.dumps({"settings": settings, "counts": counts, "seconds": secs}, indent=1))
    print(f"corpus {n:,}: {counts['words']:,} words in {secs:.0f} s -> {folder}", flush=True)
    return folder


# ------------------------------------------------------------------------------ the config
def config(work: Path, n: int, corpus_dir: Path, k_init: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    root = work / f"run-{n}"
    cfg.update(run_name=f"scale-{n}", output_root=str(root))
    cfg["curate"].pop("partitions", None)  # the default (8), not the demo's 4
    # the path 10^8 documents take at every size (the driver path serves up to 200,000 good records)
    cfg["curate"]["driver_rows"] = 0
    # a part file's writer holds its rows while sorting them (Spark's and select's): bounded by
    # docs_per_file, which is set below the smallest size so every size runs at that bound
    cfg["curate"]["docs_per_file"] = 20_000
    for rule in cfg["curate"]["filters"].values():
        if "exempt_if" in rule:
            rule["exempt_if"] += C_CODE
    cfg["input"] = {"uris": [str(corpus_dir)], "text_field": "text", "id_field": "id"}
    cfg["embed"] = {**cfg.get("embed", {}), "model_type": "static"}
    cfg["embed"].pop("max_tokens", None)  # the static model reads whole documents
    cfg["embed"]["shard_docs"] = 10_000
    cfg["cluster"] = {**cfg["cluster"], "k_init": k_init}
    cfg.pop("search", None)
    cfg["build"] = {
        "bucket_docs": 20_000,  # a gather holds its bucket: bounded by bucket_docs (default 200,000)
        "tokens": 1,  # set from the ClimbLab tokens before the build runs
        "mixture": str(root / "_bench" / "uniform_mixture.json"),
        "licence": "mixed free licences: see mixture.corpus.sample",
    }
    cfg["tracking"] = {"experiment": "climb-scale"}
    return cfg


def write_config(cfg: dict) -> Path:
    path = Path(cfg["output_root"]) / "_bench" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def static_model(work: Path, cfg: dict) -> None:
    """Distil the static model once into <work>/_models (untimed) and copy it into the run."""
    shared = work / "_models"
    code = (
        "import sys; from mixture.config import parse_config; from mixture.cluster.static_encoder import ensure_model; "
        "cfg = parse_config(__import__('yaml').safe_load(open(sys.argv[1]))); "
        "print(ensure_model(sys.argv[2], cfg.embed)['hash'])"
    )
    cfg_path = write_config(cfg)
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg_path), str(work)], env=env(), check=True, capture_output=True, text=True
    )
    digest = out.stdout.strip().splitlines()[-1]
    dst = Path(cfg["output_root"]) / "_models" / digest
    if not dst.exists():
        shutil.copytree(shared / digest, dst)


def skip_search(cfg: dict) -> None:
    """A uniform mixture over the ClimbLab clusters, the build's budget (half the ClimbLab
    tokens) and an empty committed `search` dataset holding the mixture (untimed)."""
    from mixture import pipeline, storage
    from mixture.config import parse_config
    from mixture.dataset import DatasetWriter, open_dataset

    lab = open_dataset(str(Path(cfg["output_root"]) / "climblab"))
    clusters = sorted(lab.manifest.extra["clusters"])
    weights = {c: 1.0 / len(clusters) for c in clusters}
    Path(cfg["build"]["mixture"]).write_text(json.dumps({"weights": weights, "method": "uniform (bench/scale.py)"}))
    cfg["build"]["tokens"] = max(1, int(lab.manifest.counts["tokens"]) // 2)
    write_config(cfg)
    parsed = parse_config(cfg)
    w = DatasetWriter(
        pipeline.dataset_uri(parsed, "search"), "search", "bench-scale-uniform", {"climblab": lab.manifest_sha256}
    )
    w.reset()
    storage.write_json(w.path("mixture.json"), {"weights": weights, "method": "uniform"})
    w.commit({"runs": 0, "iterations": 0}, {"mixture": weights})


# ------------------------------------------------------------------------------ measuring
def stage_worker(cfg_path: str, name: str) -> None:
    """The child: one stage through the runner; its counts as the last stdout line."""
    from mixture import pipeline
    from mixture.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = pipeline.run_stage(load_config(cfg_path), name, force=True)
    counts = res.dataset.manifest.counts
    print(json.dumps({"stage": name, "counts": counts, "runner_seconds": res.seconds}), flush=True)


def measure(cfg_path: Path, name: str, log_path: Path, interval: float) -> dict:
    """Run one stage in a child process; wall s, CPU s and peak RSS of its process tree."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--stage-worker", str(cfg_path), name],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env(),
        )
        root = psutil.Process(child.pid)
        peak, peak_anon, samples = [0], [0], [0]
        cpu: dict[tuple[int, float], float] = {}  # (pid, create time) -> last user + sys seen

        def sample() -> None:
            while child.poll() is None:
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    return
                rss = anon = 0
                for p in procs:
                    try:
                        with p.oneshot():
                            mem = p.memory_info()
                            rss += mem.rss
                            anon += mem.rss - mem.shared  # less file-backed pages (memory maps)
                            t = p.cpu_times()
                            cpu[(p.pid, p.create_time())] = t.user + t.system
                    except psutil.Error:
                        continue
                peak[0] = max(peak[0], rss)
                peak_anon[0] = max(peak_anon[0], anon)
                samples[0] += 1
                time.sleep(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        out, _ = child.communicate()
        wall = time.perf_counter() - t0
        thread.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"stage {name} failed (exit {child.returncode}); log {log_path}:\n{tail}")
    rusage_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "cpu_s": max(rusage_cpu, sum(cpu.values())),
        "cpu_rusage_s": rusage_cpu,
        "cpu_sampled_s": sum(cpu.values()),
        "peak_rss_mb": peak[0] / 2**20,
        "peak_anon_mb": peak_anon[0] / 2**20,
        "samples": samples[0],
        "counts": result["counts"],
    }


def run_size(work: Path, n: int, pool_size: int, k_init: int, interval: float, rerun: dict | None = None) -> dict:
    """Every stage on a fresh output root; with `rerun` (an earlier run of this size) only the
    stages named in rerun["stages_to_rerun"], on that run's output root, the others' figures kept."""
    corpus_dir = corpus(work, n, pool_size)
    cfg = config(work, n, corpus_dir, k_init)
    if rerun is None:
        shutil.rmtree(cfg["output_root"], ignore_errors=True)  # one fresh output root per size
    cfg_path = write_config(cfg)
    static_model(work, cfg)
    stages: dict[str, dict] = dict(rerun["stages"]) if rerun else {}
    for name in rerun["stages_to_rerun"] if rerun else STAGES:
        if name == "build":
            skip_search(cfg)
        r = measure(cfg_path, name, Path(cfg["output_root"]) / "_bench" / f"{name}.log", interval)
        r["docs_per_s"] = n / r["wall_s"]
        stages[name] = r
        print(
            f"  {n:>9,} {name:<8} wall {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  "
            f"peak RSS {r['peak_rss_mb']:7.0f} MB (anon {r.get('peak_anon_mb', 0):5.0f})  "
            f"{r['docs_per_s']:8.0f} docs/s  {r['counts']}",
            flush=True,
        )
    meta = json.loads((corpus_dir / "_corpus.json").read_text())
    return {"documents": n, "corpus": meta, "stages": stages}


# ------------------------------------------------------------------------------ reporting
def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def summarise(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["documents"])
    sizes = [r["documents"] for r in runs]
    out: dict[str, dict] = {}
    for name in [*STAGES, "total"]:
        wall = [_value(r, name, "wall_s") for r in runs]
        rss = [_value(r, name, "peak_rss_mb") for r in runs]
        s: dict = {"exponent_all": slope(sizes, wall)}
        if len(runs) >= 2:
            (n0, n1), (t0, t1), (m0, m1) = sizes[-2:], wall[-2:], rss[-2:]
            s.update(
                sizes=[n0, n1],
                exponent_last=slope([n0, n1], [t0, t1]),
                time_ratio=t1 / t0,
                rss_ratio=m1 / m0,
                time_pass=t1 / t0 < THRESHOLDS["time_ratio"],
                rss_pass=m1 / m0 < 1 + THRESHOLDS["rss_growth"],
            )
        out[name] = s
    return out


def _value(run: dict, name: str, key: str) -> float:
    st = run["stages"]
    if name != "total":
        return st[name][key]
    if key == "peak_rss_mb":
        return max(s[key] for s in st.values())
    return sum(s[key] for s in st.values())


def table(runs: list[dict], summary: dict) -> str:
    lines = [
        "| documents | stage | wall s | CPU s | peak RSS MB | docs/s | documents out |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: r["documents"]):
        n = r["documents"]
        for name in STAGES:
            s = r["stages"][name]
            c = s["counts"]
            docs_out = c.get("documents_out", c.get("documents", ""))
            lines.append(
                f"| {n:,} | {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['peak_rss_mb']:.0f} | "
                f"{s['docs_per_s']:.0f} | {docs_out:,} |"
                if isinstance(docs_out, int)
                else f"| {n:,} | {name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['peak_rss_mb']:.0f} | "
                f"{s['docs_per_s']:.0f} | {docs_out} |"
            )
        w, c = _value(r, "total", "wall_s"), _value(r, "total", "cpu_s")
        lines.append(
            f"| {n:,} | **total** | {w:.1f} | {c:.1f} | {_value(r, 'total', 'peak_rss_mb'):.0f} | {n / w:.0f} | |"
        )
    lines.append("")
    first = next(iter(summary.values()))
    if "sizes" in first:
        n0, n1 = first["sizes"]
        lines.append(
            f"growth between the two largest sizes, {n0:,} -> {n1:,} documents ({n1 / n0:.1f}x); "
            f"thresholds (issue #11, 100k -> 300k): time < {THRESHOLDS['time_ratio']}x, "
            f"peak RSS growth < {THRESHOLDS['rss_growth']:.0%}"
        )
        lines.append("| stage | exponent (last two) | exponent (all sizes) | time ratio | | peak RSS ratio | |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, s in summary.items():
            ea = "" if s["exponent_all"] is None else f"{s['exponent_all']:.2f}"
            lines.append(
                f"| {name} | {s['exponent_last']:.2f} | {ea} | {s['time_ratio']:.2f}x | "
                f"{'PASS' if s['time_pass'] else 'FAIL'} | {s['rss_ratio']:.3f} ({(s['rss_ratio'] - 1) * 100:+.1f}%) | "
                f"{'PASS' if s['rss_pass'] else 'FAIL'} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["documents"])
    sizes = [r["documents"] for r in runs]
    paths = []
    for key, label, suffix in (("wall_s", "wall seconds", "time"), ("peak_rss_mb", "peak RSS (MB)", "rss")):
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        for name in [*STAGES, "total"]:
            ys = [_value(r, name, key) for r in runs]
            line = name if name != "total" else ("all stages" if key == "wall_s" else "largest stage")
            ax.plot(sizes, ys, marker="o", label=line, linestyle="--" if name == "total" else "-")
        if key == "wall_s" and len(sizes) >= 2:  # a linear reference through the first total
            t0 = _value(runs[0], "total", "wall_s")
            ax.plot(sizes, [t0 * n / sizes[0] for n in sizes], color="grey", linewidth=0.8, label="linear in N")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel(label)
        ax.set_title(f"CLIMB pipeline per stage: {label} vs corpus size (2 cores)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        path = out.with_name(f"{out.name}_{suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[30_000, 100_000, 300_000])
    ap.add_argument("--work", default="/tmp/climb-scale", help="corpora, output roots and the static model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale"), help="prefix of the JSON and PNG files")
    ap.add_argument(
        "--pool",
        type=int,
        default=300_000,
        help="distinct documents every corpus is cut from (same mix of sources at every size)",
    )
    ap.add_argument("--k-init", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.2, help="RSS/CPU sampling interval, seconds")
    ap.add_argument("--corpus-only", action="store_true", help="build (or check) the corpora and stop")
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="no run: summarise and plot the runs of earlier outputs (one size per invocation, say)",
    )
    ap.add_argument(
        "--rerun",
        nargs="+",
        metavar="STAGE",
        help="with --combine: rerun these stages of each combined run on its output root, then report",
    )
    ap.add_argument("--stage-worker", nargs=2, metavar=("CONFIG", "STAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage_worker:
        return stage_worker(*args.stage_worker)
    os.environ.update(env())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool_size = max(args.pool, *args.sizes)
    if args.corpus_only:
        for n in args.sizes:
            corpus(work, n, pool_size)
        return
    runs = [r for path in args.combine for r in json.loads(Path(path).read_text())["runs"]] if args.combine else []
    if args.rerun:
        for i, r in enumerate(runs):
            again = {"stages": r["stages"], "stages_to_rerun": args.rerun}
            runs[i] = run_size(work, r["documents"], pool_size, args.k_init, args.interval, again)
    for n in [] if args.combine else sorted(args.sizes):
        t0 = time.perf_counter()
        runs.append(run_size(work, n, pool_size, args.k_init, args.interval))
        print(f"{n:,} documents: done in {time.perf_counter() - t0:.0f} s (corpus included)", flush=True)
    summary = summarise(runs)
    report = table(runs, summary)
    print()
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = {
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "settings": {
            "k_init": args.k_init,
            "interval_s": args.interval,
            "corpus": {**CORPUS_SETTINGS, "pool": pool_size},
        },
        "thresholds": THRESHOLDS,
        "runs": runs,
        "summary": summary,
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(facts, indent=1))
    print(f"\nwrote {json_path}, " + ", ".join(str(p) for p in plot(runs, out)))


if __name__ == "__main__":
    main()
