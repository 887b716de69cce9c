"""Proxy language models: presets and a small trainer on mixture-sampled token shards.

CLIMB (Diao et al., 2025) searches with 62M and 350M proxy models trained briefly on each candidate
mixture, then transfers the chosen mixture to larger models. The same roles exist here at any
scale: GPT-2-style decoders (transformers' GPT2LMHeadModel; vocabulary = the shards' tokenizer,
bos/eos = its end-of-document id) in presets

  cpu-tiny   1 layer  x  32 wide   tests: a proxy run in about a second
  cpu-2m     2 layers x 128 wide   the CPU demo's proxy (~1-2M parameters with a 4-8k vocabulary)
  cpu-6m     6 layers x 256 wide   the CPU "transfer" proxy (~6M parameters)
  62m        12 layers x 512 wide  the paper's 62M proxy (62M with a 50k vocabulary), for GPUs
  350m       24 layers x 1024 wide the paper's 350M proxy (GPT-2 medium), for GPUs

Training data: the token budget is split between clusters in proportion to the mixture (largest
remainders, so a weight of 0.3 gets 30% of the sequences exactly, not in expectation), and each
sequence is a random window of seq_len + 1 tokens of that cluster's packed shard (documents
concatenated with their end-of-document ids, nanoGPT-style); order is shuffled. With
`data_order: cluster` each cluster's windows come from a stream of its own, seeded by (seed,
cluster name): cluster c's i-th window is then the same in every run of that seed whatever the
mixture (common random numbers), and only the interleaving depends on the mixture; `spread` is
the same with the i-th window at (u + i x 0.618...) mod 1 of the shard (u seeded likewise), so
that the windows a run takes of a cluster cover it evenly (a low-discrepancy sample: with the WSD
schedule a proxy score's seed noise fell 28-38%, bench/RESULTS.md "The proxy's seed noise");
`run` (one stream for the whole run) is how runs were drawn before. AdamW (beta2 0.95, weight
decay 0.1 on matrices), gradient clipping at 1, cosine decay with linear warm-up or WSD (warm-up,
stable, the last 20% decaying linearly), both to `min_lr_frac` of the peak.

A run can be one `Segment` of a longer one: a base proxy trains the first steps, and a run
continued from it starts from its weights and optimizer state at the base's step, on the same
learning-rate schedule (`mixture.search.base`).

Measured on this project's 2-core machine: proxies learn beyond unigram statistics, and mixtures
differ, with 2x128, batch 4, seq 256, lr 4e-3 and >= 300k tokens (~24 s on one core); batch >= 16
or < 250k tokens leaves every mixture at the same unigram loss. Those are ProxyConfig's defaults.

A run is deterministic for its seed on CPU (same thread count); the seed fixes the initial weights
and the data order. On CUDA: bf16 autocast, fused AdamW, optional torch.compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from mixture.config import Config, ProxyConfig, TargetConfig

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, int]] = {
    "cpu-tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2},
    "cpu-2m": {"n_layer": 2, "n_embd": 128, "n_head": 4},
    "cpu-6m": {"n_layer": 6, "n_embd": 256, "n_head": 4},
    "62m": {"n_layer": 12, "n_embd": 512, "n_head": 8},
    "350m": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
}
WSD_DECAY_FRAC = 0.2  # MiniCPM's WSD decays over the last 10-20% of steps


def preset(name: str) -> dict[str, int]:
    if name not in PRESETS:
        raise ValueError(f"unknown proxy preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(pcfg: ProxyConfig, vocab_size: int, eos_id: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    p = preset(pcfg.preset)
    conf = GPT2Config(
        vocab_size=vocab_size,
        n_positions=pcfg.seq_len,
        n_embd=p["n_embd"],
        n_layer=p["n_layer"],
        n_head=p["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        tie_word_embeddings=True,
        use_cache=False,
    )
    return GPT2LMHeadModel(conf)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_factor(step: int, steps: int, pcfg: ProxyConfig, schedule: str | None = None, stable_until: int = 0) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `steps`: `schedule` (default
    `pcfg.schedule`); a WSD schedule does not decay before `stable_until`."""
    warm = max(1, int(math.ceil(pcfg.warmup_frac * steps))) if pcfg.warmup_frac > 0 else 0
    if step < warm:
        return (step + 1) / warm
    floor = pcfg.min_lr_frac
    if (schedule or pcfg.schedule) == "cosine":
        progress = (step - warm) / max(1, steps - warm - 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = max(warm, stable_until, int(steps * (1 - WSD_DECAY_FRAC)))
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, steps - decay_start - 1)
    return 1.0 - (1.0 - floor) * min(1.0, progress)


def allocate(weights: np.ndarray, n: int) -> np.ndarray:
    """Split n items in proportion to weights (largest remainders; the counts sum to n)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def cluster_stream(seed: int, name: str) -> np.random.Generator:
    """The random stream of cluster `name`'s windows for `seed` (data_order: cluster)."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), key])


GOLDEN = (math.sqrt(5) - 1) / 2  # the additive recurrence with the most even prefixes (Weyl, golden ratio)


def window_draws(seed: int, name: str, first: int, n: int, data_order: str) -> np.ndarray:
    """Where windows first..first+n-1 of cluster `name` start, as shares of its shard: random draws
    of its own stream (cluster), or the golden-ratio sequence from a seeded offset (spread)."""
    stream = cluster_stream(seed, name)
    if data_order == "spread":
        return (stream.random() + GOLDEN * np.arange(first, first + n)) % 1.0
    return stream.random(first + n)[first:]


class MixtureBatches:
    """Batches of packed token windows drawn from cluster shards in proportion to a mixture.
    `skip` (data_order cluster or spread): windows of each cluster's stream an earlier segment drew."""

    def __init__(
        self,
        shards: dict[str, np.ndarray],
        mixture: dict[str, float],
        seq_len: int,
        batch_size: int,
        steps: int,
        seed: int,
        data_order: str = "run",
        skip: dict[str, int] | None = None,
    ):
        names = [c for c, w in mixture.items() if w > 0]
        missing = [c for c in names if c not in shards]
        if missing:
            raise ValueError(f"the mixture names clusters without shards: {missing}")
        empty = [c for c in names if len(shards[c]) == 0]
        if empty:
            raise ValueError(f"the mixture gives weight to empty clusters: {empty}")
        self.seq_len, self.batch_size, self.steps = seq_len, batch_size, steps
        self.shards = [shards[c] for c in names]
        counts = allocate(np.array([mixture[c] for c in names]), steps * batch_size)
        rng = np.random.default_rng(seed)
        self.cluster_of = rng.permutation(np.repeat(np.arange(len(names)), counts))
        lengths = np.array([len(s) for s in self.shards])
        # a start anywhere in the shard; windows that run past the end wrap to its beginning
        if data_order == "run":
            self.starts = (rng.random(len(self.cluster_of)) * lengths[self.cluster_of]).astype(np.int64)
        else:
            self.starts = np.zeros(len(self.cluster_of), dtype=np.int64)
            for k, c in enumerate(names):
                at = np.flatnonzero(self.cluster_of == k)  # cluster c's windows, in training order
                first = (skip or {}).get(c, 0)
                self.starts[at] = (window_draws(seed, c, first, len(at), data_order) * lengths[k]).astype(np.int64)
        self.names = names
        self.windows = {c: int(n) for c, n in zip(names, counts)}
        self.tokens_per_cluster = {c: int(n) * (seq_len + 1) for c, n in zip(names, counts)}

    def batch(self, step: int) -> np.ndarray:
        rows = []
        span = np.arange(self.seq_len + 1)
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            shard = self.shards[self.cluster_of[i]]
            rows.append(np.asarray(shard[(self.starts[i] + span) % len(shard)], dtype=np.int64))
        return np.stack(rows)


@dataclass(frozen=True)
class Segment:
    """Steps [first, first + steps) of a run of `total` steps: a base proxy (first 0) or a run
    continued from one (`state`: the base's model and optimizer state dicts; `skip`: windows per
    cluster the base drew, so that a continued run's cluster streams go on where the base's ended).
    `schedule` None: `pcfg.schedule` over the whole run; "wsd": warm-up-stable-decay whose decay
    starts no earlier than step `stable_until`."""

    first: int
    steps: int
    total: int
    schedule: str | None = None
    stable_until: int = 0
    state: dict | None = None
    skip: dict[str, int] | None = None

    def lr(self, step: int, pcfg: ProxyConfig) -> float:
        """The multiplier of the peak rate at this segment's `step` (0-based)."""
        return lr_factor(self.first + step, self.total, pcfg, self.schedule, self.stable_until)


@dataclass
class TrainResult:
    model: object
    loss_curve: list[tuple[int, float]]  # (step, mean training loss since the previous point)
    steps: int
    tokens: int
    seconds: float
    params: int
    device: str
    dtype: str = "float32"
    optimizer: object = None
    windows: dict[str, int] | None = None  # windows drawn per cluster

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def device_for(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("proxy.device is 'cuda' but torch sees no CUDA device on this machine")
    return requested


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX tiles)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def dtype_for(requested: str, device: str) -> str:
    """The proxy's compute dtype: `requested`, or for `auto` bf16 on CUDA and on CPUs with native
    bf16, fp32 elsewhere (measured here: emulated bf16 ran ~9x slower than fp32 on a 2-core AMD)."""
    if requested != "auto":
        return requested
    return "bfloat16" if device == "cuda" or cpu_has_native_bf16() else "float32"


def autocast_for(device: str, dtype: str = "auto"):
    import torch

    if dtype_for(dtype, device) == "bfloat16":
        return lambda: torch.autocast("cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def optimizer(model, lr: float, device: str):
    """AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), fused on CUDA."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=(device == "cuda"),
    )


def _start(pcfg: ProxyConfig, vocab_size: int, eos_id: int, device: str, state: dict | None):
    """A new model and its optimizer, or both as `state` (a base's) left them."""
    model = build_model(pcfg, vocab_size, eos_id)
    if state is not None:
        model.load_state_dict(state["model"])
    model = model.to(device)
    opt = optimizer(model, pcfg.lr, device)
    if state is not None and state.get("optimizer"):
        load_optimizer_state(opt, state["optimizer"])
    return model, opt


def load_optimizer_state(opt, state: dict) -> None:
    """Load a saved AdamW state (moments, step counts) keeping this device's implementation flags
    (a base trained fused on CUDA continues on a CPU, and the other way round)."""
    flags = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, f in zip(opt.param_groups, flags):
        g.update(f)


def _step_range(steps: int, preset: str, progress: bool):
    if not progress:
        return range(steps)
    from tqdm import tqdm

    return tqdm(range(steps), desc=f"proxy {preset}", unit="step", leave=False)


def train(
    pcfg: ProxyConfig,
    shards: dict[str, np.ndarray],
    mixture: dict[str, float],
    vocab_size: int,
    eos_id: int,
    seed: int,
    device: str = "auto",
    max_curve_points: int = 500,
    progress: bool = False,
    segment: Segment | None = None,
) -> TrainResult:
    """Train one proxy on `mixture` for `pcfg.tokens` tokens, or for one `segment` of a run."""
    import torch
    import torch.nn.functional as F

    device = device_for(device)
    if segment is None:
        total = max(1, pcfg.tokens // (pcfg.batch_size * pcfg.seq_len))
        segment = Segment(0, total, total)
    steps = segment.steps
    data = MixtureBatches(shards, mixture, pcfg.seq_len, pcfg.batch_size, steps, seed, pcfg.data_order, segment.skip)
    torch.manual_seed(seed)
    model, opt = _start(pcfg, vocab_size, eos_id, device, segment.state)
    forward = torch.compile(model) if (pcfg.compile and device == "cuda") else model
    dtype = dtype_for(pcfg.dtype, device)
    log.info("proxy %s: %s on %s (proxy.dtype=%s)", pcfg.preset, dtype, device, pcfg.dtype)
    autocast = autocast_for(device, dtype)
    every = max(1, math.ceil(steps / max_curve_points))
    curve: list[tuple[int, float]] = []
    window: list[torch.Tensor] = []
    model.train()
    t0 = time.perf_counter()
    for step in _step_range(steps, pcfg.preset, progress):
        for g in opt.param_groups:
            g["lr"] = pcfg.lr * segment.lr(step, pcfg)
        xy = torch.from_numpy(data.batch(step)).to(device, non_blocking=True)
        with autocast():
            logits = forward(xy[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.detach())
        if (step + 1) % every == 0 or step == steps - 1:
            # reading the loss synchronises a GPU: only at curve points, not every step
            mean = float(torch.stack(window).mean())
            if not math.isfinite(mean):
                raise FloatingPointError(f"the proxy's training loss became {mean} by step {step + 1}")
            curve.append((step + 1, mean))
            window = []
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = steps * pcfg.batch_size * pcfg.seq_len
    return TrainResult(model, curve, steps, tokens, seconds, count_params(model), device, dtype, opt, data.windows)


def train_and_evaluate(
    cfg: Config,
    lab,
    mixture: dict[str, float],
    seed: int,
    pcfg: ProxyConfig,
    device: str | None = None,
    segment: Segment | None = None,
    target: TargetConfig | None = None,
    part: str = "select",
) -> tuple[dict, TrainResult]:
    """Train one proxy (or one `proxy.Segment` of a run) and evaluate it on `target`'s `part`
    (default the search's target, the part the search chooses by): (the run's record minus ids,
    the `proxy.TrainResult`)."""
    import torch

    from mixture.search import evaluate

    shards = {c: lab.shard(c).tokens for c, w in mixture.items() if w > 0}
    threads = torch.get_num_threads()
    torch.set_num_threads(pcfg.threads)
    try:
        res = train(
            pcfg, shards, mixture, lab.vocab_size, lab.eos_id, seed, device=device or pcfg.device, segment=segment
        )
        tgt = evaluate.target_for(target or cfg.search.target, lab.tokenizer_path, lab.eos_id, cfg.seed, part)
        t0 = time.perf_counter()
        autocast = autocast_for(res.device, res.dtype)
        ev = evaluate.evaluate(res.model, tgt, pcfg.seq_len, res.device, autocast=autocast)
        eval_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    record = {
        **ev,
        "loss_curve": [list(p) for p in res.loss_curve],
        "train": {
            "steps": res.steps,
            "tokens": res.tokens,
            "seconds": round(res.seconds, 3),
            "tokens_per_s": round(res.tokens_per_s, 1),
            "params": res.params,
            "device": res.device,
            "dtype": res.dtype,
            "threads": pcfg.threads,
            **({"first_step": segment.first, "of_steps": segment.total} if segment is not None else {}),
        },
        "eval_seconds": round(eval_seconds, 3),
    }
    return record, res
