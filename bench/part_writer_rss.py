"""Peak resident memory of one part writer alone (issue #24): `curate`'s `write_buckets` (the
function a Spark Python worker runs) or `select`'s `PartWriter`, writing `rows` generated rows of
~`chars` characters into one part file, the input made batch by batch (never held whole).

    PYTHONPATH=libs .venv/bin/python bench/part_writer_rss.py buckets 96000
    PYTHONPATH=libs .venv/bin/python bench/part_writer_rss.py select 96000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile

import numpy as np
import pyarrow as pa
from mixture.curate import batches
from mixture.curate.select import PartWriter
from mixture.spark import LOCAL_ARROW_BATCH

FIELDS = [("id", "string"), ("text", "string"), ("source", "string"), ("n_words", "int")]
BATCH = int(LOCAL_ARROW_BATCH["spark.sql.execution.arrow.maxRecordsPerBatch"])  # a local session's Arrow batch


def generated(rows: int, chars: int):
    """Record batches of `rows` rows in all, ids in random order, texts of ~`chars` characters."""
    rng = np.random.default_rng(0)
    words = np.array(["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"])
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        ids = [f"{x:016x}" for x in rng.integers(0, 2**63, n)]
        texts = [" ".join(rng.choice(words, chars // 6)) for _ in range(n)]
        yield pa.record_batch(
            {
                "id": ids,
                "text": texts,
                "source": ["bench"] * n,
                "n_words": pa.array([chars // 6] * n, pa.int32()),
                "_bucket": pa.array([0] * n, pa.int32()),
            }
        )


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("writer", choices=["buckets", "select"])
    ap.add_argument("rows", type=int)
    ap.add_argument("--chars", type=int, default=1000)
    args = ap.parse_args()
    next(generated(BATCH, args.chars))  # the generator's own peak, before the write
    before = peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        if args.writer == "buckets":
            run = batches.write_buckets(tmp, "docs", FIELDS, ["id"])
            written = sum(b.column("rows")[0].as_py() for b in run(generated(args.rows, args.chars)))
        else:
            w = PartWriter(tmp, "docs", FIELDS, args.rows, 100_000, tmp)
            for b in generated(args.rows, args.chars):
                w.add(pa.Table.from_batches([b]), np.zeros(b.num_rows, dtype=np.int64), 0, 1)
            w.flush(0, 1)
            written = w.written
    print(json.dumps({"writer": args.writer, "rows": written, "peak_mib_before": before, "peak_mib": peak_mib()}))


if __name__ == "__main__":
    main()
