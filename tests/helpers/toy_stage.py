"""A toy stage for the runner's concurrency tests: it stages a few files slowly, so that a second
run of it overlaps the first, and a kill can land at any point of its run or its commit.

    python -m tests.helpers.toy_stage OUTPUT_ROOT [wait|fail] [SECONDS] [FORCE]
"""

from __future__ import annotations

import os
import sys
import time

from mixture import storage
from mixture.config import parse_config
from mixture.contract import Stage, StageContext, StageOutput

TOY = Stage("toy", "toy", (), (), target="tests.helpers.toy_stage:run")
PARTS = 4


def run(ctx: StageContext) -> StageOutput:
    delay = float(os.environ.get("TOY_SECONDS", "0.5"))
    for i in range(PARTS):
        time.sleep(delay / PARTS)
        storage.write_text(ctx.writer.path(f"part-{i}.txt"), f"part {i} written by pid {os.getpid()}\n" * 1000)
    return StageOutput({"parts": PARTS, "pid": os.getpid()})


def config(root: str, on_busy: str = "wait"):
    return parse_config(
        {"output_root": root, "input": {"uris": [root]}, "concurrency": {"on_busy": on_busy, "wait_timeout_s": 60}}
    )


def main(argv: list[str]) -> int:
    from mixture import cli, pipeline

    root, on_busy = argv[0], (argv[1] if len(argv) > 1 else "wait")
    os.environ["TOY_SECONDS"] = argv[2] if len(argv) > 2 else "0.5"
    force = len(argv) > 3 and argv[3] == "force"
    return cli.guarded(
        lambda: print("ran" if not pipeline.run_stage(config(root, on_busy), TOY, force).skipped else "up to date") or 0
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
