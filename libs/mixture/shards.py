"""ClimbLab-style token shards: one folder of tokens per final cluster.

The stage trains a byte-level BPE tokenizer on a sample of the curated corpus (or loads a local
Hugging Face tokenizer), tokenizes every document of every kept cluster, and writes per cluster
`cNN/tokens.bin` + `cNN/tokens.idx` (the nanoGPT-style format in docs/DATASETS.md) and
`cNN/text.parquet` (id, text in the same order). The manifest's `extra.clusters` carries tokens
per cluster: the search's prior (CLIMB samples mixtures around the clusters' token shares).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mixture import storage
from mixture.dataset import Dataset

EOS = "<|endoftext|>"
SPECIAL = [EOS, "<|pad|>"]


def cluster_name(i: int) -> str:
    return f"c{i:02d}"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# ------------------------------------------------------------------------------ the shard format
def write_token_shard(prefix: str, docs: list[np.ndarray], dtype: np.dtype) -> tuple[int, int]:
    """Write PREFIX.bin (documents concatenated, each ending with its end-of-document id, as
    given) and PREFIX.idx (int64 offsets, n+1). Returns (documents, tokens)."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with storage.open_write(prefix + ".bin") as f:
        for d in docs:
            f.write(np.asarray(d, dtype=dtype).tobytes())
    with storage.open_write(prefix + ".idx") as f:
        np.save(f, offsets, allow_pickle=False)
    return len(docs), int(offsets[-1])


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
        return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1]])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


# ---------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on `texts`, with the end-of-document token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
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
        for enc in tok.encode_batch(texts[i:i + batch], add_special_tokens=False):
            out.append(np.append(np.asarray(enc.ids, dtype=np.int64), eos))
    return out


# ------------------------------------------------------------------------------- the reader
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
        return self.dataset.path("tokenizer/tokenizer.json")

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    def shard(self, name: str) -> TokenShard:
        return TokenShard(self.dataset.path(f"{name}/tokens"), self.dtype)

    def texts(self, name: str) -> pa.Table:
        fs, path = storage.filesystem(self.dataset.path(f"{name}/text.parquet"))
        return pq.read_table(path, filesystem=fs)


# -------------------------------------------------------------------------------- the stage
def _read_parquet_files(uris: list[str], columns: list[str]) -> pa.Table:
    tables = []
    for uri in uris:
        fs, path = storage.filesystem(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def run(ctx):
    from mixture.contract import StageOutput

    cfg = ctx.cfg.shards
    curated, clusters = ctx.input("curated"), ctx.input("clusters")
    docs = _read_parquet_files(curated.files("docs/"), ["id", "text"])
    assign = _read_parquet_files([clusters.path("assignments.parquet")], ["id", "cluster"])
    cluster_of = dict(zip(assign.column("id").to_pylist(), assign.column("cluster").to_pylist()))
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    missing = [i for i in ids if i not in cluster_of]
    if missing:
        raise RuntimeError(f"{len(missing)} curated documents have no cluster assignment (e.g. {missing[:3]})")

    # tokenizer: a local one, or a byte-level BPE trained on a seeded sample of kept documents
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        kept = [t for i, t in zip(ids, texts) if cluster_of[i] >= 0]
        rng = random.Random(ctx.cfg.seed)
        sample = rng.sample(kept, min(cfg.tokenizer_train_docs, len(kept)))
        tok = train_tokenizer(sample, cfg.vocab_size)
    eos = eos_id(tok)
    vocab = tok.get_vocab_size()
    dtype = token_dtype(vocab)
    storage.write_text(ctx.writer.path("tokenizer/tokenizer.json"), tok.to_str())

    by_cluster: dict[int, list[int]] = {}
    for row, i in enumerate(ids):
        by_cluster.setdefault(cluster_of[i], []).append(row)
    info: dict[str, dict] = {}
    total_tokens = 0
    for c in tqdm(sorted(k for k in by_cluster if k >= 0), desc="shards", unit="cluster"):
        rows = sorted(by_cluster[c], key=lambda r: ids[r])     # deterministic order
        name = cluster_name(c)
        c_ids, c_texts = [ids[r] for r in rows], [texts[r] for r in rows]
        n_docs, n_tok = write_token_shard(ctx.writer.path(f"{name}/tokens"), encode(tok, c_texts, eos), dtype)
        with storage.open_write(ctx.writer.path(f"{name}/text.parquet")) as f:
            pq.write_table(pa.table({"id": c_ids, "text": c_texts}), f)
        info[name] = {"documents": n_docs, "tokens": n_tok}
        total_tokens += n_tok
    pruned = len(by_cluster.get(-1, []))
    n_in = len(ids)
    n_out = sum(v["documents"] for v in info.values())
    if n_in != n_out + pruned:
        raise RuntimeError(f"shards: {n_in} documents in != {n_out} written + {pruned} in pruned clusters")
    counts = {"documents_in": n_in, "documents_out": n_out, "pruned_documents": pruned,
              "tokens": total_tokens, "clusters": len(info)}
    extra = {"clusters": info, "vocab_size": vocab, "eos_id": eos, "dtype": dtype.name}
    summary = [("tokens per cluster", ", ".join(f"{k}={v['tokens']:,}" for k, v in info.items()))]
    return StageOutput(counts, extra, summary)
