"""The dedup groups of the annotated documents (steps 3-4 of `mixture.curate.dedup`): which
documents are exact or near copies of which, and the corrections `annotate` writes for them.

Only small columns are shuffled. A few candidate pairs (at most `curate.driver_rows`) are verified
and grouped on the driver from `identify`'s rows (`groups_on_driver`); more stay on Spark
(`on_spark`). `decide` picks the path; both give the same groups.
"""

from __future__ import annotations

import logging

import numpy as np

from mixture.config import Config
from mixture.curate import dedup, minhash, texts
from mixture.spark import checkpoint, give_back_memory, local_frame

log = logging.getLogger(__name__)


def texts_of(locations, texts_folder: str):
    """`texts_of` for `dedup.near_groups`: (id, text) of the curated ids in a DataFrame `ids`,
    `locations` (id, split, pos) giving where the scan put their texts (`mixture.curate.texts`)."""
    from pyspark.sql import functions as F

    def texts_by_id(ids, small: bool = False):
        located = locations.join(F.broadcast(ids) if small else ids, "id", "left_semi")
        return texts.with_texts(located, texts_folder).select("id", "text")

    return texts_by_id


def on_spark(ident, cfg: Config, params: minhash.LSHParams, texts_folder: str):
    """Steps 3-4: (file, line, exact_group, near_group) for every document of `ident` that is
    not a duplicate id, and the fuzzy-dedup statistics. `exact_group` is null for a document
    whose text no other has; `near_group` is null for one with no near duplicate (an exact
    copy is one: its group is then its exact group). Only small columns are shuffled."""
    from pyspark.sql import functions as F

    fz = cfg.curate.fuzzy_dedup
    docs = ident.where(~F.col("dup")).select(
        F.col("doc_id").alias("id"), "file", "line", "split", "pos", "text_hash", "keys"
    )
    exact = docs.groupBy("text_hash").agg(F.min("id").alias("exact_rep"), F.count("*").alias("copies"))
    members = checkpoint(docs.join(exact, "text_hash"))
    reps = members.where(F.col("id") == F.col("exact_rep")).select("id", "keys")
    near, stats = dedup.near_groups(
        reps,
        texts_of(members.select("id", "split", "pos"), texts_folder),
        fz.threshold,
        fz.ngram,
        params,
        verify=fz.verify,
        max_iterations=fz.max_cc_iterations,
        driver_max_pairs=cfg.curate.driver_rows,
    )
    roots = near.select(F.col("near_of").alias("exact_rep")).distinct().withColumn("is_root", F.lit(True))
    rep_group = (
        near.select(F.col("id").alias("exact_rep"), F.col("near_of"))
        .join(roots, "exact_rep", "full_outer")
        .select(
            "exact_rep", F.coalesce("near_of", F.when(F.col("is_root"), F.col("exact_rep"))).alias("rep_near_group")
        )
    )
    exact_group = F.when(F.col("copies") > 1, F.col("exact_rep"))
    groups = members.join(rep_group, "exact_rep", "left").select(
        "file", "line", exact_group.alias("exact_group"), F.coalesce("rep_near_group", exact_group).alias("near_group")
    )
    return groups, stats


CORRECTIONS_SCHEMA = (
    "file string, line bigint, doc_id string, dup boolean, retracted boolean, exact_group string, near_group string"
)


CORRECTED = ["file", "line", "doc_id", "retracted"]  # what a correction copies from identify's row


def groups_on_driver(table, spark, cfg: Config, params: minhash.LSHParams, texts_folder: str):
    """Steps 3-4 and the corrections for a few documents (at most `curate.driver_rows`): the
    same as `on_spark` + `corrections`, from `identify`'s rows as one Arrow table on the
    driver. The table is never copied whole: rows are addressed by index (numpy), the band keys
    read as one array (`band_keys`), and only the columns a step needs are gathered (the
    exact-group representatives' ids, the rows that get a correction); only the candidates' texts
    are read again. Returns (corrections, stats)."""
    fz = cfg.curate.fuzzy_dedup
    rows, first = exact_groups(table)
    starts = np.flatnonzero(first)
    reps = rows[starts]  # table rows of the exact groups' representatives (smallest id)
    counts, offsets, flat = band_keys(table.column("keys"))
    counts, offsets = counts[reps], offsets[reps]
    rep_ids = table.column("doc_id").take(reps).combine_chunks()
    stats = dedup.FuzzyStats(params.num_perm, params.bands, params.rows, documents=len(reps))
    stats.without_shingles = int((counts == 0).sum())
    pairs = dedup.candidate_pairs_flat(rep_ids, counts, flat, offsets)
    del flat, offsets
    if len(pairs) > cfg.curate.driver_rows:
        raise TooMany()
    give_back_memory()  # the keys and the pairs' work arrays, before the candidates' shingles
    shingles_of = candidates_shingles(table, reps, rep_ids, spark, texts_folder, fz.ngram)
    near = dict(dedup.near_on_driver(pairs, shingles_of, fz.threshold, fz.verify, stats))
    out = changed_rows(table, rows, np.cumsum(first) - 1, rep_ids, near)
    dups = table.filter(table.column("dup")).select(CORRECTED).to_pylist()
    out += [(r["file"], r["line"], r["doc_id"], True, r["retracted"], None, None) for r in dups]
    return local_frame(spark, out, CORRECTIONS_SCHEMA), stats


def changed_rows(table, rows: np.ndarray, group: np.ndarray, rep_ids, near: dict[str, str]) -> list[tuple]:
    """The corrections of the kept rows (`rows`, table indices, in group order; `group`: each
    one's exact group, whose representative's id is `rep_ids[group]`) that a group or a new id
    changes: exact group = the representative when the group has copies, near group = `near`'s
    root of the representative (else the exact group). Ids become Python strings for these rows
    only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sizes = np.bincount(group, minlength=len(rep_ids))
    linked = sorted(set(near) | set(near.values()))
    where = pc.index_in(pa.array(linked, pa.string()), value_set=rep_ids).to_numpy(zero_copy_only=False)
    near_of = {g: near.get(rep, rep) for rep, g in zip(linked, where.tolist())}  # per group
    changed_group = sizes > 1
    changed_group[where.astype(np.int64)] = True
    renamed = pc.not_equal(table.column("doc_id"), table.column("id")).to_numpy(zero_copy_only=False)[rows]
    changed = np.flatnonzero(changed_group[group] | renamed)
    groups = group[changed]
    names = rep_ids.take(pa.array(groups)).to_pylist()
    exact = [name if n > 1 else None for name, n in zip(names, sizes[groups].tolist())]
    return [
        (r["file"], r["line"], r["doc_id"], False, r["retracted"], e, near_of.get(g, e))
        for r, g, e in zip(table.select(CORRECTED).take(rows[changed]).to_pylist(), groups.tolist(), exact)
    ]


def band_keys(keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts, offsets, flat) of a chunked column of band key lists (`identify`'s `keys`): row
    i's keys are `flat[offsets[i] : offsets[i] + counts[i]]` (none for a null list). One copy of
    the keys, where taking some rows' lists of a chunked column first joins its chunks and then
    copies the rows' lists (two copies at once, bench/RESULTS.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = keys.chunks or [pa.array([], keys.type)]
    counts = np.concatenate([pc.fill_null(pc.list_value_length(c), 0).to_numpy().astype(np.int64) for c in chunks])
    flat = np.concatenate([pc.list_flatten(c).to_numpy().astype(np.int64, copy=False) for c in chunks])
    return counts, np.cumsum(counts) - counts, flat


def exact_groups(table) -> tuple[np.ndarray, np.ndarray]:
    """The exact groups of `identify`'s rows that are not duplicate ids: (rows, first), the rows'
    indices in the table ordered by (text hash, curated id), and whether each starts its group
    (the group's smallest id, its representative)."""
    import pyarrow.compute as pc

    kept = np.flatnonzero(~table.column("dup").to_numpy())
    by = table.select(["text_hash", "doc_id"]).take(kept)
    order = pc.sort_indices(by, [("text_hash", "ascending"), ("doc_id", "ascending")]).to_numpy()
    hashes = by.column("text_hash").take(order).combine_chunks()
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = pc.not_equal(hashes[1:], hashes[:-1]).to_numpy(zero_copy_only=False)
    return kept[order], first


# The candidates' texts are read and shingled on the driver when they hold at most this many words
# (~300 ns a word on one core: ~5 s at the bound, where shingling them on the executors costs
# seconds more in Spark jobs and the shingles' trip back at every size measured, 3-12M words; the
# kept hashes are 4 bytes a shingle: 64 MB at the bound), on the executors above it
# (bench/RESULTS.md, "The candidates' shingles on the driver" and "... in word-bounded chunks").
DRIVER_SHINGLE_WORDS = 16_000_000
# Words read and shingled at a time on the driver (~100 bytes a word meanwhile: ~25 MB), each
# chunk's work memory given back before the next (bench/RESULTS.md, "... the driver's groups").
SHINGLE_CHUNK_WORDS = 250_000


def candidates_shingles(table, reps: np.ndarray, rep_ids, spark, texts_folder: str, ngram: int):
    """`shingles_of` for `dedup.near_on_driver`: the shingle sets of candidate documents among
    the representatives `reps`, from the scan's texts files (`mixture.curate.texts`): read and
    shingled on the driver, `SHINGLE_CHUNK_WORDS` words at a time in file order, when their words
    are few (`DRIVER_SHINGLE_WORDS`), else on the executors (`dedup.collected_shingles`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def shingles_of(ids: list[str]) -> dict[str, np.ndarray]:
        located = reps[pc.is_in(rep_ids, value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)]
        where = table.select(["doc_id", "split", "pos", "n_words"]).take(located)
        if (pc.sum(where.column("n_words")).as_py() or 0) > DRIVER_SHINGLE_WORDS:
            locations = spark.createDataFrame(
                where.select(["doc_id", "split", "pos"]).rename_columns(["id", "split", "pos"])
            )
            return dedup.collected_shingles(texts.with_texts(locations, texts_folder), ngram)
        return shingles_on_driver(where.sort_by([("split", "ascending"), ("pos", "ascending")]), texts_folder, ngram)

    return shingles_of


def shingles_on_driver(where, texts_folder: str, ngram: int) -> dict[str, np.ndarray]:
    """{doc_id: sorted unique shingle hashes} of the rows of `where` (doc_id, split, pos, n_words),
    their texts read from the texts files in chunks of at most `SHINGLE_CHUNK_WORDS` words; as
    `dedup.shingle_batches` computes them."""
    import pyarrow.compute as pc

    reader = texts.TextReader(texts_folder)
    out: dict[str, np.ndarray] = {}
    try:
        n_words = pc.fill_null(where.column("n_words"), 0).to_numpy(zero_copy_only=False)
        for start, stop in word_chunks(n_words, SHINGLE_CHUNK_WORDS):
            chunk = where.slice(start, stop - start)
            split, pos = (chunk.column(c).to_numpy() for c in ("split", "pos"))
            hashes, offsets = minhash.shingle_batch(reader.take(split, pos), ngram)
            hashes = hashes.astype("<u4", copy=False)
            for k, doc in enumerate(chunk.column("doc_id").to_pylist()):
                out[doc] = hashes[offsets[k] : offsets[k + 1]]
            del hashes, offsets
            give_back_memory()  # the chunk's work arrays: each chunk's peak, not their sum
    finally:
        reader.close()
    return out


def word_chunks(n_words: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [start, stop) that cover every row, each holding at most `budget`
    words (a row with more is a range of its own): a chunk's transient memory follows its
    words, not its number of documents."""
    ends = np.cumsum(np.asarray(n_words, dtype=np.int64))
    chunks, start = [], 0
    while start < len(ends):
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + budget, side="right")))
        chunks.append((start, stop))
        start = stop
    return chunks


class TooMany(Exception):
    """More candidate pairs than the driver takes: the distributed path runs instead."""


def corrections(ident, groups):
    """What the write changes in a good record, keyed by (file, line): its curated id, whether
    it is a duplicate id, its groups; only records with something to change (few, usually)."""
    from pyspark.sql import functions as F

    meta = ident.select("file", "line", "id", "doc_id", "dup", "retracted").join(groups, ["file", "line"], "left")
    changed = (
        F.col("dup")
        | (F.col("doc_id") != F.col("id"))
        | F.col("exact_group").isNotNull()
        | F.col("near_group").isNotNull()
    )
    return meta.where(changed).drop("id")


def decide(table, ident, cfg: Config, params: minhash.LSHParams, texts_folder: str):
    """(corrections, stats): on the driver when `table` (identify's rows) was collected and the
    candidate pairs are few (the corrections then a DataFrame of the driver's rows), else on
    Spark (checkpointed). The candidates' texts are read from `texts_folder`."""
    if table is not None:
        try:
            return groups_on_driver(table, ident.sparkSession, cfg, params, texts_folder)
        except TooMany:
            log.info("curate: more than %d candidate pairs: groups on Spark", cfg.curate.driver_rows)
    groups, stats = on_spark(ident, cfg, params, texts_folder)
    return checkpoint(corrections(ident, groups)), stats
