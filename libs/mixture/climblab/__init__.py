"""Reader of a committed ClimbLab dataset: the token shards of the final clusters.

CLIMB (Diao et al., NVIDIA 2025) publishes ClimbLab as one folder per cluster (20 clusters,
1.2T tokens). Here a committed `climblab` dataset (written by `mixture.stages.shards`) holds per
final cluster `cNN/tokens.bin` + `cNN/tokens.idx` (the format of `mixture.climblab.tokens`) and
`cNN/text.parquet` (id, text in the same order), the tokenizer, and in its manifest's extra the
tokens and documents per cluster (the search's prior: CLIMB samples mixtures around the
clusters' token shares), the vocabulary size, the end-of-document id and the token dtype.

Modules (the reader is here, the rest one module each):
- `tokens`: the token-shard format and the tokenizer;
- `parts`: the curated documents planned in parts and tokenized into sorted runs;
- `merge`: each cluster's runs merged by id into its files, the finished dataset's counts;
- `increment`: an incremental version (new documents only, touched clusters merged again).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.climblab.tokens import TokenShard, load_tokenizer
from mixture.cluster.groups import cluster_name  # noqa: F401  (the clusters' names are ClimbLab's folder names)
from mixture.dataset import Dataset, DatasetError

TOKENIZER = "tokenizer/tokenizer.json"


def shard_prefix(name: str) -> str:
    """The relative prefix of a cluster's token shard (`cNN/tokens`: .bin and .idx)."""
    return f"{name}/tokens"


def text_file(name: str) -> str:
    """The relative path of a cluster's texts (`cNN/text.parquet`)."""
    return f"{name}/text.parquet"


@dataclass
class ClimbLab:
    """Reader of a committed climblab dataset."""

    dataset: Dataset

    @property
    def info(self) -> dict:
        return self.dataset.manifest.extra

    @property
    def clusters(self) -> list[str]:
        return sorted(self.info["clusters"])

    @property
    def tokens_per_cluster(self) -> dict[str, int]:
        return {c: int(v["tokens"]) for c, v in sorted(self.info["clusters"].items())}

    def checked_tokens_per_cluster(self) -> dict[str, int]:
        """`tokens_per_cluster`, each count checked against its shard: the `.bin` file the
        manifest lists must hold exactly that many tokens of the dataset's dtype. The search's
        prior, its baselines and the epoch cap rest on these counts, so a wrong one is an error
        naming the cluster, not a silently different sampler."""
        sizes = {f["path"]: int(f["bytes"]) for f in self.dataset.manifest.files}
        itemsize = self.dtype.itemsize
        for c, n in self.tokens_per_cluster.items():
            have = sizes.get(shard_prefix(c) + ".bin")
            if have is None:
                raise DatasetError(f"{self.dataset.uri}: cluster {c} has no token shard {shard_prefix(c)}.bin")
            if have != n * itemsize:
                raise DatasetError(
                    f"{self.dataset.uri}: cluster {c}'s manifest says {n:,} tokens but its shard "
                    f"holds {have // itemsize:,}; rebuild it with `climb shards --force`"
                )
        return self.tokens_per_cluster

    @property
    def prior(self) -> dict[str, float]:
        tpc = self.tokens_per_cluster
        total = sum(tpc.values())
        return {c: t / total for c, t in tpc.items()}

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.info["dtype"])

    @property
    def vocab_size(self) -> int:
        return int(self.info["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.info["eos_id"])

    @property
    def tokenizer_path(self) -> str:
        return self.dataset.path(TOKENIZER)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    def shard(self, name: str) -> TokenShard:
        return TokenShard(self.dataset.path(shard_prefix(name)), self.dtype)

    def texts(self, name: str) -> pa.Table:
        fs, path = storage.filesystem(self.dataset.path(text_file(name)))
        return pq.read_table(path, filesystem=fs)
