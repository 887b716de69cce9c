"""Output format `nanogpt`: `nanogpt/train.bin`, `val.bin`, `meta.pkl` and `meta.json`, nanoGPT's data layout.

nanoGPT (Karpathy, `data/openwebtext/prepare.py` and `train.py`) trains from two flat files of
token ids, each document followed by its end-of-document id, memory-mapped by `get_batch` with
`np.memmap(path, dtype=np.uint16, mode="r")`, and sizes its model from `meta.pkl`'s `vocab_size`
when the dataset folder has one (else GPT-2's 50,304). Here:

- `train.bin`: the training split's documents in the build's (shuffled) order; `val.bin`: the
  held-out validation split's (`mixture.climbmix.holdout`: chosen among distinct documents
  before upsampling, so no copy of a validation document is in `train.bin`), in the order of
  `validation/parquet`; little-endian uint16 for vocabularies up to 65,535, uint32 above (then
  `get_batch`'s `np.uint16` must become `np.uint32`: the card says so);
- `meta.pkl`: a pickled dict with `vocab_size`, `dtype` and `eos_id` (what `train.py` reads:
  `vocab_size`);
- `meta.json`: the same and the run's seed, `val_fraction` and documents / tokens per split.

The files are not per shard: `write_shard` stages each shard's tokens as a temporary piece
(excluded from the manifest; shards may be written by several processes; a validation shard's
under `validation/nanogpt/`) and `finish` (after the last shard) concatenates the pieces of each
split, one piece at a time, writes `meta.pkl` and then `meta.json` last, and deletes the pieces;
a `finish` that finds `meta.json` staged only deletes what pieces are left.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

import numpy as np

from mixture import storage
from mixture.climbmix.formats import VALIDATION, Shard, part_name
from mixture.registry import OUTPUT_FORMATS

if TYPE_CHECKING:
    from mixture.config import BuildConfig


def piece_name(part: str) -> str:
    """A shard's staged tokens (`.tmp-`: never in the manifest), until `finish` joins them."""
    return f"nanogpt/{part}.tmp-piece"


def pieces(facts: dict) -> dict[str, list[str]]:
    """The staged pieces of each file: `train.bin` from the training shards', `val.bin` from
    the validation shards' (relative paths)."""
    return {
        "train": [piece_name(part_name(s)) for s in range(int(facts["shards"]))],
        "val": [VALIDATION + piece_name(part_name(s)) for s in range(int(facts.get("validation_shards", 0)))],
    }


def join_pieces(writer, rels: list[str], out: str, itemsize: int) -> dict[str, int]:
    """`out` from the pieces, one at a time; its documents (end-of-document ids) and tokens."""
    tokens = 0
    with storage.open_write(writer.path(out)) as f:
        for rel in rels:
            data = storage.read_bytes(writer.path(rel))
            f.write(data)
            tokens += len(data) // itemsize
    return {"tokens": tokens}


def write_split(writer, cfg: BuildConfig, facts: dict) -> None:
    """train.bin, val.bin, meta.pkl and (last) meta.json from the staged pieces."""
    dtype = np.dtype(facts["dtype"]).newbyteorder("<")
    counts = {}
    for split, rels in pieces(facts).items():
        counts[split] = {
            "documents": int(facts.get(f"{split}_documents", 0)),
            **join_pieces(writer, rels, f"nanogpt/{split}.bin", dtype.itemsize),
        }
    meta = {"vocab_size": int(facts["vocab_size"]), "dtype": dtype.name, "eos_id": int(facts["eos_id"])}
    storage.write_bytes(writer.path("nanogpt/meta.pkl"), pickle.dumps(meta, protocol=4))
    full = {**meta, "seed": int(facts["seed"]), "val_fraction": cfg.val_fraction, **counts}
    storage.write_json(writer.path("nanogpt/meta.json"), full)


@OUTPUT_FORMATS.register("nanogpt")
class NanoGPTFormat:
    name = "nanogpt"
    files = ("nanogpt/train.bin", "nanogpt/val.bin", "nanogpt/meta.pkl", "nanogpt/meta.json")
    hf_data_files = None

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        dtype = np.dtype(shard.dtype).newbyteorder("<")
        with storage.open_write(writer.path(piece_name(shard.part))) as f:
            for d in shard.tokens:
                f.write(np.asarray(d).astype(dtype).tobytes())

    def finish(self, writer, cfg: BuildConfig, facts: dict) -> None:
        """The two files from the staged pieces of each split (written by any process), one
        piece at a time; `meta.json` last, then the pieces are deleted. Idempotent: with
        `meta.json` staged, only leftover pieces are deleted."""
        if not writer.has("nanogpt/meta.json"):
            write_split(writer, cfg, facts)
        for rels in pieces(facts).values():
            for rel in rels:
                storage.delete(writer.path(rel))

    def card_files(self, dtype: np.dtype) -> list[str]:
        return [
            f"- `nanogpt/train.bin` / `val.bin`: nanoGPT's layout, every document's token ids then the "
            f"end-of-document id, as `{dtype}`; `train.bin` the training split, `val.bin` the held-out "
            "validation split (no copy of its documents is in `train.bin`); `meta.pkl` the vocabulary size "
            "nanoGPT's `train.py` reads, `meta.json` the same, the dtype, end-of-document id and "
            "documents / tokens per split."
        ]

    def card_loading(self, dtype: np.dtype) -> list[str]:
        read = (
            "its `get_batch` reads them as `np.uint16`, this build's dtype"
            if np.dtype(dtype) == np.uint16
            else f"this build's ids are `{dtype}`: change `np.uint16` to `np.{dtype}` in its `get_batch`"
        )
        return [
            "nanoGPT: copy `nanogpt/train.bin`, `val.bin` and `meta.pkl` to `data/<name>/` and run "
            f"`python train.py --dataset=<name>`; `train.py` takes `vocab_size` from `meta.pkl` ({read}). "
            "With numpy:",
            "```python",
            "import json",
            "import numpy as np",
            'meta = json.load(open("nanogpt/meta.json"))',
            'train = np.memmap("nanogpt/train.bin", dtype=meta["dtype"], mode="r")',
            'val = np.memmap("nanogpt/val.bin", dtype=meta["dtype"], mode="r")',
            "```",
        ]

    def card_validation(self, dtype: np.dtype) -> list[str]:
        return ["nanoGPT: `nanogpt/val.bin` is the validation split (the documents of `validation/`, in its order)."]
