"""Exact and fuzzy deduplication on Spark DataFrames.

Exact: documents whose normalised text (lowercased, whitespace collapsed) has the same SHA-1 are
one group; the smallest id survives.

Fuzzy (read top to bottom: fingerprint -> candidates -> verify -> cluster -> assign):
1. fingerprint: word-n-gram shingles and MinHash signatures with numpy inside `mapInArrow`
   (`minhash.py`), one row per document with its shingle hashes and its b band keys;
2. candidates: LSH banding as a DataFrame `groupBy`-like window over (band, key); inside each
   bucket a document is paired with the bucket's smallest id and with its predecessor in id
   order (2 pairs per member at most, so a huge bucket cannot explode into k^2 pairs);
3. verify (`fuzzy_dedup.verify`): a candidate pair is kept only when the exact Jaccard
   similarity of the two shingle sets reaches the threshold, so LSH false positives cost time,
   never a wrongly removed document, and (b, r) can lean towards recall;
4. cluster: connected components of the verified pairs with the large-star / small-star
   iterations of Kiveris et al. (2014, "Connected Components in MapReduce and Beyond"); each
   component converges to a star around its smallest id whatever the partitioning, so a chain
   A~B, B~C puts A, B, C in one group even when A and C are not similar;
5. assign: every member but the smallest id is a near duplicate of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mixture.curate import minhash

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- exact
def exact_duplicates(df):
    """(id, exact_of) for every document whose text hash an earlier (smaller) id already has.
    `df` has columns id, text_hash."""
    from pyspark.sql import functions as F

    reps = df.groupBy("text_hash").agg(F.min("id").alias("exact_of"))
    return df.join(reps, "text_hash").where(F.col("id") != F.col("exact_of")).select("id", "exact_of")


# ------------------------------------------------------------------------------- fuzzy
@dataclass
class FuzzyStats:
    num_perm: int
    bands: int
    rows: int
    documents: int = 0
    without_shingles: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    cc_iterations: int = 0
    near_duplicates: int = 0
    groups: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


FINGERPRINT_SCHEMA = "id string, shingles binary, keys array<bigint>"


def fingerprint_batches(ngram: int, num_perm: int, bands: int, rows: int, seed: int):
    """A `mapInArrow` function: batches of (id, text) -> (id, shingles, keys)."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        hasher = minhash.MinHasher(num_perm, seed)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            hashes, offsets = minhash.shingle_batch(batch.column("text"), ngram)
            sig = hasher.signatures_flat(hashes, offsets)
            keys = minhash.band_keys(sig, bands, rows)
            has = np.diff(offsets) > 0
            # Documents without any word have no shingles and no band keys: never candidates.
            key_counts = np.where(has, bands, 0)
            key_off = np.zeros(batch.num_rows + 1, dtype=np.int32)
            np.cumsum(key_counts, out=key_off[1:])
            shingle_bytes = pa.Array.from_buffers(
                pa.binary(),
                batch.num_rows,
                [None, pa.py_buffer((offsets * 4).astype(np.int32)), pa.py_buffer(hashes.astype("<u4").tobytes())],
            )
            key_list = pa.ListArray.from_arrays(pa.array(key_off, pa.int32()), pa.array(keys[has].ravel(), pa.int64()))
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), shingle_bytes, key_list], names=["id", "shingles", "keys"]
            )

    return run


def verify_batches(threshold: float):
    """A `mapInArrow` function: candidate pairs with both shingle sets -> every pair with its
    exact Jaccard similarity and whether it reaches `threshold`."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        for batch in batches:
            if batch.num_rows == 0:
                continue
            a_list = batch.column("sh_u").to_pylist()
            b_list = batch.column("sh_v").to_pylist()
            sims = np.array(
                [
                    minhash.jaccard(np.frombuffer(a, dtype="<u4"), np.frombuffer(b, dtype="<u4"))
                    for a, b in zip(a_list, b_list)
                ],
                dtype=np.float64,
            )
            yield pa.RecordBatch.from_arrays(
                [batch.column("u"), batch.column("v"), pa.array(sims), pa.array(sims >= threshold)],
                names=["u", "v", "jaccard", "similar"],
            )

    return run


def _checkpoint(df):
    # Iterative jobs: materialise each round and cut the lineage so plans stay small.
    return df.localCheckpoint(eager=True)


def _is_star_forest(e) -> bool:
    """True when every node has at most one parent and no node is both a parent and a child
    (edges point from larger to smaller ids): each component is a star around its minimum."""
    from pyspark.sql import functions as F

    roles = (
        e.select("u", F.lit(1).alias("as_child"), F.lit(0).alias("as_parent"))
        .union(e.select(F.col("v").alias("u"), F.lit(0).alias("as_child"), F.lit(1).alias("as_parent")))
        .groupBy("u")
        .agg(F.sum("as_child").alias("parents"), F.max("as_parent").alias("is_parent"))
        .agg(
            F.max("parents").alias("max_parents"),
            F.max(F.when(F.col("parents") > 0, F.col("is_parent")).otherwise(0)).alias("inner"),
        )
        .first()
    )
    return roles is None or roles["max_parents"] is None or (roles["max_parents"] <= 1 and roles["inner"] == 0)


def connected_components(edges, max_iterations: int = 30):
    """(u, root) for every node that is not the smallest id of its component, from undirected
    `edges` (u, v) with u != v; returns (DataFrame, iterations). Large-star / small-star
    alternation until every edge points from a node to its component's minimum."""
    from pyspark.sql import functions as F

    e = _checkpoint(
        edges.select(F.greatest("u", "v").alias("u"), F.least("u", "v").alias("v"))
        .where(F.col("u") != F.col("v"))
        .distinct()
    )
    # Near duplicates are mostly pairs and small stars already: then there is nothing to iterate.
    if _is_star_forest(e):
        return e.select(F.col("u").alias("id"), F.col("v").alias("root")), 0
    for iteration in range(1, max_iterations + 1):
        # Large-star: every neighbour larger than u links to the minimum of u's neighbourhood.
        both = e.select("u", "v").union(e.select(F.col("v").alias("u"), F.col("u").alias("v")))
        m = both.groupBy("u").agg(F.min("v").alias("m")).withColumn("m", F.least("m", "u"))
        large = (
            both.join(m, "u")
            .where(F.col("v") > F.col("u"))
            .select(F.col("v").alias("u"), F.col("m").alias("v"))
            .distinct()
        )
        # Small-star: u and its smaller neighbours all link to the smallest of them.
        m2 = large.groupBy("u").agg(F.min("v").alias("m"))
        small = (
            large.join(m2, "u")
            .select(F.col("v").alias("u"), F.col("m").alias("v"))
            .where(F.col("u") != F.col("v"))
            .union(m2.select("u", F.col("m").alias("v")))
            .distinct()
        )
        e = _checkpoint(small)
        if _is_star_forest(e):
            return e.select(F.col("u").alias("id"), F.col("v").alias("root")), iteration
    raise RuntimeError(
        f"connected components did not converge in {max_iterations} iterations "
        "(raise curate.fuzzy_dedup.max_cc_iterations)"
    )


def near_duplicates(
    docs,
    threshold: float,
    ngram: int,
    params: minhash.LSHParams,
    seed: int,
    verify: bool = True,
    max_iterations: int = 30,
):
    """(id, near_of) for every near duplicate among `docs` (id, text), and FuzzyStats."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stats = FuzzyStats(params.num_perm, params.bands, params.rows)
    prints = docs.select("id", "text").mapInArrow(
        fingerprint_batches(ngram, params.num_perm, params.bands, params.rows, seed), FINGERPRINT_SCHEMA
    )
    prints = prints.persist(StorageLevel.MEMORY_AND_DISK)
    totals = prints.agg(F.count("*").alias("n"), F.sum((F.size("keys") == 0).cast("int")).alias("empty")).first()
    stats.documents, stats.without_shingles = totals["n"], totals["empty"] or 0

    buckets = prints.select("id", F.posexplode("keys").alias("band", "key"))
    bucket = Window.partitionBy("band", "key").orderBy("id")
    members = buckets.withColumn("first", F.first("id").over(bucket)).withColumn("prev", F.lag("id").over(bucket))
    pairs = (
        members.where(F.col("id") != F.col("first"))
        .select(F.col("id").alias("u"), F.col("first").alias("v"))
        .union(
            members.where(F.col("prev").isNotNull() & (F.col("prev") != F.col("first"))).select(
                F.col("id").alias("u"), F.col("prev").alias("v")
            )
        )
        .distinct()
    )
    if verify:
        sh = prints.select("id", "shingles")
        joined = pairs.join(sh.select(F.col("id").alias("u"), F.col("shingles").alias("sh_u")), "u").join(
            sh.select(F.col("id").alias("v"), F.col("shingles").alias("sh_v")), "v"
        )
        checked = joined.select("u", "v", "sh_u", "sh_v").mapInArrow(
            verify_batches(threshold), "u string, v string, jaccard double, similar boolean"
        )
    else:
        checked = pairs.withColumn("similar", F.lit(True))
    checked = _checkpoint(checked)
    n = checked.agg(F.count("*").alias("candidates"), F.sum(F.col("similar").cast("int")).alias("similar")).first()
    stats.candidate_pairs, stats.verified_pairs = n["candidates"], n["similar"] or 0
    edges = checked.where("similar").select("u", "v")
    prints.unpersist()

    if stats.verified_pairs == 0:
        empty = docs.sparkSession.createDataFrame([], "id string, near_of string")
        return empty, stats
    components, stats.cc_iterations = connected_components(edges, max_iterations)
    near = components.select("id", F.col("root").alias("near_of"))
    sizes = near.agg(F.count("*").alias("n"), F.countDistinct("near_of").alias("groups")).first()
    stats.near_duplicates, stats.groups = sizes["n"], sizes["groups"]
    return near, stats
