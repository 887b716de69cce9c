"""Committed datasets: the contract every stage keeps.

A dataset is a folder (local or S3). It is *committed* when its `_manifest.json` exists; readers
look only at committed datasets and only at the files the manifest lists. A stage writes into a
staging folder (`<root>/_staging/<name>-<key>`), and `commit()`, which the runner calls while it
holds the dataset's lease (`mixture.lease`, one writer at a time):

1. moves the committed dataset aside to `<root>/_staging/<name>.previous` (it stops being visible),
2. moves the staging folder into place (a rename locally, a copy on S3) and deletes the scratch
   that came along (`.tmp-` names: never in a manifest),
3. writes `_manifest.json` last, with the stage name, config hash, input manifest hashes, counts,
   every file's size and sha256, the package and code version and the start and end time,
4. deletes the previous dataset.

A run killed anywhere before step 3 leaves no manifest, so nothing new is committed; the next
writer (`recover()`, under the lease) puts the previous dataset back before it looks at it, so a
kill never deletes a committed dataset either. The staging folder is keyed by the stage's config
hash and inputs, so a stage that can resume (embedding, proxy runs) finds its finished pieces there.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mixture import __version__, storage

MANIFEST = "_manifest.json"


class DatasetError(RuntimeError):
    """A dataset is missing, uncommitted or does not match its manifest."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def code_version() -> str:
    """The git commit of the code, with '+dirty' when it has local changes; the package version
    when the code does not run from a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


@dataclass
class Manifest:
    stage: str
    config_hash: str
    inputs: dict[str, str]  # input dataset name -> its manifest's sha256
    counts: dict[str, Any]
    files: list[dict[str, Any]]  # {"path": relative, "bytes": n, "sha256": hex}
    extra: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    code_version: str = ""
    started_at: str = ""
    finished_at: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Dataset:
    """A committed dataset: its URI, its manifest and the manifest's own hash."""

    uri: str
    manifest: Manifest
    manifest_sha256: str

    def path(self, rel: str) -> str:
        return storage.join(self.uri, rel)

    def files(self, prefix: str = "") -> list[str]:
        """URIs of the manifest's files whose relative path starts with `prefix`."""
        return [self.path(f["path"]) for f in self.manifest.files if f["path"].startswith(prefix)]

    def verify(self) -> None:
        """Check every file's size and sha256 against the manifest."""
        for f in self.manifest.files:
            uri = self.path(f["path"])
            if not storage.exists(uri):
                raise DatasetError(f"{uri} is listed in the manifest but missing")
            if storage.size(uri) != f["bytes"] or storage.sha256(uri) != f["sha256"]:
                raise DatasetError(f"{uri} does not match its manifest checksum")


def open_dataset(uri: str) -> Dataset:
    """The committed dataset at `uri`; DatasetError when there is none."""
    muri = storage.join(uri, MANIFEST)
    if not storage.exists(muri):
        raise DatasetError(f"no committed dataset at {uri} (no {MANIFEST}); run its stage first")
    raw = storage.read_bytes(muri)
    return Dataset(uri, Manifest.from_json(raw.decode()), hashlib.sha256(raw).hexdigest())


def try_open(uri: str) -> Dataset | None:
    try:
        return open_dataset(uri)
    except DatasetError:
        return None


class DatasetWriter:
    """Stages files for one dataset and commits them with the manifest written last."""

    def __init__(
        self,
        uri: str,
        stage: str,
        config_hash: str,
        inputs: dict[str, str],
        staging_root: str | None = None,
        resume: bool = False,
    ):
        self.uri = uri.rstrip("/")
        self.stage = stage
        self.config_hash = config_hash
        self.inputs = dict(inputs)
        key = hashlib.sha256(json.dumps([config_hash, self.inputs], sort_keys=True).encode()).hexdigest()[:12]
        root = staging_root or storage.join(storage.parent(self.uri), "_staging")
        self.staging = storage.join(root, f"{storage.basename(self.uri)}-{key}")
        self.started_at = _now()
        self._t0 = time.time()
        self._kept: dict[str, dict[str, Any]] = {}  # rel -> the previous version's manifest entry
        if not resume:
            self.reset()
        storage.makedirs(self.staging)

    def reset(self) -> None:
        """Drop whatever a killed earlier attempt staged."""
        storage.delete(self.staging)
        storage.makedirs(self.staging)

    def path(self, rel: str) -> str:
        """Where to write the file `rel` of this dataset (inside the staging folder)."""
        self._kept.pop(rel, None)  # written anew: hashed at the commit
        uri = storage.join(self.staging, rel)
        if not storage.is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        return uri

    def keep(self, previous: Dataset, rel: str) -> None:
        """Carry the file `rel` of the previous committed version into this one unchanged: a hard
        link locally, a server-side copy on S3 (`storage.link`); its manifest entry (size,
        sha256) is taken over, not recomputed. An incremental version keeps what did not change."""
        entry = next((f for f in previous.manifest.files if f["path"] == rel), None)
        if entry is None:
            raise DatasetError(f"{previous.uri}: {rel} is not in its manifest")
        storage.link(previous.path(rel), self.path(rel))
        self._kept[rel] = dict(entry)

    def keep_all(self, previous: Dataset, prefix: str = "") -> list[str]:
        """`keep` every file of the previous version whose path starts with `prefix`."""
        rels = [f["path"] for f in previous.manifest.files if f["path"].startswith(prefix)]
        for rel in rels:
            self.keep(previous, rel)
        return rels

    def has(self, rel: str) -> bool:
        """True when a finished file `rel` is already staged (for resuming)."""
        return storage.exists(storage.join(self.staging, rel))

    def commit(self, counts: dict[str, Any], extra: dict[str, Any] | None = None) -> Dataset:
        """Swap the staged files in, delete the scratch that came along (`.tmp-` names, never in a
        manifest) and write the manifest last. Call it holding the lease."""
        files, scratch = self._staged_files()
        manifest = Manifest(
            stage=self.stage,
            config_hash=self.config_hash,
            inputs=self.inputs,
            counts=counts,
            files=files,
            extra=extra or {},
            code_version=code_version(),
            started_at=self.started_at,
            finished_at=_now(),
        )
        previous = previous_uri(self.uri)
        recover(self.uri)
        storage.delete(previous)
        if storage.exists(self.uri):
            storage.move(self.uri, previous)  # 1. out of sight
        storage.move(self.staging, self.uri)  # 2. in place
        # kept until now (a stage's record for a commit retried after a failure before step 2),
        # gone before the manifest: a committed folder holds exactly its manifest's files
        for rel in scratch:
            storage.delete(storage.join(self.uri, rel))
        storage.write_text(storage.join(self.uri, MANIFEST), manifest.to_json())  # 3. commit
        storage.delete(previous)  # 4. clean up
        return open_dataset(self.uri)

    def _staged_files(self) -> tuple[list[dict[str, Any]], set[str]]:
        """(the files the manifest lists, the top-most `.tmp-` scratch paths it leaves out)."""
        files, scratch = [], set()
        prefix = self.staging.rstrip("/") + "/"
        for f in storage.list_files(self.staging):
            rel = f[len(prefix) :]
            if ".tmp-" in rel:
                names = rel.split("/")
                top = next(i for i, n in enumerate(names) if ".tmp-" in n)
                scratch.add("/".join(names[: top + 1]))
                continue
            if storage.basename(rel).startswith(".") or rel == MANIFEST:
                continue
            kept = self._kept.get(rel)
            if kept is not None and storage.size(f) == kept["bytes"]:
                files.append(kept)
                continue
            files.append({"path": rel, "bytes": storage.size(f), "sha256": storage.sha256(f)})
        return files, scratch


def previous_uri(uri: str) -> str:
    """Where commit() keeps the dataset it replaces until the new manifest is written."""
    uri = uri.rstrip("/")
    return storage.join(storage.parent(uri), "_staging", storage.basename(uri) + ".previous")


def recover(uri: str) -> None:
    """Undo a commit that was killed between moving the old dataset aside and writing the new
    manifest: put the previous committed dataset back. Call it holding the lease."""
    previous = previous_uri(uri)
    if storage.exists(storage.join(previous, MANIFEST)) and not storage.exists(storage.join(uri, MANIFEST)):
        storage.delete(uri)
        storage.move(previous, uri)


def up_to_date(uri: str, config_hash: str, inputs: dict[str, str]) -> Dataset | None:
    """The committed dataset if it was made from the same config and the same inputs."""
    ds = try_open(uri)
    if ds and ds.manifest.config_hash == config_hash and ds.manifest.inputs == inputs:
        return ds
    return None


def content_hash(manifest_files: list[dict]) -> str:
    """sha256 of the files' paths, sizes and checksums: the same data gives the same hash whatever
    the manifest's timestamps (the default published version)."""
    rows = sorted((f["path"], int(f["bytes"]), f["sha256"]) for f in manifest_files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
