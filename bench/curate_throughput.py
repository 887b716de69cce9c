"""Whole curation throughput: `climb curate` + `climb select` vs a DataTrove pipeline doing the
same work, on the same documents, in one process run.

Corpus: `curate_dedup.build_corpus` (the committed sample corpus, injected near duplicates with
ground truth, and heavily edited copies of everything for volume: documents of a few hundred to
~1,500 words), written as 2 JSONL files (DataTrove parallelises by file).

- ours: `pipeline.run_stage(cfg, "curate")` then `run_stage(cfg, "select")` with the default
  filters (Gopher quality + repetition, C4, FineWeb: every signal stored), exact and MinHash
  dedup, on a local[2] Spark session (started before the clock, as a cluster's would be; its
  start-up time is printed too);
- DataTrove 0.10 (LocalPipelineExecutor, 2 workers): JsonlReader -> GopherQualityFilter ->
  GopherRepetitionFilter -> C4QualityFilter (document-level rules only, as ours; its default
  line filters would rewrite the texts) -> FineWebQualityFilter -> JsonlWriter (the survivors)
  -> MinhashDedupSignature; MinhashDedupBuckets; MinhashDedupCluster; JsonlReader (survivors)
  -> MinhashDedupFilter -> JsonlWriter. Its default settings otherwise (English: spaCy word
  tokenizer for the filters and the shingles, xxhash), the same bands x rows as ours.

Near-duplicate F1 (document and pair level, as in curate_dedup.py) against the exact Jaccard of
word 5-grams: "common" on the documents that both pipelines' quality filters keep (each
pipeline's groups and the true pairs restricted to them), "own" on the documents that the
pipeline's own filters keep (each deduplicates only its own survivors; ours groups all).
docs/s = input documents / wall seconds of the whole pipeline, reading and writing included.

    .venv/bin/python bench/curate_throughput.py [--bases 600] [--copies 3] [--skip datatrove]
        [--datatrove-tokenizer spacy whitespace] [--repeats 3]

`--repeats N` runs the pipelines N times back to back, alternating (ours, DataTrove, ours, ...),
and reports each pipeline's median seconds, the ratio of the medians and each repeat's ratio: on
a shared machine the load changes between runs, and a pair run back to back sees about the same.

Corpus shapes (issue #24, `curate_shapes.py`): `--shapes long:15 short:off ...` (long or short
documents; the default filters keeping ~15, ~50 or ~90% of them, or both pipelines without
filters: MinHash dedup only) and `--docs 24000 240000` run every shape at every size, one after
the other in the same Spark session, each with its repeats; the peak resident memory of the
process tree (driver, JVM, Python workers; DataTrove's workers) is printed per pipeline. Each
corpus is built and written by a child process, so the measured tree never holds its texts.
Near duplicates are scored up to `--truth-max` documents.

    .venv/bin/python bench/curate_throughput.py --datatrove-tokenizer whitespace --repeats 3 \
        --shapes long:15 long:50 long:90 long:off short:15 short:50 short:90 short:off --docs 24000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_dedup as cd  # noqa: E402
import curate_shapes as cs  # noqa: E402

WORKERS = 2


def write_inputs(corpus: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for k in range(WORKERS):
        path = folder / f"part-{k}.jsonl"
        with open(path, "w") as f:
            for d in corpus[k::WORKERS]:
                f.write(json.dumps({"id": d["id"], "text": d["text"], "source": "bench"}) + "\n")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- ours
def ours_config(inputs: Path, out: Path, mlflow_db: Path, filters_off: bool, curate: dict | None = None):
    """The run's config: the JSONL files under `inputs`, Spark `local[2]`, the default filters
    (or none: MinHash dedup only, no filter signal computed), `curate` settings added."""
    from mixture.config import parse_config
    from mixture.curate.filters import registered

    settings: dict = {"spark_master": "local[2]", "partitions": WORKERS * 2, **(curate or {})}
    if filters_off:
        settings["filters"] = {name: {"enabled": False} for name, _ in registered()}
    return parse_config(
        {
            "run_name": "bench",
            "output_root": str(out),
            "input": {"uris": [str(inputs / "*.jsonl")]},
            "curate": settings,
            "tracking": {"uri": f"sqlite:///{mlflow_db}"},
        }
    )


def run_ours(spark, inputs: Path, out: Path, filters_off: bool = False) -> tuple[float, dict]:
    import pyarrow.parquet as pq
    from mixture import pipeline

    out.mkdir(parents=True)
    cfg = ours_config(inputs, out, out / "mlflow.db", filters_off)
    import mlflow

    mlflow.MlflowClient(cfg.tracking.uri).search_experiments()  # create the store before the clock
    t0 = time.perf_counter()
    curate = pipeline.run_stage(cfg, "curate", force=True)
    select = pipeline.run_stage(cfg, "select", force=True)
    wall = time.perf_counter() - t0
    annotated = pq.read_table(out / "annotated" / "docs", columns=["id", "near_group"]).to_pydict()
    passed = set(pq.read_table(out / "curated" / "docs", columns=["id"]).column("id").to_pylist())
    rej = pq.read_table(out / "curated" / "rejected", columns=["id", "reason"]).to_pydict()
    passed |= {i for i, r in zip(rej["id"], rej["reason"]) if not r.startswith("filter:")}
    groups: dict[str, set[str]] = {}
    for i, g in zip(annotated["id"], annotated["near_group"]):
        if g is not None:
            groups.setdefault(g, set()).add(i)
    return wall, {
        "passed_filters": passed,
        "groups": list(groups.values()),
        "kept": len(pq.read_table(out / "curated" / "docs", columns=["id"])),
        "stage_seconds": {"curate": curate.seconds, "select": select.seconds},
    }


# --------------------------------------------------------------------------- DataTrove
def whitespace_tokenizer():
    """A DataTrove WordTokenizer that splits on whitespace (words) and after sentence-ending
    punctuation (sentences): DataTrove at its fastest, without spaCy."""
    import re

    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"\S+", text)]

    return Whitespace("en")


def run_datatrove(
    inputs: Path, work: Path, bands: int, rows: int, tokenizer: str = "spacy", filters_off: bool = False
) -> tuple[float, dict]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    lang = whitespace_tokenizer() if tokenizer == "whitespace" else "en"

    def execute(steps, tasks, workers, name):
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=workers, logging_dir=str(work / name)).run()

    filters = [
        GopherQualityFilter(language=lang),
        GopherRepetitionFilter(language=lang),
        # Document level, as ours (lorem ipsum, curly brace, >= 3 sentences): its line
        # filters (and the citation, javascript and policy rules) would rewrite the texts.
        C4QualityFilter(
            remove_citations=False,
            filter_no_terminal_punct=False,
            min_num_sentences=3,
            min_words_per_line=-1,
            max_word_length=-1,
            filter_javascript=False,
            filter_policy=False,
            language=lang,
        ),
        FineWebQualityFilter(language=lang),
    ]
    t0 = time.perf_counter()
    execute(
        [
            JsonlReader(str(inputs), glob_pattern="*.jsonl"),
            *([] if filters_off else filters),
            JsonlWriter(str(work / "filtered"), compression=None),
            MinhashDedupSignature(output_folder=str(work / "sigs"), config=config, language=lang),
        ],
        WORKERS,
        WORKERS,
        "logs-1",
    )
    execute(
        [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)],
        bands,
        WORKERS,
        "logs-2",
    )
    execute(
        [
            MinhashDedupCluster(
                input_folder=str(work / "buckets"),
                output_folder=str(work / "remove"),
                config=config,
                save_cluster_id=True,
            )
        ],
        1,
        1,
        "logs-3",
    )
    execute(
        [
            JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl"),
            MinhashDedupFilter(input_folder=str(work / "remove")),
            JsonlWriter(str(work / "deduped"), compression=None),
        ],
        WORKERS,
        WORKERS,
        "logs-4",
    )
    wall = time.perf_counter() - t0
    passed: set[str] = set()
    clusters: dict[int, set[str]] = {}
    for rank in range(WORKERS):
        path = work / "filtered" / f"{rank:05d}.jsonl"
        ids = [json.loads(line)["id"] for line in open(path)] if path.exists() else []
        passed |= set(ids)
        cpath = work / "remove" / f"{rank:06d}.clusters"
        if cpath.exists():
            for doc, cid in np.frombuffer(cpath.read_bytes(), dtype="<u4").reshape(-1, 2):
                clusters.setdefault(int(cid), set()).add(ids[int(doc)])
    kept = sum(sum(1 for _ in open(p)) for p in (work / "deduped").glob("*.jsonl"))
    return wall, {"passed_filters": passed, "groups": list(clusters.values()), "kept": kept}


# --------------------------------------------------------------------------- scoring
def near_dup_scores(result: dict, universe: set[str], index: dict[str, int], true_pairs) -> dict:
    groups = [{index[i] for i in g if i in universe} for g in result["groups"]]
    return cd.score([g for g in groups if len(g) > 1], true_pairs)


OURS = "ours: curate + select (Spark local[2])"


def run_pipelines(inputs: Path, tmp: Path, spark, args, params, filters_off: bool) -> dict[str, list[tuple]]:
    """Every pipeline `args.repeats` times, alternating (ours, DataTrove, ours, ...): per
    pipeline a list of (seconds, result, peak RSS bytes of the process tree)."""
    runs: dict[str, list[tuple]] = {}
    for rep in range(args.repeats):  # back to back, so each pair of runs sees about the same load
        todo = []
        if spark is not None:
            todo.append((OURS, lambda rep=rep: run_ours(spark, inputs, tmp / f"ours-{rep}", filters_off)))
        for tok in [] if "datatrove" in args.skip else args.datatrove_tokenizer:
            work = tmp / f"datatrove-{tok}-{rep}"
            todo.append(
                (
                    f"datatrove 0.10 (2 workers, {tok} words)",
                    lambda work=work, tok=tok: run_datatrove(inputs, work, params.bands, params.rows, tok, filters_off),
                )
            )
        for name, fn in todo:
            with cs.PeakRSS() as rss:
                wall, result = fn()
            runs.setdefault(name, []).append((wall, result, rss.peak))
        print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items()), flush=True)
    return runs


def report(label: str, ids: list[str], true_pairs, runs: dict[str, list[tuple]], load: list[float]) -> dict:
    """The table of one corpus (its documents' `ids`): seconds (median), docs/s, filtered, kept,
    near-duplicate F1 (when `true_pairs` is given) and peak RSS per pipeline; the ratio of the medians."""
    n = len(ids)
    index = {d: i for i, d in enumerate(ids)}
    results = {k: (statistics.median(w for w, _, _ in v), v[-1][1]) for k, v in runs.items()}
    seconds = {k: [round(w, 1) for w, _, _ in v] for k, v in runs.items()}
    universe = set.intersection(*(r["passed_filters"] for _, r in results.values())) if results else set()
    uni_idx = {index[i] for i in universe}
    true_in = {p for p in true_pairs if p[0] in uni_idx and p[1] in uni_idx} if true_pairs is not None else None
    print(f"\n{label}: {n} documents; 1-minute load average {min(load):.1f}-{max(load):.1f} during the runs")
    if true_in is not None:
        print(f"near duplicates scored on the {len(universe)} that every pipeline keeps ({len(true_in)} true pairs)")
    header = (
        f"{'pipeline':40s} {'seconds':>7s} {'docs/s':>6s} {'filtered':>8s} {'kept':>6s} {'peak RSS':>8s} "
        f"{'common: doc F1':>14s} {'pair F1':>7s}   {'own: pairs':>10s} {'doc F1':>6s} {'pair F1':>7s}"
    )
    print(header)
    print("-" * len(header))
    figures = {}
    for name, (wall, r) in results.items():
        peak = max(p for _, _, p in runs[name])
        f = figures[name] = {
            "seconds": wall,
            "runs": seconds[name],
            "docs_per_s": n / wall,
            "kept": r["kept"],
            "filtered": n - len(r["passed_filters"]),
            "peak_rss_gib": round(peak / 2**30, 2),
        }
        line = f"{name:40s} {wall:7.1f} {n / wall:6.0f} {f['filtered']:8d} {r['kept']:6d} {peak / 2**30:6.2f} G"
        if true_pairs is not None:
            s = near_dup_scores(r, universe, index, true_in)
            own_idx = {index[i] for i in r["passed_filters"]}
            true_own = {p for p in true_pairs if p[0] in own_idx and p[1] in own_idx}
            o = near_dup_scores(r, r["passed_filters"], index, true_own)
            f.update(common=s, own=o)
            line += f" {s['doc_f1']:14.3f} {s['pair_f1']:7.3f}   {len(true_own):10d}"
            line += f" {o['doc_f1']:6.3f} {o['pair_f1']:7.3f}"
        print(line)
        if "stage_seconds" in r:
            print(f"  stages: {r['stage_seconds']}")
    for name, (wall, _) in results.items():
        if OURS in results and name.startswith("datatrove"):
            pairs = [d / o for d, o in zip(seconds[name], seconds[OURS])]
            figures[name]["ours_over_this"] = wall / results[OURS][0]
            print(
                f"throughput ours / {name}: {wall / results[OURS][0]:.2f}x (medians of {len(pairs)}; "
                f"per repeat: {', '.join(f'{r:.2f}x' for r in pairs)}; seconds {seconds[OURS]} vs {seconds[name]})"
            )
    return {"documents": n, "load_average": [min(load), max(load)], "pipelines": figures}


def prepare(shape: str | None, n_docs: int, args, folder: Path) -> dict:
    """The corpus of one shape written as the inputs under `folder`, and what the report needs:
    the label, the documents' ids, the true near-duplicate pairs (up to `--truth-max` documents)
    and words per document. Run in a child process (`prepared`), so that the measured process
    tree never holds the texts (a harness holding them adds its corpus to both pipelines' peak
    RSS)."""
    t0 = time.time()
    if shape is None:
        corpus, _ = cd.build_corpus(args.bases, args.seed, args.copies)
        true_pairs, _ = cd.ground_truth(cd.ngram_sets([d["text"] for d in corpus], 5), args.threshold)
        label = f"sample corpus (--bases {args.bases} --copies {args.copies})"
    else:
        corpus = cs.build(shape, n_docs, args.seed)
        texts = [d["text"] for d in corpus]
        true_pairs = cs.ground_truth(texts, args.threshold) if n_docs <= args.truth_max else None
        label = f"shape {shape}, {n_docs} documents"
    write_inputs(corpus, folder)
    words = np.array([len(d["text"].split()) for d in corpus])
    return {
        "label": label,
        "ids": [d["id"] for d in corpus],
        "true_pairs": true_pairs,
        "words": [int(np.median(words)), int(np.percentile(words, 10)), int(np.percentile(words, 90))],
        "seconds": time.time() - t0,
    }


def prepared(shape: str | None, n_docs: int, args, folder: Path) -> dict:
    """`prepare` in a fresh (spawned) process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(prepare, shape, n_docs, args, folder).result()


def measure(corpus: dict, tmp: Path, spark, args, params, filters_off: bool = False) -> dict:
    """Both pipelines on the corpus `prepared` wrote under `tmp/input`: its report."""
    load = [os.getloadavg()[0]]
    runs = run_pipelines(tmp / "input", tmp, spark, args, params, filters_off)
    load.append(os.getloadavg()[0])
    return report(corpus["label"], corpus["ids"], corpus["true_pairs"], runs, load)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=600, help="documents that get injected near copies")
    ap.add_argument("--copies", type=int, default=3, help="the corpus this many times (edited copies)")
    ap.add_argument(
        "--shapes",
        nargs="+",
        metavar="LENGTH:KEEP",
        help=f"corpus shapes instead of the sample corpus (curate_shapes.py): any of {' '.join(cs.SHAPES)}",
    )
    ap.add_argument("--docs", type=int, nargs="+", default=[24_000], help="documents per shape")
    ap.add_argument(
        "--truth-max", type=int, default=60_000, help="score near duplicates only up to this many documents"
    )
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["datatrove", "ours"])
    ap.add_argument(
        "--datatrove-tokenizer",
        nargs="+",
        default=["spacy"],
        choices=["spacy", "whitespace"],
        help="DataTrove's word tokenizer: its English default (spaCy) and/or whitespace splitting",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the pipelines this many times, alternating (ours, DataTrove, ours, ...); medians reported",
    )
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("mixture.curate").setLevel(logging.INFO)  # the curate stage's step timings
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from loguru import logger as loguru_logger

    loguru_logger.remove()
    from mixture import spark as spark_helper
    from mixture.config import FuzzyDedupConfig
    from mixture.curate import minhash

    fz = FuzzyDedupConfig(threshold=args.threshold)
    params, _ = minhash.lsh_params(
        args.threshold, fz.num_perm, fz.bands, fz.rows, fz.false_positive_weight, fz.false_negative_weight
    )
    corpora = [(s, n) for s in args.shapes for n in args.docs] if args.shapes else [(None, 0)]
    for shape, _ in corpora:
        if shape is not None:
            cs.parse_shape(shape)
    spark = None
    if "ours" not in args.skip:
        t0 = time.perf_counter()
        spark = spark_helper.session("local[2]", "bench-throughput", WORKERS * 2)
        print(f"Spark session started in {time.perf_counter() - t0:.1f} s (not counted)")
    out = {}
    try:
        for shape, n_docs in corpora:
            tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
            try:
                corpus = prepared(shape, n_docs, args, tmp / "input")
                median, p10, p90 = corpus["words"]
                pairs = corpus["true_pairs"]
                print(
                    f"\n== {corpus['label']}: words per document median {median}, p10 {p10}, p90 {p90}; "
                    f"built in {corpus['seconds']:.0f} s"
                    + (f", {len(pairs)} pairs with J >= {args.threshold}" if pairs is not None else ""),
                    flush=True,
                )
                filters_off = shape is not None and shape.endswith(":off")
                out[corpus["label"]] = measure(corpus, tmp, spark, args, params, filters_off)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    finally:
        if spark is not None:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
