"""The part files `curate` and `select` write are sorted by an external merge sort (sorted runs
spilled to local files, merged into row groups): the files are byte for byte those the whole part
sorted in memory gives (`batches.write_table`), ties in the sort keys keep their input order,
and the rows held in memory never exceed one run."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mixture.curate import batches
from mixture.curate.select import PartWriter

FIELDS = [("id", "string"), ("text", "string"), ("n_words", "int"), ("q", "float")]


def _rows(n: int, seed: int = 0) -> pa.Table:
    """Ids with many ties (and a few nulls), unicode texts, the input order in `n_words`."""
    rng = random.Random(seed)
    ids = [
        None if rng.random() < 0.03 else f"d{rng.randrange(max(1, n // 4)):04d}{rng.choice('aéß中')}" for _ in range(n)
    ]
    texts = [
        rng.choice(["", "plain", "naïve café", "日本語のテキスト", "emoji 🙂"]) * rng.randrange(3) for _ in range(n)
    ]
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "text": texts,
            "n_words": pa.array(range(n), pa.int32()),
            "q": pa.array(np.linspace(0, 1, n), pa.float32()),
        }
    )


def _whole(table: pa.Table, path, keys=("id",), row_group_size: int = 20_000) -> bytes:
    schema = batches.arrow_schema(FIELDS)
    batches.write_table(table, schema, list(keys), str(path), row_group_size)
    return path.read_bytes()


def _streamed(table: pa.Table, path, tmp_path, keys=("id",), run_rows=50, chunk=13, row_group_size=20_000):
    part = batches.SortedPart(batches.arrow_schema(FIELDS), list(keys), str(tmp_path), run_rows=run_rows)
    for batch in table.to_batches(max_chunksize=chunk):
        part.add(batch)
        assert part.pending_rows < run_rows  # one run at most is held in memory
    runs = len(part.runs)
    rows = part.write(str(path), row_group_size)
    assert rows == table.num_rows
    return path.read_bytes(), runs


@pytest.mark.parametrize(
    ("n", "run_rows", "row_group_size"),
    [
        (0, 50, 20_000),
        (1, 50, 20_000),
        (49, 50, 20_000),
        (700, 50, 20_000),
        (700, 7, 64),
        (700, 1000, 64),
        (333, 40, 40),
    ],
)
def test_streamed_parts_are_the_bytes_of_the_whole_part(tmp_path, n, run_rows, row_group_size):
    table = _rows(n, seed=n)
    want = _whole(table, tmp_path / "whole.parquet", row_group_size=row_group_size)
    got, runs = _streamed(
        table, tmp_path / "streamed.parquet", tmp_path, run_rows=run_rows, row_group_size=row_group_size
    )
    assert got == want
    assert runs >= n // (run_rows + 13) and (runs > 0) == (n >= run_rows)  # many runs with a small run size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.parquet", "whole.parquet"]  # runs deleted
    if n:
        meta = pq.read_metadata(tmp_path / "streamed.parquet")
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)][0] == min(n, row_group_size)


def test_parts_are_the_bytes_of_their_rows_sorted_and_written_as_one_table(tmp_path, monkeypatch):
    """Row groups reach the Parquet writer as chunks of `GROUP_CHUNK` rows from each group's start,
    never one copy of the whole group: the file is still the one `pq.write_table` gives the sorted
    rows as one table, here with texts long enough for several pages a group."""
    rng = random.Random(11)
    n = 13_000
    # distinct texts of up to ~1 KB: no dictionary, each group's text column cut into pages by size
    texts = [None if rng.random() < 0.02 else f"{i} " + "ab cd ef " * rng.randrange(120) for i in range(n)]
    table = _rows(n, seed=11).set_column(1, "text", pa.array(texts))
    sink = pa.BufferOutputStream()
    ordered = table.sort_by([("id", "ascending")]).combine_chunks().cast(batches.arrow_schema(FIELDS))
    pq.write_table(ordered, sink, compression="zstd", row_group_size=5000)
    want = sink.getvalue().to_pybytes()
    for chunk in (1024, 4096):
        monkeypatch.setattr(batches, "GROUP_CHUNK", chunk)
        assert _whole(table, tmp_path / f"w{chunk}.parquet", row_group_size=5000) == want
        got, runs = _streamed(
            table, tmp_path / f"s{chunk}.parquet", tmp_path, run_rows=3000, chunk=777, row_group_size=5000
        )
        assert runs == 4 and got == want


@pytest.mark.parametrize("merge_rows", [2048, 3])
def test_ties_keep_their_input_order_across_runs(tmp_path, monkeypatch, merge_rows):
    monkeypatch.setattr(batches, "MERGE_ROWS", merge_rows)  # rows of all the runs read at a time
    monkeypatch.setattr(batches, "RUN_CHUNK", 1)
    table = pa.table(
        {
            "id": pa.array(["b", "a", "b", None, "a", "b", "a", None, "é", "b"] * 30, pa.string()),
            "text": [str(i) for i in range(300)],
            "n_words": pa.array(range(300), pa.int32()),
            "q": pa.array([0.5] * 300, pa.float32()),
        }
    )
    got, runs = _streamed(table, tmp_path / "s.parquet", tmp_path, run_rows=17, chunk=5)
    assert runs == 300 // 20  # runs of 4 chunks of 5 rows
    assert got == _whole(table, tmp_path / "w.parquet")
    out = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["id"] for r in out] == sorted(["a"] * 90 + ["b"] * 120 + ["é"] * 30) + [None] * 60
    for key in ("a", "b", None):  # equal ids in the order they came
        order = [r["n_words"] for r in out if r["id"] == key]
        assert order == sorted(order)


def test_two_sort_keys_and_a_byte_limit(tmp_path):
    table = _rows(500, seed=3)
    keys = ("text", "id")
    want = _whole(table, tmp_path / "w.parquet", keys, row_group_size=100)
    part = batches.SortedPart(batches.arrow_schema(FIELDS), list(keys), str(tmp_path), run_rows=10**9, run_bytes=2000)
    for batch in table.to_batches(max_chunksize=31):
        part.add(batch)
    assert len(part.runs) > 5  # the byte limit cut the runs
    part.write(str(tmp_path / "s.parquet"), 100)
    assert (tmp_path / "s.parquet").read_bytes() == want


def test_write_buckets_streams_each_bucket_to_the_whole_part_bytes(tmp_path):
    table = _rows(900, seed=5)
    bucket = pa.array(np.arange(900) % 3, pa.int32())
    inputs = table.append_column("_bucket", bucket).to_batches(max_chunksize=37)
    run = batches.write_buckets(str(tmp_path / "out"), "docs", FIELDS, ["id"], row_group_size=64, run_rows=40)
    written = {r["bucket"]: r["rows"] for b in run(iter(inputs)) for r in b.to_pylist()}
    assert written == {0: 300, 1: 300, 2: 300}
    for b in range(3):
        rows = table.filter(pa.compute.equal(bucket, b))
        want = _whole(rows, tmp_path / f"w{b}.parquet", row_group_size=64)
        assert (tmp_path / "out" / "docs" / f"part-{b:05d}.parquet").read_bytes() == want


def test_select_part_writer_spills_runs_with_the_whole_part_bytes(tmp_path):
    table = _rows(600, seed=7).drop_null()  # select's ids are never null
    id_hash = np.arange(table.num_rows, dtype=np.int64) * 7919
    spill = tmp_path / "spill"
    spill.mkdir()
    w = PartWriter(str(tmp_path / "out"), "docs", FIELDS, table.num_rows + 250, 250, str(spill), run_rows=30)
    assert w.parts == 4  # the last part gets no row: written empty
    for s in range(0, table.num_rows, 50):
        w.add(table.slice(s, 50), id_hash[s : s + 50], 0, 2)
        w.add(table.slice(s, 50), id_hash[s : s + 50], 2, 4)
    w.flush(0, 4)
    assert w.written == table.num_rows
    assert list(spill.iterdir()) == []
    for b in range(4):
        rows = table.filter(pa.array(np.mod(id_hash, 4) == b))
        want = _whole(rows.cast(batches.arrow_schema(FIELDS)), tmp_path / f"w{b}.parquet")
        assert (tmp_path / "out" / "docs" / f"part-{b:05d}.parquet").read_bytes() == want
