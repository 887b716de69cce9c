"""The scan's texts files (`mixture.curate.texts`): written split by split in blocks of BLOCK
rows, read back by (split, pos) in any order; a split whose pass fails leaves no file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from mixture.curate import texts


def _batches(split: int, docs: list[str | None], size: int) -> list[pa.RecordBatch]:
    return [
        pa.RecordBatch.from_pydict(
            {
                "id": [f"{split}-{p}" for p in range(start, min(start + size, len(docs)))],
                "text": docs[start : start + size],
                "split": pa.array([split] * len(docs[start : start + size]), pa.int32()),
                "pos": pa.array(range(start, min(start + size, len(docs))), pa.int64()),
            }
        )
        for start in range(0, len(docs), size)
    ]


def test_texts_go_to_files_and_come_back_by_split_and_position(tmp_path):
    folder = str(tmp_path / "texts.tmp-x")
    docs = {
        3: [None if p % 97 == 5 else f"doc {p} of split 3 " + "é" * (p % 7) for p in range(600)],
        7: ["only", "five", "short", "texts", "here"],
        8: [f"t{p}" for p in range(texts.BLOCK)],  # exactly one block
    }
    batches = _batches(3, docs[3], 250) + _batches(7, docs[7], 2) + _batches(8, docs[8], 100)
    out = list(texts.write_texts(iter(batches), folder))
    assert [b.num_rows for b in out] == [b.num_rows for b in batches]
    assert all("text" not in b.schema.names and "id" in b.schema.names for b in out)
    with pa.ipc.open_file(texts.split_uri(folder, 3)) as f:
        assert [f.get_batch(i).num_rows for i in range(f.num_record_batches)] == [256, 256, 88]

    rng = np.random.default_rng(0)
    wanted = [(s, p) for s in docs for p in range(len(docs[s]))]
    pick = [wanted[i] for i in rng.permutation(len(wanted))[:400]] + [(3, 599), (3, 0), (8, texts.BLOCK - 1)]
    reader = texts.TextReader(folder)
    got = reader.take(np.array([s for s, _ in pick]), np.array([p for _, p in pick])).to_pylist()
    assert got == [docs[s][p] for s, p in pick]
    in_order = reader.take(np.array([3, 3, 7]), np.array([255, 256, 4])).to_pylist()
    assert in_order == [docs[3][255], docs[3][256], "here"]
    assert reader.take(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).to_pylist() == []
    reader.close()

    attach = texts.attach_batches(folder)
    with_text = list(attach(iter(out)))
    assert [t for b in with_text for t in b.column("text").to_pylist()] == docs[3] + docs[7] + docs[8]


def test_a_failed_pass_leaves_no_file_for_its_split(tmp_path):
    folder = str(tmp_path / "texts.tmp-y")

    def failing():
        yield from _batches(1, ["a"] * 300, 100)
        yield from _batches(2, ["b"] * 300, 100)[:2]
        raise OSError("input went away")

    with pytest.raises(OSError, match="went away"):
        list(texts.write_texts(failing(), folder))
    assert sorted(p.name for p in (tmp_path / "texts.tmp-y").iterdir()) == ["split-000001.arrow"]
    assert texts.TextReader(folder).take(np.array([1]), np.array([299])).to_pylist() == ["a"]
