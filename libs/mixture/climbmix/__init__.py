"""ClimbMix: a training dataset sampled from the ClimbLab clusters with a mixture.

CLIMB (Diao et al., NVIDIA 2025) ends by sampling the cluster shards with the mixture weights
the search found, to a token budget (ClimbMix: 400B tokens from ClimbLab's 20 clusters, 1.2T
tokens). This library holds the rules, on arrays, at any budget (the stage is
`mixture.stages.build`, its steps `mixture.climbmix.build`):

1. the mixture: weights over the ClimbLab clusters (`load_mixture`), normalised to sum to 1
   (`normalise_mixture`);
2. each cluster's target is `weight * budget` (`plan_clusters`). A cluster smaller than its
   target is upsampled (whole passes, then a random part of one more pass) up to `max_epochs`
   passes (default 15, the paper's per-cluster epoch cap in the search); when the cap binds the
   cluster gets fewer tokens than its share (`warn_capped` names it). The shortfall is not moved
   to other clusters: they keep exactly their share, and the dataset is that much smaller;
3. documents are whole: a cluster's last pass takes documents of a seeded random order until its
   target is reached (`select_documents`; it overshoots by less than one document), one random
   stream per cluster (`cluster_rng`);
4. the validation split is held out before steps 2 and 3 sample (they run on what it leaves):
   distinct documents (told apart by a hash of their token ids) of the clusters with a share,
   about `build.val_fraction` of each one's target; neither they nor an exact copy of one are
   sampled for training (`mixture.climbmix.holdout`), so no format's training files hold a
   validation document;
5. every selected document is shuffled globally with the run's seed (`global_order`) and cut
   into fixed-size shards (`shard_slices`). The shuffle itself runs outside memory
   (`mixture.climbmix.shuffle`: the same permutation, routed through the staging folder), so the text of
   the clusters is never held whole.

The same ClimbLab, mixture, budget and seed give the same documents in the same order, so the
files are byte-identical and `dataset.content_hash` (the default published version) is stable.

Modules (the rules are here, the rest one module each):
- `build`: the build's steps (plan, scatter and gather in local processes, finish);
- `holdout`: the held-out validation split (by document identity, before upsampling);
- `shuffle`: the external global shuffle (routes, scatter per part, gather per bucket);
- `tokenizer`: the tokenizer folder (the special-token files trainers read);
- `card`: the dataset card (`README.md`);
- `formats`: the output formats (one module each: Parquet, token shards, nanoGPT, Megatron).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mixture import storage
from mixture.climblab import ClimbLab
from mixture.climbmix.holdout import HeldOut

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The mixture or the cluster shards cannot make a ClimbMix dataset."""


# ------------------------------------------------------------------------------ the mixture
def load_mixture(uri: str) -> dict[str, float]:
    """Weights from a mixture JSON: `{"weights": {cluster: w}, ...}` (the search's mixture.json)
    or a plain `{cluster: w}` mapping."""
    try:
        data = storage.read_json(uri)
    except FileNotFoundError:
        raise BuildError(f"mixture file not found: {uri}") from None
    except json.JSONDecodeError as err:
        raise BuildError(f"mixture file {uri} is not valid JSON: {err}") from None
    weights = data.get("weights", data) if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise BuildError(f'mixture file {uri} has no weights (expected {{"weights": {{cluster: w}}}})')
    return weights


def normalise_mixture(weights: dict, clusters: list[str]) -> dict[str, float]:
    """Validated weights over exactly `clusters` (absent ones get 0), summing to 1."""
    unknown = sorted(set(weights) - set(clusters))
    if unknown:
        raise BuildError(
            f"the mixture names clusters that the ClimbLab shards do not have: {unknown}; known clusters: {clusters}"
        )
    out: dict[str, float] = {}
    for c in clusters:
        w = weights.get(c, 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise BuildError(f"mixture weight of cluster {c} must be a finite number >= 0, got {w!r}")
        out[c] = float(w)
    total = sum(out.values())
    if total <= 0:
        raise BuildError("every mixture weight is 0: nothing to sample")
    if abs(total - 1.0) > 1e-6:
        log.info("mixture weights sum to %.6f; normalised to 1", total)
    return {c: w / total for c, w in out.items()}


# ---------------------------------------------------------------------------- the sampling
@dataclass
class ClusterPlan:
    cluster: str
    weight: float
    available_tokens: int
    available_documents: int
    target_tokens: int  # after the epoch cap
    wanted_epochs: float  # weight * budget / available tokens, before the cap
    capped: bool


def plan_clusters(
    weights: dict[str, float],
    available_tokens: dict[str, int],
    available_documents: dict[str, int],
    budget: int,
    max_epochs: float,
) -> list[ClusterPlan]:
    """Each cluster's token target: its share of the budget, at most `max_epochs` passes."""
    plans = []
    for c, w in weights.items():
        have = int(available_tokens[c])
        want = w * budget
        if w > 0 and have == 0:
            raise BuildError(f"cluster {c} has weight {w:.4g} but no tokens in the ClimbLab shards")
        epochs = want / have if have else 0.0
        capped = epochs > max_epochs
        target = int(math.floor(max_epochs * have)) if capped else int(round(want))
        plans.append(ClusterPlan(c, w, have, int(available_documents[c]), target, epochs, capped))
    return plans


def select_documents(lengths: np.ndarray, target_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the documents (with repeats when upsampling) whose tokens reach `target_tokens`:
    as many whole passes as fit, then documents in a random order until the target is reached.
    Overshoots by less than one document; 0 tokens gives no documents."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if target_tokens <= 0 or total == 0:
        return np.zeros(0, dtype=np.int64)
    full_passes, remainder = divmod(int(target_tokens), total)
    parts = [np.arange(len(lengths), dtype=np.int64)] * full_passes
    if remainder:
        order = rng.permutation(len(lengths))
        cumulative = np.cumsum(lengths[order])
        take = int(np.searchsorted(cumulative, remainder, side="left")) + 1
        parts.append(order[:take].astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def cluster_rng(seed: int, cluster: str) -> np.random.Generator:
    """One stream per cluster, so a cluster's sample does not change when another is added."""
    return np.random.default_rng([seed, zlib.crc32(cluster.encode())])


def warn_capped(plans: list[ClusterPlan], budget: int, max_epochs: float) -> None:
    """A warning per cluster whose share of the budget needs more than `max_epochs` passes."""
    for p in plans:
        if p.capped:
            want = f"{round(p.weight * budget):,}"
            log.warning(
                "cluster %s: its mixture share needs %.1f epochs (%s of its %s tokens); capped "
                "at build.max_epochs=%g, so it contributes %s tokens instead of %s",
                p.cluster,
                p.wanted_epochs,
                want,
                f"{p.available_tokens:,}",
                max_epochs,
                f"{p.target_tokens:,}",
                want,
            )


def global_order(selected: dict[str, np.ndarray], clusters: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster position, document index) of every selected document, in one seeded global
    shuffle of the (cluster, document) pairs."""
    cluster_index = np.concatenate([np.full(len(selected[c]), i, dtype=np.int32) for i, c in enumerate(clusters)])
    doc_index = np.concatenate([selected[c] for c in clusters])
    order = np.random.default_rng(seed).permutation(len(doc_index))
    return cluster_index[order], doc_index[order]


def shard_slices(n_docs: int, shard_docs: int) -> Iterator[tuple[int, slice]]:
    """(shard index, rows) of fixed-size shards; the last one may be shorter."""
    for s in range((n_docs + shard_docs - 1) // shard_docs):
        yield s, slice(s * shard_docs, min((s + 1) * shard_docs, n_docs))


# ------------------------------------------------------------------------------ the sources
def cluster_lengths(lab: ClimbLab, name: str) -> np.ndarray:
    """Tokens per document of one cluster, checked against the manifest (counts add up or the
    build fails). One cluster at a time: 8 bytes a document of that cluster."""
    declared = lab.info["clusters"][name]
    n = np.diff(lab.shard(name).offsets)
    if int(n.sum()) != int(declared["tokens"]) or len(n) != int(declared["documents"]):
        raise BuildError(
            f"cluster {name}: its token shard holds {len(n)} documents and "
            f"{int(n.sum())} tokens, its manifest says {declared}"
        )
    return n


def cluster_sizes(lab: ClimbLab) -> tuple[dict[str, int], dict[str, int]]:
    """(documents, tokens) of every cluster, from its token shard, checked against the manifest."""
    docs, tokens = {}, {}
    for c in lab.clusters:
        n = cluster_lengths(lab, c)
        docs[c], tokens[c] = len(n), int(n.sum())
    return docs, tokens


def per_cluster(
    plans: list[ClusterPlan], taken: dict[str, int], selected: dict[str, np.ndarray], held: HeldOut | None = None
) -> dict[str, dict]:
    """What the build took from each cluster (`taken`: its selected documents' tokens):
    documents, tokens, epochs, the plan (available: what the validation split left), and what
    it lent to the validation split (`held`)."""
    out: dict[str, dict] = {}
    held = held or HeldOut()
    for p in plans:
        tok = int(taken[p.cluster])
        out[p.cluster] = {
            "weight": p.weight,
            "documents": int(len(selected[p.cluster])),
            "tokens": tok,
            "target_tokens": p.target_tokens,
            "available_tokens": p.available_tokens,
            "available_documents": p.available_documents,
            "epochs": tok / p.available_tokens if p.available_tokens else 0.0,
            "wanted_epochs": p.wanted_epochs,
            "capped": p.capped,
            "validation_documents": len(held.held.get(p.cluster, ())),
            "validation_tokens": held.held_tokens.get(p.cluster, 0),
            "copies_excluded": held.copies(p.cluster),
        }
    return out
