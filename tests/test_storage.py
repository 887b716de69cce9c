"""The IO layer on local paths and on a real S3 endpoint over HTTP (moto's server)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mixture import storage


def _roundtrip(base: str):
    storage.write_text(storage.join(base, "a/b.txt"), "hello")
    storage.write_json(storage.join(base, "a/c.json"), {"x": 1})
    storage.write_bytes(storage.join(base, "d/_hidden.bin"), b"\x00\x01")
    assert storage.read_text(storage.join(base, "a/b.txt")) == "hello"
    assert storage.read_json(storage.join(base, "a/c.json")) == {"x": 1}
    assert storage.exists(storage.join(base, "a/b.txt")) and not storage.exists(storage.join(base, "a/zz"))
    assert storage.size(storage.join(base, "a/b.txt")) == 5
    files = storage.list_files(base)
    assert [storage.basename(f) for f in files] == ["b.txt", "c.json", "_hidden.bin"]
    assert [storage.basename(f) for f in storage.expand([base])] == ["b.txt", "c.json"]
    assert [storage.basename(f) for f in storage.expand([storage.join(base, "a/*.json")])] == ["c.json"]
    assert (
        storage.sha256(storage.join(base, "a/b.txt"))
        == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    # parquet through the same filesystem
    fs, path = storage.filesystem(storage.join(base, "t.parquet"))
    pq.write_table(pa.table({"a": [1, 2]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2]
    storage.move(storage.join(base, "a"), storage.join(base, "moved"))
    assert storage.read_text(storage.join(base, "moved/b.txt")) == "hello" and not storage.exists(
        storage.join(base, "a/b.txt")
    )
    storage.delete(storage.join(base, "moved"))
    assert not storage.exists(storage.join(base, "moved/b.txt"))


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "root"))


def test_s3_roundtrip(s3_bucket):
    _roundtrip(f"s3://{s3_bucket}/prefix")


def test_local_write_is_atomic(tmp_path):
    target = tmp_path / "f.txt"
    storage.write_text(str(target), "old")
    with pytest.raises(RuntimeError):
        with storage.open_write(str(target)) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_s3_settings_never_expose_credentials(s3_bucket, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    storage.write_text(f"s3://{s3_bucket}/x.txt", "x")
    assert "testing-secret-key" not in caplog.text
    assert "testing-secret-key" not in repr(storage.filesystem(f"s3://{s3_bucket}/x.txt")[0])


def test_s3_gz_keys_are_stored_as_given(s3_bucket):
    import gzip

    blob = gzip.compress(b"payload")
    storage.write_bytes(f"s3://{s3_bucket}/a.jsonl.gz", blob)
    assert storage.read_bytes(f"s3://{s3_bucket}/a.jsonl.gz") == blob


def test_sha256_stream_hashes_files_and_block_iterables_and_copies(tmp_path):
    import hashlib
    import io

    data = bytes(range(256)) * 40_000  # ~10 MB: more than one 8 MiB block
    expect = hashlib.sha256(data).hexdigest()
    assert storage.sha256_stream(io.BytesIO(data)) == expect
    assert storage.sha256_stream([data[:5], data[5:]]) == expect
    assert storage.sha256_stream([]) == hashlib.sha256(b"").hexdigest()
    copy = io.BytesIO()
    src = io.BytesIO(data)
    assert storage.sha256_stream(src, sink=copy.write) == expect
    assert copy.getvalue() == data and src.tell() == len(data)
    (tmp_path / "f.bin").write_bytes(data)
    assert storage.sha256(str(tmp_path / "f.bin")) == expect
