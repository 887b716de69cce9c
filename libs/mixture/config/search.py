"""The search family's section: `search`, the iterated proxy runs (`search.proxy`), the target they
are scored on (`search.target`) and the predictor fitted to them (`search.predictor`).

Defaults follow the CLIMB paper (Diao et al., NVIDIA 2025): a search of 64/32/16 proxy runs,
Dirichlet temperature 0.5 with concentration in [0.1, 5], at most 15 epochs of a cluster, weights
floored at 2e-4, 100,000 candidates, LightGBM with max_depth 4, learning rate 0.01, 1000 rounds,
early stopping 20, reg 1, min_child_samples 5. Beyond the paper, what the search-quality
benchmark (bench/search_quality.py, issue #20) measured to help on held-out targets: per-cluster
data streams in the proxies, each cluster's windows spread evenly over its shard, and a
warm-up-stable-decay schedule (`proxy.data_order: spread`, `proxy.schedule: wsd`), a Gaussian
process and the n-gram estimate (`search.ngram`: the target under a bigram model of the mixture's
tokens) among the predictors, the final mixture among the trained ones (`final: best_fitted`),
top_random picks spread apart (`acquisition.min_distance`), and a playoff of two finalists at
twice the proxy's tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixture.config.section import NOT_HASHED, Section, Uri


class ProxyConfig(Section):
    # mixture.search.proxy.PRESETS: cpu-tiny (tests), cpu-2m (CPU demo), cpu-6m (CPU transfer),
    # 62m and 350m (the paper's proxy sizes, for GPUs)
    preset: Literal["cpu-tiny", "cpu-2m", "cpu-6m", "62m", "350m"] = "cpu-2m"
    tokens: int = Field(300_000, gt=0)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(256, ge=8)
    lr: float = Field(4e-3, gt=0)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "wsd"] = Field(
        "wsd",
        description="wsd: warm-up, the peak rate, a linear decay over the last 20% of the steps "
        "(MiniCPM); cosine: a cosine decay after the warm-up (the default before issue #20's benchmark)",
    )
    threads: int = Field(1, ge=1, json_schema_extra=NOT_HASHED)
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, and on a CPU only with native bf16 (AVX-512 BF16 "
        "or AMX; emulated bf16 is several times slower than fp32), else fp32",
    )
    data_order: Literal["run", "cluster", "spread"] = Field(
        "spread",
        description="run: one random stream per run draws every window; cluster: each cluster's "
        "windows come from its own stream seeded by (seed, cluster name), so cluster c's i-th window "
        "is the same in every run whatever the mixture (common random numbers; only the "
        "interleaving depends on the mixture); spread: as cluster, but the i-th window starts at "
        "(u + i x 0.618...) mod 1 of the shard (u seeded by seed and cluster), so the first n "
        "windows of a cluster cover it evenly (a low-discrepancy sample)",
    )


class TargetConfig(Section):
    val_uris: list[Uri] = []
    val_docs: int = Field(200, ge=1, description="documents the validation text is taken from, at most")
    val_tokens: int = Field(100_000, ge=1, description="validation tokens, at most")
    sampling: Literal["spread", "first"] = Field(
        "spread",
        description="spread: val_docs documents evenly spaced over the whole target (seeded "
        "phase), each giving a window of val_tokens / val_docs tokens at a seeded offset; first: the "
        "first documents of the files, whole, up to val_tokens (biased when a file is sorted)",
    )
    metric: Literal["loss", "bpb"] = "bpb"
    tasks: list[Uri] = Field([], description="multiple-choice JSONL files (context, choices, gold)")
    task_metric: Literal["acc", "acc_norm", "logprob"] = "logprob"
    weights: dict[str, float] = {}
    report_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the validation documents (and task items) held out as the report "
        "part, by a hash of each one's id (else its position): the search and its playoff select "
        "on the rest, the baselines report on it; 0: no split, everything uses the whole target",
    )


class PredictorConfig(Section):
    candidates: list[str] = Field(
        ["lightgbm", "ridge", "ridge_sqrt", "mixing_law", "gp", "ngram", "ngram_gp"],
        min_length=1,
        description="registered predictors (mixture.registry.PREDICTORS)",
    )
    max_depth: int = Field(4, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    n_estimators: int = Field(1000, ge=1)
    early_stopping_rounds: int = Field(20, ge=0, description="0: no early stopping")
    reg_alpha: float = Field(1.0, ge=0)
    reg_lambda: float = Field(1.0, ge=0)
    min_child_samples: int = Field(5, ge=1)
    min_data_in_bin: int = Field(3, ge=1, description="LightGBM's default 3; 1 lets 16-30 runs split")
    cv_folds: int = Field(5, ge=2)
    min_spearman: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="below this CV Spearman the final mixture is the best observed one, not a predicted one",
    )

    law_restarts: int = Field(4, ge=1, description="mixing_law_components: starts of each fit (the first at t = 0)")
    law_l2: float = Field(1.0, ge=0, description="mixing_law_components: L2 penalty on t and log|k|")
    law_huber: float = Field(
        1.0, gt=0, description="mixing_law_components: Huber threshold, in standard deviations of a component"
    )
    gp_kernel: Literal["matern", "rbf"] = Field("matern", description="gp: Matern 5/2 or RBF (+ a white noise term)")
    gp_features: Literal["sqrt", "weights"] = Field("sqrt", description="gp: the kernel's inputs")
    gp_restarts: int = Field(3, ge=0, description="gp: extra starts of the marginal-likelihood optimiser")

    @field_validator("candidates")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        from mixture.registry import PREDICTORS

        return PREDICTORS.check(v)


Finalist = Literal["predicted", "kl_prior", "top_mean", "best_observed", "best_fitted"]
FINALISTS: tuple[Finalist, ...] = ("best_fitted", "top_mean")  # the default


class PlayoffConfig(Section):
    """The noise-aware final choice (`mixture.search.playoff`): seed replicates of anchor
    mixtures, and finalists retrained at a larger scale (`tokens_factor`)."""

    enabled: bool = True
    finalists: list[Finalist] = Field(
        list(FINALISTS), min_length=1, description="in priority order (the first of equal mixtures names it)"
    )
    seeds: int = Field(2, ge=2, description="transfer runs per finalist (seeds seed+0..)")
    tokens_factor: float | None = Field(
        2.0,
        gt=1,
        description="a finalist trains search.proxy's model on tokens_factor x its tokens; null: "
        "search.transfer_proxy (its model and tokens)",
    )
    anchor_seeds: int = Field(
        0, ge=0, description="proxy runs of the natural and the best observed mixture (seed noise); 0: none"
    )
    kl_lambda: float = Field(0.1, ge=0, description="kl_prior: max predicted score - kl_lambda * KL(w || prior)")
    noise_z: float = Field(
        0.0,
        ge=0,
        description="finalists within noise_z standard errors of the top tie; 0: the best mean wins (with "
        "two seeds a finalist, 2 kept the search's choice in all 11 real playoffs measured)",
    )
    tie_break: Literal["search_choice", "prior_like"] = Field(
        "search_choice",
        description="among tied finalists: the search's own choice (`final`), else the most "
        "prior-like; or the most prior-like (lowest KL to the prior) first",
    )
    budget_share: float = Field(
        0.25, gt=0, le=1, description="at most this share of the search's proxy runs, in proxy-run equivalents"
    )

    @field_validator("finalists")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("every finalist is named once")
        return v


class BaseConfig(Section):
    """One base proxy trained once on the natural mixture; every proxy run continues from it."""

    enabled: bool = False
    share: float = Field(0.5, gt=0, lt=1, description="share of search.proxy's steps the base trains")
    schedule: Literal["stable_decay", "split"] = Field(
        "stable_decay",
        description="stable_decay: warm-up-stable-decay over base + continuation, the decay never "
        "inside the base (the base ends at the peak rate, each run decays on its own mixture); "
        "split: search.proxy.schedule over the whole run, cut where the base ends",
    )


class ExpertsConfig(Section):
    """Merged cluster experts (Na et al., 2024): one run per cluster from the base; the model for a
    mixture is the experts' parameters averaged with its weights."""

    enabled: bool = False
    tokens: int | None = Field(None, gt=0, description="tokens per expert; None: what a run trains after the base")
    general_share: float = Field(0.25, ge=0, lt=1, description="share of natural-mixture data in each expert's run")
    screen: int = Field(64, ge=0, description="the predictor's top candidates scored with merged models (0: none)")
    eval_tokens: int | None = Field(
        10_000, gt=0, description="validation tokens a merged model is scored on (None: the whole target)"
    )


class NgramConfig(Section):
    """The n-gram estimate (`mixture.search.ngram`): the target's mean log-probability under a
    bigram model of the mixture's tokens, which the `ngram` predictors fit the runs with."""

    enabled: bool = True
    smoothing: float = Field(
        0.01, gt=0, description="beta / the proxy's tokens: the weight of the unigram model in each bigram probability"
    )
    max_tokens: int = Field(5_000_000, ge=2, description="tokens of a cluster counted, at most (evenly spaced blocks)")
    positions: int = Field(8192, ge=2, description="target positions scored, at most (evenly spaced)")


class AcquisitionConfig(Section):
    """How iterations >= 1 pick their mixtures among the candidates (mixture.search.acquisition)."""

    rule: Literal["top_random", "ei", "ucb"] = Field(
        "top_random",
        description="top_random: a random subset of the predicted top_n (the paper); ei: expected "
        "improvement; ucb: mean + ucb_beta * std (both picked one at a time, the std shrunk at each pick)",
    )
    ucb_beta: float = Field(2.0, ge=0, description="ucb: standard deviations added to the predicted mean")
    ei_xi: float = Field(0.0, ge=0, description="ei: improvement margin over the best predicted observed score")
    min_distance: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="least Hellinger distance between two picks of one iteration (and, top_random, between "
        "a pick and a trained mixture: the next-ranked candidate far enough takes its place); 0: top_random "
        "is the paper's plain random subset of the top_n",
    )


class SearchConfig(Section):
    iterations: list[int] = Field([64, 32, 16], min_length=1)
    temperature: float = Field(0.5, gt=0)
    concentration: tuple[float, float] = (0.1, 5.0)
    epoch_cap: float = Field(15.0, gt=0)
    weight_floor: float = Field(2e-4, ge=0, lt=1)
    candidates: int = Field(100_000, ge=1)
    top_n: int = Field(64, ge=1)
    final: Literal["best", "top_mean", "best_observed", "best_fitted"] = Field(
        "best_fitted",
        description="best: the predictor's best candidate; top_mean: the mean of its top_k (RegMix); "
        "best_observed: the trained mixture with the best score; best_fitted: the trained mixture "
        "the chosen predictor fits best (mixture.search.bootstrap)",
    )
    trust_region: float = Field(
        1.0,
        ge=0,
        description="final choice: only candidates within this many times the trained mixtures' "
        "median nearest-neighbour distance (Hellinger) of a trained mixture, where cross-validation "
        "tested the predictor; 0: anywhere (the paper). On by default: without it a search's final "
        "mixture can be a corner no run was near (bench/RESULTS.md, issue #20)",
    )
    top_k: int = Field(128, ge=1)
    local_frac: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of candidates drawn around the "
        "best observed mixtures (0: all around the prior, as in the paper)",
    )
    local_top: int = Field(4, ge=1, description="how many best observed mixtures local candidates centre on")
    workers: int = Field(1, ge=1, json_schema_extra=NOT_HASHED)
    seeds: int = Field(1, ge=1, description="proxy runs per mixture (seeds seed+0..); iterations count mixtures")
    transfer_seeds: int = Field(2, ge=1, description="repeats of each baseline's transfer run")
    proxy: ProxyConfig = ProxyConfig()
    transfer_proxy: ProxyConfig = ProxyConfig(preset="cpu-6m", tokens=900_000)
    target: TargetConfig = TargetConfig()
    predictor: PredictorConfig = PredictorConfig()
    playoff: PlayoffConfig = PlayoffConfig()
    base: BaseConfig = BaseConfig()
    experts: ExpertsConfig = ExpertsConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    ngram: NgramConfig = NgramConfig()

    @property
    def finalist_proxy(self) -> ProxyConfig:
        """The proxy a playoff finalist trains with: search.proxy on `playoff.tokens_factor` x its
        tokens, or search.transfer_proxy when the factor is null."""
        factor = self.playoff.tokens_factor
        if factor is None:
            return self.transfer_proxy
        return self.proxy.model_copy(update={"tokens": int(round(self.proxy.tokens * factor))})

    @property
    def playoff_proxy(self) -> ProxyConfig | None:
        """What the search's output depends on of the playoff's scale (hashed with the stage; the
        transfer proxy alone is the baselines'): the finalists' proxy when the playoff is on."""
        return self.finalist_proxy if self.playoff.enabled else None

    @model_validator(mode="after")
    def _experts_need_a_base(self) -> SearchConfig:
        if self.experts.enabled and not self.base.enabled:
            raise ValueError("search.experts.enabled needs search.base.enabled: experts continue from the base")
        return self

    @field_validator("iterations")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every iteration needs at least one proxy run")
        return v

    @field_validator("concentration")
    @classmethod
    def _conc(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("concentration must be (low, high) with 0 < low <= high")
        return v
