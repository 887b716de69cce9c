"""The `climblab` dataset's incremental version (`shards` in a refresh, `mixture.increments`).

When the clusters were not rebuilt since the version this dataset covers (`increments.plan`, in
the stage), the previous version's tokenizer is kept, the parts cover only the curated files added
since (with their rows of the `assignments-vNNNN.parquet` files: `since`), and only the touched
clusters (`touched`: new or removed documents) are merged: the previous cluster less the removed
ids is the first sorted run of its merge (`mixture.climblab.merge.Carried`), so the files are
those a full build with the same tokenizer writes. `finish` keeps the untouched clusters as they
were (hard links) and carries the removal lists, adding this version's (the curated dataset's
removed ids, forwarded downstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixture import increments, storage
from mixture.climblab import TOKENIZER, cluster_name, merge, shard_prefix, text_file
from mixture.climblab.parts import Inputs, by_version, scan
from mixture.cluster.groups import assignment_files
from mixture.curate import documents
from mixture.dataset import Dataset


@dataclass(frozen=True)
class Increment:
    """An incremental run: the new documents with their assignments, and what it carries."""

    why: str
    since: dict[str, int]  # the input versions the previous climblab version covered
    inputs: Inputs  # the curated files added since the version covered, and their assignments
    removed: pa.Table  # (id, reason) the curated dataset removed since
    carried: merge.Carried  # the previous climblab version, less the removed ids

    @property
    def previous(self) -> Dataset:
        return self.carried.previous


def since(
    delta: increments.Delta, why: str, curated: Dataset, clusters: Dataset, batch_rows: int = documents.BATCH_ROWS
) -> Increment:
    """The increment `delta` (the input versions the previous version covered) makes to process:
    the curated files added since with their assignments, the ids the curated dataset removed."""
    docs = by_version(curated, documents.DOCS, delta.since["curated"])
    assigned = assignment_files(clusters, delta.since["clusters"])
    removed = delta.removed(curated, "curated")
    carried = merge.Carried(delta.previous, removed.column("id").combine_chunks().cast(pa.string()))
    return Increment(why, delta.since, Inputs(tuple(docs), tuple(assigned), batch_rows), removed, carried)


def clusters_holding(previous: Dataset, ids: pa.Array) -> list[int]:
    """The clusters of a committed climblab version that hold any of `ids` (their id columns read)."""
    found = []
    for name in sorted((previous.manifest.extra or {}).get("clusters", {})):
        with storage.open_read(previous.path(text_file(name))) as f:
            have = pq.read_table(f, columns=["id"]).column("id")
        if pc.any(pc.is_in(have, value_set=ids)).as_py():
            found.append(int(name[1:]))
    return found


def touched(inc: Increment) -> list[int]:
    """The clusters an increment rewrites: those with new documents or with removed ones."""
    new = set(scan(inc.inputs).clusters)
    if len(inc.carried.drop):
        new |= set(clusters_holding(inc.previous, inc.carried.drop))
    return sorted(new)


def finish(writer, inc: Increment) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Keep the tokenizer and the untouched clusters' files (hard links), finish the touched
    ones, carry the removal lists and add this version's (the curated dataset's removed ids,
    forwarded downstream). (clusters' counts, the lineage delta)."""
    writer.keep(inc.previous, TOKENIZER)
    names = {cluster_name(c) for c in touched(inc)}
    kept = {n: v for n, v in inc.previous.manifest.extra["clusters"].items() if n not in names}
    for n in kept:
        for rel in (shard_prefix(n) + ".bin", shard_prefix(n) + ".idx", text_file(n)):
            writer.keep(inc.previous, rel)
    info = merge.finish(writer, sorted(int(n[1:]) for n in names), carried=kept)
    increments.keep_removed(writer, inc.previous)
    increments.write_removed(writer, increments.version(inc.previous) + 1, inc.removed)
    added = merge.increment_record(writer)
    delta = {
        "clusters_touched": len(names),
        "clusters_kept": len(kept),
        "documents_added": int(added.get("documents", 0)),
        "documents_removed": int(added.get("removed", 0)),
        "tokens_added": int(added.get("tokens", 0)),
    }
    return info, delta


def describe(delta: dict[str, int], why: str) -> str:
    """The summary line of an incremental version."""
    return (
        f"incremental ({why}): {delta['clusters_touched']} clusters rewritten, {delta['clusters_kept']} kept; "
        f"{delta['documents_added']:,} documents added, {delta['documents_removed']:,} removed, "
        f"{delta['tokens_added']:,} tokens added"
    )
