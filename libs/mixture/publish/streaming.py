"""Stream fixed-length token windows from a published ClimbMix version into PyTorch training.

    from torch.utils.data import DataLoader
    from mixture.publish.streaming import ClimbMixStream
    stream = ClimbMixStream("s3://bucket/prefix", seq_len=1024, batch_size=8)   # or a version, or a folder
    for inputs, targets in DataLoader(stream, batch_size=8, num_workers=2): ...
    state = stream.state_dict(consumed=samples_seen)       # save beside the checkpoint
    stream.load_state_dict(state)                           # after a restart: the next window exactly

What it reads: the `tokens/part-NNNNN.bin` shards of the version (`mixture.publish.reader.ClimbMix`
locates it: a local folder, an `s3://…/<version>` URI, or a prefix with the `latest` pointer).
Each shard is a flat run of token ids in the build's shuffled document order, each document
ending with its end-of-document id; a window is `seq_len + 1` consecutive tokens of one shard
(documents packed across windows, as Megatron's GPTDataset and nanoGPT's `get_batch` do), and
window j of a shard starts at token `j * seq_len`, so consecutive windows share one token and
every token is a target once. The tail of a shard shorter than a window is not used. Window
counts come from the manifest's file sizes, so nothing is read before it is needed.

Who reads what, without overlap: the windows of all shards, in order, are numbered; distributed
rank r of R takes the contiguous range [r·m, (r+1)·m) with m = windows // R (every rank the same
count, so no rank waits at the last step; up to R − 1 windows are left out). Inside a rank, from
its resume point on, blocks of `batch_size` windows go to the DataLoader workers in turn (block b
to worker b mod W): that is the order in which a DataLoader with the same `batch_size` returns
batches, so the samples a training loop sees are the rank's windows in order, and the position is
one number. rank / world_size come from the arguments, else from torch.distributed when it is
initialised, else 0 / 1.

Checksums: a shard's `.bin` is hashed and compared with the manifest before any of its tokens
are used (`ClimbMix.local_path`: a local file is hashed in place; an S3 object is hashed while it
is downloaded into the cache folder, once per machine: the workers take a file lock per shard, and
the one that waited finds a verified copy). A mismatch raises `mixture.publish.reader.ChecksumError`.

Resume: `state_dict(consumed)` records the version's manifest sha256, seq_len, world size and the
rank's position; `load_state_dict` checks that they match and continues at the next window. With
`num_workers=0` the stream counts what it yielded itself; with workers the copies live in other
processes, so pass the number of samples the loop consumed. The position applies to the pass it
was saved in: a pass that ends starts the next one at the first window (in-process, and in
`persistent_workers`); with workers that are not persistent, call `reset()` after the resumed pass.

torch is imported at module level (the class derives from `IterableDataset`); nothing in the CLI
or the stages imports this module.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mixture import storage
from mixture.dataset import DatasetError
from mixture.publish.reader import ClimbMix


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torch.distributed's when initialised, else (0, 1)."""
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def window_counts(token_counts: list[int], seq_len: int) -> np.ndarray:
    """Windows of seq_len + 1 tokens, stride seq_len, in shards of these token counts."""
    return np.array([max(0, (n - 1) // seq_len) for n in token_counts], dtype=np.int64)


def worker_windows(lo: int, hi: int, block: int, worker: int, workers: int) -> Iterator[int]:
    """The windows of [lo, hi) one worker yields: blocks of `block` windows, dealt in turn."""
    for start in range(lo + worker * block, hi, workers * block):
        yield from range(start, min(start + block, hi))


class ClimbMixStream(IterableDataset):
    """(inputs, targets) int64 tensors of seq_len tokens each, from a ClimbMix version's token shards."""

    def __init__(
        self,
        uri: str,
        seq_len: int,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int = 1,
        verify: bool = True,
        cache_dir: str | None = None,
    ):
        """Plan this rank's windows of a ClimbMix version (reads only its manifest).

        Args:
            uri: the version to read, as `mixture.publish.reader.ClimbMix` takes it: a published
                prefix (its `latest` version), `s3://…/<version>`, or a local build folder. It
                must hold token shards (the `tokens` format).
            seq_len: tokens per sample; each window reads `seq_len + 1` tokens, the targets being
                the inputs shifted by one.
            rank, world_size: this process's share of the windows; unless both are given,
                torch.distributed's when it is initialised, else 0 and 1. Every rank gets the
                same number of contiguous windows.
            batch_size: the DataLoader's `batch_size`. Workers are dealt blocks of this many
                windows in turn, so that batches come back in window order and the resume
                position is one number; another value loses that order.
            verify: check each shard's sha256 against the manifest before its tokens are used.
            cache_dir: where shards on S3 are downloaded (once per machine; the DataLoader's
                workers share it); default a new temporary folder.

        Raises `ValueError` for a `seq_len`, `batch_size` or rank out of range, `DatasetError`
        when the version has no token shards.
        """
        if seq_len < 1 or batch_size < 1:
            raise ValueError("seq_len and batch_size must be at least 1")
        self.mix = ClimbMix(uri, verify=verify, cache_dir=cache_dir)
        _ = self.mix.cache_dir  # decided here, so that every worker shares it
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.shards = [p + ".bin" for p in self.mix.token_shards]
        if not self.shards:
            raise DatasetError(
                f"{self.mix.uri} has no token shards (tokens/part-NNNNN.bin): build with the `tokens` format"
            )
        sizes = {f["path"]: int(f["bytes"]) for f in self.mix.manifest.files}
        counts = window_counts([sizes[s] // self.mix.dtype.itemsize for s in self.shards], seq_len)
        self.first_window = np.concatenate([[0], np.cumsum(counts)])  # global index of each shard's first
        per_rank = int(self.first_window[-1]) // self.world_size
        self.lo, self.hi = self.rank * per_rank, (self.rank + 1) * per_rank
        self.position = 0  # windows of this rank consumed before this iteration
        self._yielded = 0

    def __len__(self) -> int:
        return self.hi - self.lo - self.position

    # ------------------------------------------------------------------------------ reading
    def _shard_path(self, rel: str) -> str:
        """A verified local copy of one shard file; workers of one machine download it once."""
        if storage.local_path(storage.join(self.mix.uri, rel)) is not None:
            return self.mix.local_path(rel)
        os.makedirs(self.mix.cache_dir, exist_ok=True)
        lock = os.path.join(self.mix.cache_dir, rel.replace("/", "_") + ".lock")
        with open(lock, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                return self.mix.local_path(rel)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def window(self, g: int, tokens: dict[int, np.ndarray]) -> np.ndarray:
        """Global window g (seq_len + 1 token ids); `tokens` caches the open shards."""
        s = int(np.searchsorted(self.first_window, g, side="right")) - 1
        if s not in tokens:
            tokens.clear()  # one shard open at a time
            tokens[s] = np.memmap(self._shard_path(self.shards[s]), dtype=self.mix.dtype, mode="r")
        start = (g - int(self.first_window[s])) * self.seq_len
        return np.asarray(tokens[s][start : start + self.seq_len + 1], dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        tokens: dict[int, np.ndarray] = {}
        self._yielded = 0
        for g in worker_windows(self.lo + self.position, self.hi, self.batch_size, worker, workers):
            w = torch.from_numpy(self.window(g, tokens))
            self._yielded += 1
            yield w[:-1], w[1:]
        self.reset()  # a pass ended: the next one starts at the first window

    # ------------------------------------------------------------------------------- resume
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where this rank is: `consumed` samples after the position it started from (default:
        what this object yielded itself, right only with num_workers=0)."""
        done = self._yielded if consumed is None else consumed
        return {
            "manifest_sha256": self.mix.manifest_sha256,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "rank": self.rank,
            "position": self.position + done,
        }

    def reset(self) -> None:
        """Start the next pass at the rank's first window (after a resumed pass, with DataLoader
        workers that are not persistent: their copies reset themselves, this one cannot know)."""
        self.position, self._yielded = 0, 0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the window after the last one consumed in `state`'s run."""
        mine = self.state_dict(0)
        for key in ("manifest_sha256", "seq_len", "world_size", "rank"):
            if state[key] != mine[key]:
                raise ValueError(f"the saved state is for {key}={state[key]!r}, this stream has {mine[key]!r}")
        if not 0 <= state["position"] <= self.hi - self.lo:
            raise ValueError(f"position {state['position']} is outside this rank's {self.hi - self.lo} windows")
        self.position = int(state["position"])
        self._yielded = 0
