"""Whether a corpus refresh runs the mixture search again, or carries its committed version over.

The search (proxy LMs) is the costly step, and a weekly refresh mostly adds a little to clusters
that stay the same. So a search is run again only when (`decide`):
- `refresh.incremental` is off, the search settings changed, there is no committed search with a
  lineage, or the climblab dataset was rebuilt since (new clusters: `increments.plan`);
- the clusters are not the same ones the committed search weighed;
- the clusters' token shares moved by more than `refresh.search_share_shift` (total variation
  distance) from the shares the committed search used (`extra["searched_on"]["shares"]`, else the
  prior in its `mixture.json`). The shift is measured from the search that ran, not from the last
  carried version, so small moves do not add up unseen.

Otherwise the new version is "carried" (`carry_or_none`): every file of the previous version kept
(hard links), the same counts and extra, a new manifest made against the new climblab dataset (so
the build and `climb status` see it up to date), lineage mode `carried` with
{share_shift, threshold, reason}. Both the CLI (`mixture.stages.search.run`) and the Airflow tasks
(`steps.propose` proposes nothing, `steps.finish` commits the carried version) decide here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mixture import increments, storage
from mixture.contract import StageContext, StageOutput
from mixture.dataset import Dataset

log = logging.getLogger(__name__)

SEARCHED_ON = "searched_on"  # extra: the climblab version and token shares a search ran on


@dataclass(frozen=True)
class Decision:
    carry: bool
    why: str
    shift: float | None = None
    threshold: float | None = None


def shares(climblab: Dataset) -> dict[str, float]:
    """The clusters' token shares of a committed climblab dataset (its manifest's counts)."""
    tokens = {c: int(v["tokens"]) for c, v in (climblab.manifest.extra.get("clusters") or {}).items()}
    total = sum(tokens.values())
    return {c: (t / total if total else 0.0) for c, t in sorted(tokens.items())}


def share_shift(a: dict[str, float], b: dict[str, float]) -> float:
    """Total variation distance between two share vectors (a cluster missing from one: 0)."""
    return 0.5 * sum(abs(a.get(c, 0.0) - b.get(c, 0.0)) for c in set(a) | set(b))


def searched_shares(search: Dataset) -> dict[str, float] | None:
    """The token shares the committed search ran on; None when it recorded none."""
    rec = (search.manifest.extra or {}).get(SEARCHED_ON)
    if rec and rec.get("shares"):
        return {c: float(v) for c, v in rec["shares"].items()}
    if any(f["path"] == "mixture.json" for f in search.manifest.files):
        prior = storage.read_json(search.path("mixture.json")).get("prior")
        return {c: float(v) for c, v in prior.items()} if prior else None
    return None


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def decide(ctx: StageContext) -> Decision:
    """Carry the committed search over, or run it again; why, in one line."""
    threshold = ctx.cfg.refresh.search_share_shift
    delta, why = increments.plan(ctx.previous, ctx.inputs, ctx.settings_hash, ctx.cfg.refresh.incremental)
    if delta is None or ctx.previous is None:
        return Decision(False, why)
    used = searched_shares(ctx.previous)
    if used is None:
        return Decision(False, "the committed search recorded no token shares")
    now = shares(ctx.input("climblab"))
    if set(used) != set(now):
        return Decision(False, f"the clusters changed ({len(used)} searched, {len(now)} now)")
    shift = share_shift(used, now)
    limit = f"{threshold * 100:g}%"
    if shift > threshold:
        return Decision(False, f"token shares moved {_pct(shift)} (> {limit})", shift, threshold)
    return Decision(
        True, f"token shares moved {_pct(shift)} ({'<' if shift < threshold else '='} {limit})", shift, threshold
    )


def carry_or_none(ctx: StageContext) -> StageOutput | None:
    """The carried version's output (its files staged: the previous version's, kept) when the
    committed search still holds; None when the search must run (the reason is logged)."""
    d = decide(ctx)
    if not d.carry:
        log.info("search: runs: %s", d.why)
        return None
    prev = ctx.previous
    assert prev is not None
    w = ctx.writer
    w.reset()  # pieces of an attempt made another way (refresh settings are not hashed)
    w.keep_all(prev)
    extra = {k: v for k, v in prev.manifest.extra.items() if k != increments.LINEAGE}
    delta = {"share_shift": round(d.shift or 0.0, 6), "threshold": d.threshold, "reason": d.why}
    lin = increments.next_lineage(prev, "carried", ctx.settings_hash, ctx.inputs, delta)
    log.info("search kept: %s", d.why)
    summary: list[tuple[str, Any]] = [
        ("search kept", d.why),
        ("mixture", ", ".join(f"{c} {w:.3f}" for c, w in sorted((extra.get("mixture") or {}).items()))),
    ]
    return StageOutput(dict(prev.manifest.counts), increments.record(w, prev, lin, extra), summary)


def record_search(ctx: StageContext, out: StageOutput) -> StageOutput:
    """A search that ran: the climblab version and token shares it used (what a later refresh
    compares with), its lineage (a full version) and why it ran."""
    lab = ctx.input("climblab")
    why = decide(ctx).why
    out.extra[SEARCHED_ON] = {
        "climblab_version": increments.version(lab),
        "climblab_manifest": lab.manifest_sha256,
        "shares": shares(lab),
    }
    lin = increments.next_lineage(ctx.previous, "full", ctx.settings_hash, ctx.inputs, {"reason": why})
    out.extra = increments.record(ctx.writer, ctx.previous, lin, out.extra)
    out.summary.insert(0, ("search ran", why))
    return out
