"""A small, real disk for tests of a full disk: a fresh tmpfs mounted in a private mount namespace
(`unshare`), so a test can fill it, run a command on it and leave no mount behind whatever happens.
Root mounts it directly; another user through a user namespace (`unshare --map-root-user`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _unshare() -> list[str]:
    base = ["unshare", "--mount", "--propagation", "private"]
    return base if os.geteuid() == 0 else base + ["--map-root-user"]


def available(probe_dir: Path) -> None:
    """Skip the test, saying why, when no tmpfs can be mounted here."""
    if shutil.which("unshare") is None:
        pytest.skip("no small disk: `unshare` (util-linux) is not installed")
    probe_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        _unshare() + ["sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{probe_dir}"'], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"no small disk: cannot mount a tmpfs in a mount namespace here ({proc.stderr.strip()[:200]})")


def run(disk: Path, size_kb: int, script: str, env: dict | None = None, timeout: float = 300):
    """`script` (sh, `set -e` off) in a mount namespace where `disk` is a fresh tmpfs of `size_kb`
    KiB; `fill DISK_FREE_KB` in it fills the disk but for that many KiB. Returns the process."""
    available(disk)
    prelude = f"""
mount -t tmpfs -o size={size_kb}k tmpfs "{disk}"
fill() {{
  avail=$(df -k --output=avail "{disk}" | tail -1)
  head -c $(( (avail - $1) * 1024 )) /dev/zero > "{disk}/filler" 2>/dev/null || true
}}
"""
    return subprocess.run(
        _unshare() + ["sh", "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or dict(os.environ),
    )
