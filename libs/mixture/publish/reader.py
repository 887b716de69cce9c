"""Read a ClimbMix dataset, local or on S3, with every file checked against its manifest.

    from mixture.publish.reader import ClimbMix
    mix = ClimbMix("s3://bucket/prefix")            # follows the `latest` pointer
    mix = ClimbMix("s3://bucket/prefix/<version>")  # one published version
    mix = ClimbMix("out/climbmix")                  # the committed build, before publishing
    for row in mix.iter_texts(): row["text"], row["cluster"], row["id"]
    for ids in mix.iter_tokens(): ...               # numpy array per document, EOS included
    for ids in mix.iter_tokens(split="validation"): ...   # the held-out split (`validation/`)

A location is a dataset only when its `_manifest.json` exists (the build and the publisher
write it last). Each file is hashed and compared with the manifest's size and sha256 before any
of it is returned; a mismatch raises `ChecksumError` naming the file. Through the `latest`
pointer the manifest itself is checked against the sha256 the pointer records. Token shards on
S3 are downloaded once into a cache folder (verified) and memory-mapped from there.

Every read (a manifest, the pointer, a whole file, a download to the cache, a verification pass)
goes through `storage.retry`, the publisher's retry policy: a 5xx, a dropped connection or a body
dropped mid-read is tried again, so a flaky endpoint does not turn into a wrong verdict.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.config import LATEST
from mixture.dataset import MANIFEST, DatasetError, Manifest


class ChecksumError(DatasetError):
    """A file of the dataset does not match its manifest (corrupted, truncated or replaced)."""


SPLITS = {"train": "", "validation": "validation/"}  # split -> the folder its files' layout is under


def split_root(split: str) -> str:
    """The folder of a split's files (`train`: the dataset's own layout, `validation`: `validation/`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    return SPLITS[split]


def _exists(uri: str) -> bool:
    return storage.retry(lambda: storage.exists(uri), f"look up {uri}")


def _read(uri: str) -> bytes:
    return storage.retry(lambda: storage.read_bytes(uri), f"read {uri}")


def _hash(uri: str) -> tuple[int, str]:
    """(bytes, sha256) of a file, streamed."""
    with storage.open_read(uri) as fin:
        digest = storage.sha256_stream(fin)
        return fin.tell(), digest


def _copy(src: str, dst: str) -> tuple[int, str]:
    """Copy a file to a local path while hashing it: (bytes, sha256)."""
    with storage.open_read(src) as fin, open(dst, "wb") as fout:
        digest = storage.sha256_stream(fin, sink=fout.write)
        return fin.tell(), digest


class ClimbMix:
    """A ClimbMix dataset, opened by its manifest; every file it returns checked against it."""

    def __init__(self, uri: str, verify: bool = True, cache_dir: str | None = None):
        """Open the dataset at `uri` (reads its manifest, and the pointer when there is one).

        Args:
            uri: a published prefix (`s3://bucket/prefix`: the version its `latest` pointer
                names, whose manifest must match the sha256 the pointer records), one version
                (`s3://bucket/prefix/<version>`), or a committed build (`out/climbmix`), local or S3.
            verify: hash every file before any of it is returned (size and sha256 against the
                manifest; `ChecksumError` names a file that differs). False skips that hashing;
                the manifest is checked against the pointer either way, and `verify()` checks
                every file when called.
            cache_dir: where token shards on S3 are downloaded to (under a folder named after the
                manifest's sha256, so versions never mix); default a new temporary folder. Give
                several readers of one version the same folder to download each shard once.

        Raises `DatasetError` when there is no dataset at `uri` (no manifest and no pointer, or a
        pointer at a version without a manifest).
        """
        self.requested = uri.rstrip("/")
        self.verify_reads = verify
        self._cache_dir = cache_dir
        self._verified: set[str] = set()
        self.uri, self.version, raw, expected_sha = self._resolve(self.requested)
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        if expected_sha is not None and expected_sha != self.manifest_sha256:
            raise ChecksumError(
                f"{storage.join(self.uri, MANIFEST)} does not match the sha256 that the `{LATEST}` pointer records"
            )
        self.manifest = Manifest.from_json(raw.decode())
        self._files = {f["path"]: f for f in self.manifest.files}

    @staticmethod
    def _resolve(uri: str) -> tuple[str, str | None, bytes, str | None]:
        """(dataset URI, version, manifest bytes, the manifest sha256 a pointer expects)."""
        if _exists(storage.join(uri, MANIFEST)):
            version = storage.basename(uri) if storage.is_s3(uri) else None
            return uri, version, _read(storage.join(uri, MANIFEST)), None
        if _exists(storage.join(uri, LATEST)):
            pointer = json.loads(_read(storage.join(uri, LATEST)))
            version = pointer["version"]
            vuri = storage.join(uri, version)
            if not _exists(storage.join(vuri, MANIFEST)):
                raise DatasetError(f"{uri}: `{LATEST}` points at version {version}, which has no {MANIFEST}")
            return vuri, version, _read(storage.join(vuri, MANIFEST)), pointer.get("manifest_sha256")
        raise DatasetError(
            f"no ClimbMix dataset at {uri}: no {MANIFEST} (an incomplete or absent dataset) and no `{LATEST}` pointer"
        )

    # ------------------------------------------------------------------------- metadata
    @property
    def info(self) -> dict[str, Any]:
        return self.manifest.extra

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest.counts

    @property
    def mixture(self) -> dict[str, float]:
        return self.info["mixture"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.info["dtype"])

    @property
    def eos_id(self) -> int:
        return int(self.info["eos_id"])

    def __len__(self) -> int:
        return int(self.counts["documents"])

    def documents(self, split: str = "train") -> int:
        """The documents of a split (the manifest's count)."""
        return int(self.counts.get("documents" if split_root(split) == "" else "validation_documents", 0))

    def parquet_files_of(self, split: str = "train") -> list[str]:
        """A split's Parquet shards (relative paths)."""
        root = split_root(split) + "parquet/"
        return sorted(p for p in self._files if p.startswith(root) and p.endswith(".parquet"))

    def token_shards_of(self, split: str = "train") -> list[str]:
        """A split's relative prefixes `[validation/]tokens/part-NNNNN` (each with .bin and .idx)."""
        root = split_root(split) + "tokens/"
        return sorted(p[:-4] for p in self._files if p.startswith(root) and p.endswith(".bin"))

    @property
    def parquet_files(self) -> list[str]:
        return self.parquet_files_of("train")

    @property
    def token_shards(self) -> list[str]:
        """Relative prefixes `tokens/part-NNNNN` of the training split (each with .bin and .idx)."""
        return self.token_shards_of("train")

    # ----------------------------------------------------------------- verified access
    def _entry(self, rel: str) -> dict:
        if rel not in self._files:
            raise DatasetError(f"{rel} is not a file of the dataset at {self.uri}")
        return self._files[rel]

    def _check(self, rel: str, size: int, digest: str) -> None:
        f = self._entry(rel)
        if size != f["bytes"] or digest != f["sha256"]:
            raise ChecksumError(
                f"{storage.join(self.uri, rel)} does not match its manifest checksum "
                f"({size} bytes, sha256 {digest[:12]}…; manifest: {f['bytes']} bytes, "
                f"sha256 {f['sha256'][:12]}…)"
            )
        self._verified.add(rel)

    def read_bytes(self, rel: str) -> bytes:
        """One file's bytes, verified."""
        self._entry(rel)
        raw = _read(storage.join(self.uri, rel))
        if self.verify_reads:
            self._check(rel, len(raw), hashlib.sha256(raw).hexdigest())
        return raw

    @cached_property
    def cache_dir(self) -> str:
        root = self._cache_dir or tempfile.mkdtemp(prefix="climbmix-")
        return os.path.join(root, self.manifest_sha256[:16])

    def local_path(self, rel: str) -> str:
        """A local path holding the verified file: the file itself for a local dataset, else a
        verified copy in the cache folder."""
        self._entry(rel)
        src = storage.join(self.uri, rel)
        local = storage.local_path(src)
        if local is not None:
            if self.verify_reads and rel not in self._verified:
                self._check(rel, os.path.getsize(local), storage.sha256(local))
            return local
        dst = os.path.join(self.cache_dir, rel)
        if self._cached(rel, dst):
            return dst
        self._download(rel, src, dst)
        return dst

    def _cached(self, rel: str, dst: str) -> bool:
        """Whether the cache holds a good copy (a damaged one is removed, to be fetched again)."""
        if not os.path.exists(dst) or os.path.getsize(dst) != self._files[rel]["bytes"]:
            return False
        if not self.verify_reads or rel in self._verified:
            return True
        try:
            self._check(rel, os.path.getsize(dst), storage.sha256(dst))
            return True
        except ChecksumError:
            os.remove(dst)
            return False

    def _download(self, rel: str, src: str, dst: str) -> None:
        """Copy `src` to `dst` through a temporary file, hashing while copying."""
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.part-{os.getpid()}"
        n, digest = storage.retry(lambda: _copy(src, tmp), f"download {src}")
        try:
            if self.verify_reads:
                self._check(rel, n, digest)
        except ChecksumError:
            os.remove(tmp)
            raise
        os.replace(tmp, dst)

    def verify(self) -> None:
        """Check every file of the manifest (sizes and sha256); raises ChecksumError."""
        for rel in self._files:
            src = storage.join(self.uri, rel)
            if not _exists(src):
                raise ChecksumError(f"{src} is listed in the manifest but missing")
            self._check(rel, *storage.retry(functools.partial(_hash, src), f"read {src}"))

    # --------------------------------------------------------------------------- texts
    def read_shard(self, i: int, columns: list[str] | None = None, split: str = "train") -> pa.Table:
        return pq.read_table(pa.BufferReader(self.read_bytes(self.parquet_files_of(split)[i])), columns=columns)

    def read_table(self, columns: list[str] | None = None, split: str = "train") -> pa.Table:
        """Every document of a split as one Arrow table (text, cluster, id), in the dataset's order."""
        tables = [self.read_shard(i, columns, split) for i in range(len(self.parquet_files_of(split)))]
        table = pa.concat_tables(tables) if tables else pa.table({})
        if table.num_rows != self.documents(split):
            raise DatasetError(
                f"{self.uri}: the {split} Parquet shards hold {table.num_rows} rows, the manifest counts "
                f"{self.documents(split)} documents"
            )
        return table

    def iter_texts(self, columns: list[str] | None = None, split: str = "train") -> Iterator[dict[str, Any]]:
        """One dict per document (text, cluster, id), shard by shard, in the dataset's order."""
        for i in range(len(self.parquet_files_of(split))):
            yield from self.read_shard(i, columns, split).to_pylist()

    # -------------------------------------------------------------------------- tokens
    def tokens(self, i: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(tokens memmap, int64 offsets) of a split's token shard i, verified."""
        prefix = self.token_shards_of(split)[i]
        offsets = np.load(self.local_path(prefix + ".idx"), allow_pickle=False)
        tokens = np.memmap(self.local_path(prefix + ".bin"), dtype=self.dtype, mode="r")
        if len(offsets) == 0 or offsets[-1] != len(tokens):
            raise DatasetError(
                f"{prefix}: offsets end at {offsets[-1] if len(offsets) else '?'}, "
                f"the token file holds {len(tokens)} tokens"
            )
        return tokens, offsets

    def iter_tokens(self, split: str = "train") -> Iterator[np.ndarray]:
        """One array of token ids per document (its end-of-document id last), in the same order
        as iter_texts."""
        for i in range(len(self.token_shards_of(split))):
            tokens, offsets = self.tokens(i, split)
            for a, b in zip(offsets[:-1], offsets[1:]):
                yield np.asarray(tokens[a:b])

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.read_bytes("tokenizer/tokenizer.json").decode())
