"""Output format `megatron`: `megatron/part-NNNNN.bin` / `.idx`, Megatron-Core's indexed dataset.

Megatron-LM and NeMo read pre-tokenized data as `MMIDIDX` indexed datasets
(`megatron/core/datasets/indexed_dataset.py`, `IndexedDataset` and `_IndexWriter`, the files
`tools/preprocess_data.py` writes). The layout, all little-endian:

- `PREFIX.bin`: every document's token ids (its end-of-document id last, as `--append-eod`
  writes them), concatenated, in the dtype the `.idx` names;
- `PREFIX.idx`: the magic `b"MMIDIDX\\x00\\x00"`, version `<Q` 1, the dtype code `<B` (Megatron's
  `DType`: uint16 = 8, int32 = 4), the sequence count `<Q` n, the document count `<Q` n + 1,
  then the sequence lengths (n int32), the sequence byte pointers into `.bin` (n int64) and the
  document indices (n + 1 int64: 0, 1, ..., n, one sequence per document).

Megatron's `DType` has no uint32, and its own preprocessing stores vocabularies of 65,500 and
more as int32: token ids of a uint32 build are written as int32 (every id of a real vocabulary
fits). The files are written here, with numpy, so a build does not need Megatron installed;
`tests/climbmix/test_formats.py` reads them with Megatron-Core's own `IndexedDataset`.

After the last shard, `megatron/blend.txt` lists `weight prefix` pairs (the weight is the shard's
token count), the value Megatron-LM's `--train-data-path` (or `--data-path`) takes: a blend of all
training shards in proportion to their size; `validation/megatron/blend.txt` is the same for the
held-out split's shards (`validation/megatron/part-NNNNN`), the value of `--valid-data-path`
(Megatron-Core's `blend_per_split`). Prefixes are relative to the dataset folder. With one blend
per split, no `--split` is needed: `--split` would carve its validation documents out of the
training shards, where an upsampled document has copies.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from mixture import storage
from mixture.climbmix.formats import VALIDATION, Shard, part_name
from mixture.registry import OUTPUT_FORMATS

if TYPE_CHECKING:
    from mixture.config import BuildConfig

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}  # Megatron-Core's DType enum
BLEND = "megatron/blend.txt"


def megatron_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype Megatron stores the tokens of a `dtype` build in (uint16 stays, uint32 becomes int32)."""
    return np.dtype(np.uint16) if np.dtype(dtype) == np.uint16 else np.dtype(np.int32)


def index_bytes(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The `.idx` file of documents with these token counts, one sequence per document."""
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    head = MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", DTYPE_CODES[dtype]) + struct.pack("<QQ", n, n + 1)
    return b"".join(
        [
            head,
            lengths.astype("<i4").tobytes(),
            pointers.astype("<i8").tobytes(),
            np.arange(n + 1, dtype="<i8").tobytes(),
        ]
    )


def write_indexed(prefix: str, docs: list[np.ndarray], dtype: np.dtype) -> int:
    """PREFIX.bin and PREFIX.idx for `docs`; returns the tokens written."""
    out = megatron_dtype(dtype)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    if out == np.int32 and any(len(d) and int(d.max()) > np.iinfo(np.int32).max for d in docs):
        raise ValueError("a token id does not fit Megatron's int32 token files")
    with storage.open_write(prefix + ".bin") as f:
        for d in docs:
            f.write(np.asarray(d).astype(out.newbyteorder("<")).tobytes())
    storage.write_bytes(prefix + ".idx", index_bytes(lengths, out))
    return int(lengths.sum())


@OUTPUT_FORMATS.register("megatron")
class MegatronFormat:
    name = "megatron"
    files = ("megatron/part-NNNNN.bin", "megatron/part-NNNNN.idx", BLEND)
    hf_data_files = None

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        write_indexed(writer.path(f"megatron/{shard.part}"), shard.tokens, shard.dtype)

    def finish(self, writer, cfg: BuildConfig, facts: dict) -> None:
        """The blend of each split from its staged shards (their `.bin` sizes: shards may have
        been written by other processes)."""
        itemsize = megatron_dtype(np.dtype(facts["dtype"])).itemsize
        for root, shards in (("", facts["shards"]), (VALIDATION, facts.get("validation_shards", 0))):
            blend = []
            for s in range(int(shards)):
                prefix = f"{root}megatron/{part_name(s)}"
                blend.append(f"{storage.size(writer.path(prefix + '.bin')) // itemsize} {prefix}")
            if blend:
                storage.write_text(writer.path(root + BLEND), " ".join(blend) + "\n")

    def card_files(self, dtype: np.dtype) -> list[str]:
        return [
            f"- `megatron/part-NNNNN.bin` / `.idx`: the same documents in the same order as Megatron-Core "
            f"indexed datasets (`MMIDIDX`, one sequence per document, end-of-document id last, tokens as "
            f"`{megatron_dtype(dtype)}`); `{BLEND}`: `tokens prefix` per shard, for `--train-data-path`."
        ]

    def card_loading(self, dtype: np.dtype) -> list[str]:
        return [
            "Megatron-LM / NeMo (`megatron-core`): pass the shard prefixes with their weights, from the "
            "dataset folder (the prefixes are relative to it), as the training blend:",
            "```bash",
            "python pretrain_gpt.py ... --train-data-path $(cat megatron/blend.txt)",
            "```",
            "Not `--data-path` with `--split`: that carves a validation part out of the training shards, "
            "where an upsampled document has copies (the held-out split has a blend of its own, below).",
            "Megatron-Core's reader:",
            "```python",
            "from megatron.core.datasets.indexed_dataset import IndexedDataset",
            'docs = IndexedDataset("megatron/part-00000")   # the prefix of the .bin / .idx pair',
            "doc0 = docs[0]                                 # token ids of document 0, end-of-document id last",
            "```",
        ]

    def card_validation(self, dtype: np.dtype) -> list[str]:
        return [
            f"Megatron-LM: one blend per split (Megatron-Core's `blend_per_split`), `validation/{BLEND}` "
            "for the held-out shards:",
            "```bash",
            f"python pretrain_gpt.py ... --train-data-path $(cat {BLEND}) --valid-data-path $(cat validation/{BLEND})",
            "```",
        ]
