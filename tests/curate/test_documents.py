"""The one reader of curated documents: batches of chosen columns, optional columns, lookups."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mixture import storage
from mixture.curate import documents
from mixture.dataset import DatasetError, DatasetWriter


def _curated(tmp_path, tables: list[pa.Table]):
    w = DatasetWriter(str(tmp_path / "curated"), "curate", "h", {})
    for i, table in enumerate(tables):
        with storage.open_write(w.path(f"docs/part-{i:05d}.parquet")) as f:
            pq.write_table(table, f)
    return w.commit({}, {})


def test_reads_in_file_and_row_order_with_optional_columns(tmp_path):
    a = pa.table({"id": ["a1", "a2"], "text": ["x y", "z"], "q_words": [2.0, 1.0]})
    b = pa.table({"id": ["b1"], "text": ["w"], "source": ["web"]})
    ds = _curated(tmp_path, [a, b])
    assert documents.count(ds) == 3
    assert [i for ids, _ in documents.iter_texts(ds, batch_rows=1) for i in ids] == ["a1", "a2", "b1"]
    meta = documents.read_table(ds, lambda names: [c for c in names if c != "text"])
    assert meta.column("id").to_pylist() == ["a1", "a2", "b1"]
    assert meta.column("q_words").to_pylist() == [2.0, 1.0, None]  # absent in one file: null
    assert meta.column("source").to_pylist() == [None, None, "web"]
    assert documents.texts_by_id(ds, {"a2", "b1", "nope"}) == {"a2": "z", "b1": "w"}


def test_a_curated_dataset_without_documents_is_an_error(tmp_path):
    ds = DatasetWriter(str(tmp_path / "curated"), "curate", "h", {}).commit({}, {})
    with pytest.raises(DatasetError, match="no docs/ files"):
        documents.count(ds)
