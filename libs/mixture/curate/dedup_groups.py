"""The dedup groups of the annotated documents (steps 3-4 of `mixture.curate.dedup`): which
documents are exact or near copies of which, and the corrections `annotate` writes for them.

Only small columns are shuffled. A few candidate pairs (at most `curate.driver_rows`) are verified
and grouped on the driver from `identify`'s rows (`groups_on_driver`); more stay on Spark
(`on_spark`). `decide` picks the path; both give the same groups.
"""

from __future__ import annotations

import logging

from mixture.config import Config
from mixture.curate import dedup, minhash

log = logging.getLogger(__name__)


def texts_of(scored, locations):
    """`texts_of` for `dedup.near_groups`: (id, text) of the curated ids in a DataFrame `ids`,
    read from the persisted scan by (file, line); a broadcast when the ids are few."""
    from pyspark.sql import functions as F

    def texts(ids, small: bool = False):
        located = locations.join(ids, "id", "left_semi")
        located = F.broadcast(located) if small else located
        good = scored.where(F.col("reason").isNull())  # a quarantined record can share (file, line)
        return good.select("file", "line", "text").join(located, ["file", "line"]).select("id", "text")

    return texts


def on_spark(ident, scored, cfg: Config, params: minhash.LSHParams):
    """Steps 3-4: (file, line, exact_group, near_group) for every document of `ident` that is
    not a duplicate id, and the fuzzy-dedup statistics. `exact_group` is null for a document
    whose text no other has; `near_group` is null for one with no near duplicate (an exact
    copy is one: its group is then its exact group). Only small columns are shuffled."""
    from pyspark.sql import functions as F

    fz = cfg.curate.fuzzy_dedup
    docs = ident.where(~F.col("dup")).select(F.col("doc_id").alias("id"), "file", "line", "text_hash", "keys")
    exact = docs.groupBy("text_hash").agg(F.min("id").alias("exact_rep"), F.count("*").alias("copies"))
    members = docs.join(exact, "text_hash").localCheckpoint(eager=True)
    reps = members.where(F.col("id") == F.col("exact_rep")).select("id", "keys")
    near, stats = dedup.near_groups(
        reps,
        texts_of(scored, members.select("id", "file", "line")),
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


def groups_on_driver(table, scored, cfg: Config, params: minhash.LSHParams):
    """Steps 3-4 and the corrections for a few documents (at most `curate.driver_rows`): the
    same as `on_spark` + `corrections`, from `identify`'s rows as one Arrow table on the
    driver; only the candidates' texts are read again on Spark. Returns (corrections, stats)."""
    fz = cfg.curate.fuzzy_dedup
    rows = table.to_pydict()
    keep = [i for i, d in enumerate(rows["dup"]) if not d]
    exact: dict[str, list[int]] = {}
    for i in keep:
        exact.setdefault(rows["text_hash"][i], []).append(i)
    rep_of = {h: min(members, key=lambda i: rows["doc_id"][i]) for h, members in exact.items()}
    reps = sorted(rep_of.values(), key=lambda i: rows["doc_id"][i])
    stats = dedup.FuzzyStats(params.num_perm, params.bands, params.rows, documents=len(reps))
    stats.without_shingles = sum(1 for i in reps if not rows["keys"][i])
    pairs = dedup.candidate_pairs_local([rows["doc_id"][i] for i in reps], [rows["keys"][i] or [] for i in reps])
    spark = scored.sparkSession
    if len(pairs) > cfg.curate.driver_rows:
        raise TooMany()
    locations = spark.createDataFrame(
        [(rows["doc_id"][i], rows["file"][i], rows["line"][i]) for i in reps], "id string, file string, line bigint"
    )
    near = dict(
        dedup.near_on_driver(pairs, texts_of(scored, locations), spark, fz.threshold, fz.ngram, fz.verify, stats)
    )
    roots = set(near.values())
    out = []
    for i in range(len(rows["doc_id"])):
        doc_id, dup = rows["doc_id"][i], rows["dup"][i]
        exact_group = near_group = None
        if not dup:
            members = exact[rows["text_hash"][i]]
            rep = rows["doc_id"][rep_of[rows["text_hash"][i]]]
            exact_group = rep if len(members) > 1 else None
            near_group = near.get(rep, rep if rep in roots else exact_group)
        if dup or doc_id != rows["id"][i] or exact_group is not None or near_group is not None:
            out.append((rows["file"][i], rows["line"][i], doc_id, dup, rows["retracted"][i], exact_group, near_group))
    return spark.createDataFrame(out, CORRECTIONS_SCHEMA), stats


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


def decide(table, ident, scored, cfg: Config, params: minhash.LSHParams):
    """(corrections, stats): on the driver when `table` (identify's rows) was collected and the
    candidate pairs are few, else on Spark."""
    if table is not None:
        try:
            return groups_on_driver(table, scored, cfg, params)
        except TooMany:
            log.info("curate: more than %d candidate pairs: groups on Spark", cfg.curate.driver_rows)
    groups, stats = on_spark(ident, scored, cfg, params)
    return corrections(ident, groups), stats
