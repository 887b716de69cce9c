"""The held-out validation split of a ClimbMix build: chosen by document identity, before upsampling.

A split drawn from the shuffled output (or Megatron's `--split` over the training shards) is not
held out once clusters are upsampled: a document repeated k times lands in both parts. A
validation loss on it measures memorisation. Here the split is decided in the build's plan,
before any cluster is sampled, and every output format writes the same split (`validation/`;
nanoGPT's `val.bin`):

1. each cluster with a mixture share holds out about `build.val_fraction` of the tokens the
   mixture gives it (its target before the hold-out), so the validation split has the mixture's
   composition, and a cluster upsampled k times lends about k x `val_fraction` of its documents.
   Its documents are taken in a seeded random order (one stream per cluster, apart from the
   training sample's: `holdout_rng`), whole, until that many tokens (at least one document), and
   never more than half of the cluster's documents, so a cluster keeps documents to train on;
2. documents are told apart by a hash of their token ids (`document_hashes`: blake2b, 8 bytes;
   the tokenizer is deterministic, so equal texts have equal ids and the same hash): a document
   whose hash is held out already, in this cluster or an earlier one, is skipped, so the split
   holds no two equal texts;
3. every document whose hash is held out, the held-out document itself and every exact copy of
   it in any cluster, is left out of the training sample (`HeldOut.excluded`). The training
   sample is drawn from what remains, its epochs and cap counted on that.

Reading: the hashes need every token of the clusters with a share, once, in the plan
(`cluster_hashes`: ranged reads of READ_BYTES, a cluster a job in `build.workers` processes;
about 280 MB of tokens a second a process on this project's machines). Memory: 8 bytes a
document of those clusters (the hashes, kept until the split is decided) and a cluster's token
counts (4 bytes a document) until its documents are held out. With `build.val_fraction` 0
nothing is read and no split is written.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixture import storage
from mixture.climblab import ClimbLab
from mixture.dataset import Dataset
from mixture.parallel import fan_out

READ_BYTES = 64 << 20  # token bytes the plan reads at once to hash documents


@dataclass
class HeldOut:
    """The validation split: per cluster the held-out documents (ascending indices) and the
    documents left out of training (held out, or an exact copy of one held out anywhere)."""

    held: dict[str, np.ndarray] = field(default_factory=dict)
    held_tokens: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, np.ndarray] = field(default_factory=dict)
    excluded_tokens: dict[str, int] = field(default_factory=dict)

    def copies(self, cluster: str) -> int:
        """Documents of `cluster` left out of training as exact copies of a held-out one."""
        return len(self.excluded.get(cluster, ())) - len(self.held.get(cluster, ()))


# ------------------------------------------------------------------------------- the rules
def document_hashes(data: bytes | memoryview, bounds: list[int]) -> np.ndarray:
    """blake2b (8 bytes, as uint64) of each document's bytes `data[bounds[i]:bounds[i + 1]]`."""
    view = memoryview(data)
    out = np.empty(max(0, len(bounds) - 1), dtype=np.uint64)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        out[i] = int.from_bytes(hashlib.blake2b(view[a:b], digest_size=8).digest(), "little")
    return out


def holdout_rng(seed: int, cluster: str) -> np.random.Generator:
    """The hold-out's stream for one cluster (not the training sample's, `climbmix.cluster_rng`)."""
    return np.random.default_rng([seed, zlib.crc32(cluster.encode()), 1])


def hold_out(
    lengths: np.ndarray, hashes: np.ndarray, target_tokens: float, rng: np.random.Generator, taken: np.ndarray
) -> np.ndarray:
    """Indices (ascending) of documents held out for validation: in a random order, one per hash
    and none whose hash is in `taken` (sorted), whole documents until `target_tokens` (at least
    one), at most half of the documents. Nothing for a target of 0 or a single document."""
    n = len(lengths)
    if target_tokens <= 0 or n < 2:
        return np.zeros(0, dtype=np.int64)
    order = rng.permutation(n)
    _, first = np.unique(hashes[order], return_index=True)  # one document per hash
    order = order[np.sort(first)]
    order = order[~_member(hashes[order], taken)]
    cumulative = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    take = min(int(np.searchsorted(cumulative, target_tokens, side="left")) + 1, n // 2, len(order))
    return np.sort(order[:take]).astype(np.int64)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each value is in `sorted_set` (ascending)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


# ------------------------------------------------------------------------------- the reads
def read_range(f: Any, nbytes: int, offset: int) -> bytes:
    """`nbytes` at `offset` of a file `storage.open_read` opened (a ranged read on S3)."""
    return f.read_at(nbytes, offset)


def cluster_hashes(lab: ClimbLab, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(token counts, hashes) of a cluster's documents: its offsets, then its `.bin` by ranges of
    about READ_BYTES (whole documents; never the file at once)."""
    offsets = np.asarray(lab.shard(name).offsets, dtype=np.int64)
    itemsize = lab.dtype.itemsize
    hashes = np.empty(len(offsets) - 1, dtype=np.uint64)
    with storage.open_read(lab.shard(name).prefix + ".bin") as fbin:
        first = 0
        while first < len(hashes):
            start = int(offsets[first])
            stop = max(first + 1, int(np.searchsorted(offsets, start + READ_BYTES // itemsize, side="right")) - 1)
            stop = min(stop, len(hashes))
            data = read_range(fbin, (int(offsets[stop]) - start) * itemsize, start * itemsize)
            bounds = ((offsets[first : stop + 1] - start) * itemsize).tolist()
            if len(data) != bounds[-1]:
                raise ValueError(f"cluster {name}: its token shard ends before document {stop - 1}")
            hashes[first:stop] = document_hashes(data, bounds)
            first = stop
    return np.diff(offsets), hashes


def _hash_job(climblab: Dataset, name: str) -> dict[str, Any]:
    """One cluster's token counts (int32) and hashes, in a worker process."""
    lengths, hashes = cluster_hashes(ClimbLab(climblab), name)
    return {"cluster": name, "lengths": lengths.astype(np.int32), "hashes": hashes}


def split(lab: ClimbLab, targets: dict[str, int], fraction: float, seed: int, workers: int = 1) -> HeldOut:
    """The validation split (rules 1-3) of the clusters with a training target (`targets`: the
    plan's tokens per cluster, before the hold-out); empty with `fraction` 0. The clusters are
    hashed in `workers` processes; each one's documents are held out in the clusters' order."""
    out = HeldOut()
    wanted = [c for c in lab.clusters if targets.get(c, 0) > 0] if fraction > 0 else []
    hashes: dict[str, np.ndarray] = {}
    taken = [np.zeros(0, dtype=np.uint64)]  # the hashes held out so far, sorted
    lengths_of: dict[int, int] = {}  # held-out hash -> its token count (an exact copy has the same)

    def hold(result: dict[str, Any]) -> None:  # fan_out hands results over in the clusters' order
        c, lengths = result["cluster"], result.pop("lengths")  # the counts are dropped once used
        hashes[c] = result["hashes"]
        held = hold_out(lengths, hashes[c], fraction * targets[c], holdout_rng(seed, c), taken[0])
        out.held[c], out.held_tokens[c] = held, int(lengths[held].sum())
        lengths_of.update(zip(hashes[c][held].tolist(), lengths[held].tolist()))
        taken[0] = np.sort(np.concatenate([taken[0], hashes[c][held]]))

    jobs = [(lab.dataset, c) for c in wanted]
    weights = [int(lab.info["clusters"][c]["documents"]) for c in wanted]
    if jobs:
        fan_out(_hash_job, jobs, workers, desc="climbmix hashes", unit="doc", weights=weights, on_result=hold)
    for c in wanted:
        excluded = np.flatnonzero(_member(hashes[c], taken[0])).astype(np.int64)
        out.excluded[c] = excluded
        out.excluded_tokens[c] = int(sum(lengths_of[h] for h in hashes[c][excluded].tolist()))
    return out
