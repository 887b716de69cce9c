"""Near-duplicate detection: this project's Spark MinHash LSH vs datatrove and datasketch.

Corpus: the committed sample corpus plus injected near duplicates of a seeded random subset of its
documents, made by word substitutions, insertions, deletions, shuffled paragraphs and mixes of
them at several strengths, so that their Jaccard similarity to the original spans about 0.4-1.0
(both sides of the threshold). Ground truth: the exact Jaccard similarity of the word-5-gram sets
(lowercased text, words = runs of letters/digits/underscore) of every pair of documents that
share at least one 5-gram (all other pairs have similarity 0), computed with a sparse matrix
product; a pair is a true near duplicate when J >= threshold.

Methods, at the same threshold and 5-gram shingling:
- ours: `mixture.curate.dedup.near_duplicates` on a warm local[2] Spark session (input cached),
  with the LSH parameters the stage derives (and, as an ablation, without exact verification);
- datatrove 0.10 MinHash pipeline (signature -> buckets -> cluster; 2 workers, the input split in
  2 files), with the same bands x rows as ours and its default hashing (xxhash, 64-bit) and its
  own (spaCy) word tokenisation;
- datasketch 2.0 MinHashLSH(threshold, num_perm = ours), MinHash.bulk over the same 5-gram strings
  as the ground truth, union-find over the query results; single process (it has no parallel
  mode).

Scores, per method: document level (a document is a near duplicate when it has a partner at
J >= t; predicted when the method puts it in a group of two or more) and pair level (every pair
inside a predicted group vs every true pair: transitive groups cost precision here). Throughput:
documents per second of the near-duplicate search alone (no reading or writing of the corpus),
median of --repeats runs, all methods in the same process and run.

    .venv/bin/python bench/curate_dedup.py [--bases 600] [--repeats 3] [--threshold 0.8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"
WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- the corpus
def _mutate(text: str, kind: str, rate: float, rng: random.Random) -> str:
    if kind == "shuffle":
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if len(paras) < 3:
            lines = text.split("\n")
            rng.shuffle(lines)
            return "\n".join(lines)
        rng.shuffle(paras)
        return "\n\n".join(paras)
    words = text.split(" ")
    n_ops = max(1, int(len(words) * rate))
    for _ in range(n_ops):
        i = rng.randrange(len(words))
        if kind == "edit":
            words[i] = f"edited{rng.getrandbits(24):x}"
        elif kind == "insert":
            words.insert(i, f"inserted{rng.getrandbits(24):x}")
        elif kind == "delete" and len(words) > 10:
            del words[i]
    return " ".join(words)


LEVELS = [0.003, 0.01, 0.02, 0.03, 0.05, 0.08]


def build_corpus(n_bases: int, seed: int = 0, copies: int = 1) -> tuple[list[dict], dict[str, str]]:
    with gzip.open(SAMPLE, "rt") as f:
        docs = [json.loads(line) for line in f]
    rng = random.Random(seed)
    bases = rng.sample([d for d in docs if not d["id"].endswith("-copy")], n_bases)
    injected, how = [], {}
    for j, base in enumerate(bases):
        kind = rng.choice(["edit", "insert", "delete", "shuffle", "shuffle+edit", "edit+insert+delete"])
        rate = rng.choice(LEVELS)
        text = base["text"]
        for part in kind.split("+"):
            text = _mutate(text, part, rate, rng)
        new_id = f"{base['id']}-near{j:04d}"
        injected.append({"id": new_id, "text": text})
        how[new_id] = f"{kind}@{rate}"
        if j % 5 == 0:  # a second variant of the variant: chains and groups of three
            chained = _mutate(text, "edit", rng.choice(LEVELS[:3]), rng)
            injected.append({"id": new_id + "-b", "text": chained})
            how[new_id + "-b"] = f"{kind}@{rate}+edit"
    corpus = [{"id": d["id"], "text": d["text"]} for d in docs] + injected
    # More volume for throughput: heavily edited copies (a quarter of the words replaced, so
    # J ~ 0.1 to the original: new documents of the same size and style, not duplicates).
    extra = [
        {"id": f"{d['id']}-v{k}", "text": _mutate(d["text"], "edit", 0.25, rng)}
        for k in range(1, copies)
        for d in corpus
    ]
    return corpus + extra, how


def ngram_sets(texts: list[str], n: int) -> list[set[str]]:
    out = []
    for t in texts:
        w = WORD.findall(t.lower())
        out.append(
            {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)} if len(w) >= n else ({" ".join(w)} if w else set())
        )
    return out


def ground_truth(sets: list[set[str]], threshold: float) -> tuple[set[tuple[int, int]], dict]:
    """Pairs (i < j) with exact Jaccard >= threshold, over every pair sharing a 5-gram."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for g in s:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(sets), len(vocab)))
    inter = (x @ x.T).tocoo()
    sizes = np.array([len(s) for s in sets])
    keep = inter.row < inter.col
    r, c, v = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = v / (sizes[r] + sizes[c] - v)
    true_pairs = {(int(a), int(b)) for a, b, j in zip(r, c, jac) if j >= threshold}
    bins = {
        "candidate pairs (share a 5-gram)": int(len(jac)),
        "J >= 0.95": int((jac >= 0.95).sum()),
        "0.9 <= J < 0.95": int(((jac >= 0.9) & (jac < 0.95)).sum()),
        f"{threshold} <= J < 0.9": int(((jac >= threshold) & (jac < 0.9)).sum()),
        f"0.6 <= J < {threshold}": int(((jac >= 0.6) & (jac < threshold)).sum()),
    }
    return true_pairs, {
        "pairs_by_similarity": bins,
        "jaccard": {(int(a), int(b)): float(j) for a, b, j in zip(r, c, jac) if j >= 0.6},
    }


# --------------------------------------------------------------------------- scoring
def score(groups: list[set[int]], true_pairs: set[tuple[int, int]]) -> dict:
    pred_docs = {d for g in groups if len(g) > 1 for d in g}
    true_docs = {d for p in true_pairs for d in p}
    pred_pairs = {(a, b) for g in groups if len(g) > 1 for a in g for b in g if a < b}

    def prf(pred: set, true: set) -> tuple[float, float, float]:
        tp = len(pred & true)
        p = tp / len(pred) if pred else 1.0
        r = tp / len(true) if true else 1.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    dp, dr, df = prf(pred_docs, true_docs)
    pp, pr, pf = prf(pred_pairs, true_pairs)
    return {
        "doc_precision": dp,
        "doc_recall": dr,
        "doc_f1": df,
        "pair_precision": pp,
        "pair_recall": pr,
        "pair_f1": pf,
        "flagged_docs": len(pred_docs),
        "groups": sum(len(g) > 1 for g in groups),
    }


def groups_from_pairs(n: int, pairs) -> list[set[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, set[int]] = {}
    for i in range(n):
        out.setdefault(find(i), set()).add(i)
    return [g for g in out.values() if len(g) > 1]


# --------------------------------------------------------------------------- methods
def run_ours(spark, corpus: list[dict], threshold: float, verify: bool = True):
    from mixture.config import FuzzyDedupConfig
    from mixture.curate import dedup, minhash

    fz = FuzzyDedupConfig(threshold=threshold)
    params, _ = minhash.lsh_params(
        threshold, fz.num_perm, fz.bands, fz.rows, fz.false_positive_weight, fz.false_negative_weight
    )
    index = {d["id"]: i for i, d in enumerate(corpus)}
    df = spark.createDataFrame([(d["id"], d["text"]) for d in corpus], "id string, text string").repartition(4).cache()
    df.count()

    def once():
        near, stats = dedup.near_duplicates(df, threshold, fz.ngram, params, seed=0, verify=verify)
        pairs = [(index[r["id"]], index[r["near_of"]]) for r in near.collect()]
        return groups_from_pairs(len(corpus), pairs), stats

    return once, params


def run_datasketch(corpus: list[dict], sets: list[set[str]], threshold: float, num_perm: int):
    from datasketch import MinHash, MinHashLSH

    def once():
        encoded = [[g.encode() for g in s] for s in sets]
        sigs = MinHash.bulk(encoded, num_perm=num_perm)
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        with lsh.insertion_session() as session:
            for i, m in enumerate(sigs):
                if encoded[i]:
                    session.insert(i, m)
        pairs = []
        for i, m in enumerate(sigs):
            if encoded[i]:
                pairs += [(i, j) for j in lsh.query(m) if j != i]
        return groups_from_pairs(len(corpus), pairs), {"bands": lsh.b, "rows": lsh.r}

    return once


def run_datatrove(corpus: list[dict], bands: int, rows: int, workers: int = 2):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader

    tmp = Path(tempfile.mkdtemp(prefix="bench-datatrove-"))
    inp = tmp / "input"
    inp.mkdir()
    # One input file per worker: datatrove parallelises signatures by file.
    shards = [corpus[i::workers] for i in range(workers)]
    for k, shard in enumerate(shards):
        with open(inp / f"part-{k}.jsonl", "w") as f:
            for d in shard:
                f.write(json.dumps(d) + "\n")
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    index = {d["id"]: i for i, d in enumerate(corpus)}
    shard_ids = [[index[d["id"]] for d in shard] for shard in shards]

    def once():
        work = Path(tempfile.mkdtemp(dir=tmp))
        LocalPipelineExecutor(
            pipeline=[
                JsonlReader(str(inp), glob_pattern="*.jsonl"),
                MinhashDedupSignature(output_folder=str(work / "sigs"), config=config),
            ],
            tasks=workers,
            workers=workers,
            logging_dir=str(work / "logs-1"),
        ).run()
        LocalPipelineExecutor(
            pipeline=[
                MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)
            ],
            tasks=bands,
            workers=workers,
            logging_dir=str(work / "logs-2"),
        ).run()
        LocalPipelineExecutor(
            pipeline=[
                MinhashDedupCluster(
                    input_folder=str(work / "buckets"),
                    output_folder=str(work / "remove"),
                    config=config,
                    save_cluster_id=True,
                )
            ],
            tasks=1,
            workers=1,
            logging_dir=str(work / "logs-3"),
        ).run()
        clusters: dict[int, set[int]] = {}
        for k in range(workers):
            path = work / "remove" / f"{k:06d}.clusters"
            if path.exists():
                vals = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 2)
                for doc, cid in vals:
                    clusters.setdefault(int(cid), set()).add(shard_ids[k][int(doc)])
        shutil.rmtree(work, ignore_errors=True)
        return [g for g in clusters.values() if len(g) > 1], {}

    return once, tmp


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=600, help="documents that get injected near copies")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=1, help="add heavily edited copies of the corpus (volume)")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["datatrove", "datasketch", "unverified"],
        help="methods to leave out (datatrove takes minutes on large corpora)",
    )
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("py4j").setLevel(logging.WARNING)
    from loguru import logger as loguru_logger

    loguru_logger.remove()  # datatrove logs every step through loguru

    corpus, _ = build_corpus(args.bases, args.seed, args.copies)
    texts = [d["text"] for d in corpus]
    t0 = time.time()
    sets = ngram_sets(texts, 5)
    true_pairs, gt = ground_truth(sets, args.threshold)
    print(
        f"corpus: {len(corpus)} documents ({len(corpus) - 2531} injected or copied), "
        f"ground truth in {time.time() - t0:.1f} s: "
        f"{len(true_pairs)} pairs with J >= {args.threshold}, {len({d for p in true_pairs for d in p})} documents"
    )
    for k, v in gt["pairs_by_similarity"].items():
        print(f"  {k}: {v}")

    from mixture import spark as spark_helper

    spark = spark_helper.session("local[2]", "bench-dedup", 4)
    results = {}
    ours, params = run_ours(spark, corpus, args.threshold)
    ours()  # warm the JVM and the Python workers
    (groups, stats), times = timed(ours, args.repeats)
    results["ours (Spark local[2], verified)"] = (
        score(groups, true_pairs),
        times,
        f"{params.num_perm} perms, {params.bands}x{params.rows}",
    )
    if "unverified" not in args.skip:
        ours_nv, _ = run_ours(spark, corpus, args.threshold, verify=False)
        (groups, _), times = timed(ours_nv, args.repeats)
        results["ours, no verification"] = (
            score(groups, true_pairs),
            times,
            f"{params.num_perm} perms, {params.bands}x{params.rows}",
        )
    if "datatrove" not in args.skip:
        dt, tmp = run_datatrove(corpus, params.bands, params.rows)
        try:  # its input copy and work folders, whether or not a repeat fails
            (groups, _), times = timed(dt, args.repeats)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results["datatrove 0.10 (2 workers)"] = (
            score(groups, true_pairs),
            times,
            f"{params.bands * params.rows} perms, {params.bands}x{params.rows}",
        )
    if "datasketch" not in args.skip:
        ds = run_datasketch(corpus, sets, args.threshold, params.num_perm)
        (groups, info), times = timed(ds, args.repeats)
        results["datasketch 2.0 MinHashLSH"] = (
            score(groups, true_pairs),
            times,
            f"{params.num_perm} perms, {info['bands']}x{info['rows']}",
        )

    n = len(corpus)
    print(
        f"\nnear-duplicate search, {n} documents, Jaccard >= {args.threshold} on word 5-grams, "
        f"median of {args.repeats} (seconds)"
    )
    header = (
        f"{'method':34s} {'LSH':>20s} {'doc P':>6s} {'doc R':>6s} {'doc F1':>6s} "
        f"{'pair P':>6s} {'pair R':>6s} {'pair F1':>7s} {'seconds':>8s} {'docs/s':>7s}"
    )
    print(header)
    print("-" * len(header))
    figures = {}
    for name, (s, times, lsh) in results.items():
        med = statistics.median(times)
        figures[name] = {**s, "seconds": med, "docs_per_s": n / med, "lsh": lsh, "times": times}
        print(
            f"{name:34s} {lsh:>20s} {s['doc_precision']:6.3f} {s['doc_recall']:6.3f} {s['doc_f1']:6.3f} "
            f"{s['pair_precision']:6.3f} {s['pair_recall']:6.3f} {s['pair_f1']:7.3f} {med:8.2f} {n / med:7.0f}"
        )
    ours_s = statistics.median(results["ours (Spark local[2], verified)"][1])
    for name in ("datatrove 0.10 (2 workers)", "datasketch 2.0 MinHashLSH"):
        if name in results:
            print(f"throughput ours / {name}: {statistics.median(results[name][1]) / ours_s:.2f}x")
    print(f"ours fuzzy stats: {stats.as_dict()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"documents": n, "true_pairs": len(true_pairs), "methods": figures}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
