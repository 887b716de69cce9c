"""Target metrics of a trained proxy: validation bits per byte and multiple-choice tasks.

CLIMB (Diao et al., 2025) scores a proxy by its accuracy on the target's validation tasks (PIQA,
ARC-E, HellaSwag; one domain such as MMLU social sciences for a domain target). Tiny CPU proxies are
at chance on such tasks, so the default target here is the proxy's language-modelling quality on
held-out text of the target domain (`search.target.val_uris`), in bits per byte: the sum of token
negative log-likelihoods / ln 2 / the UTF-8 bytes of the text, which does not depend on the
tokenizer. Multiple-choice tasks are scored as lm-evaluation-harness does: each choice's summed
log-likelihood as a continuation of the context (`acc`), the same divided by the choice's length in
UTF-8 bytes (`acc_norm`), and, because accuracy is too coarse to rank proxies near chance, a
continuous `logprob`: the log of the probability the model gives the gold choice among the choices.

Direction is explicit: every proxy run stores `metrics` (as measured) and one `score`, where
HIGHER IS BETTER: the validation part enters as -bpb (or -loss), task parts as acc/acc_norm/logprob,
combined as the weighted mean with `search.target.weights` (component names "val" and each task
file's stem; weight 1 when not given).

Task files are JSONL (optionally gzip'd), one item per line: {"context": str, "choices": [str],
"gold": int}; optional "delimiter" (default " ") goes between context and choice.

Selection and report parts (`search.target.report_share`, default 0: no split). A score used to
choose a mixture is biased upwards on the text it was chosen on, so the target can be split by
document: each validation document (and each task item) goes to the *report* part when a hash of
its key (its `id` field when it has one, else its position among the non-blank documents or the
task's items) falls below `report_share`, else to the *select* part. The split is seed-free, so
every search seed and every method sees the same parts, and editing a document's text does not
move it. The search's proxies and its playoff are scored on `select` (the default part); the
baselines' transfer runs and benchmarks report on `report`. With share 0 both parts are the whole
target, exactly as before the split existed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from mixture import storage
from mixture.config import TargetConfig


class TargetError(ValueError):
    """A target file or item that cannot be scored."""


# ----------------------------------------------------------------------------------- loading
def read_jsonl(uri: str) -> list[Any]:
    try:
        return [rec for _, rec in storage.read_jsonl(uri)]
    except ValueError as err:
        raise TargetError(str(err)) from None


def task_name(uri: str) -> str:
    name = storage.basename(uri)
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _key(rec: dict, position: int) -> str:
    """A document's or item's split key: its `id` when it has a string or integer one."""
    rid = rec.get("id")
    return f"id:{rid}" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"#{position}"


@dataclass
class MCItem:
    context: str
    choices: list[str]
    gold: int
    delimiter: str = " "


def parse_items(uri: str) -> list[MCItem]:
    return parse_keyed_items(uri)[0]


def parse_keyed_items(uri: str) -> tuple[list[MCItem], list[str]]:
    """A task file's items and their split keys (`id` when an item has one, else its position)."""
    items, keys = [], []
    for n, rec in enumerate(read_jsonl(uri), 1):
        ctx, choices, gold = rec.get("context"), rec.get("choices"), rec.get("gold")
        if (
            not isinstance(ctx, str)
            or not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise TargetError(f"{uri}: item {n} needs a string 'context' and at least two non-empty string 'choices'")
        if not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TargetError(f"{uri}: item {n}: 'gold' must be an index into its {len(choices)} choices")
        items.append(MCItem(ctx, choices, gold, rec.get("delimiter", " ")))
        keys.append(_key(rec, n - 1))
    if not items:
        raise TargetError(f"{uri}: no items")
    return items, keys


@dataclass
class EvalTarget:
    """The target, tokenized once per process: validation documents and multiple-choice tasks."""

    val_ids: list[np.ndarray] = field(default_factory=list)  # each [eos] + the document's ids
    val_bytes: int = 0
    tasks: dict[str, list[MCItem]] = field(default_factory=dict)
    # per task, per item, per choice: (context ids, continuation ids)
    task_ids: dict[str, list[list[tuple[list[int], list[int]]]]] = field(default_factory=dict)
    metric: str = "bpb"
    task_metric: str = "logprob"
    weights: dict[str, float] = field(default_factory=dict)
    eos_id: int = 0  # context of a document's first token, and of a choice with no context
    val_info: dict = field(default_factory=dict)  # how the validation text was sampled (recorded)

    @property
    def components(self) -> list[str]:
        return (["val"] if self.val_ids else []) + list(self.tasks)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-evaluation-harness splits them: trailing spaces of the
    context move to the continuation, the pair is encoded whole, and the continuation is what the
    whole adds to the context's own encoding (so BPE merges across the seam stay as in training)."""
    stripped = context.rstrip(" ")
    continuation = context[len(stripped) :] + continuation
    whole = tokenizer.encode(stripped + continuation, add_special_tokens=False).ids
    ctx = tokenizer.encode(stripped, add_special_tokens=False).ids if stripped else []
    if whole[: len(ctx)] != ctx:  # a merge crossed the seam: fall back to separate encodings
        return ctx, tokenizer.encode(continuation, add_special_tokens=False).ids
    return ctx, whole[len(ctx) :]


PARTS = ("select", "report")
_SPLIT_SALT = b"climb-target-report-part\0"


def in_report(key: str, share: float) -> bool:
    """Whether the document or item with this key belongs to the report part: a hash of the key,
    uniform in [0, 1), below `share`."""
    if share <= 0:
        return False
    digest = hashlib.sha256(_SPLIT_SALT + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def split_part(keys: list[str], share: float, part: str, what: str) -> list[int]:
    """Indices of the keys in `part` ("select" or "report"); all of them when share is 0.
    TargetError when the part would be empty."""
    if part not in PARTS:
        raise TargetError(f"unknown target part {part!r}; the parts are {list(PARTS)}")
    if share <= 0:
        return list(range(len(keys)))
    keep = [i for i, k in enumerate(keys) if in_report(k, share) == (part == "report")]
    if not keep:
        raise TargetError(
            f"search.target.report_share {share} leaves no {what} of {len(keys)} in the {part} part; "
            f"change report_share or add {what}s"
        )
    return keep


def load_target(tcfg: TargetConfig, tokenizer, eos_id: int, seed: int = 0, part: str = "select") -> EvalTarget:
    """Read and tokenize the validation text (`tcfg.sampling`: windows spread over every target
    document, or the first documents) and the task files, of one part of the target (`select`:
    what the search scores on, `report`: what results are reported on; see the module's doc)."""
    if not tcfg.val_uris and not tcfg.tasks:
        raise TargetError("search.target needs val_uris (held-out text) or tasks (multiple choice)")
    t = EvalTarget(metric=tcfg.metric, task_metric=tcfg.task_metric, eos_id=int(eos_id))
    share = tcfg.report_share
    if tcfg.val_uris:
        keys, texts = read_val_documents(tcfg.val_uris)
        texts = [texts[i] for i in split_part(keys, share, part, "validation document")]
        if tcfg.sampling == "first":
            first_documents(t, texts, tcfg, tokenizer, eos_id)
        else:
            spread_windows(t, texts, tcfg, tokenizer, eos_id, seed)
        if share > 0:
            t.val_info["split"] = {"part": part, "report_share": share, "of_all_documents": len(keys)}
    for uri in tcfg.tasks:
        name = task_name(uri)
        if name == "val" or name in t.tasks:
            raise TargetError(f"task file {uri}: the name {name!r} is taken; rename the file")
        items, keys = parse_keyed_items(uri)
        items = [items[i] for i in split_part(keys, share, part, f"item of task {name}")]
        t.tasks[name] = items
        t.task_ids[name] = [[encode_pair(tokenizer, it.context, it.delimiter + c) for c in it.choices] for it in items]
    unknown = set(tcfg.weights) - set(t.components)
    if unknown:
        raise TargetError(f"search.target.weights names {sorted(unknown)}; the components are {t.components}")
    t.weights = {c: float(tcfg.weights.get(c, 1.0)) for c in t.components}
    if sum(t.weights.values()) <= 0:
        raise TargetError("search.target.weights must have a positive sum")
    return t


def read_val_documents(uris: list[str]) -> tuple[list[str], list[str]]:
    """The split keys and the non-blank `text` of every record of the validation files, in file
    order."""
    keys: list[str] = []
    texts: list[str] = []
    for uri in storage.expand(uris):
        for n, rec in enumerate(read_jsonl(uri), 1):
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise TargetError(f"{uri}: record {n} has no string 'text' field")
            if rec["text"].strip():
                keys.append(_key(rec, len(texts)))
                texts.append(rec["text"])
    if not texts:
        raise TargetError(f"no validation text in {uris}")
    return keys, texts


def read_val_texts(uris: list[str]) -> list[str]:
    """The non-blank `text` of every record of the validation files, in file order."""
    return read_val_documents(uris)[1]


def first_documents(t: EvalTarget, texts: list[str], tcfg: TargetConfig, tokenizer, eos_id: int) -> None:
    """The first `val_docs` documents, whole, up to `val_tokens` tokens."""
    tokens = 0
    for text, enc in zip(
        texts[: tcfg.val_docs], tokenizer.encode_batch(texts[: tcfg.val_docs], add_special_tokens=False)
    ):
        if t.val_ids and tokens + len(enc.ids) > tcfg.val_tokens:
            break
        t.val_ids.append(np.array([eos_id] + enc.ids, dtype=np.int64))
        t.val_bytes += len(text.encode("utf-8"))
        tokens += len(enc.ids)
    t.val_info = {"sampling": "first", "documents": len(t.val_ids), "of_documents": len(texts), "tokens": tokens}


def spread_windows(t: EvalTarget, texts: list[str], tcfg: TargetConfig, tokenizer, eos_id: int, seed: int) -> None:
    """`val_docs` documents evenly spaced over all of them (a seeded phase), each giving one window
    of `val_tokens / val_docs` tokens at a seeded offset (the whole document when shorter). A target
    file sorted by topic or time is then sampled over its whole range, not at its start. A
    window's bytes are those of the characters its tokens cover (for bits per byte)."""
    rng = np.random.default_rng([seed, 0x7A56E7])
    k = min(tcfg.val_docs, len(texts))
    picked = np.floor((np.arange(k) + rng.random()) * len(texts) / k).astype(np.int64)
    budget = max(1, tcfg.val_tokens // k)
    chosen = [texts[i] for i in picked]
    tokens = 0
    for text, enc in zip(chosen, tokenizer.encode_batch(chosen, add_special_tokens=False)):
        n = len(enc.ids)
        if n == 0:
            continue
        start = int(rng.integers(0, n - budget + 1)) if n > budget else 0
        end = min(n, start + budget)
        t.val_ids.append(np.array([eos_id] + enc.ids[start:end], dtype=np.int64))
        t.val_bytes += len(text[enc.offsets[start][0] : enc.offsets[end - 1][1]].encode("utf-8"))
        tokens += end - start
    t.val_info = {
        "sampling": "spread",
        "documents": len(t.val_ids),
        "of_documents": len(texts),
        "tokens": tokens,
        "document_indices": picked.tolist(),
    }


@lru_cache(maxsize=4)
def _cached_target(key: str, tokenizer_uri: str, eos_id: int, seed: int, part: str) -> EvalTarget:
    from mixture.climblab.tokens import load_tokenizer

    return load_target(TargetConfig.model_validate_json(key), load_tokenizer(tokenizer_uri), eos_id, seed, part)


def target_for(tcfg: TargetConfig, tokenizer_uri: str, eos_id: int, seed: int = 0, part: str = "select") -> EvalTarget:
    """`load_target`, cached per process (a pool worker tokenizes the target once)."""
    return _cached_target(tcfg.model_dump_json(), tokenizer_uri, eos_id, seed, part)


# ----------------------------------------------------------------------------------- scoring
def _token_logprobs(
    model, rows: list[tuple[list[int], int]], seq_len: int, device, batch_size: int, autocast
) -> list[np.ndarray]:
    """For each (ids, n_scored): the log-probabilities of the last n_scored tokens of ids, each given
    the tokens before it (at most seq_len of them: longer rows keep their right end)."""
    import torch

    out: list[np.ndarray | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths batch well
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        seqs = [rows[i][0][-(seq_len + 1) :] for i in idx]
        width = max(len(s) for s in seqs) - 1
        inp = torch.zeros((len(idx), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            inp[r, : len(s) - 1] = torch.as_tensor(s[:-1])
        with torch.no_grad(), autocast():
            logits = model(inp.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for r, (i, s) in enumerate(zip(idx, seqs)):
            n = min(rows[i][1], len(s) - 1)
            targets = torch.as_tensor(s[len(s) - n :])
            pos = torch.arange(len(s) - 1 - n, len(s) - 1)
            out[i] = logp[r, pos, targets].numpy().astype(np.float64)
    return out  # type: ignore[return-value]


def val_windows(val_ids: list[np.ndarray], seq_len: int) -> list[tuple[list[int], int]]:
    """Non-overlapping windows covering every token of every document exactly once as a target:
    window j holds ids[j*L : j*L + L + 1] and scores its last len-1 tokens."""
    rows = []
    for ids in val_ids:
        for s in range(0, len(ids) - 1, seq_len):
            w = ids[s : s + seq_len + 1].tolist()
            rows.append((w, len(w) - 1))
    return rows


def mc_scores(loglik: list[list[float]], choices: list[list[str]], gold: list[int]) -> dict[str, float]:
    """acc, acc_norm and logprob over items from each choice's summed log-likelihood."""
    acc, acc_norm, logprob = [], [], []
    for ll_list, ch, g in zip(loglik, choices, gold):
        ll = np.asarray(ll_list, dtype=np.float64)
        norm = ll / np.array([len(c.encode("utf-8")) for c in ch], dtype=np.float64)
        acc.append(float(np.argmax(ll) == g))
        acc_norm.append(float(np.argmax(norm) == g))
        logprob.append(float(ll[g] - np.logaddexp.reduce(ll)))
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "logprob": float(np.mean(logprob))}


def evaluate(model, target: EvalTarget, seq_len: int, device="cpu", batch_size: int = 16, autocast=None) -> dict:
    """{"metrics": {...}, "score": higher-is-better combination, "components": {...}}."""
    import contextlib

    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    components: dict[str, float] = {}
    try:
        if target.val_ids:
            lps = _token_logprobs(model, val_windows(target.val_ids, seq_len), seq_len, device, batch_size, autocast)
            nll = -float(sum(lp.sum() for lp in lps))
            n_tok = sum(len(lp) for lp in lps)
            metrics["val.loss"] = nll / n_tok
            metrics["val.bpb"] = nll / math.log(2) / target.val_bytes
            metrics["val.tokens"] = float(n_tok)
            components["val"] = -metrics[f"val.{target.metric}"]
        for name, items in target.tasks.items():
            pairs = target.task_ids[name]
            rows = []
            for item_pairs in pairs:
                for ctx, cont in item_pairs:
                    rows.append(((ctx or [target.eos_id]) + cont, len(cont)))
            lps = _token_logprobs(model, rows, seq_len, device, batch_size, autocast)
            sums, k = [], 0
            for item_pairs in pairs:
                sums.append([float(lps[k + j].sum()) for j in range(len(item_pairs))])
                k += len(item_pairs)
            s = mc_scores(sums, [it.choices for it in items], [it.gold for it in items])
            for m, v in s.items():
                metrics[f"{name}.{m}"] = v
            components[name] = s[target.task_metric]
    finally:
        model.train(was_training)
    total_w = sum(target.weights[c] for c in components)
    score = sum(target.weights[c] * v for c, v in components.items()) / total_w
    return {"metrics": metrics, "components": components, "score": float(score)}
