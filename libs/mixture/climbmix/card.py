"""The dataset card (`README.md`) of a ClimbMix dataset.

It follows the Hugging Face dataset card layout (YAML header with the licence and the Parquet
files as the default configuration, its `train` and `validation` splits, then prose) and says
what a user of the shards needs to know: the mixture and how many passes over each cluster it
took, the sources and the versions of the datasets it was made from, the filters and their
thresholds, deduplication, what each cluster is about (top TF-IDF terms from the cluster
report), the tokenizer and its special tokens, the held-out validation split, the licence, the
file format and how to load it with pyarrow, Hugging Face `datasets` and `transformers`, numpy
(nanoGPT-style), Megatron-Core, `mixture.publish.reader` and `mixture.publish.streaming`; every
Python snippet runs as printed from the dataset folder, and the S3 one with a published
version's URI for `s3://my-bucket/climbmix/<version>` (`tests/climbmix/test_loading.py`).

Upstream facts come from the build's declared inputs `curated` and `clusters`: the ClimbLab
manifest names the manifest hashes of the `curated` and `clusters` it was made from, and a figure
from those datasets is shown only when the input still has that hash. "Sources" lists the input
URIs as the curated dataset's manifest records them (as configured, relative paths unresolved:
never a path of the machine the build ran on), else as this build's config wrote them. The "Files" and "Loading"
sections list the output formats the build wrote (`mixture.climbmix.formats`). The title is made of the
dataset's own content (its size, clusters and the mixture's sha256), and the card holds no
timestamps, so the same data gives the same card (and the same content hash).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mixture import increments, storage
from mixture.climblab import cluster_name
from mixture.climbmix.formats import VALIDATION
from mixture.config import Config
from mixture.curate.filters import enabled_settings
from mixture.dataset import Dataset, content_hash
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
    sources_from: str  # where the source list comes from, in words
    upstream: list[tuple[str, int, str, bool]]  # (dataset, lineage version, content or manifest hash, reachable)
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


def _sources(cfg: Config, curated: Dataset | None) -> tuple[list[str], str]:
    """The input URIs as the curated dataset's manifest records them, else as the config wrote
    them (both as configured: a relative path is not resolved against any directory)."""
    recorded = curated.manifest.extra.get("sources") if curated is not None else None
    if isinstance(recorded, list) and recorded:
        return [str(u) for u in recorded], "as configured for curation, recorded in the curated dataset's manifest"
    return cfg.input.configured_uris, "as this build's configuration names them (the curated dataset records none)"


def _upstream(climblab: Dataset, found: dict[str, Dataset | None]) -> list[tuple[str, int, str, bool]]:
    """(name, lineage version, hash, reachable) of the ClimbLab dataset and of the datasets its
    manifest names (`found`: those reachable with that manifest). The hash of a reachable dataset
    is its content hash (files, sizes, checksums: the same data gives the same card, whatever the
    manifests' timestamps); of an unreachable one, the manifest sha256 the ClimbLab recorded."""
    out = [("climblab", increments.version(climblab), "content " + content_hash(climblab.manifest.files), True)]
    for name, sha in sorted(climblab.manifest.inputs.items()):
        ds = found.get(name)
        digest = "content " + content_hash(ds.manifest.files) if ds is not None else "manifest " + sha
        out.append((name, increments.version(ds), digest, ds is not None))
    return out


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
    sources, sources_from = _sources(cfg, curated)
    return CardContext(
        title=title(counts, build),
        counts=counts,
        build=build,
        licence=cfg.build.licence,
        sources=sources,
        sources_from=sources_from,
        upstream=_upstream(climblab, {"curated": curated, "clusters": clusters}),
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
        if _validation(ctx).get("shards"):
            lines += ["  - split: validation", f"    path: {VALIDATION}{data_files[0]}"]
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
    lines = ["", "## Sources", "", f"Input files, {ctx.sources_from}:", ""] + [f"- `{s}`" for s in ctx.sources]
    lines += ["", f"Input format: {ctx.input_format}.", "", "Made from these datasets of the pipeline:", ""]
    for name, version, sha, reachable in ctx.upstream:
        where = "" if reachable else " (not reachable from this build)"
        kind, digest = sha.split(" ", 1)
        lines.append(f"- {name}: {f'version {version}, ' if version else ''}{kind} sha256 `{digest[:16]}`{where}")
    return lines


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


def _validation(ctx: CardContext) -> dict[str, Any]:
    return ctx.build.get("validation") or {}


def tokenizer_section(ctx: CardContext) -> list[str]:
    b = ctx.build
    special = b.get("special_tokens") or {}
    eos, pad = special.get("eos_token", "?"), special.get("pad_token", "?")
    return [
        "",
        "## Tokenizer",
        "",
        f"`tokenizer/tokenizer.json` (Hugging Face `tokenizers`), vocabulary {_n(b['vocab_size'])}, token ids "
        f"stored as little-endian `{b['dtype']}`. Every document ends with the end-of-document token `{eos}` "
        f"(id {b['eos_id']}), also the tokenizer's eos and bos token (GPT-2's convention: no document starts with "
        f"it); the padding token is `{pad}` (id {special.get('pad_id', '?')}). `tokenizer_config.json` and "
        "`special_tokens_map.json` name them for Hugging Face `transformers`, `tokenizer_metadata.json` for "
        "Megatron-Core's tokenizer (library `huggingface`), so both load the folder without arguments:",
        "```python",
        "from transformers import AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("tokenizer")',
        "eos_id, pad_id = tok.eos_token_id, tok.pad_token_id",
        "```",
        "Megatron-LM: `--tokenizer-type HuggingFaceTokenizer --tokenizer-model tokenizer` (its `eod` and `pad` "
        "come from these files).",
    ]


def validation_section(ctx: CardContext) -> list[str]:
    """The held-out split: how it was chosen, and each format's files for it."""
    v = _validation(ctx)
    if not v.get("documents"):
        return ["", "## Validation split", "", "None: built with `build.val_fraction` 0."]
    lines = [
        "",
        "## Validation split",
        "",
        f"{_n(v['documents'])} documents, {_n(v['tokens'])} tokens, held out before sampling: about "
        f"{v['fraction']:g} of each cluster's share of the tokens, taken among its distinct documents (told apart "
        "by a hash of their token ids), so the split has the mixture's composition. Neither these documents nor "
        f"an exact copy of one are in any training file ({_n(v['copies_excluded'])} exact copies kept out of "
        "training); an upsampled cluster repeats only training documents. `validation/` holds the split in every "
        "format's layout:",
        "",
    ]
    for f in _formats(ctx):
        lines += f.card_validation(ctx.build["dtype"]) if hasattr(f, "card_validation") else []
    return lines


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
    return lines + (streaming_loader(bool(_validation(ctx).get("documents"))) if "tokens" in ctx.formats else [])


def streaming_loader(validation: bool) -> list[str]:
    """The PyTorch streaming loader over the `tokens/` shards (`mixture.publish.streaming`)."""
    held = 'held_out = ClimbMixStream(".", seq_len=256, split="validation")   # the validation split\'s windows'
    return [
        "Streaming fixed-length windows into PyTorch (`mixture.publish.streaming`: ranks and DataLoader workers read "
        "without overlap, each shard's sha256 checked before use). `ClimbMixLoader` is the DataLoader that tells "
        "the stream its batch size (a plain DataLoader with workers is refused: a resume would repeat or skip "
        "windows). To resume, save `stream.state_dict()` with the checkpoint and call `stream.load_state_dict(state)` "
        "before iterating again: that pass continues at the next window, and every later pass starts at the first.",
        "```python",
        "from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream",
        'stream = ClimbMixStream(".", seq_len=256)   # or "s3://bucket/prefix"',
        "loader = ClimbMixLoader(stream, batch_size=8, num_workers=2)",
        "for inputs, targets in loader: ...",
        "state = stream.state_dict()   # beside the checkpoint",
        *([held] if validation else []),
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
        validation_section,
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
