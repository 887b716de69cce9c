"""The ClimbLab family's section: `shards`, the tokenizer and the per-cluster token shards."""

from __future__ import annotations

from pydantic import Field

from mixture.config.section import NOT_HASHED, Section, Uri


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
