"""Deduplication: shingles and MinHash (pure), LSH parameters, exact dedup, connected components
and fuzzy dedup on crafted groups (a chain A~B, B~C with A, C dissimilar ends in one group)."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from mixture.curate import dedup_groups, minhash
from mixture.curate.minhash import MinHasher, jaccard, lsh_params, shingle_batch, shingles


def base_words(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.getrandbits(32):08x}" for _ in range(n)]


def substitute(words: list[str], positions: list[int], tag: str) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = f"{tag}{p}"
    return out


# ------------------------------------------------------------------------------- pure
def test_shingles_ignore_case_punctuation_and_spacing():
    assert np.array_equal(shingles("The quick brown fox jumps over"), shingles("the QUICK, brown  fox\njumps -- over!"))
    assert len(shingles("one two three four five six")) == 2  # two 5-grams
    assert len(shingles("too short")) == 1  # one shingle of all words
    assert len(shingles("")) == 0 and len(shingles("?! ...")) == 0


def test_batch_shingles_equal_single_document_shingles():
    texts = ["alpha beta gamma delta epsilon zeta", "", "x y", "Alpha beta gamma delta epsilon", "!!"]
    hashes, offsets = shingle_batch(texts, 5)
    for i, t in enumerate(texts):
        assert np.array_equal(hashes[offsets[i] : offsets[i + 1]], shingles(t, 5))


def test_ascii_and_unicode_documents_get_the_same_words():
    """ASCII documents are normalised by a byte table, the others by Arrow's Unicode kernels: a
    document's words (runs of letters, digits and _ of the lower-cased text) decide its shingles
    whichever path it took, alone or in a batch with documents of the other kind."""
    rng = random.Random(3)
    words = ["alpha", "Beta", "GAMMA", "d3lta", "eps_ilon", "zeta", "Éta", "théta", "straße", "ΣΟΦΙΑ", "中文", "x"]
    separators = [" ", "  ", "\t", "\n", ", ", "...", " -- ", "\u2014", "\u00a0", "\u201c", " \U0001f600 ", "\x1f"]
    texts = []
    for _ in range(300):
        chosen = [rng.choice(words[: rng.choice([6, 12])]) for _ in range(rng.randint(0, 12))]
        texts.append("".join(w + rng.choice(separators) for w in chosen))
    hashes, offsets = shingle_batch(texts + [None, ""], 5)
    for i, text in enumerate(texts):
        found = re.findall(r"\w+", text.lower())
        plain = " ".join(found)  # ASCII whenever the words are
        grams = {tuple(found[j : j + 5]) for j in range(max(len(found) - 4, 1))} if found else set()
        assert len(hashes[offsets[i] : offsets[i + 1]]) == len(grams), text
        assert np.array_equal(hashes[offsets[i] : offsets[i + 1]], shingles(plain, 5)), text
        assert np.array_equal(hashes[offsets[i] : offsets[i + 1]], shingles(text, 5)), text
        assert np.array_equal(shingles(plain, 5), shingles(plain + "\u2014", 5)), text  # the other path
    assert offsets[-1] == offsets[-3]  # no shingles for a null or empty text
    # An ASCII text and its copy whose separators are non-ASCII (the Unicode path): same shingles;
    # another word (or a letter changed) is another shingle.
    ascii_text = "the quick brown fox jumps"
    assert np.array_equal(shingles(ascii_text), shingles("The\u2014quick\u00a0brown \u201cfox\u201d jumps"))
    assert not np.array_equal(shingles(ascii_text), shingles("the quick br\u00f6wn fox jumps"))


def test_minhash_takes_shingles_with_repeats_in_any_order():
    texts = [" ".join(base_words(60, seed)) + " again " * (seed % 3) for seed in range(20)] + ["", "a b"]
    texts += [texts[0] + " " + texts[0]]  # every 5-gram twice (and four across the join)
    hasher = MinHasher(64, seed=5)
    distinct = hasher.signatures_flat(*shingle_batch(texts, 5))
    repeats, offsets = shingle_batch(texts, 5, distinct=False)
    assert offsets[-1] > len(shingle_batch(texts, 5)[0])  # the last text's repeats are kept
    assert np.array_equal(hasher.signatures_flat(repeats, offsets), distinct)
    assert not np.array_equal(distinct[1], distinct[0])


def test_minhash_signature_is_the_permutations_minimum():
    # The compiled signatures against the definition (module docstring): per document and
    # permutation, min over its shingles x of ((a*x + b) mod 2^64) >> 32; no shingles: SENTINEL.
    rng = np.random.default_rng(3)
    lengths = np.array([0, 1, 7, 0, 300, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hashes = rng.integers(0, 1 << 32, offsets[-1], dtype=np.uint64).astype(np.uint32)
    hasher = MinHasher(50, seed=9)
    with np.errstate(over="ignore"):
        values = (hasher.a[None, :] * hashes.astype(np.uint64)[:, None] + hasher.b[None, :]) >> np.uint64(32)
    sig = hasher.signatures_flat(hashes, offsets)
    assert sig.shape == (6, 50) and sig.dtype == np.uint32
    for d in range(6):
        lo, hi = offsets[d], offsets[d + 1]
        expected = values[lo:hi].min(axis=0) if hi > lo else np.full(50, minhash.SENTINEL, dtype=np.uint64)
        assert np.array_equal(sig[d], expected.astype(np.uint32))


def test_exact_jaccard_of_substituted_copies():
    words = base_words()
    a = shingles(" ".join(words))
    b = shingles(" ".join(substitute(words, [20, 60, 100, 140], "x")))
    # 4 isolated substitutions break 4 x 5 of 196 five-grams: J = 176 / 216.
    assert jaccard(a, b) == pytest.approx(176 / 216)
    assert jaccard(a, a) == 1.0 and jaccard(a, shingles("")) == 0.0


def test_minhash_estimates_jaccard_and_is_deterministic():
    words = base_words(400)
    docs = [" ".join(words), " ".join(substitute(words, list(range(0, 400, 20)), "y"))]
    sets = [shingles(d) for d in docs]
    sig = MinHasher(256, seed=1).signatures(sets)
    estimate = float((sig[0] == sig[1]).mean())
    assert abs(estimate - jaccard(*sets)) < 0.08
    assert np.array_equal(sig, MinHasher(256, seed=1).signatures(sets))
    assert not np.array_equal(sig, MinHasher(256, seed=2).signatures(sets))
    keys = minhash.band_keys(sig, 32, 8)
    same_band = (sig[0].reshape(32, 8) == sig[1].reshape(32, 8)).all(axis=1)
    assert np.array_equal(keys[0] == keys[1], same_band)


def test_driver_shingle_chunks_hold_at_most_the_budget_in_words():
    n_words = np.array([300, 300, 400, 5, 1200, 0, 999, 1])
    chunks = dedup_groups.word_chunks(n_words, 1000)
    assert chunks == [(0, 3), (3, 4), (4, 5), (5, 8)]  # a row of 1200 words alone
    assert [int(n_words[a:b].sum()) for a, b in chunks] == [1000, 5, 1200, 1000]
    assert dedup_groups.word_chunks(n_words, 10**9) == [(0, 8)]
    assert dedup_groups.word_chunks(np.array([], dtype=np.int64), 1000) == []


def test_band_keys_of_a_chunked_column_find_the_pairs_its_rows_lists_find():
    import pyarrow as pa
    from mixture.curate import dedup

    lists = [[1, 2, 3], [], None, [4, 2, 9], [1, 7, 3], [5, 6, 7], [4, 8, 9]]
    keys = pa.chunked_array([pa.array(lists[:3], pa.list_(pa.int64())), pa.array(lists[3:], pa.list_(pa.int64()))])
    counts, offsets, flat = dedup_groups.band_keys(keys)
    assert [flat[o : o + c].tolist() for o, c in zip(offsets, counts)] == [v or [] for v in lists]
    ids = [f"d{i}" for i in range(len(lists))]
    reps = np.array([0, 3, 4, 6])  # some rows only, out of chunk order
    got = dedup.candidate_pairs_flat([ids[r] for r in reps], counts[reps], flat, offsets[reps])
    wanted = dedup.candidate_pairs_flat([ids[r] for r in reps], counts[reps], np.concatenate([lists[r] for r in reps]))
    assert got == wanted == [("d3", "d0"), ("d4", "d0"), ("d6", "d3")]  # a key shared in one band
    # ids as an Arrow array: ranked by Arrow in Python's order of strings (code points)
    named = ["z", "é", "中", "a"]
    by_list = dedup.candidate_pairs_flat(named, counts[reps], flat, offsets[reps])
    assert dedup.candidate_pairs_flat(pa.array(named), counts[reps], flat, offsets[reps]) == by_list
    assert by_list == [("é", "a"), ("é", "z"), ("中", "z")]  # ids ordered a < z < é < 中
    empty = dedup_groups.band_keys(pa.chunked_array([], pa.list_(pa.int64())))
    assert [len(a) for a in empty] == [0, 0, 0]


def test_lsh_parameters_from_threshold():
    chosen, table = lsh_params(0.8)
    assert [p.num_perm for p in table] == list(minhash.NUM_PERM_CANDIDATES)
    assert chosen.bands * chosen.rows <= chosen.num_perm
    # The S-curve separates: dissimilar pairs are rarely candidates, near copies almost always.
    assert chosen.probability(0.5) < 0.01 and chosen.probability(0.95) > 0.99
    # Weighting false negatives more moves the curve to the left (more recall at t).
    recall_first, _ = lsh_params(0.8, num_perm=128, fp_weight=0.2, fn_weight=0.8)
    balanced, _ = lsh_params(0.8, num_perm=128)
    assert recall_first.probability(0.8) > balanced.probability(0.8)
    given, table = lsh_params(0.8, bands=16, rows=8)
    assert (given.num_perm, given.bands, given.rows) == (128, 16, 8) and table == [given]


# ------------------------------------------------------------------------------ Spark
def test_candidate_pairs_on_the_driver_equal_spark(spark):
    from mixture.curate.dedup import candidate_pairs, candidate_pairs_local

    rng = random.Random(3)
    # 60 documents, 4 bands over a few key values: buckets of 1 to many members; one without keys.
    ids = [f"d{rng.getrandbits(20):06x}" for _ in range(60)]
    keys = [[rng.randrange(5) for _ in range(4)] for _ in ids]
    keys[7] = []
    prints = spark.createDataFrame(list(zip(ids, keys)), "id string, keys array<bigint>").repartition(3)
    expected = sorted(tuple(r) for r in candidate_pairs(prints).collect())
    assert candidate_pairs_local(ids, keys) == expected and len(expected) > 60


def test_exact_duplicates_keep_smallest_id(spark):
    from mixture.curate.dedup import exact_duplicates

    df = spark.createDataFrame(
        [("b", "h1"), ("a", "h1"), ("c", "h1"), ("d", "h2"), ("e", "h3"), ("f", "h3")], "id string, text_hash string"
    )
    got = sorted(tuple(r) for r in exact_duplicates(df).collect())
    assert got == [("b", "a"), ("c", "a"), ("f", "e")]


def test_connected_components_converge_to_smallest_id(spark):
    from mixture.curate.dedup import connected_components

    # A chain in shuffled order (worst case for label propagation), a star, and a pair given in
    # both directions; ids are strings.
    chain = [(f"n{i:02d}", f"n{i + 1:02d}") for i in range(12)]
    random.Random(0).shuffle(chain)
    star = [("s0", f"s{i}") for i in range(1, 6)]
    edges = spark.createDataFrame(chain + star + [("z2", "z1"), ("z1", "z2")], "u string, v string")
    comps, iterations = connected_components(edges.repartition(5))
    got = dict(tuple(r) for r in comps.collect())
    assert got == {**{f"n{i:02d}": "n00" for i in range(1, 13)}, **{f"s{i}": "s0" for i in range(1, 6)}, "z2": "z1"}
    assert 1 <= iterations < 10
    # The driver's numpy version gives the same roots.
    from mixture.curate.dedup import components_on_driver

    on_driver, rounds = components_on_driver(chain + star + [("z2", "z1"), ("z1", "z2")])
    assert on_driver == got and rounds >= 1


def test_near_duplicates_chain_is_one_group_with_one_survivor(spark):
    from mixture.curate.dedup import near_duplicates

    words = base_words()
    a = " ".join(words)
    b_words = substitute(words, [10, 50, 90, 130], "b")
    b = " ".join(b_words)
    c = " ".join(substitute(b_words, [30, 70, 110, 150], "c"))
    far = " ".join(substitute(words, list(range(5, 200, 25)), "f"))  # J(a, far) < 0.8
    other = " ".join(base_words(seed=9))
    sa, sb, sc, sf = (shingles(t) for t in (a, b, c, far))
    assert jaccard(sa, sb) >= 0.8 and jaccard(sb, sc) >= 0.8
    assert jaccard(sa, sc) < 0.8 and max(jaccard(sa, sf), jaccard(sb, sf), jaccard(sc, sf)) < 0.8

    docs = spark.createDataFrame(
        [("doc-c", c), ("doc-a", a), ("doc-b", b), ("doc-far", far), ("doc-other", other)], "id string, text string"
    )
    # Many short bands: every pair above ~0.5 becomes a candidate, the exact-Jaccard check decides.
    params, _ = lsh_params(0.8, num_perm=128, bands=32, rows=4)
    # Few candidate pairs are verified and clustered on the driver; with a bound of 0 (or more
    # pairs than the bound) on Spark. Both give the same groups and statistics.
    for driver_max_pairs in (1000, 0):
        near, stats = near_duplicates(
            docs.repartition(3), 0.8, 5, params, seed=0, verify=True, driver_max_pairs=driver_max_pairs
        )
        got = dict(tuple(r) for r in near.collect())
        assert got == {"doc-b": "doc-a", "doc-c": "doc-a"}, driver_max_pairs
        # The far copy was a candidate (32 bands of 4 rows catch J ~ 0.6) that verification dropped.
        assert stats.candidate_pairs > stats.verified_pairs >= 2 and stats.groups == 1
        assert (stats.documents, stats.near_duplicates) == (5, 2)
