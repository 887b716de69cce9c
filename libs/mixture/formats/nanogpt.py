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

The files are not per shard: `write_shard` stages each shard's tokens as a temporary piece
(excluded from the manifest) and `finish` (after the last shard) draws the split and writes the
two files, one piece at a time, so memory does not grow with the build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mixture import storage
from mixture.formats import Shard
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


@OUTPUT_FORMATS.register("nanogpt")
class NanoGPTFormat:
    name = "nanogpt"
    files = ("nanogpt/train.bin", "nanogpt/val.bin", "nanogpt/val_index.npy", "nanogpt/meta.json")
    hf_data_files = None

    def __init__(self) -> None:
        self.pieces: list[tuple[str, np.ndarray]] = []  # (staged piece, document lengths) per shard
        self.dtype = np.dtype(np.uint16)

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        self.dtype = np.dtype(shard.dtype).newbyteorder("<")
        piece = writer.path(f"nanogpt/{shard.part}.tmp-piece")  # `.tmp-`: never in the manifest
        with storage.open_write(piece) as f:
            for d in shard.tokens:
                f.write(np.asarray(d).astype(self.dtype).tobytes())
        self.pieces.append((piece, np.array([len(d) for d in shard.tokens], dtype=np.int64)))

    def finish(self, writer, cfg: BuildConfig, facts: dict) -> None:
        n = sum(len(lengths) for _, lengths in self.pieces)
        val = val_documents(n, cfg.val_fraction, int(facts["seed"]))
        is_val = np.zeros(n, dtype=bool)
        is_val[val] = True
        counts = {"train": {"documents": int(n - len(val)), "tokens": 0}, "val": {"documents": len(val), "tokens": 0}}
        start = 0
        with (
            storage.open_write(writer.path("nanogpt/train.bin")) as ftrain,
            storage.open_write(writer.path("nanogpt/val.bin")) as fval,
        ):
            for piece, lengths in self.pieces:
                tokens = np.frombuffer(storage.read_bytes(piece), dtype=self.dtype)
                train, held = split_piece(tokens, lengths, is_val[start : start + len(lengths)])
                ftrain.write(train.tobytes())
                fval.write(held.tobytes())
                counts["train"]["tokens"] += len(train)
                counts["val"]["tokens"] += len(held)
                start += len(lengths)
                storage.delete(piece)
        with storage.open_write(writer.path("nanogpt/val_index.npy")) as f:
            np.save(f, val, allow_pickle=False)
        storage.write_json(
            writer.path("nanogpt/meta.json"),
            {
                "vocab_size": int(facts["vocab_size"]),
                "dtype": self.dtype.name,
                "eos_id": int(facts["eos_id"]),
                "seed": int(facts["seed"]),
                "val_fraction": cfg.val_fraction,
                **counts,
            },
        )

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
