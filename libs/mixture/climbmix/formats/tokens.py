"""Output format `tokens`: `tokens/part-NNNNN.bin` / `.idx`, the token-shard format of
`mixture.climblab.tokens` (nanoGPT-style: token ids with each document's end-of-document id last,
little-endian uint16/uint32, and int64 offsets), ready for a training loader to memory-map. The
held-out split's are `validation/tokens/part-NNNNN.bin` / `.idx`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mixture.climblab.tokens import write_token_shard
from mixture.climbmix.formats import Shard
from mixture.registry import OUTPUT_FORMATS

if TYPE_CHECKING:
    from mixture.config import BuildConfig


@OUTPUT_FORMATS.register("tokens")
class TokensFormat:
    name = "tokens"
    files = ("tokens/part-NNNNN.bin", "tokens/part-NNNNN.idx")
    hf_data_files = None

    def write_shard(self, writer, shard: Shard, cfg: BuildConfig) -> None:
        write_token_shard(writer.path(f"tokens/{shard.part}"), shard.tokens, shard.dtype)

    def card_files(self, dtype: np.dtype) -> list[str]:
        return [
            "- `tokens/part-NNNNN.bin` / `.idx`: the same documents in the same order; `.bin` holds every "
            "document's token ids followed by the end-of-document id, `.idx` is a `.npy` of int64 offsets "
            "(n + 1): document i is `bin[idx[i]:idx[i+1]]`."
        ]

    def card_loading(self, dtype: np.dtype) -> list[str]:
        return [
            "numpy memmap (nanoGPT-style):",
            "```python",
            "import numpy as np",
            f'tokens = np.memmap("tokens/part-00000.bin", dtype=np.{dtype}, mode="r")',
            'offsets = np.load("tokens/part-00000.idx")',
            "doc0 = tokens[offsets[0]:offsets[1]]",
            "```",
        ]

    def card_validation(self, dtype: np.dtype) -> list[str]:
        return [
            "Token shards: `validation/tokens/part-NNNNN.bin` / `.idx`, read as above; the streaming loader "
            'reads them with `split="validation"` (above).'
        ]
