"""The clusters from the user's own groups (`cluster.method: field` / `assignments`) instead of
k-means: RegMix-style domain mixing (Liu et al. 2024), with the rules of `mixture.cluster.groups`.

The groups come from a curated document field, optionally merged by a mapping file, or from an
`id -> group` file. No embeddings are read (the `embed` stage committed an empty dataset); pruning
by size and quality (scorers that need only the curated q_* signals) applies per group,
documents without a group get `cluster = -1` and are counted by reason, and final ids are
ordered by size as with k-means.

The curated metadata (no text) is read in record batches into Arrow columns: ids stay one Arrow
array (unique by their 64-bit hashes, the colliding ones compared exactly), each document's group
is an integer code (Arrow dictionary encoding of the field, or Arrow hash lookups of the
assignments file), and assignments.parquet is written one row group per `BLOCK_ROWS` documents:
no Python object per document.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixture import storage
from mixture.cluster.groups import (
    GroupError,
    Grouping,
    NumberedGroups,
    by_assignments,
    by_field,
    first_duplicate,
    number_groups,
    read_assignments,
    read_mapping,
)
from mixture.cluster.kmeans import ClusterError
from mixture.cluster.report import GroupReportInputs, build_group_report
from mixture.cluster.scorers import Scores, compute_scores
from mixture.cluster.stream import BLOCK_ROWS, curated_meta_columns
from mixture.config import ClusterConfig
from mixture.contract import StageOutput
from mixture.curate import documents
from mixture.dataset import Dataset


def group_of(cfg: ClusterConfig, meta: pa.Table) -> Grouping:
    """Each curated document's user group, by the configured method."""
    if cfg.method == "assignments":
        assert cfg.assignments is not None
        return by_assignments(meta.column("id"), read_assignments(cfg.assignments))
    assert cfg.field is not None
    if cfg.field not in meta.column_names:
        raise GroupError(
            f"cluster.field {cfg.field!r}: the curated documents have no such column (they have "
            f"{', '.join(c for c in meta.column_names if not c.startswith('q_'))} and q_* signals; "
            "the input's label field, input.source_field, is carried as `source`)"
        )
    mapping = read_mapping(cfg.mapping) if cfg.mapping else None
    return by_field(meta.column(cfg.field), mapping, cfg.unmapped)


def read_group_meta(curated: Dataset, field: str | None) -> tuple[pa.Array, pa.Table]:
    """(ids, curated metadata with the grouping field) in the curated order, streamed in record
    batches into Arrow columns (no Python object per document); ids must be unique (checked on
    their hashes, `mixture.cluster.groups.first_duplicate`)."""
    meta = documents.read_table(
        curated,
        lambda names: (
            curated_meta_columns(names)
            + ([field] if field and field in names and field not in curated_meta_columns(names) else [])
        ),
    )
    ids = meta.column("id").cast(pa.string())  # chunked: one array could not hold over 2 GiB of ids
    dup = first_duplicate(ids)
    if dup is not None:
        raise ClusterError(f"{curated.uri}: document ids are not unique (e.g. {ids[dup].as_py()!r})")
    return ids, meta


def write_group_data(w, ids: pa.Array, ng: NumberedGroups, quality: np.ndarray, scores: Scores) -> None:
    """assignments.parquet (the columns of k-means's, `cluster_init` being the user group's index,
    plus `group`), written one row group per `BLOCK_ROWS` documents, and mapping.json
    (`{user group: final id or -1}`)."""
    names = pa.array(ng.names, pa.string())
    by_name = sorted(scores.by_name.items())
    fields = [("id", pa.string()), ("cluster_init", pa.int32()), ("cluster", pa.int32()), ("quality", pa.float32())]
    schema = pa.schema(fields + [(f"score_{n}", pa.float32()) for n, _ in by_name] + [("group", pa.string())])
    with storage.open_write(w.path("assignments.parquet")) as f, pq.ParquetWriter(f, schema) as out:
        for start in range(0, max(len(ids), 1), BLOCK_ROWS):
            rows = slice(start, start + BLOCK_ROWS)
            init = ng.init[rows]
            cols = [
                ids.slice(start, BLOCK_ROWS),
                pa.array(init.astype(np.int32)),
                pa.array(ng.cluster[rows].astype(np.int32)),
                pa.array(quality[rows].astype(np.float32)),
            ]
            cols += [pa.array(values[rows].astype(np.float32)) for _, values in by_name]
            cols.append(names.take(pa.array(init, mask=init < 0)))
            out.write_table(pa.Table.from_arrays(cols, schema=schema))
    storage.write_json(w.path("mapping.json"), {g: int(m) for g, m in zip(ng.names, ng.mapping)})


def count_groups(ng: NumberedGroups, gr: Grouping) -> dict[str, int]:
    """Documents in = kept + in pruned groups + without a group, or the stage fails."""
    n = len(ng.cluster)
    kept = int((ng.cluster >= 0).sum())
    ungrouped = int((ng.init < 0).sum())
    counts = {
        "documents_in": n,
        "documents_out": kept,
        "groups": len(ng.names),
        "clusters": int((ng.mapping >= 0).sum()),
        "pruned_clusters": int(sum(r is not None for r in ng.reasons)),
        "pruned_documents": n - kept - ungrouped,
        "ungrouped_documents": ungrouped,
        "unknown_ids": gr.unknown_ids,
    }
    if kept + counts["pruned_documents"] + ungrouped != n or ungrouped != sum(gr.ungrouped.values()):
        raise ClusterError("document counts do not add up")
    return counts


def cluster_groups(
    w, cfg: ClusterConfig, seed: int, curated: Dataset, model: str | None
) -> tuple[dict, NumberedGroups, Grouping, Scores]:
    """Group, score, prune and number the curated documents, stage assignments.parquet and
    mapping.json; (the report dict with its counts, the numbered groups, the grouping, the
    scores). `model`'s tokenizer estimates the report's tokens."""
    ids, meta = read_group_meta(curated, cfg.field)
    grouping = group_of(cfg, meta)
    no_embeddings = np.zeros((len(ids), 0), dtype=np.float32)
    scores = compute_scores(cfg, seed, no_embeddings, meta, curated, None)
    quality = scores.by_name[cfg.quality.scorer]
    ng = number_groups(grouping, quality, cfg.min_cluster_size, cfg.quality.min_cluster_quality)
    write_group_data(w, ids, ng, quality, scores)
    counts = count_groups(ng, grouping)
    inp = GroupReportInputs(
        cfg=cfg,
        seed=seed,
        ids=ids,
        meta=meta,
        groups=ng,
        grouping=grouping,
        quality=quality,
        scores=scores,
        curated=curated,
        model=model,
    )
    rep = build_group_report(inp)
    rep["counts"] = counts
    return rep, ng, grouping, scores


def output(cfg: ClusterConfig, rep: dict, gr: Grouping, scores: Scores) -> StageOutput:
    """The manifest's counts, extra and summary of a version of the user's groups (before its lineage)."""
    counts = rep["counts"]
    names = {c["name"]: c["group"] for c in rep["clusters"]}
    summary = [
        (
            "clusters",
            f"{counts['groups']} user groups (cluster.method {cfg.method}) -> {counts['clusters']} "
            f"final ({counts['pruned_clusters']} pruned, {counts['pruned_documents']:,} documents), "
            f"scorer {cfg.quality.scorer}",
        ),
        ("cluster sizes", ", ".join(f"{c['name']}={c['group']}:{c['documents']}" for c in rep["clusters"])),
    ]
    if gr.ungrouped:
        summary.append(
            ("documents without a group (cluster -1)", ", ".join(f"{k} {v:,}" for k, v in gr.ungrouped.items()))
        )
    if gr.unknown_ids:
        summary.append(("assignment ids not in curated", f"{gr.unknown_ids:,} (e.g. {', '.join(gr.unknown_examples)})"))
    extra = {
        "method": cfg.method,
        "groups": names,
        "scorer": cfg.quality.scorer,
        "scorers": sorted(scores.by_name),
        "ungrouped": dict(gr.ungrouped),
        "unknown_id_examples": list(gr.unknown_examples),
        "evaluation": rep["evaluation"],
    }
    return StageOutput(counts=counts, extra=extra, summary=summary)
