"""The token-shard format and the tokenizer: what ClimbLab and ClimbMix token files are.

A token shard is the nanoGPT-style pair (docs/DATASETS.md): `PREFIX.bin`, every document's token
ids followed by its end-of-document id, concatenated as little-endian uint16 (vocabularies up to
65,535) or uint32; and `PREFIX.idx`, a `.npy` of int64 offsets (n + 1) so that document i is
`bin[idx[i]:idx[i+1]]`. Readers memory-map the `.bin`. The tokenizer is a byte-level BPE
(GPT-2 style, lossless on any text) trained on a sample of the corpus, or a local Hugging Face
`tokenizer.json`. No dataset or manifest knowledge here: the ClimbLab reader is
`mixture.climblab`, the stage `mixture.stages.shards`.
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import cached_property

import numpy as np

from mixture import storage

EOS = "<|endoftext|>"
SPECIAL = [EOS, "<|pad|>"]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class TokenShardWriter:
    """Appends documents to PREFIX.bin as they come; `close()` writes PREFIX.idx. Only the
    offsets (8 bytes a document) are held; each file is written atomically (`storage.open_write`).
    Use as a context manager: on an error neither file is left behind."""

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self._stack = ExitStack()
        self._bin = self._stack.enter_context(storage.open_write(prefix + ".bin"))
        self._lengths: list[np.ndarray] = []

    def append(self, docs: list[np.ndarray]) -> None:
        """Documents (each ending with its end-of-document id, as given) after those already written."""
        self._lengths.append(np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs)))
        for d in docs:
            self._bin.write(np.asarray(d, dtype=self.dtype).tobytes())

    def close(self) -> tuple[int, int]:
        """Finish both files; (documents, tokens)."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self._stack.close()
        with storage.open_write(self.prefix + ".idx") as f:
            np.save(f, offsets, allow_pickle=False)
        return len(lengths), int(offsets[-1])

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self._stack.__exit__(*exc)


def write_token_shard(prefix: str, docs: list[np.ndarray], dtype: np.dtype) -> tuple[int, int]:
    """Write PREFIX.bin (documents concatenated, each ending with its end-of-document id, as
    given) and PREFIX.idx (int64 offsets, n+1). Returns (documents, tokens)."""
    with TokenShardWriter(prefix, dtype) as w:
        w.append(docs)
        return w.close()


class TokenShard:
    """One token shard: `.tokens` (1-D array), `.offsets`, `document(i)`."""

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)

    @cached_property
    def offsets(self) -> np.ndarray:
        with storage.open_read(self.prefix + ".idx") as f:
            return np.load(f, allow_pickle=False)

    @cached_property
    def tokens(self) -> np.ndarray:
        local = storage.local_path(self.prefix + ".bin")
        if local is not None:
            return np.memmap(local, dtype=self.dtype, mode="r")
        return np.frombuffer(storage.read_bytes(self.prefix + ".bin"), dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


def read_offsets(idx_file, first: int, stop: int) -> np.ndarray:
    """Offsets `first .. stop` (inclusive: documents first .. stop - 1) of a token shard's
    `.idx`, opened for reading (local or S3): its .npy header, then one ranged read."""
    idx_file.seek(0)
    version = np.lib.format.read_magic(idx_file)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(idx_file)
    elif version == (2, 0):
        _, _, dtype = np.lib.format.read_array_header_2_0(idx_file)
    else:
        raise ValueError(f"unsupported .npy version {version} of a token shard's offsets")
    start = idx_file.tell()
    raw = idx_file.read_at((stop - first + 1) * dtype.itemsize, start + first * dtype.itemsize)
    if len(raw) != (stop - first + 1) * dtype.itemsize:
        raise ValueError(f"a token shard's offsets end before document {stop}")
    return np.frombuffer(raw, dtype=dtype).astype(np.int64)


# ---------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on `texts`, with the end-of-document token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(uri: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a local HF tokenizer folder."""
    from tokenizers import Tokenizer

    if storage.is_dir(uri):
        uri = storage.join(uri, "tokenizer.json")
    return Tokenizer.from_str(storage.read_text(uri))


def eos_id(tok) -> int:
    for name in (EOS, "</s>", "<eos>", "[SEP]"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise ValueError("the tokenizer has no end-of-document token (<|endoftext|>, </s>, <eos>)")


def encode(tok, texts: list[str], eos: int, batch: int = 256) -> list[np.ndarray]:
    out = []
    for i in range(0, len(texts), batch):
        for enc in tok.encode_batch(texts[i : i + batch], add_special_tokens=False):
            out.append(np.append(np.asarray(enc.ids, dtype=np.int64), eos))
    return out
