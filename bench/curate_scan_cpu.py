"""CPU seconds of the curate scan's per-batch Python work (`batches.signal_batches`, then
`batches.key_batches`: signals, exact-dedup hash, MinHash band keys) on the sample's long
documents (>= 1,000 words) and 6,000 short pieces (`curate_shapes.py`), with the default filters
or every filter off. Run it with two versions of `libs` on PYTHONPATH, alternated, to compare.

    PYTHONPATH=libs .venv/bin/python bench/curate_scan_cpu.py --off
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curate_shapes as cs  # noqa: E402


def main() -> None:
    import pyarrow as pa
    from mixture.curate import batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--off", action="store_true", help="every filter off")
    args = ap.parse_args()
    names = ("gopher_quality", "gopher_repetition", "c4", "fineweb")
    filters = {n: {"enabled": False} for n in names} if args.off else {}
    out = {}
    for length in ("long", "short"):
        texts = cs._pool(length)[:6000]
        chunks = [texts[i : i + 2000] for i in range(0, len(texts), 2000)]
        data = [pa.RecordBatch.from_pydict({"text": c, "reason": pa.nulls(len(c), pa.string())}) for c in chunks]
        t0 = time.process_time()
        for _ in batches.key_batches(5, 192, 17, 11, 0)(batches.signal_batches(filters)(iter(data))):
            pass
        cpu = time.process_time() - t0
        out[length] = {"documents": len(texts), "cpu_s": round(cpu, 3), "ms_per_doc": round(cpu / len(texts) * 1e3, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
