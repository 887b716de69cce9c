"""The dataset card (`README.md`) of a ClimbMix dataset.

It follows the Hugging Face dataset card layout (YAML header with the licence and the Parquet
files as the default configuration, then prose) and says what a user of the shards needs to
know: the mixture and how many passes over each cluster it took, the sources, the filters and
their thresholds, deduplication, what each cluster is about (top TF-IDF terms from the cluster
report), the tokenizer, the licence, the file format and how to load it with pyarrow, Hugging
Face `datasets`, numpy (nanoGPT-style), Megatron-Core, `mixture.publish.reader` and `mixture.publish.streaming`;
every Python snippet runs as printed from the dataset folder (`tests/climbmix/test_loading.py`).

Upstream facts come from the build's declared inputs `curated` and `clusters`: the ClimbLab
manifest names the manifest hashes of the `curated` and `clusters` it was made from, and a figure
from those datasets is shown only when the input still has that hash. The "Files" and "Loading"
sections list the output formats the build wrote (`mixture.climbmix.formats`). The title is made of the
dataset's own content (its size, clusters and the mixture's sha256), and the card holds no
timestamps, so the same data gives the same card (and the same content hash).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mixture import storage
from mixture.climblab import cluster_name
from mixture.config import Config
from mixture.curate.filters import enabled_settings
from mixture.dataset import Dataset
from mixture.registry import OUTPUT_FORMATS

log = logging.getLogger(__name__)


@dataclass
class CardContext:
    """Everything the card shows, gathered at the edge so that rendering is a pure function."""

    title: str
    counts: dict[str, Any]
    build: dict[str, Any]  # the climbmix manifest's extra
    licence: str
    sources: list[str]
    input_format: str
    curate: dict[str, Any]  # the curate config section
    curate_config_matches: bool | None  # None: curated dataset not reachable
    curated_counts: dict[str, Any] | None
    cluster_config: dict[str, Any]
    cluster_counts: dict[str, Any] | None
    topics: dict[str, list[str]] = field(default_factory=dict)
    climblab_counts: dict[str, Any] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: ["parquet", "tokens"])  # build.formats, in order


# ----------------------------------------------------------------------------- gathering
def topic_terms(report: Any, limit: int = 8) -> dict[str, list[str]]:
    """Top terms per cluster name (`cNN`) from a cluster report.json. Accepts a list of cluster
    entries or a mapping keyed by cluster id, under an optional "clusters" key; terms as strings
    or as [term, score] pairs."""
    entries = report.get("clusters", report) if isinstance(report, dict) else report
    if isinstance(entries, dict):
        items = list(entries.items())
    elif isinstance(entries, list):
        items = [(e.get("cluster", e.get("id", e.get("name"))), e) for e in entries if isinstance(e, dict)]
    else:
        return {}
    out: dict[str, list[str]] = {}
    for key, entry in items:
        if not isinstance(entry, dict):
            continue
        terms = entry.get("top_terms") or entry.get("terms") or entry.get("tfidf_terms") or []
        words = [t if isinstance(t, str) else str(t[0]) for t in terms if isinstance(t, (str, list, tuple)) and t]
        try:
            name = key if isinstance(key, str) and key.startswith("c") else cluster_name(int(key))
        except (TypeError, ValueError):
            continue
        if words:
            out[name] = words[:limit]
    return out


def _same(upstream: Dataset | None, expected_sha: str | None) -> Dataset | None:
    """The upstream input when it is the one the ClimbLab shards were made from, else None."""
    if upstream is None or expected_sha is None or upstream.manifest_sha256 != expected_sha:
        return None
    return upstream


def _topics(clusters: Dataset | None) -> dict[str, list[str]]:
    if clusters is None or not clusters.files("report.json"):
        return {}
    try:
        return topic_terms(storage.read_json(clusters.path("report.json")))
    except (OSError, ValueError) as err:
        log.warning("cluster report unreadable, the card lists no topics: %s", err)
        return {}


def title(counts: dict[str, Any], build: dict[str, Any]) -> str:
    """What the dataset is, from its own content: the mixture (its sha256) and its size."""
    return (
        f"{_n(counts['tokens'])} tokens from {len(build['clusters'])} clusters, mixture {build['mixture_sha256'][:12]}"
    )


def gather(
    cfg: Config,
    counts: dict[str, Any],
    build: dict[str, Any],
    climblab: Dataset,
    curated: Dataset | None = None,
    clusters: Dataset | None = None,
) -> CardContext:
    """The card's facts. `curated` and `clusters` are the build's declared inputs; their figures
    are shown only when they are the datasets the ClimbLab shards were made from."""
    inputs = climblab.manifest.inputs
    curated = _same(curated, inputs.get("curated"))
    clusters = _same(clusters, inputs.get("clusters"))
    return CardContext(
        title=title(counts, build),
        counts=counts,
        build=build,
        licence=cfg.build.licence,
        sources=list(cfg.input.uris),
        input_format=cfg.input.format,
        curate=cfg.curate.model_dump(mode="json"),
        curate_config_matches=None
        if curated is None
        else curated.manifest.extra.get("filters") == enabled_settings(cfg.curate.filters),
        curated_counts=None if curated is None else curated.manifest.counts,
        cluster_config=cfg.cluster.model_dump(mode="json"),
        cluster_counts=None if clusters is None else clusters.manifest.counts,
        topics=_topics(clusters),
        climblab_counts=climblab.manifest.counts,
        formats=list(build.get("formats", ["parquet", "tokens"])),
    )


# ------------------------------------------------------------------------------ rendering
def _n(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def _params(section: dict[str, Any]) -> str:
    shown = [f"{k}={v}" for k, v in section.items() if k not in ("enabled", "stop_words") and v is not None]
    return ", ".join(shown) if shown else "defaults"


def _formats(ctx: CardContext) -> list[Any]:
    return [OUTPUT_FORMATS.get(name)() for name in ctx.formats]


def header(ctx: CardContext) -> list[str]:
    """The Hugging Face YAML header: licence and the files `datasets` loads by default."""
    lines = ["---", f"license: {ctx.licence if ' ' not in ctx.licence else 'other'}"]
    data_files = [f.hf_data_files for f in _formats(ctx) if f.hf_data_files]
    if data_files:
        lines += [
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f"    path: {data_files[0]}",
        ]
    return lines + ["task_categories:", "- text-generation", "---", ""]


def intro(ctx: CardContext) -> list[str]:
    b, c = ctx.build, ctx.counts
    return [
        f"# ClimbMix-style dataset: {ctx.title}",
        "",
        f"{_n(c['documents'])} documents and {_n(c['tokens'])} tokens (budget {_n(b['token_budget'])}), "
        f"sampled from {len(b['clusters'])} ClimbLab clusters with the mixture below, shuffled globally "
        f"with seed {b['seed']} and written in {b['shards']} shard(s) of up to {_n(b['shard_docs'])} "
        "documents, following CLIMB (Diao et al., NVIDIA 2025).",
        "",
    ]


def mixture_section(ctx: CardContext) -> list[str]:
    b = ctx.build
    source = (
        "the configured mixture file (build.mixture)"
        if b["mixture_source"] != "search"
        else "the mixture search (search/mixture.json)"
    )
    lines = [
        "## Mixture",
        "",
        f"Source of the weights: {source}. "
        f"Epochs are passes over a cluster's documents; upsampling is capped at {b['max_epochs']:g}.",
        "",
        "| cluster | topic (top terms) | weight | tokens | share of tokens | documents | epochs | capped |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    total_tokens = max(1, ctx.counts["tokens"])
    for name, v in b["clusters"].items():
        topic = ", ".join(ctx.topics.get(name, [])) or "-"
        lines.append(
            f"| {name} | {topic} | {v['weight']:.4f} | {_n(v['tokens'])} | "
            f"{v['tokens'] / total_tokens:.2%} | {_n(v['documents'])} | {v['epochs']:.2f} | "
            f"{_capped(v)} |"
        )
    if b["capped_clusters"]:
        lines += [
            "",
            f"The epoch cap bound for {', '.join(b['capped_clusters'])}: these clusters have "
            "fewer tokens than their share of the budget, and the dataset is smaller than the budget.",
        ]
    return lines


def sources_section(ctx: CardContext) -> list[str]:
    return ["", "## Sources", ""] + [f"- `{s}`" for s in ctx.sources] + ["", f"Input format: {ctx.input_format}."]


def curation_section(ctx: CardContext) -> list[str]:
    lines = ["", "## Curation: filters and thresholds", ""]
    if ctx.curate_config_matches is False:
        lines += [
            "Note: the curation settings below are the current configuration's; the curated "
            "dataset these shards come from was made with different ones.",
            "",
        ]
    for fname, fcfg in ctx.curate["filters"].items():
        state = "on" if fcfg.get("enabled", True) else "off"
        lines.append(f"- {fname} ({state}): {_params(fcfg)}")
    lines.append(f"- documents over {_n(ctx.curate['max_doc_bytes'])} bytes are quarantined")
    cc = ctx.curated_counts
    if not cc:
        return lines + ["", "Curation counts: not available (the curated dataset is not reachable from this build)."]
    lines += ["", f"Documents in: {_n(cc.get('documents_in', '?'))}; kept: {_n(cc.get('documents_out', '?'))}."]
    if cc.get("filtered"):
        lines.append("Removed by filter: " + ", ".join(f"{k} {_n(v)}" for k, v in sorted(cc["filtered"].items())) + ".")
    if cc.get("quarantined"):
        lines.append(
            "Quarantined (unreadable or malformed): "
            + ", ".join(f"{k} {_n(v)}" for k, v in sorted(cc["quarantined"].items()))
            + "."
        )
    return lines


def dedup_section(ctx: CardContext) -> list[str]:
    fz = ctx.curate["fuzzy_dedup"]
    unset = [k for k, v in fz.items() if v is None]
    lines = [
        "",
        "## Deduplication",
        "",
        f"- exact duplicates: {'on' if ctx.curate['exact_dedup'] else 'off'}",
        f"- near duplicates, MinHash LSH on word n-grams ({'on' if fz['enabled'] else 'off'}): {_params(fz)}"
        + (f"; {', '.join(unset)} derived from the threshold" if unset else ""),
    ]
    if ctx.curated_counts:
        lines.append(
            f"- removed: {_n(ctx.curated_counts.get('exact_duplicates', 0))} exact and "
            f"{_n(ctx.curated_counts.get('near_duplicates', 0))} near duplicates"
        )
    return lines


def _capped(v: dict) -> str:
    return f"yes (wanted {v['wanted_epochs']:.1f})" if v["capped"] else "no"


def clusters_section(ctx: CardContext) -> list[str]:
    cl = ctx.cluster_config
    method = cl.get("method", "kmeans")
    if method == "kmeans":
        how = (
            f"k-means with K_init = {cl['k_init']}, clusters with mean quality below "
            f"{cl['quality']['min_cluster_quality']} ({cl['quality']['scorer']} scorer) pruned, "
            f"centroids merged (distance {cl['merge_distance']}, target {cl['target_clusters']} clusters)."
        )
    else:
        source = f"the document field `{cl.get('field')}`" if method == "field" else "a user-supplied assignments file"
        how = (
            f"groups given by the user ({source}, RegMix-style domain mixing), groups with mean quality "
            f"below {cl['quality']['min_cluster_quality']} ({cl['quality']['scorer']} scorer) pruned."
        )
    lines = ["", "## Clusters", "", how]
    if ctx.cluster_counts:
        k = ctx.cluster_counts
        lines.append(
            f"Result: {k.get('clusters', '?')} clusters; {k.get('pruned_clusters', 0)} pruned "
            f"clusters holding {_n(k.get('pruned_documents', 0))} documents."
        )
    if not ctx.topics:
        lines.append("Topic terms: not available (no cluster report reachable from this build).")
    return lines


def tokenizer_section(ctx: CardContext) -> list[str]:
    b = ctx.build
    return [
        "",
        "## Tokenizer",
        "",
        f"`tokenizer/tokenizer.json` (Hugging Face `tokenizers`), vocabulary {_n(b['vocab_size'])}, "
        f"end-of-document id {b['eos_id']}, token ids stored as little-endian `{b['dtype']}`.",
    ]


def files_section(ctx: CardContext) -> list[str]:
    """What each output format wrote and how to load it, then the verified reader."""
    dtype, formats = ctx.build["dtype"], _formats(ctx)
    lines = ["", "## Files", ""]
    for f in formats:
        lines += f.card_files(dtype)
    lines += [
        "- `_manifest.json`: counts, the mixture, per-cluster tokens/documents/epochs, and every "
        "file's size and sha256. A dataset without it is incomplete: do not read it.",
        "",
        "## Loading",
        "",
    ]
    for f in formats:
        lines += f.card_loading(dtype)
    lines += [
        "With checksums verified (this folder, or a published version on S3):",
        "```python",
        "from mixture.publish.reader import ClimbMix",
        'mix = ClimbMix(".")     # or "s3://bucket/prefix" (the latest version), or "s3://bucket/prefix/<version>"',
        "for row in mix.iter_texts(): ...",
        "for ids in mix.iter_tokens(): ...",
        "```",
    ]
    return lines + (streaming_loader() if "tokens" in ctx.formats else [])


def streaming_loader() -> list[str]:
    """The PyTorch streaming loader over the `tokens/` shards (`mixture.publish.streaming`)."""
    return [
        "Streaming fixed-length windows into PyTorch (`mixture.publish.streaming`: ranks and DataLoader workers read "
        "without overlap, each shard's sha256 checked before use, `state_dict()` for an exact resume):",
        "```python",
        "from torch.utils.data import DataLoader",
        "from mixture.publish.streaming import ClimbMixStream",
        'stream = ClimbMixStream(".", seq_len=256, batch_size=8)   # or "s3://bucket/prefix"',
        "for inputs, targets in DataLoader(stream, batch_size=8, num_workers=2): ...",
        "```",
    ]


def render(ctx: CardContext) -> str:
    """The card, section by section (a pure function of the context)."""
    sections = (
        header,
        intro,
        mixture_section,
        sources_section,
        curation_section,
        dedup_section,
        clusters_section,
        tokenizer_section,
        files_section,
    )
    lines = [line for section in sections for line in section(ctx)]
    return "\n".join(lines + ["", "## Licence", "", ctx.licence, ""])


def render_card(
    cfg: Config,
    counts: dict[str, Any],
    build: dict[str, Any],
    climblab: Dataset,
    curated: Dataset | None = None,
    clusters: Dataset | None = None,
) -> str:
    return render(gather(cfg, counts, build, climblab, curated, clusters))
