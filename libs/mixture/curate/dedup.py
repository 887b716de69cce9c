"""Exact and fuzzy deduplication on Spark DataFrames.

Exact: documents whose normalised text (lowercased, whitespace collapsed) has the same SHA-1 are
one group; the smallest id survives.

Fuzzy (read top to bottom: fingerprint -> candidates -> verify -> cluster -> assign):
1. fingerprint: word-n-gram shingles, MinHash signatures and b band keys per document with numpy
   inside `mapInArrow` (`minhash.py`; the `curate` stage computes the keys in its scan);
2. candidates: LSH banding as a window over (band, key); inside each bucket a document is
   paired with the bucket's smallest id and with its predecessor in id order (2 pairs per
   member at most, so a huge bucket cannot explode into k^2 pairs);
3. verify (`fuzzy_dedup.verify`): a candidate pair is kept only when the exact Jaccard
   similarity of the two shingle sets (recomputed from the texts of the candidates only)
   reaches the threshold, so LSH false positives cost time, never a wrongly removed document,
   and (b, r) can lean towards recall;
4. cluster: connected components of the verified pairs. A few candidate pairs (at most
   `driver_max_pairs`, `curate.driver_rows`) are verified and clustered on the driver (numpy
   min-label propagation with pointer jumping), which saves the iterative Spark jobs; more stay
   on Spark with the large-star / small-star iterations of Kiveris et al. (2014, "Connected
   Components in MapReduce and Beyond"). Either way each component is a star around its
   smallest id, so a chain A~B, B~C puts A, B, C in one group even when A and C are not similar;
5. assign: every member but the smallest id is a near duplicate of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mixture.curate import minhash
from mixture.spark import checkpoint, local_frame, map_batches

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


FINGERPRINT_SCHEMA = "id string, keys array<bigint>"
SHINGLE_SCHEMA = "id string, shingles binary"
DRIVER_MAX_PAIRS = 200_000  # candidate pairs verified and clustered on the driver (at most)


def fingerprint_batches(ngram: int, num_perm: int, bands: int, rows: int, seed: int):
    """A `mapInArrow` function: batches of (id, text) -> (id, keys), the LSH band keys (none
    for a document without words: it is never a candidate)."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        hasher = minhash.MinHasher(num_perm, seed)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            hashes, offsets = minhash.shingle_batch(batch.column("text"), ngram, distinct=False)
            keys = minhash.band_keys(hasher.signatures_flat(hashes, offsets), bands, rows)
            has = np.diff(offsets) > 0
            key_off = np.zeros(batch.num_rows + 1, dtype=np.int32)
            np.cumsum(np.where(has, bands, 0), out=key_off[1:])
            key_list = pa.ListArray.from_arrays(pa.array(key_off, pa.int32()), pa.array(keys[has].ravel(), pa.int64()))
            yield pa.RecordBatch.from_arrays([batch.column("id"), key_list], names=["id", "keys"])

    return run


def shingle_batches(ngram: int):
    """A `mapInArrow` function: batches of (id, text) -> (id, shingles), each document's sorted
    unique 32-bit shingle hashes as little-endian bytes."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        for batch in batches:
            if batch.num_rows == 0:
                continue
            hashes, offsets = minhash.shingle_batch(batch.column("text"), ngram)
            shingle_bytes = pa.Array.from_buffers(
                pa.binary(),
                batch.num_rows,
                [None, pa.py_buffer((offsets * 4).astype(np.int32)), pa.py_buffer(hashes.astype("<u4").tobytes())],
            )
            yield pa.RecordBatch.from_arrays([batch.column("id"), shingle_bytes], names=["id", "shingles"])

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

    e = checkpoint(
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
        e = checkpoint(small)
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
    driver_max_pairs: int = DRIVER_MAX_PAIRS,
):
    """(id, near_of) for every near duplicate among `docs` (id, text), and FuzzyStats."""
    texts = docs.select("id", "text")
    fingerprints = fingerprint_batches(ngram, params.num_perm, params.bands, params.rows, seed)
    prints = map_batches(texts, fingerprints, FINGERPRINT_SCHEMA)
    return near_groups(
        prints,
        lambda ids, small=False: texts.join(ids, "id", "left_semi"),
        threshold,
        ngram,
        params,
        verify=verify,
        max_iterations=max_iterations,
        driver_max_pairs=driver_max_pairs,
    )


def candidate_pairs(prints):
    """LSH candidates (u, v) from (id, keys): in each (band, key) bucket, every member with the
    bucket's smallest id and with its predecessor in id order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    buckets = prints.select("id", F.posexplode("keys").alias("band", "key"))
    bucket = Window.partitionBy("band", "key").orderBy("id")
    members = buckets.withColumn("first", F.first("id").over(bucket)).withColumn("prev", F.lag("id").over(bucket))
    return (
        members.where(F.col("id") != F.col("first"))
        .select(F.col("id").alias("u"), F.col("first").alias("v"))
        .union(
            members.where(F.col("prev").isNotNull() & (F.col("prev") != F.col("first"))).select(
                F.col("id").alias("u"), F.col("prev").alias("v")
            )
        )
        .distinct()
    )


def candidate_pairs_local(ids: list[str], keys: list[list[int]]) -> list[tuple[str, str]]:
    """`candidate_pairs` on the driver, for the fingerprints of a few documents (numpy): the same
    pairs, sorted."""
    counts = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    flat = np.fromiter((v for k in keys for v in k), dtype=np.int64, count=int(counts.sum()))
    return candidate_pairs_flat(ids, counts, flat)


def candidate_pairs_flat(
    ids, counts: np.ndarray, flat: np.ndarray, offsets: np.ndarray | None = None
) -> list[tuple[str, str]]:
    """`candidate_pairs_local` from every document's band keys as one array (`counts[i]` keys of
    document i, in band order, from `offsets[i]`; by default one document after the other): no
    Python object per key, and one band at a time (memory: a few arrays of one value per
    document, whatever the number of bands). `ids` (a list, or an Arrow string array) are ranked
    by Arrow (UTF-8 order, which is code point order: Python's): only the pairs' ids become Python
    strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    if not n or counts.sum() == 0:
        return []
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    order = pc.sort_indices(ids).to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    if offsets is None:
        offsets = np.cumsum(counts) - counts
    codes = []
    for band in range(int(counts.max())):
        has = np.flatnonzero(counts > band)
        doc, key = rank[has], flat[offsets[has] + band]
        srt = np.lexsort((doc, key))
        doc, key = doc[srt], key[srt]
        start = np.r_[True, key[1:] != key[:-1]]
        first = doc[np.maximum.accumulate(np.where(start, np.arange(len(doc)), 0))]
        prev = np.r_[-1, doc[:-1]]
        with_first, with_prev = doc != first, ~start & (prev != first)
        codes += [doc[with_first] * n + first[with_first], doc[with_prev] * n + prev[with_prev]]
    # ranks follow the ids' order: pairs sorted as (u, v) numbers are sorted by id
    code = np.unique(np.concatenate(codes))
    u, v = (ids.take(pa.array(order[c])).to_pylist() for c in (code // n, code % n))
    return list(zip(u, v))


def near_groups(
    prints,
    texts_of,
    threshold: float,
    ngram: int,
    params: minhash.LSHParams,
    verify: bool = True,
    max_iterations: int = 30,
    driver_max_pairs: int = DRIVER_MAX_PAIRS,
):
    """(id, near_of) and FuzzyStats from fingerprints `prints` (id, keys); `texts_of(ids)` gives
    (id, text) of the documents in a DataFrame of ids (only candidates' texts are read again).
    Up to `driver_max_pairs` candidate pairs are verified and clustered on the driver (numpy);
    more stay on Spark (joins, `verify_batches`, large-star / small-star). Same groups either way."""
    from pyspark.sql import functions as F

    stats = FuzzyStats(params.num_perm, params.bands, params.rows)
    prints = checkpoint(prints.select("id", "keys"))
    totals = prints.agg(F.count("*").alias("n"), F.sum((F.size("keys") == 0).cast("int")).alias("empty")).first()
    stats.documents, stats.without_shingles = totals["n"], totals["empty"] or 0
    pairs = candidate_pairs(prints)
    log.debug("fuzzy dedup: %d fingerprints", stats.documents)
    few = pairs.limit(driver_max_pairs + 1).collect()
    log.debug("fuzzy dedup: %d candidate pairs (driver bound %d)", len(few), driver_max_pairs)
    spark = prints.sparkSession
    if len(few) <= driver_max_pairs:
        pairs_uv = [(r["u"], r["v"]) for r in few]
        near = near_on_driver(pairs_uv, shingles_on_spark(texts_of, spark, ngram), threshold, verify, stats)
        return local_frame(spark, near, "id string, near_of string"), stats
    return _near_on_spark(pairs, texts_of, threshold, ngram, verify, max_iterations, stats)


def shingles_on_spark(texts_of, spark, ngram: int):
    """`shingles_of` for `near_on_driver`: the documents' texts read (`texts_of`) and shingled
    on the executors, the shingle sets collected."""
    from pyspark.sql import functions as F

    def shingles_of(ids: list[str]) -> dict[str, np.ndarray]:
        wanted = F.broadcast(local_frame(spark, [(i,) for i in ids], "id string"))
        return collected_shingles(texts_of(wanted, small=True), ngram)

    return shingles_of


def collected_shingles(texts, ngram: int) -> dict[str, np.ndarray]:
    """{id: sorted unique shingle hashes} of a DataFrame's (id, text) rows, shingled on the
    executors and collected."""
    rows = map_batches(texts.select("id", "text"), shingle_batches(ngram), SHINGLE_SCHEMA).collect()
    return {r["id"]: np.frombuffer(r["shingles"], dtype="<u4") for r in rows}


def near_on_driver(pairs, shingles_of, threshold, verify, stats) -> list[tuple[str, str]]:
    """(id, near_of) of the candidate `pairs` verified (`shingles_of(ids)`: {id: sorted unique
    shingle hashes}) and clustered on the driver."""
    stats.candidate_pairs = len(pairs)
    if verify and pairs:
        sets = shingles_of(sorted({i for p in pairs for i in p}))
        pairs = [(u, v) for u, v in pairs if minhash.jaccard(sets[u], sets[v]) >= threshold]
    stats.verified_pairs = len(pairs)
    roots, stats.cc_iterations = components_on_driver(pairs)
    stats.near_duplicates, stats.groups = len(roots), len(set(roots.values()))
    return sorted(roots.items())


def components_on_driver(edges: list[tuple[str, str]]) -> tuple[dict[str, str], int]:
    """{id: smallest id of its component} for every node that is not that smallest id, and the
    rounds taken: min-label propagation with pointer jumping over numpy index arrays."""
    if not edges:
        return {}, 0
    names = np.array(sorted({i for e in edges for i in e}), dtype=object)
    index = {n: k for k, n in enumerate(names)}
    u = np.fromiter((index[a] for a, _ in edges), dtype=np.int64, count=len(edges))
    v = np.fromiter((index[b] for _, b in edges), dtype=np.int64, count=len(edges))
    label = np.arange(len(names))
    rounds = 0
    while True:
        rounds += 1
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while not np.array_equal(new[new], new):
            new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return {str(names[k]): str(names[label[k]]) for k in np.flatnonzero(label != np.arange(len(names)))}, rounds


def _near_on_spark(pairs, texts_of, threshold, ngram, verify, max_iterations, stats):
    from pyspark.sql import functions as F

    if verify:
        ids = pairs.select(F.col("u").alias("id")).union(pairs.select(F.col("v").alias("id"))).distinct()
        sh = map_batches(texts_of(ids).select("id", "text"), shingle_batches(ngram), SHINGLE_SCHEMA)
        joined = pairs.join(sh.select(F.col("id").alias("u"), F.col("shingles").alias("sh_u")), "u").join(
            sh.select(F.col("id").alias("v"), F.col("shingles").alias("sh_v")), "v"
        )
        checked = map_batches(
            joined.select("u", "v", "sh_u", "sh_v"),
            verify_batches(threshold),
            "u string, v string, jaccard double, similar boolean",
        )
    else:
        checked = pairs.withColumn("similar", F.lit(True))
    checked = checkpoint(checked)
    n = checked.agg(F.count("*").alias("candidates"), F.sum(F.col("similar").cast("int")).alias("similar")).first()
    stats.candidate_pairs, stats.verified_pairs = n["candidates"], n["similar"] or 0
    if stats.verified_pairs == 0:
        return local_frame(pairs.sparkSession, [], "id string, near_of string"), stats
    components, stats.cc_iterations = connected_components(checked.where("similar").select("u", "v"), max_iterations)
    near = components.select("id", F.col("root").alias("near_of"))
    sizes = near.agg(F.count("*").alias("n"), F.countDistinct("near_of").alias("groups")).first()
    stats.near_duplicates, stats.groups = sizes["n"], sizes["groups"]
    return near, stats
