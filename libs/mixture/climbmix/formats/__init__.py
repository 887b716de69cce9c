"""Output formats of a ClimbMix build: one module per format, each registered in `OUTPUT_FORMATS`.

Modules, one per built-in format: `parquet` (text, cluster, id), `tokens` (token shards),
`megatron` (Megatron-Core indexed datasets) and `nanogpt` (nanoGPT's `train.bin` / `val.bin`).

`build.formats` in the config names the formats a build writes (default `["parquet", "tokens"]`;
the names are checked against the registry when the config loads). A format is a class with:

- `name`: its registry name; `files`: the relative path pattern(s) it writes (for the card);
- `write_shard(writer, shard, cfg)`: write one output shard (`Shard`: its index, the rows `text`,
  `cluster`, `id` as an Arrow table, and the same documents' token arrays, EOS last) into the
  build's staging folder; `cfg` is the `build` config section;
- `card_files(dtype)` and `card_loading(dtype)`: lines for the dataset card's "Files" and
  "Loading" sections; `hf_data_files`: the glob Hugging Face `datasets` loads, or None;
- optionally `finish(writer, cfg, facts)`: called once after the last shard, for files that span
  the shards (nanoGPT's `train.bin` / `val.bin`, Megatron's blends); `facts` holds the run's
  `seed`, the number of training `shards` and of `validation_shards` written, their documents
  (`train_documents`, `val_documents`) and the tokenizer's `vocab_size`, `eos_id` and token
  `dtype` (its name);
- optionally `card_validation(dtype)`: lines for the card's "Validation split" section (how
  this format's trainer reads the held-out split).

The held-out validation split (`mixture.climbmix.holdout`) is written by the same `write_shard`
into `validation/`: its shards are handed a writer whose paths lie under `validation/`
(`Subfolder`), so a format writes them in the layout it uses for the training shards
(`validation/parquet/part-00000.parquet`, ...) without knowing the split, and no file of one
split can overwrite a file of the other. A `finish` finds them there (`VALIDATION`).

Shards are written by several processes (or Airflow tasks), each bucket of shards with instances
of its own, and `finish` runs on yet another instance in the build's own process: a format keeps
no state between calls, and `finish` reads what it needs from the staged files (a piece staged
for it is named with `.tmp-`, which keeps it out of the manifest, and deleted by it). `finish` may
run again after it completed (a build killed before it recorded its finish): it must give the
same files, so a piece is deleted only after the file that marks the format finished. A shard may
be written again (a resumed build): `write_shard` overwrites its files. With `build.workers` > 1 a
format's class is sent to the workers by reference, so it must live in an importable module.

Adding a format is one new module here:

    from mixture.registry import OUTPUT_FORMATS

    @OUTPUT_FORMATS.register("jsonl")
    class JsonlFormat: ...

Every format writes the same documents in the same (shuffled) order, one file set per shard
`part-NNNNN` (or, with `finish`, one file set for the build: `nanogpt`), so row i of one is
document i of another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Shard:
    """One output shard: the same documents as rows and as token arrays, in the shuffled order."""

    index: int
    table: pa.Table  # columns text, cluster, id
    tokens: list[np.ndarray]  # token ids per document, its end-of-document id last
    dtype: np.dtype  # the token dtype (uint16 or uint32)

    @property
    def part(self) -> str:
        return part_name(self.index)


def part_name(index: int) -> str:
    return f"part-{index:05d}"


VALIDATION = "validation/"  # the validation split's folder, every format's layout inside it


class Subfolder:
    """A writer whose paths lie under `prefix` of another's: where `write_shard` puts the
    validation split's shards, in the layout a format uses for the training split."""

    def __init__(self, writer, prefix: str = VALIDATION):
        self.writer, self.prefix = writer, prefix

    def path(self, rel: str) -> str:
        return self.writer.path(self.prefix + rel)

    def has(self, rel: str) -> bool:
        return self.writer.has(self.prefix + rel)
