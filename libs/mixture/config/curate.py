"""The curation family's sections: `input` (what `curate` reads) and `curate` (what it annotates
and what `select` keeps), with `curate.filters`, one entry per registered filter.

The two stages hash different parts of `curate` ("score once, decide many times"): `curate`
covers `input` and `curate.annotation`, `select` covers `curate.selection`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mixture.config.section import NOT_HASHED, NestedConfigError, Section, Uri, hashed_dump


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
    # `uris` as the config file wrote them: `load_config` resolves relative paths against the
    # directory the command runs in, which manifests and dataset cards must not record
    _as_written: list[str] | None = PrivateAttr(default=None)

    @property
    def configured_uris(self) -> list[str]:
        """`uris` as configured (before relative paths were resolved): what a manifest records."""
        return list(self._as_written if self._as_written is not None else self.uris)


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
        500_000,
        ge=0,
        json_schema_extra=NOT_HASHED,
        description="small sets handled on the driver: with up to this many good records, their "
        "ids and keys are collected and up to this many LSH candidate pairs verified and "
        "clustered there (numpy; ~1 KB of driver memory per record, bench/RESULTS.md); up to "
        "this many id/group corrections are broadcast to the executors; larger sets stay "
        "distributed (same result, several times slower on one machine: dedup groups in 39-44 s "
        "against 4.6 s at 240,000 short records)",
    )
    max_doc_bytes: int = Field(1_000_000, gt=0, description="larger documents are quarantined")
    split_bytes: int = Field(
        128 << 20, ge=1 << 10, description="uncompressed JSONL / Parquet files larger than this are read in pieces"
    )
    docs_per_file: int = Field(100_000, ge=1, description="rows per output Parquet part file (about)")
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    signals: Literal["enabled", "all"] = Field(
        "enabled",
        description="the filter signals `curate` computes and stores: enabled: those the enabled "
        "filters read (with every filter off, none: MinHash dedup only; switching a filter on or "
        "off annotates again); all: every registered filter's (switching a filter reruns only "
        "`select`, and the heuristic quality scorer sees every q_* signal)",
    )
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
            "fuzzy_dedup": {k: v for k, v in hashed_dump(self.fuzzy_dedup).items() if k != "enabled"},
            "signals": _signal_params(self.filters, self.every_signal),
        }

    @property
    def every_signal(self) -> bool:
        """`signals: all`: every registered filter's signals are stored, enabled or not."""
        return self.signals == "all"

    @property
    def selection(self) -> dict[str, Any]:
        """What the `curated` dataset depends on beyond `annotated` (the `select` stage's hash)."""
        return {
            "filters": hashed_dump(self.filters),
            "exact_dedup": self.exact_dedup,
            "fuzzy_dedup_enabled": self.fuzzy_dedup.enabled,
            "keep_rejected": self.keep_rejected,
            "docs_per_file": self.docs_per_file,
        }


def _signal_params(filters: FiltersConfig, every: bool) -> dict[str, Any]:
    """Per filter whose signals are stored (the enabled ones; every registered one with `every`):
    its signal names and the config fields that change what they measure (thresholds are absent),
    through the registry, so config imports no filter module. The same as
    `mixture.curate.filters.signal_params` (tests/test_pipeline.py checks)."""
    from mixture.registry import FILTERS

    out = {}
    for name in FILTERS.names():
        flt = FILTERS.get(name)
        sub = (filters.model_extra or {}).get(name) or flt.config_model()
        if every or sub.enabled:
            out[name] = {"signals": list(flt.signals(sub)), **flt.signal_params(sub)}
    return out
