"""Names of published ClimbMix versions, shared by the publisher and the reader.

A published dataset lives at `<prefix>/<version>/`, and `<prefix>/latest` is a small JSON
pointer to the newest version. A version is 1-128 characters of letters, digits, `.`, `_`, `-`
(starting with a letter or digit) so that it is a safe S3 key and folder name, and it is never
`latest`, the pointer's own name. Defined once here so the config, the publisher and the reader
agree.
"""

from __future__ import annotations

import re

LATEST = "latest"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_RE = re.compile(VERSION_PATTERN)
