"""The ClimbMix family's section: `build`, the token budget, the output formats and the shuffle's
pieces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mixture.config.section import NOT_HASHED, Section, Uri


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
    val_fraction: float = Field(
        0.005,
        ge=0,
        lt=1,
        description="share of each cluster's tokens held out, before upsampling, as the validation split "
        "(validation/ in every format, nanogpt/val.bin); 0: none",
    )
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
