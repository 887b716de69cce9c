"""Stage `cluster`: deterministic spherical k-means, pruning and Ward merging with known
answers, and the committed dataset with its report (docs/DATASETS.md, "clusters")."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.curated import base_config, make_curated, pick
from mixture import pipeline
from mixture.cluster.evaluation import nmi, purity
from mixture.cluster.kmeans import ClusterError, effective_k, final_ids, prune_reasons, spherical_kmeans, ward_merge
from mixture.cluster.scorers import QualityError
from mixture.cluster.scorers.fasttext import fasttext_available
from mixture.config import parse_config

SOURCES = ["fortunes", "python-code", "dictionary", "debian-policy", "manpages", "wordnet"]


def blobs(seed: int, centers: int = 5, per: int = 200, dim: int = 32, noise: float = 0.15):
    rng = np.random.default_rng(seed)
    dirs = np.linalg.qr(rng.standard_normal((dim, centers)))[0].T  # orthonormal directions
    x = np.vstack([d + noise * rng.standard_normal((per, dim)) for d in dirs]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(centers), per)


# ------------------------------------------------------------------------------------ k-means
def test_kmeans_is_deterministic_for_a_seed_and_finds_separated_groups():
    x, truth = blobs(0)
    a = spherical_kmeans(x, 5, niter=20, nredo=2, seed=7, max_train_points=600, use_gpu=False)
    b = spherical_kmeans(x, 5, niter=20, nredo=2, seed=7, max_train_points=600, use_gpu=False)
    assert np.array_equal(a.assign, b.assign) and np.array_equal(a.centroids, b.centroids)
    assert a.train_points == 600 and len(a.assign) == len(x)  # sample trains, all assigned
    assert purity(a.assign, truth) == 1.0 and nmi(a.assign, truth) == pytest.approx(1.0)
    assert np.allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5)
    assert a.objective == pytest.approx(float((x * a.centroids[a.assign]).sum(1).mean()), abs=1e-5)


def test_k_init_is_capped_on_small_corpora_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mixture.cluster.kmeans"):
        assert effective_k(1000, 2531, 10) == 253
    assert "too many for 2531 documents" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixture.cluster.kmeans"):
        assert effective_k(253, 2531, 10) == 253
        assert effective_k(5, 3, 10) == 1
    assert "253" not in caplog.text


# ------------------------------------------------------------------------------------ pruning
def test_pruning_reasons_on_both_sides_of_each_threshold():
    sizes = np.array([0, 2, 3, 10, 10, 10, 4])
    quality = np.array([np.nan, 4.0, 4.0, 2.99, 3.0, 4.5, np.nan])
    assert prune_reasons(sizes, quality, min_cluster_size=3, min_cluster_quality=3.0) == [
        "empty",
        "size",
        None,
        "quality",
        None,
        None,
        "quality",
    ]


# ------------------------------------------------------------------------------------ merging
def _groups():
    """8 centroids in three tight groups (A: 3 near e0, B: 3 near e1, C: 2 near e2)."""
    e = np.eye(6)
    offsets = 0.01 * np.array([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]])
    return np.vstack([e[0] + offsets, e[1] + offsets, e[2] + offsets[:2]])


def test_ward_merge_by_distance_and_by_target():
    c = _groups()
    truth = [0, 0, 0, 1, 1, 1, 2, 2]
    # intra-group heights are ~0.01-0.02, merging groups costs > 1.4: a cut at 0.5 finds the groups
    r = ward_merge(c, merge_distance=0.5, target_clusters=None)
    assert r.labels.tolist() == truth and r.n_at_distance == 3 and r.applied == 5
    # the target only ever lowers the count: 10 keeps the 3 groups, 2 merges two of them
    assert ward_merge(c, 0.5, 10).labels.tolist() == truth
    two = ward_merge(c, 0.5, 2).labels
    assert len(set(two)) == 2 and len(set(two[:3])) == 1 and len(set(two[3:6])) == 1
    # a distance below every height merges nothing; a target alone cuts to that many
    assert len(set(ward_merge(c, 0.001, None).labels)) == 8
    assert ward_merge(c, None, 3).labels.tolist() == truth
    assert ward_merge(c[:1], 1.5, 20).labels.tolist() == [0]


def test_ward_merge_height_exactly_at_the_distance_merges():
    # two singletons at Euclidean distance exactly 1.0: scipy's Ward height is their distance
    c = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    assert ward_merge(c, 1.0, None).labels.tolist() == [0, 0, 1]
    assert ward_merge(c, 0.999, None).labels.tolist() == [0, 1, 2]


def test_unit_vectors_ward_height_is_the_chord_length():
    # on unit vectors, two singletons at cosine c merge at height sqrt(2 (1 - c)): 1.5 <-> c = -0.125
    cos = -0.125
    u, v = np.array([1.0, 0.0]), np.array([cos, np.sqrt(1 - cos**2)])
    assert ward_merge(np.vstack([u, v]), 1.5 + 1e-9, None).applied == 1
    assert ward_merge(np.vstack([u, v]), 1.5 - 1e-6, None).applied == 0


def test_final_ids_are_ordered_by_size_then_smallest_kmeans_id():
    kept = np.array([0, 2, 3, 5, 6])
    groups = np.array([0, 1, 0, 2, 3])  # kmeans 0+3 together, 2, 5, 6
    sizes = np.zeros(7, dtype=int)
    sizes[[0, 2, 3, 5, 6]] = [5, 10, 5, 4, 10]
    # group sizes: {0: 10 (kmeans 0,3), 1: 10 (kmeans 2), 2: 4, 3: 10 (kmeans 6)}; ties by smallest kmeans id
    assert final_ids(groups, kept, sizes).tolist() == [0, 1, 0, 3, 2]


# ------------------------------------------------------------------------------------- stage
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, sample_records):
    """A committed curated + embeddings pair of 90 real documents from 6 sources."""
    root = tmp_path_factory.mktemp("clusters") / "out"
    cfg = parse_config(base_config(root, embed={"shard_docs": 50, "max_tokens": 64}))
    records = pick(sample_records, 15, SOURCES)
    make_curated(cfg, records)
    pipeline.run_stage(cfg, "embeddings")
    return root, records


def _copy(embedded, tmp_path) -> Path:
    root = tmp_path / "out"
    shutil.copytree(embedded[0], root, ignore=shutil.ignore_patterns("clusters", "mlflow.db", "mlartifacts"))
    return root


def _assignments(ds):
    return pq.read_table(ds.path("assignments.parquet")).to_pandas()


def test_cluster_stage_writes_the_dataset_and_report(embedded, tmp_path):
    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 12, "target_clusters": 4}))
    result = pipeline.run_stage(cfg, "clusters")
    ds = result.dataset
    counts = ds.manifest.counts
    assert counts == {
        "documents_in": 90,
        "documents_out": 90,
        "k_init": 9,
        "clusters": 4,
        "pruned_clusters": counts["pruned_clusters"],
        "pruned_documents": 0,
    }  # 90 / 10 = 9
    a = _assignments(ds)
    assert list(a.columns) == ["id", "cluster_init", "cluster", "quality", "score_heuristic"]
    assert a["id"].tolist() == [r["id"] for r in embedded[1]]
    assert np.array_equal(a["quality"], a["score_heuristic"])
    assert a["quality"].between(1, 5).all()
    sizes = a["cluster"].value_counts().sort_index()
    assert sizes.index.tolist() == [0, 1, 2, 3] and sizes.is_monotonic_decreasing
    mapping = json.loads(Path(ds.path("mapping.json")).read_text())
    assert (a["cluster"] == a["cluster_init"].map(lambda k: mapping[str(k)])).all()
    assert np.load(ds.path("centroids_init.npy")).shape == (9, 384)
    assert np.load(ds.path("centroids.npy")).shape == (4, 384)
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert [c["documents"] for c in rep["clusters"]] == sizes.tolist()
    for c in rep["clusters"]:
        assert len(c["snippets"]) == 3 and c["top_terms"] and c["source_mix"] and c["tokens_est"] > c["words"] * 0.8
    assert 0 < rep["evaluation"]["final"]["purity"] <= 1 and 0 < rep["evaluation"]["final"]["nmi"] <= 1
    md = Path(ds.path("report.md")).read_text()
    assert "## Cluster 3" in md and "purity" in md and "map.png" in md
    assert Path(ds.path("map.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = dict(result.summary)
    assert "K_init 9 -> 4 final" in lines["clusters"] and "purity/NMI vs source (evaluation only)" in lines
    # recorded in MLflow
    import mlflow
    from mixture import tracking

    tracking.setup(cfg)
    runs = mlflow.search_runs(experiment_names=["test"], filter_string="attributes.run_name = 'cluster'")
    assert len(runs) == 1 and runs["metrics.clusters"].iloc[0] == 4
    assert "map.png" in [f.path for f in mlflow.MlflowClient().list_artifacts(runs["run_id"].iloc[0])]
    # same inputs and config: the same clusters
    again = _assignments(pipeline.run_stage(cfg, "clusters", force=True).dataset)
    assert a.equals(again)


def test_clusters_below_the_quality_threshold_are_pruned(embedded, tmp_path):
    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 9, "target_clusters": 3}))
    a = _assignments(pipeline.run_stage(cfg, "clusters").dataset)
    means = a.groupby("cluster_init")["quality"].mean().sort_values()
    threshold = float((means.iloc[1] + means.iloc[2]) / 2)  # two clusters below, the rest above
    cfg = parse_config(
        base_config(root, cluster={"k_init": 9, "target_clusters": 3, "quality": {"min_cluster_quality": threshold}})
    )
    ds = pipeline.run_stage(cfg, "clusters").dataset
    b = _assignments(ds)
    assert b["cluster_init"].equals(a["cluster_init"])  # pruning does not move k-means
    low = set(means.index[:2])
    assert set(b.loc[b["cluster"] == -1, "cluster_init"]) == low
    assert (b.loc[~b["cluster_init"].isin(low), "cluster"] >= 0).all()
    mapping = json.loads(Path(ds.path("mapping.json")).read_text())
    assert {int(k) for k, v in mapping.items() if v == -1} == low
    c = ds.manifest.counts
    assert c["pruned_clusters"] == 2 and c["pruned_documents"] == int(b["cluster"].eq(-1).sum())
    assert c["documents_out"] + c["pruned_documents"] == c["documents_in"] == 90
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert {p["kmeans_cluster"] for p in rep["pruning"]["pruned_for_quality"]} == low
    # everything below the threshold: a clear error, nothing committed
    cfg = parse_config(base_config(root, cluster={"k_init": 9, "quality": {"min_cluster_quality": 5.5}}))
    with pytest.raises(ClusterError, match="all 9 k-means clusters were pruned"):
        pipeline.run_stage(cfg, "clusters")


def test_classifier_scorer_prefers_documents_like_the_reference(embedded, tmp_path, sample_records):
    root = _copy(embedded, tmp_path)
    used = {r["id"] for r in embedded[1]}
    ref = [r for r in sample_records if r["source"] == "python-code" and r["id"] not in used][:12]
    ref_file = tmp_path / "reference.jsonl"
    ref_file.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in ref))
    cfg = parse_config(
        base_config(
            root,
            cluster={
                "k_init": 9,
                "target_clusters": 3,
                "quality": {
                    "scorer": "classifier",
                    "reference_uris": [str(ref_file)],
                    "min_cluster_quality": 0.0,
                    "classifier_negatives": 60,
                },
            },
        )
    )
    ds = pipeline.run_stage(cfg, "clusters").dataset
    a = _assignments(ds)
    assert {"score_heuristic", "score_classifier"} <= set(a.columns)
    assert np.array_equal(a["quality"], a["score_classifier"])
    source = {r["id"]: r["source"] for r in embedded[1]}
    by_source = a.assign(source=a["id"].map(source)).groupby("source")["score_classifier"].mean()
    assert by_source["python-code"] > 3.0 and by_source["python-code"] > by_source.drop("python-code").max() + 1.0
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert rep["quality"]["notes"]["classifier"]["reference_documents"] == 12


@pytest.mark.skipif(fasttext_available(), reason="fasttext is installed here")
def test_fasttext_without_the_package(embedded, tmp_path):
    root = _copy(embedded, tmp_path)
    model = tmp_path / "quality.bin"
    model.write_bytes(b"not a model")
    cfg = parse_config(
        base_config(root, cluster={"k_init": 9, "quality": {"scorer": "fasttext", "fasttext_model": str(model)}})
    )
    with pytest.raises(QualityError, match="fasttext. package is not installed"):
        pipeline.run_stage(cfg, "clusters")
    # asked for as an extra score only: skipped, said so in the report, the heuristic drives pruning
    cfg = parse_config(
        base_config(root, cluster={"k_init": 9, "target_clusters": 3, "quality": {"fasttext_model": str(model)}})
    )
    ds = pipeline.run_stage(cfg, "clusters").dataset
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert rep["quality"]["notes"]["fasttext"] == "skipped: fasttext not installed"
    assert "score_fasttext" not in _assignments(ds).columns


def test_curated_documents_without_embeddings_are_a_clear_error(embedded, tmp_path, sample_records):
    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 9}))
    extra = [r for r in sample_records if r["id"] not in {x["id"] for x in embedded[1]}][:1]
    make_curated(cfg, embedded[1] + extra)  # re-committed curated, embeddings not rerun
    with pytest.raises(ClusterError, match="1 curated documents without an embedding"):
        pipeline.run_stage(cfg, "clusters")


# ------------------------------------------------------------------------------- streaming
def test_streamed_stage_matches_kmeans_in_memory_on_a_sample(embedded, tmp_path):
    # a training sample smaller than the corpus: the stage reads the same seeded rows shard by
    # shard and assigns in blocks, so it finds what spherical_kmeans finds on the whole array
    from mixture.cluster.embeddings import load_embeddings
    from mixture.cluster.kmeans import normalize_rows
    from mixture.dataset import open_dataset

    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 9, "target_clusters": 3, "max_train_points": 50}))
    ds = pipeline.run_stage(cfg, "clusters").dataset
    a = _assignments(ds)
    ids, x = load_embeddings(open_dataset(str(root / "embeddings")))
    km = spherical_kmeans(normalize_rows(x), 9, cfg.cluster.niter, cfg.cluster.nredo, 0, 50, use_gpu=False)
    assert a["id"].tolist() == ids and km.train_points == 50
    assert np.array_equal(a["cluster_init"].to_numpy(), km.assign)
    assert np.array_equal(np.load(ds.path("centroids_init.npy")), km.centroids)
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert rep["kmeans"]["train_points"] == 50 and rep["kmeans"]["mean_cosine"] == pytest.approx(km.objective, abs=1e-5)


def test_block_size_changes_nothing_but_row_groups(embedded, tmp_path, monkeypatch):
    # blocks of 16 documents (shards of 50): the same assignments, centroids, mapping and report
    # (samples, snippets, counts) as one block; the report's TF-IDF sample is drawn per cluster
    # from positions, not from rows held in memory
    from mixture.cluster import stream

    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 9, "target_clusters": 3}))
    one = pipeline.run_stage(cfg, "clusters").dataset
    first = {n: Path(one.path(n)).read_bytes() for n in ("centroids.npy", "centroids_init.npy", "mapping.json")}
    rep1 = json.loads(Path(one.path("report.json")).read_text())
    a1 = _assignments(one)
    monkeypatch.setattr(stream, "BLOCK_ROWS", 16)
    many = pipeline.run_stage(cfg, "clusters", force=True).dataset
    assert pq.ParquetFile(many.path("assignments.parquet")).metadata.num_row_groups == 6
    assert _assignments(many).equals(a1)
    assert {n: Path(many.path(n)).read_bytes() for n in first} == first
    rep2 = json.loads(Path(many.path("report.json")).read_text())
    for rep in (rep1, rep2):
        rep["kmeans"].pop("mean_cosine")  # summed in float64 per block
    assert rep1 == rep2


def test_nmi_and_purity_from_counts_match_the_per_document_ones():
    from mixture.cluster.evaluation import counts_nmi, counts_purity

    rng = np.random.default_rng(3)
    clusters, classes = rng.integers(0, 7, 500), rng.choice(["b", "a", "d", "c"], 500, p=[0.5, 0.2, 0.2, 0.1])
    names = ["b", "a", "d", "c"]  # first-seen order, not sorted
    table = np.zeros((7, 4), dtype=np.int64)
    np.add.at(table, (clusters, [names.index(c) for c in classes]), 1)
    assert counts_purity(table) == purity(clusters, classes)
    assert counts_nmi(table, names) == pytest.approx(nmi(clusters, classes), abs=1e-12)


def test_embedding_blocks_and_rows_across_shards(tmp_path):
    from mixture.cluster import embeddings
    from mixture.dataset import DatasetWriter

    rng = np.random.default_rng(0)
    w = DatasetWriter(str(tmp_path / "embeddings"), "embeddings", "h", {})
    x = rng.standard_normal((23, 4)).astype(np.float32)
    ids = [f"d{i}" for i in range(23)]
    for s, (lo, hi) in enumerate([(0, 10), (10, 13), (13, 23)]):
        embeddings.write_shard(w, s, ids[lo:hi], x[lo:hi])
    ds = w.commit({}, {})
    blocks = [(start, b_ids.to_pylist(), vecs.copy()) for start, b_ids, vecs in embeddings.iter_blocks(ds, 7)]
    assert [(start, len(v)) for start, _, v in blocks] == [(0, 7), (7, 7), (14, 7), (21, 2)]
    assert [i for _, b, _ in blocks for i in b] == ids
    assert np.array_equal(np.concatenate([v for _, _, v in blocks]), x)
    rows = np.array([0, 9, 10, 12, 22])
    assert np.array_equal(embeddings.read_rows(ds, rows), x[rows])
    assert embeddings.dimension(ds) == 4 and sum(r for _, _, r in embeddings.shard_files(ds)) == 23


def test_embeddings_in_another_order_than_curated_are_a_clear_error(embedded, tmp_path):
    root = _copy(embedded, tmp_path)
    cfg = parse_config(base_config(root, cluster={"k_init": 9}))
    make_curated(cfg, embedded[1][::-1])  # the same documents, re-committed in reverse order
    with pytest.raises(ClusterError, match="not in the curated documents' order: rerun `embed`"):
        pipeline.run_stage(cfg, "clusters")
