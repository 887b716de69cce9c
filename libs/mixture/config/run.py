"""The run-wide sections, read by the runner and the trackers, not by one family: `concurrency`
(another run writing the same dataset), `refresh` (versions committed by earlier runs) and
`tracking` (MLflow). No stage's hash covers `concurrency` or `refresh`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mixture.config.section import Section, Uri


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
