"""Ingest: raw input files -> one record per line (JSONL) or row (Parquet), good or quarantined.

Spark cannot read `s3://` without the hadoop-aws jars, so the curation stage does not use Spark's
readers: it distributes the list of input *splits* and each executor reads its splits through
`mixture.storage` (pyarrow.fs: local and S3 alike). Every record carries its source file and 1-based
line or row number, which gives quarantine records their location for free and works on any
Spark master.

Formats: JSONL (`.jsonl`, `.json`, `.ndjson`), gzip- or zstd-compressed JSONL (detected from the
file's magic bytes, whatever its name), and Parquet (`.parquet`, `.pq`). `input.format` forces one
format for every file.

Splits: a compressed JSONL file is read by one task (a compressed stream cannot be entered in the
middle). An uncompressed JSONL file larger than `curate.split_bytes` is cut into byte ranges; a
range owns the lines that *start* inside it, and its first line number comes from a cheap
newline-count pass over the earlier ranges (`count_newlines`, run in parallel before the read).
A Parquet file larger than `split_bytes` is cut at row-group boundaries (row numbers come from
the footer's row counts).

Bad input never crashes the read and is never dropped silently: each defect becomes a quarantine
record with its reason (`QUARANTINE_REASONS`), file, line/row and the first 1,000 characters of
the record. A file that cannot be opened or decompressed yields the records before the failure
and one `unreadable_file` record at the failing line (line 0 when it fails before the first).

Ids: the configured id field (a string or an integer) when a record has it; otherwise
`<file path relative to its input root>:<line>`, so the same input gives the same ids. Whether
the same id in two files names one document or two (`input.unique_ids`) is decided after the
read, over all files (`annotate.identify`).
"""

from __future__ import annotations

import gzip
import io as pyio
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from mixture import storage
from mixture.config import InputConfig

QUARANTINE_REASONS = {
    "malformed_json": "the line is not valid JSON",
    "not_an_object": "valid JSON, but not an object",
    "invalid_utf8": "the line (or a binary Parquet text) is not valid UTF-8",
    "lone_surrogate": "the text holds an unpaired surrogate escape and cannot be written as UTF-8",
    "missing_text": "the text field is absent or null",
    "non_string_text": "the text field is not a string",
    "empty_text": "the text is empty or whitespace only",
    "invalid_id": "the id field is not a non-empty string or integer",
    "too_large": "the record is larger than curate.max_doc_bytes",
    "blank_line": "a blank line in a JSONL file",
    "duplicate_id": "another record (earlier by file and line) has the same id (in the same file, "
    "or anywhere with input.unique_ids)",
    "unreadable_file": "the file could not be opened, decompressed or parsed past this line",
    "unknown_format": "the file's format is neither JSONL nor Parquet (set input.format)",
}
RAW_CHARS = 1000
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Record(NamedTuple):
    file: str
    line: int
    id: str | None
    text: str | None
    source: str | None
    reason: str | None  # quarantine reason, None for a good record
    raw: str | None  # first RAW_CHARS characters of a bad record


@dataclass(frozen=True)
class InputFile:
    uri: str
    rel: str  # path relative to its input root: the stable part of derived ids


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str | None = "id"
    source_field: str | None = "source"
    max_doc_bytes: int = 1_000_000

    @classmethod
    def from_config(cls, cfg: InputConfig, max_doc_bytes: int) -> ReadOptions:
        return cls(cfg.text_field, cfg.id_field, cfg.source_field, max_doc_bytes)


@dataclass(frozen=True)
class Split:
    """A piece of one input file that one task reads."""

    file: str
    rel: str
    kind: str  # "jsonl", "parquet" or "unknown"
    start: int = 0  # jsonl: byte range [start, end); end -1 = to EOF
    end: int = -1
    lines_before: int | None = 0  # jsonl: newlines before `start` (None: not yet counted)
    row_groups: tuple[int, ...] = field(default=())  # parquet: () = all
    first_row: int = 1  # parquet: 1-based number of the first row

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Split:
        d = json.loads(text)
        d["row_groups"] = tuple(d["row_groups"])
        return cls(**d)


# ------------------------------------------------------------------------------- planning
def _glob_root(uri: str) -> str:
    root = uri
    while any(c in root for c in "*?["):
        root = storage.parent(root)
    return root


def list_inputs(uris: list[str]) -> list[InputFile]:
    """The input files of a list of files, folders and globs, each with its path relative to the
    root it was found under (a folder or a glob's fixed part; a single file: its name). When two
    files would get the same relative path, both use their full URI instead."""
    found: dict[str, str] = {}
    for uri in uris:
        root = _glob_root(uri) if any(c in uri for c in "*?[") else uri
        files = storage.expand([uri])
        for f in files:
            if f in found:
                continue
            if f == uri.rstrip("/") or not f.startswith(root.rstrip("/") + "/"):
                rel = storage.basename(f)
            else:
                rel = f[len(root.rstrip("/")) + 1 :]
            found[f] = rel.replace("\\", "/")
    by_rel: dict[str, list[str]] = {}
    for f, rel in found.items():
        by_rel.setdefault(rel, []).append(f)
    out = []
    for f, rel in sorted(found.items()):
        out.append(InputFile(f, f if len(by_rel[rel]) > 1 else rel))
    return out


def file_kind(uri: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = storage.basename(uri).lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "unknown"


def _magic(uri: str) -> bytes:
    with storage.open_read(uri) as f:
        return f.read(4)


def plan_splits(files: list[InputFile], fmt: str, split_bytes: int) -> list[Split]:
    """Splits for every input file (see the module docstring). Reads only sizes, magic bytes and
    Parquet footers, and only of files larger than `split_bytes`. Byte-range splits after the
    first have `lines_before=None` until `resolve_line_numbers` fills them in."""
    import pyarrow.parquet as pq

    splits: list[Split] = []
    for f in files:
        kind = file_kind(f.uri, fmt)
        try:
            size = storage.size(f.uri) if kind != "unknown" else 0
        except OSError:
            size = 0  # the reader reports it as unreadable_file
        if kind == "jsonl" and size > split_bytes:
            try:
                compressed = _magic(f.uri).startswith((GZIP_MAGIC, ZSTD_MAGIC))
            except OSError:
                compressed = True
            if not compressed:
                starts = list(range(0, size, split_bytes))
                for i, start in enumerate(starts):
                    end = starts[i + 1] if i + 1 < len(starts) else -1
                    splits.append(Split(f.uri, f.rel, kind, start, end, 0 if i == 0 else None))
                continue
        if kind == "parquet" and size > split_bytes:
            try:
                with storage.open_read(f.uri) as fh:
                    meta = pq.ParquetFile(fh).metadata
                groups = [
                    (g, meta.row_group(g).num_rows, meta.row_group(g).total_byte_size)
                    for g in range(meta.num_row_groups)
                ]
            except (OSError, ValueError):
                groups = []
            if len(groups) > 1:
                row = 1
                current: list[int] = []
                first, acc = 1, 0
                for g, rows, nbytes in groups:
                    if current and acc + nbytes > split_bytes:
                        splits.append(Split(f.uri, f.rel, kind, row_groups=tuple(current), first_row=first))
                        current, first, acc = [], row, 0
                    current.append(g)
                    acc += nbytes
                    row += rows
                splits.append(Split(f.uri, f.rel, kind, row_groups=tuple(current), first_row=first))
                continue
        splits.append(Split(f.uri, f.rel, kind))
    return splits


def count_newlines(split: Split, chunk: int = 8 << 20) -> int:
    """Newlines in the byte range of a JSONL split (the pass that numbers the next range's lines)."""
    n = 0
    with storage.open_read(split.file) as f:
        f.seek(split.start)
        remaining = None if split.end < 0 else split.end - split.start
        while remaining is None or remaining > 0:
            block = f.read(chunk if remaining is None else min(chunk, remaining))
            if not block:
                break
            n += block.count(b"\n")
            if remaining is not None:
                remaining -= len(block)
    return n


def resolve_line_numbers(splits: list[Split], counts: dict[int, int]) -> list[Split]:
    """Fill `lines_before` of byte-range splits from the newline counts of every range
    (`counts[i]` = newlines in splits[i]); ranges of one file are consecutive in `splits`."""
    out: list[Split] = []
    running: dict[str, int] = {}
    for i, s in enumerate(splits):
        if s.kind == "jsonl" and (s.start > 0 or s.end >= 0):
            before = running.get(s.file, 0)
            out.append(Split(s.file, s.rel, s.kind, s.start, s.end, before))
            running[s.file] = before + counts[i]
        else:
            out.append(s)
    return out


# -------------------------------------------------------------------------------- reading
def _raw(data: bytes | str) -> str:
    if isinstance(data, bytes):
        data = data[: RAW_CHARS * 4].decode("utf-8", errors="replace")
    return data[:RAW_CHARS].encode("utf-8", errors="replace").decode("utf-8")


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _bad(file: str, line: int, reason: str, raw: bytes | str) -> Record:
    return Record(file, line, None, None, None, reason, _raw(raw))


def from_object(obj: dict[str, Any], split: Split, line: int, opts: ReadOptions, raw: bytes | str) -> Record:
    """A good record, or a quarantined one, from one decoded JSON object or Parquet row."""
    text = obj.get(opts.text_field)
    if text is None:
        return _bad(split.file, line, "missing_text", raw)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return _bad(split.file, line, "invalid_utf8", raw)
    if not isinstance(text, str):
        return _bad(split.file, line, "non_string_text", raw)
    if not text.strip():
        return _bad(split.file, line, "empty_text", raw)
    if not _utf8_ok(text):
        return _bad(split.file, line, "lone_surrogate", raw)
    if len(text) > opts.max_doc_bytes or len(text.encode("utf-8")) > opts.max_doc_bytes:
        return _bad(split.file, line, "too_large", raw)
    doc_id = obj.get(opts.id_field) if opts.id_field else None
    if doc_id is None:
        doc_id = f"{split.rel}:{line}"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        return _bad(split.file, line, "invalid_id", raw)
    else:
        doc_id = str(doc_id)
        if not doc_id.strip() or not _utf8_ok(doc_id):
            return _bad(split.file, line, "invalid_id", raw)
    source = obj.get(opts.source_field) if opts.source_field else None
    if source is not None:
        source = str(source).encode("utf-8", errors="replace").decode("utf-8")
    return Record(split.file, line, doc_id, text, source, None, None)


def parse_line(data: bytes, split: Split, line: int, opts: ReadOptions) -> Record:
    """One JSONL line (bytes, without its size check) -> a record."""
    if not data.strip():
        return _bad(split.file, line, "blank_line", data)
    try:
        # A UTF-8 byte-order mark may open a file; it is not part of the first record.
        decoded = data.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError:
        return _bad(split.file, line, "invalid_utf8", data)
    try:
        obj = json.loads(decoded)
    except (ValueError, RecursionError):
        return _bad(split.file, line, "malformed_json", data)
    if not isinstance(obj, dict):
        return _bad(split.file, line, "not_an_object", data)
    return from_object(obj, split, line, opts, data)


def _lines(stream, limit: int) -> Iterator[tuple[bytes, int, bool]]:
    """(line bytes or its head, bytes consumed, too_large) for each line; a line longer than
    `limit` bytes is skipped in bounded chunks, never held in memory whole."""
    while True:
        chunk = stream.readline(limit + 1)
        if not chunk:
            return
        if len(chunk) > limit and not chunk.endswith(b"\n"):
            yield chunk[: RAW_CHARS * 4], len(chunk) + _skip_line(stream), True
        else:
            yield chunk, len(chunk), False


def _skip_line(stream) -> int:
    """Consume the rest of the current line in bounded chunks; returns the bytes consumed."""
    consumed = 0
    while True:
        chunk = stream.readline(1 << 20)
        consumed += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return consumed


_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return _READ_ERRORS + (zstandard.ZstdError,)


def _open_jsonl(raw_file, whole: bool):
    buffered = pyio.BufferedReader(raw_file, buffer_size=1 << 20)
    if not whole:
        return buffered
    magic = buffered.peek(4)[:4]
    # Decompressed data is buffered in small blocks: when a stream turns out to be truncated or
    # corrupt, the lines decoded before the damage are still yielded.
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if magic.startswith(ZSTD_MAGIC):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return pyio.BufferedReader(reader, buffer_size=128 << 10)
    return buffered


def _read_jsonl(split: Split, opts: ReadOptions) -> Iterator[Record]:
    whole = split.start == 0 and split.end < 0
    line = (split.lines_before or 0) + 1
    with storage.open_read(split.file) as raw_file:
        pos = split.start
        if split.start > 0:
            raw_file.seek(split.start - 1)
            at_line_start = raw_file.read(1) == b"\n"
        stream = _open_jsonl(raw_file, whole)
        if split.start > 0 and not at_line_start:
            # The line that straddles `start` belongs to the previous range.
            pos += _skip_line(stream)
            line += 1
        for data, consumed, too_large in _lines(stream, opts.max_doc_bytes):
            if split.end >= 0 and pos >= split.end:
                return
            if too_large:
                yield _bad(split.file, line, "too_large", data)
            else:
                yield parse_line(data.rstrip(b"\r\n"), split, line, opts)
            pos += consumed
            line += 1


def _read_parquet(split: Split, opts: ReadOptions) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with storage.open_read(split.file) as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        groups = list(split.row_groups) or list(range(pf.metadata.num_row_groups))
        row = split.first_row
        if opts.text_field not in names:
            for g in groups:
                for _ in range(pf.metadata.row_group(g).num_rows):
                    yield _bad(split.file, row, "missing_text", json.dumps({"columns": names})[:RAW_CHARS])
                    row += 1
            return
        columns = [c for c in dict.fromkeys([opts.text_field, opts.id_field, opts.source_field]) if c and c in names]
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=columns):
            for obj in batch.to_pylist():
                shown = {k: (v[:RAW_CHARS] if isinstance(v, (str, bytes)) else v) for k, v in obj.items()}
                raw = json.dumps(shown, default=str, ensure_ascii=False)
                yield from_object(obj, split, row, opts, raw)
                row += 1


def read_split(split: Split, opts: ReadOptions) -> Iterator[Record]:
    """Every record of one split, good or quarantined; never raises for bad input."""
    if split.kind == "unknown":
        yield _bad(split.file, 0, "unknown_format", "")
        return
    reader = _read_jsonl if split.kind == "jsonl" else _read_parquet
    last = None
    try:
        for rec in reader(split, opts):
            last = rec.line
            yield rec
    except _read_errors() as err:
        # The records before the failure were read; the rest of the split is one record, at the
        # line after the last one read (line 0: the file failed before its first record).
        if last is not None:
            line = last + 1
        elif split.kind == "parquet":
            line = 0 if split.first_row == 1 else split.first_row
        else:
            line = 0 if split.start == 0 else (split.lines_before or 0) + 1
        yield _bad(split.file, line, "unreadable_file", f"{type(err).__name__}: {err}")
