"""Training throughput of the paper-sized proxy (preset 62m) on CUDA, with and without torch.compile.

    .venv/bin/python bench/gpu_proxy.py [--preset 62m] [--vocab 32768] [--seq 1024] [--batch 16]
                                        [--steps 60] [--repeats 3]

Runs the project's own trainer (mixture.search.proxy.train: bf16 autocast, fused AdamW, mixture
sampling from token shards) on random-token shards, so the figure is what a proxy run of the
search gets. Side by side in one process: eager vs `proxy.compile: true`; medians of `--repeats`
runs after one warm-up run each; tokens/s and the model-FLOPs utilisation (6 * params * tokens/s
against the GPU's dense bf16 peak, H100/H200: 989 TFLOP/s). On a machine without CUDA it says so
and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="62m")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_proxy: no CUDA device here; nothing to measure (run it on a GPU machine)")
        return 0
    from mixture.config import ProxyConfig
    from mixture.search import proxy

    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    rng = np.random.default_rng(0)
    shards = {
        f"c{i:02d}": rng.integers(1, args.vocab, size=2_000_000).astype(np.uint16 if args.vocab < 65536 else np.uint32)
        for i in range(4)
    }
    mixture = {"c00": 0.4, "c01": 0.3, "c02": 0.2, "c03": 0.1}
    tokens = args.steps * args.batch * args.seq
    print(
        f"{name}; preset {args.preset}, vocab {args.vocab}, seq {args.seq}, batch {args.batch}, "
        f"{args.steps} steps ({tokens:,} tokens) per run, median of {args.repeats}"
    )
    print("| variant | params | tokens/s | MFU | s per run |")
    print("|---|---:|---:|---:|---:|")
    rows = {}
    for compile_ in (False, True):
        pcfg = ProxyConfig(
            preset=args.preset, tokens=tokens, batch_size=args.batch, seq_len=args.seq, lr=3e-4, compile=compile_
        )
        proxy.train(pcfg, shards, mixture, args.vocab, 0, seed=0, device="cuda")  # warm-up / compile
        runs = [proxy.train(pcfg, shards, mixture, args.vocab, 0, seed=r, device="cuda") for r in range(args.repeats)]
        tps = statistics.median(r.tokens_per_s for r in runs)
        secs = statistics.median(r.seconds for r in runs)
        mfu = f"{6 * runs[0].params * tps / peak:.1%}" if peak else "-"
        label = "torch.compile" if compile_ else "eager"
        rows[label] = tps
        print(f"| {label} | {runs[0].params / 1e6:.1f}M | {tps:,.0f} | {mfu} | {secs:.2f} |")
        del runs
        torch.cuda.empty_cache()
    print(f"compile / eager: {rows['torch.compile'] / rows['eager']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
