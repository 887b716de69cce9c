"""Output format `nanogpt`: `nanogpt/train.bin`, `val.bin` and `meta.json`, nanoGPT's data layout.

nanoGPT (Karpathy, `data/openwebtext/prepare.py` and `train.py`'s `get_batch`) trains from two
flat files of token ids, each document followed by its end-of-document id, memory-mapped with
`np.memmap(path, dtype=np.uint16, mode="r")`, and a held-out split by documents. Here:

- `train.bin` / `val.bin`: the documents of the build in its (shuffled) order, little-endian
  uint16 for vocabularies up to 65,535, uint32 above (nanoGPT hard-codes uint16: set `dtype`
  from `meta.json`);
- the split: `round(build.val_fraction * n)` documents, and at least one whenever the build has
  two, drawn without replacement by `numpy.random.default_rng(seed)` (the run's seed), go to
  `val.bin`; nanoGPT holds out 0.05% of openwebtext, a ClimbMix build defaults to 0.5%;
- `val_index.npy`: the held-out documents' positions in the build (int64, ascending), so row i of
  `val.bin` is Parquet row `val_index[i]`; `train.bin` holds the others in order;
- `meta.json`: vocab_size, dtype, eos_id, seed, val_fraction and documents / tokens per split.

The files are not per shard: `write_shard` stages each shard's tokens and document lengths as
temporary pieces (excluded from the manifest; shards may be written by several processes) and
`finish` (after the last shard) draws the split and writes the two files from the pieces, one
piece at a time (memory: the document lengths and a val flag per document, about 9 bytes a
document, and one piece), writes `meta.json` last and then deletes the pieces; a `finish` that
finds `meta.json` staged only deletes what pieces are left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mixture import storage
from mixture.climbmix.formats import Shard, part_name
from mixture.registry import OUTPUT_FORMATS

if TYPE_CHECKING:
    from mixture.config import BuildConfig


def val_documents(n: int, fraction: float, seed: int) -> np.ndarray:
    """The positions (ascending) of the held-out documents among n."""
    k = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def split_piece(tokens: np.ndarray, lengths: np.ndarray, is_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train tokens, val tokens) of one piece whose documents have these lengths and val flags."""
    mask = np.repeat(is_val, lengths)
    return tokens[~mask], tokens[mask]


def piece_name(part: str) -> str:
    """A shard's staged tokens (`.tmp-`: never in the manifest), until `finish` splits them."""
    return f"nanogpt/{part}.tmp-piece"


def lengths_name(part: str) -> str:
    """A shard's staged document lengths (int64 .npy), until `finish`."""
    return f"nanogpt/{part}.tmp-lengths.npy"


def load_lengths(uri: str) -> np.ndarray:
    with storage.open_read(uri) as f:
        return np.load(f, allow_pickle=False)


def write_split(writer, cfg: BuildConfig, facts: dict, parts: list[str]) -> None:
    """train.bin, val.bin, val_index.npy and (last) meta.json from the staged pieces of `parts`."""
    dtype = np.dtype(facts["dtype"]).newbyteorder("<")
    lengths = [load_lengths(writer.path(lengths_name(p))) for p in parts]
    n = sum(len(x) for x in lengths)
    val = val_documents(n, cfg.val_fraction, int(facts["seed"]))
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    counts = {"train": {"documents": int(n - len(val)), "tokens": 0}, "val": {"documents": len(val), "tokens": 0}}
    start = 0
    with (
        storage.open_write(writer.path("nanogpt/train.bin")) as ftrain,
        storage.open_write(writer.path("nanogpt/val.bin")) as fval,
    ):
        for part, piece_lengths in zip(parts, lengths):
            tokens = np.frombuffer(storage.read_bytes(writer.path(piece_name(part))), dtype=dtype)
            train, held = split_piece(tokens, piece_lengths, is_val[start : start + len(piece_lengths)])
            ftrain.write(train.tobytes())
            fval.write(held.tobytes())
            counts["train"]["tokens"] += len(train)
            counts["val"]["tokens"] += len(held)
            start += len(piece_lengths)
    with storage.open_write(writer.path("nanogpt/val_index.npy")) as f:
        np.save(f, val, allow_pickle=False)
    meta = {
        "vocab_size": int(facts["vocab_size"]),
        "dtype": dtype.name,
        "eos_id": int(facts["eos_id"]),
        "seed": int(facts["seed"]),
        "val_fraction": cfg.val_fraction,
        **counts,
    }
    storage.write_json(writer.path("nanogpt/meta.json"), meta)


@OUTPUT_FORMATS.register("nanogpt")
class NanoGPTFormat:
    name = "nanogpt"
    files = ("nanogpt/train.bin", "nanogpt/val.bin", "nanogpt/val_index.npy", "nanogpt/meta.json")
    hf_data_files = None

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        dtype = np.dtype(shard.dtype).newbyteorder("<")
        with storage.open_write(writer.path(piece_name(shard.part))) as f:
            for d in shard.tokens:
                f.write(np.asarray(d).astype(dtype).tobytes())
        with storage.open_write(writer.path(lengths_name(shard.part))) as f:
            np.save(f, np.array([len(d) for d in shard.tokens], dtype=np.int64), allow_pickle=False)

    def finish(self, writer, cfg: BuildConfig, facts: dict) -> None:
        """The split and the two files from the staged pieces of shards 0 .. facts["shards"] - 1
        (written by any process), one piece at a time; `meta.json` last, then the pieces are
        deleted. Idempotent: with `meta.json` staged, only leftover pieces are deleted."""
        parts = [part_name(s) for s in range(int(facts["shards"]))]
        if not writer.has("nanogpt/meta.json"):
            write_split(writer, cfg, facts, parts)
        for part in parts:
            storage.delete(writer.path(piece_name(part)))
            storage.delete(writer.path(lengths_name(part)))

    def card_files(self, dtype: np.dtype) -> list[str]:
        return [
            f"- `nanogpt/train.bin` / `val.bin`: nanoGPT's layout, every document's token ids then the "
            f"end-of-document id, as `{dtype}`; `val.bin` holds a seeded share of the documents "
            "(`build.val_fraction`), `val_index.npy` their positions in the build, `meta.json` the vocabulary "
            "size, dtype, end-of-document id and documents / tokens per split."
        ]

    def card_loading(self, dtype: np.dtype) -> list[str]:
        return [
            "nanoGPT (numpy memmap; its `get_batch` reads these two files, with `dtype` from meta.json):",
            "```python",
            "import json",
            "import numpy as np",
            'meta = json.load(open("nanogpt/meta.json"))',
            'train = np.memmap("nanogpt/train.bin", dtype=meta["dtype"], mode="r")',
            'val = np.memmap("nanogpt/val.bin", dtype=meta["dtype"], mode="r")',
            "```",
        ]
