"""Ingest: every format, every defect quarantined with its file and line, splits that read the
same records as a whole-file read, stable ids, S3 over a real HTTP endpoint."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from mixture.curate import ingest
from mixture.curate.ingest import ReadOptions, Split, list_inputs, plan_splits, read_split

OPTS = ReadOptions(max_doc_bytes=2000)

# (line bytes, expected reason or None); line numbers are the 1-based positions.
DEFECTS: list[tuple[bytes, str | None]] = [
    (b'\xef\xbb\xbf{"id": "a", "text": "first line with a byte-order mark"}', None),
    (b'{"id": "b", "text": "a good document", "source": "s1"}', None),
    (b'{"id": "c", "text": "unterminated', "malformed_json"),
    (b'{"id": "d", "text": "bad \xff\xfe bytes"}', "invalid_utf8"),
    (b'["an", "array"]', "not_an_object"),
    (b'{"id": "f", "body": "no text field"}', "missing_text"),
    (b'{"id": "g", "text": null}', "missing_text"),
    (b'{"id": "h", "text": 42}', "non_string_text"),
    (b'{"id": "i", "text": ""}', "empty_text"),
    (b'{"id": "j", "text": " \\n\\t "}', "empty_text"),
    (b'{"id": ["k"], "text": "list id"}', "invalid_id"),
    (b'{"id": true, "text": "bool id"}', "invalid_id"),
    (b'{"id": "m", "text": "' + b"x" * 2100 + b'"}', "too_large"),
    (b"   ", "blank_line"),
    (b'{"id": "o", "text": "lone \\ud800 surrogate"}', "lone_surrogate"),
    (b'{"id": 7, "text": "integer id"}', None),
    (b'{"text": "no id: derived from file and line"}', None),
]


def write_defects(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(line for line, _ in DEFECTS) + b"\n")
    return path


def read_all(uri: str, opts: ReadOptions = OPTS, fmt: str = "auto", split_bytes: int = 1 << 30):
    files = list_inputs([uri])
    splits = plan_splits(files, fmt, split_bytes)
    counts = {
        i: ingest.count_newlines(s) for i, s in enumerate(splits) if s.kind == "jsonl" and (s.start > 0 or s.end >= 0)
    }
    splits = ingest.resolve_line_numbers(splits, counts)
    return [r for s in splits for r in read_split(s, opts)], splits


def test_every_defect_is_quarantined_with_file_and_line(tmp_path):
    path = write_defects(tmp_path / "in" / "docs.jsonl")
    records, _ = read_all(str(path))
    assert len(records) == len(DEFECTS)
    for line_no, (rec, (_, reason)) in enumerate(zip(records, DEFECTS), start=1):
        assert rec.file == str(path) and rec.line == line_no
        assert rec.reason == reason, (line_no, rec)
        if reason:
            assert rec.id is None and rec.text is None and rec.raw is not None and len(rec.raw) <= 1000
        else:
            assert rec.raw is None and rec.text
    good = {r.line: r for r in records if r.reason is None}
    assert good[1].id == "a" and good[1].text.startswith("first line")
    assert good[2].source == "s1"
    assert good[16].id == "7"
    assert good[17].id == "docs.jsonl:17"  # relative path + line: stable


@pytest.mark.parametrize(
    "suffix,compress",
    [
        (".jsonl.gz", gzip.compress),
        (".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        (".data", gzip.compress),  # compression is sniffed, not taken from the name
    ],
)
def test_compressed_jsonl_reads_like_plain(tmp_path, suffix, compress):
    plain = write_defects(tmp_path / "docs.jsonl")
    packed = tmp_path / f"docs{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))
    fmt = "jsonl" if suffix == ".data" else "auto"
    expected, _ = read_all(str(plain))
    got, _ = read_all(str(packed), fmt=fmt)
    assert [(r.line, r.reason, r.text) for r in got] == [(r.line, r.reason, r.text) for r in expected]


def test_parquet_rows_and_defects(tmp_path):
    path = tmp_path / "docs.parquet"
    table = pa.table(
        {
            "id": ["p1", None, "p3", "p4"],
            "text": ["a parquet document", "derived id", None, "   "],
            "source": ["x", "y", "z", "w"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    records, _ = read_all(str(path))
    assert [(r.line, r.id, r.reason) for r in records] == [
        (1, "p1", None),
        (2, "docs.parquet:2", None),
        (3, None, "missing_text"),
        (4, None, "empty_text"),
    ]
    # Split at row-group boundaries: same records, same row numbers.
    split_records, splits = read_all(str(path), split_bytes=16)
    assert len(splits) == 2 and [s.first_row for s in splits] == [1, 3]
    assert split_records == records


def test_parquet_binary_and_missing_text_column(tmp_path):
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array([b"caf\xc3\xa9 ok", b"\xff\xfe"], pa.binary())}), binary)
    records, _ = read_all(str(binary))
    assert [(r.text, r.reason) for r in records] == [("caf\u00e9 ok", None), (None, "invalid_utf8")]
    no_text = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["x", "y", "z"]}), no_text)
    records, _ = read_all(str(no_text))
    assert [(r.line, r.reason) for r in records] == [(1, "missing_text"), (2, "missing_text"), (3, "missing_text")]


def test_truncated_and_unreadable_files(tmp_path):
    rng = random.Random(0)  # random words compress poorly: the file spans many gzip blocks
    lines = [
        json.dumps({"id": f"d{i}", "text": " ".join(f"{rng.getrandbits(40):x}" for _ in range(60))}).encode()
        for i in range(2000)
    ]
    blob = gzip.compress(b"\n".join(lines) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    records, _ = read_all(str(cut))
    good = [r for r in records if r.reason is None]
    assert records[-1].reason == "unreadable_file" and records[-1].line == len(good) + 1
    assert all(r.reason is None for r in records[:-1]) and 0 < len(good) < 2000
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")
    records, _ = read_all(str(broken))
    assert [(r.line, r.reason) for r in records] == [(0, "unreadable_file")]
    other = tmp_path / "notes.txt"
    other.write_text("not data")
    records, _ = read_all(str(other))
    assert [(r.line, r.reason) for r in records] == [(0, "unknown_format")]


def test_byte_range_splits_read_the_same_records(tmp_path):
    path = write_defects(tmp_path / "docs.jsonl")
    # Append many lines, some longer than the split size, so lines straddle range boundaries.
    with open(path, "ab") as f:
        for i in range(300):
            f.write(json.dumps({"id": f"x{i}", "text": "word " * (i % 97 + 1)}).encode() + b"\n")
    whole, _ = read_all(str(path))
    for split_bytes in (1024, 1500, 4096):
        pieces, splits = read_all(str(path), split_bytes=split_bytes)
        assert len(splits) > 3
        assert pieces == whole


def test_list_inputs_relative_paths(tmp_path):
    root = tmp_path / "corpus"
    for rel in ["a.jsonl", "sub/b.jsonl.gz", "sub/deeper/c.parquet", "_SUCCESS", ".hidden"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    files = list_inputs([str(root)])
    assert [f.rel for f in files] == ["a.jsonl", "sub/b.jsonl.gz", "sub/deeper/c.parquet"]
    globbed = list_inputs([str(root / "sub" / "*.gz")])
    assert [f.rel for f in globbed] == ["b.jsonl.gz"]
    single = list_inputs([str(root / "a.jsonl")])
    assert [f.rel for f in single] == ["a.jsonl"]
    # Two single files with the same name keep distinct ids: both fall back to full paths.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.jsonl").write_bytes(b"")
    both = list_inputs([str(root / "a.jsonl"), str(tmp_path / "other" / "a.jsonl")])
    assert len({f.rel for f in both}) == 2


def test_split_json_roundtrip():
    s = Split("s3://b/k.parquet", "k.parquet", "parquet", row_groups=(2, 3), first_row=11)
    assert Split.from_json(s.to_json()) == s


def test_reads_from_s3(tmp_path, s3_endpoint, s3_bucket):
    import boto3

    # Uploaded with boto3, as another tool would (pyarrow's output streams compress *.gz keys).
    local = write_defects(tmp_path / "docs.jsonl")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="raw/part-0.jsonl.gz", Body=gzip.compress(local.read_bytes()))
    s3.put_object(Bucket=s3_bucket, Key="raw/part-1.jsonl", Body=local.read_bytes())
    uri = f"s3://{s3_bucket}/raw/part-0.jsonl.gz"
    records, splits = read_all(f"s3://{s3_bucket}/raw", split_bytes=1024)
    assert {s.file for s in splits} == {uri, f"s3://{s3_bucket}/raw/part-1.jsonl"}
    by_file: dict[str, list] = {}
    for r in records:
        by_file.setdefault(r.file, []).append((r.line, r.reason))
    expected = [(i, reason) for i, (_, reason) in enumerate(DEFECTS, start=1)]
    assert all(v == expected for v in by_file.values()) and len(by_file) == 2
    ids = sorted(r.id for r in records if r.id and ":" in r.id)
    assert ids == ["part-0.jsonl.gz:17", "part-1.jsonl:17"]


def test_the_stage_numbers_byte_range_splits_lines_on_spark_as_a_local_count_does(spark, tmp_path):
    from mixture.config import parse_config
    from mixture.curate import annotate

    path = write_defects(tmp_path / "in" / "docs.jsonl")
    with open(path, "ab") as f:
        for i in range(300):
            f.write(json.dumps({"id": f"x{i}", "text": "word " * (i % 97 + 1)}).encode() + b"\n")
    settings = {"output_root": str(tmp_path / "out"), "input": {"uris": [str(path)]}}
    cfg = parse_config({**settings, "curate": {"split_bytes": 4096, "partitions": 3}})
    splits = annotate.plan(spark, cfg, list_inputs([str(path)]))
    _, local = read_all(str(path), split_bytes=4096)
    assert len(splits) > 3 and splits == local
    assert all(s.lines_before is not None for s in splits) and splits[-1].lines_before > 300
