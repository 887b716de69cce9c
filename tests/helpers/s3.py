"""A moto S3 server on a free loopback port, and committed builds ready to publish: shared by
the benches (chaos, publish, streaming) and the publish tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's standalone server (the environment's own) on 127.0.0.1; (process, endpoint URL)."""
    port = free_port()
    exe = str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        exe = shutil.which("moto_server") or exe
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def publishable_builds(work: Path, records: list[dict], bucket: str, experiment: str) -> list[tuple[Path, object]]:
    """Two committed ClimbMix builds with different content, each with a config file that
    `jobs/publish.py` takes (publishing to s3://BUCKET/climbmix, lease TTL 5 s)."""
    import yaml
    from mixture.pipeline import run_stage

    from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search

    out = []
    for name, tokens in (("a", 12_000), ("b", 9_000)):
        root = work / name
        make_search(root, make_climblab(root, records), WEIGHTS)
        cfg = make_config(root, tokens=tokens)
        ds = run_stage(cfg, "climbmix").dataset
        conf = work / f"{name}.yaml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "output_root": cfg.output_root,
                    "seed": cfg.seed,
                    "input": {"uris": cfg.input.uris},
                    "build": cfg.build.model_dump(),
                    "tracking": {"experiment": experiment},
                    "publish": {"uri": f"s3://{bucket}/climbmix", "track": False, "concurrency": 2},
                    "concurrency": {"lease_ttl_s": 5},
                }
            )
        )
        out.append((conf, ds))
    return out
