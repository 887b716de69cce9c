"""CLIMB's mixture against natural, uniform, best-of-random and RegMix at transfer scale.

    .venv/bin/python bench/search_baselines.py --config configs/demo.yaml [--set key=value ...]

Runs `climb baselines` (the `baselines` stage: the same proxy budget for the random
baselines as the search had, every final mixture trained with search.transfer_proxy and with
search.proxy, search.transfer_seeds seeds each, the same seeds for every method) and prints its
table with the wall time. The search runs first when it is not committed for this config.
"""

from __future__ import annotations

import argparse
import time

from mixture import pipeline, storage
from mixture.config import load_config, parse_overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    cfg = load_config(args.config, parse_overrides(args.set))
    t0 = time.time()
    pipeline.run_stage(cfg, "search")
    text = storage.read_text(pipeline.run_stage(cfg, "baselines").dataset.path("table.md"))
    print(text)
    results = storage.read_json(storage.join(pipeline.dataset_uri(cfg, "baselines"), "results.json"))
    print(
        f"\nclimb beats every baseline at transfer scale: {results['climb_beats_every_baseline']}; "
        f"wall {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
