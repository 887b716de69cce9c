"""Stream fixed-length token windows from a published ClimbMix version into PyTorch training.

    from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream
    stream = ClimbMixStream("s3://bucket/prefix", seq_len=1024)   # or a version, or a folder
    for inputs, targets in ClimbMixLoader(stream, batch_size=8, num_workers=2): ...
    state = stream.state_dict()          # save beside the checkpoint
    stream.load_state_dict(state)        # after a restart: the next window exactly
    ClimbMixStream(uri, seq_len=1024, split="validation")   # the held-out split's windows

What it reads: the `tokens/part-NNNNN.bin` shards of the version (`validation/tokens/` with
`split="validation"`; `mixture.publish.reader.ClimbMix` locates it: a local folder, an
`s3://…/<version>` URI, or a prefix with the `latest` pointer). Each shard is a flat run of token
ids in the build's shuffled document order, each document ending with its end-of-document id; a
window is `seq_len + 1` consecutive tokens of one shard (documents packed across windows, as
Megatron's GPTDataset and nanoGPT's `get_batch` do), and window j of a shard starts at token
`j * seq_len`, so consecutive windows share one token and every token is a target once. The
tail of a shard shorter than a window is not used. Window counts come from the manifest's file
sizes, so nothing is read before it is needed.

Who reads what, without overlap: the windows of all shards, in order, are numbered; distributed
rank r of R takes the contiguous range [r·m, (r+1)·m) with m = windows // R (every rank the same
count, so no rank waits at the last step; up to R − 1 windows are left out). Inside a rank, from
its resume point on, blocks of B windows go to the DataLoader workers in turn (block b to worker
b mod W): that is the order in which a DataLoader of batch size B returns batches, so the samples
a training loop sees are the rank's windows in order, and the position is one number. B must be
the DataLoader's batch size: `ClimbMixLoader` (a DataLoader) tells the stream its own before its
workers start. A plain DataLoader cannot (a worker sees no batch size), and with another B a
resume would repeat some windows and never yield others: in DataLoader workers the stream refuses
to run unless a `ClimbMixLoader` iterates it (in one process, with `num_workers=0`, any loader
reads the windows in order). rank / world_size come from the arguments, else from
torch.distributed when it is initialised, else 0 / 1.

Checksums: a shard's `.bin` is hashed and compared with the manifest before any of its tokens
are used (`ClimbMix.local_path`: a local file is hashed in place; an S3 object is hashed while it
is downloaded into the cache folder, once per machine: the workers take a file lock per shard, and
the one that waited finds a verified copy). A mismatch raises `mixture.publish.reader.ChecksumError`.

Resume: `state_dict()` records the version's manifest sha256, the split, seq_len, world size and
the rank's position: where the current pass started plus the samples handed to the loop since
(counted by `ClimbMixLoader`, or by the stream itself in one process; `consumed=` overrides);
`load_state_dict` checks that they match and the next pass starts at the next window. Only that
pass: a position is used by the pass that starts after it was loaded, and every later pass starts
at the rank's first window (with or without persistent workers, whether or not the resumed pass
ran to its end); `reset()` drops a loaded position before it is used.

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
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixture import storage
from mixture.dataset import DatasetError
from mixture.publish.reader import ClimbMix, split_root


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
        split: str = "train",
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
            split: `train` (the `tokens/` shards) or `validation` (the held-out split's,
                `validation/tokens/`).
            verify: check each shard's sha256 against the manifest before its tokens are used.
            cache_dir: where shards on S3 are downloaded (once per machine; the DataLoader's
                workers share it); default a new temporary folder.

        Raises `ValueError` for a `seq_len`, rank or split out of range, `DatasetError` when
        the version has no token shards of that split.
        """
        if seq_len < 1:
            raise ValueError("seq_len must be at least 1")
        self.mix = ClimbMix(uri, verify=verify, cache_dir=cache_dir)
        _ = self.mix.cache_dir  # decided here, so that every worker shares it
        self.seq_len, self.split = seq_len, split
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self.shards = [p + ".bin" for p in self.mix.token_shards_of(split)]
        if not self.shards:
            raise DatasetError(
                f"{self.mix.uri} has no {split} token shards ({split_root(split)}tokens/part-NNNNN.bin): "
                "build with the `tokens` format" + (" and build.val_fraction > 0" if split != "train" else "")
            )
        sizes = {f["path"]: int(f["bytes"]) for f in self.mix.manifest.files}
        counts = window_counts([sizes[s] // self.mix.dtype.itemsize for s in self.shards], seq_len)
        self.first_window = np.concatenate([[0], np.cumsum(counts)])  # global index of each shard's first
        per_rank = int(self.first_window[-1]) // self.world_size
        self.lo, self.hi = self.rank * per_rank, (self.rank + 1) * per_rank
        self.position = 0  # where the next pass starts (a loaded state's position, else 0)
        self._pass_start = 0  # where the current (or the last) pass started
        self._yielded = 0  # samples handed to the loop since it started
        self.batch_size: int | None = None  # the ClimbMixLoader's: workers are dealt blocks of it

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
        """This process's windows of a pass (begun now: a loaded position is used up here)."""
        info = get_worker_info()
        if info is not None and self.batch_size is None:
            raise ValueError(
                "ClimbMixStream in DataLoader workers needs ClimbMixLoader(stream, batch_size=B, num_workers=W): "
                "a plain DataLoader does not tell the stream its batch size, and a resume would repeat or skip windows"
            )
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self._windows(self.begin_pass(), worker, workers)

    def begin_pass(self) -> int:
        """Start a pass: its first window (a loaded position, else 0); the next one starts at 0."""
        start = self.position
        self._pass_start, self.position, self._yielded = start, 0, 0
        return start

    def _windows(self, start: int, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tokens: dict[int, np.ndarray] = {}
        for g in worker_windows(self.lo + start, self.hi, self.batch_size or 1, worker, workers):
            w = torch.from_numpy(self.window(g, tokens))
            self._yielded += 1
            yield w[:-1], w[1:]
        self._pass_start = self._yielded = 0  # a pass ended: the state is the start of the next

    # ------------------------------------------------------------------------------- resume
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Where this rank is: `consumed` samples after the window its current pass started at
        (default: the samples handed to the loop, counted by `ClimbMixLoader` or, in one process,
        by the stream)."""
        done = self._yielded if consumed is None else consumed
        return {
            "manifest_sha256": self.mix.manifest_sha256,
            "split": self.split,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "rank": self.rank,
            "position": self._pass_start + done,
        }

    def reset(self) -> None:
        """Start the next pass at the rank's first window (drops a loaded position)."""
        self.position = self._pass_start = self._yielded = 0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next pass continues at the window after the last one consumed in `state`'s run."""
        mine = self.state_dict(0)
        for key in ("manifest_sha256", "split", "seq_len", "world_size", "rank"):
            saved = state.get(key, "train" if key == "split" else None)  # a state saved before splits: train
            if saved != mine[key]:
                raise ValueError(f"the saved state is for {key}={saved!r}, this stream has {mine[key]!r}")
        if not 0 <= state["position"] <= self.hi - self.lo:
            raise ValueError(f"position {state['position']} is outside this rank's {self.hi - self.lo} windows")
        self.position = int(state["position"])
        self._pass_start = self._yielded = 0


class ClimbMixLoader(DataLoader):
    """A DataLoader over a `ClimbMixStream` that tells the stream its batch size before the
    workers start (so batches come back in window order and the position is one number), counts
    the samples it hands to the loop (`stream.state_dict()` needs no `consumed`), and starts
    each pass where the stream says: a loaded position for the first, the first window after."""

    def __init__(self, stream: ClimbMixStream, batch_size: int = 1, **kwargs: Any):
        if not isinstance(stream, ClimbMixStream):
            raise TypeError(f"ClimbMixLoader reads a ClimbMixStream, not {type(stream).__name__}")
        if batch_size is None or batch_size < 1:
            raise ValueError("ClimbMixLoader needs a batch_size of at least 1")
        super().__init__(stream, batch_size=batch_size, **kwargs)

    def __iter__(self) -> Any:  # the DataLoader's batches, counted
        stream: ClimbMixStream = self.dataset  # type: ignore[assignment]
        stream.batch_size = self.batch_size
        batches = super().__iter__()  # workers start now, with the stream's position (in-process: the pass begins)
        if self.num_workers > 0:
            stream.begin_pass()  # this copy's: the workers have taken the position
        return self._counted(batches, stream)

    @staticmethod
    def _counted(batches: Iterator[Any], stream: ClimbMixStream) -> Iterator[Any]:
        seen = 0
        for batch in batches:
            seen += len(batch[0])
            stream._yielded = seen
            yield batch
        stream._pass_start = stream._yielded = 0
