"""The IO layer on local paths and on a real S3 endpoint over HTTP (moto's server)."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixture import io


def _roundtrip(base: str):
    io.write_text(io.join(base, "a/b.txt"), "hello")
    io.write_json(io.join(base, "a/c.json"), {"x": 1})
    io.write_bytes(io.join(base, "d/_hidden.bin"), b"\x00\x01")
    assert io.read_text(io.join(base, "a/b.txt")) == "hello"
    assert io.read_json(io.join(base, "a/c.json")) == {"x": 1}
    assert io.exists(io.join(base, "a/b.txt")) and not io.exists(io.join(base, "a/zz"))
    assert io.size(io.join(base, "a/b.txt")) == 5
    files = io.list_files(base)
    assert [io.basename(f) for f in files] == ["b.txt", "c.json", "_hidden.bin"]
    assert [io.basename(f) for f in io.expand([base])] == ["b.txt", "c.json"]
    assert [io.basename(f) for f in io.expand([io.join(base, "a/*.json")])] == ["c.json"]
    assert io.sha256(io.join(base, "a/b.txt")) == \
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    # parquet through the same filesystem
    fs, path = io.filesystem(io.join(base, "t.parquet"))
    pq.write_table(pa.table({"a": [1, 2]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2]
    io.move(io.join(base, "a"), io.join(base, "moved"))
    assert io.read_text(io.join(base, "moved/b.txt")) == "hello" and not io.exists(io.join(base, "a/b.txt"))
    io.delete(io.join(base, "moved"))
    assert not io.exists(io.join(base, "moved/b.txt"))


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path / "root"))


def test_s3_roundtrip(s3_bucket):
    _roundtrip(f"s3://{s3_bucket}/prefix")


def test_local_write_is_atomic(tmp_path):
    target = tmp_path / "f.txt"
    io.write_text(str(target), "old")
    with pytest.raises(RuntimeError):
        with io.open_write(str(target)) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_s3_settings_never_expose_credentials(s3_bucket, caplog):
    import logging
    caplog.set_level(logging.DEBUG)
    io.write_text(f"s3://{s3_bucket}/x.txt", "x")
    assert "testing-secret-key" not in caplog.text
    assert "testing-secret-key" not in repr(io.filesystem(f"s3://{s3_bucket}/x.txt")[0])


def test_s3_gz_keys_are_stored_as_given(s3_bucket):
    import gzip
    blob = gzip.compress(b"payload")
    io.write_bytes(f"s3://{s3_bucket}/a.jsonl.gz", blob)
    assert io.read_bytes(f"s3://{s3_bucket}/a.jsonl.gz") == blob
