"""The publish family's section, `publish`, and the names of published versions."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from mixture.config.section import Section, Uri

# Names of published ClimbMix versions, shared by the config, the publisher and the reader. A
# published dataset lives at `<prefix>/<version>/` and `<prefix>/latest` is a small JSON pointer to
# the newest version. A version is 1-128 letters, digits, `.`, `_`, `-` (starting with a letter or
# digit) so that it is a safe S3 key and folder name, and it is never `latest`, the pointer's name.
LATEST = "latest"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_RE = re.compile(VERSION_PATTERN)


class PublishConfig(Section):
    uri: Uri | None = Field(None, description="s3://bucket/prefix; None skips publishing")
    version: str | None = Field(None, pattern=VERSION_PATTERN, description="default: the build's content hash")
    multipart_chunk_mb: int = Field(64, ge=5, description="S3 allows parts of 5 MiB and more")
    max_retries: int = Field(8, ge=0, description="retries per request on throttling, 5xx, timeouts")
    concurrency: int = Field(4, ge=1, description="files uploaded at once (and parts per file)")
    verify: Literal["checksum", "download"] = Field(
        "checksum",
        description="checksum: compare the object's stored SHA-256 checksum (falls back "
        "to download when the endpoint keeps none); download: re-read and hash",
    )
    track: bool = Field(True, description="record the publication as an MLflow run")
