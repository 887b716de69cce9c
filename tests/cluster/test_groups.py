"""The user's own groups as the clusters the search mixes (`cluster.method` field / assignments,
RegMix-style): no embedding, the same `clusters` dataset, every document accounted, and a search
over the sample corpus's `source` groups run end to end with the CLI and a config only."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, SAMPLE, TARGET, read_jsonl_gz, write_jsonl
from helpers.curated import base_config, make_curated, pick
from mixture import cli, pipeline
from mixture.cluster.groups import GroupError, by_field, number_groups, read_assignments
from mixture.cluster.kmeans import ClusterError
from mixture.config import ConfigError, parse_config
from mixture.curate import documents
from mixture.dataset import open_dataset

SOURCES = ["fortunes", "python-code", "dictionary", "manpages"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module (creating a SQLite store runs its migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def curated(tmp_path, sample_records):
    """A committed curated dataset of 40 real documents from 4 sources, 10 each."""
    records = pick(sample_records, 10, SOURCES)
    root = tmp_path / "out"
    make_curated(parse_config(base_config(root)), records)
    return root, records


def _cfg(root: Path, tracking_uri: str, **cluster):
    return parse_config(
        base_config(
            root,
            cluster=cluster,
            shards={"vocab_size": 300, "tokenizer_train_docs": 40},
            tracking={"uri": tracking_uri},
        )
    )


def _assignments(ds) -> dict[str, dict]:
    t = pq.read_table(ds.path("assignments.parquet")).to_pylist()
    return {r["id"]: r for r in t}


# ------------------------------------------------------------------------------------- config
def test_each_method_asks_for_its_keys_and_the_classifier_needs_embeddings(tmp_path):
    ok = parse_config(base_config(tmp_path, cluster={"method": "field", "field": "source"}))
    assert not ok.cluster.needs_embeddings and parse_config(base_config(tmp_path)).cluster.needs_embeddings
    for bad, says in [
        ({"method": "field"}, "needs field"),
        ({"method": "assignments"}, "needs assignments"),
        ({"mapping": "m.yaml"}, "mapping is a key of method field"),
        ({"method": "field", "field": "source", "unmapped": "drop"}, "needs a mapping"),
        (
            {"method": "field", "field": "source", "quality": {"scorer": "classifier", "reference_uris": ["r.jsonl"]}},
            "classifier scorer needs",
        ),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_config(base_config(tmp_path, cluster=bad))


# ------------------------------------------------------------------------------- pure functions
def test_field_groups_merge_by_mapping_and_drop_or_keep_the_rest():
    values = ["a", "b", "c", None, ""]
    kept = by_field(values, {"a": "ab", "b": "ab"}, "keep")
    assert kept.group == ["ab", "ab", "c", None, None] and kept.ungrouped == {"no_value": 2}
    assert kept.values == {"ab": ["a", "b"], "c": ["c"]}
    dropped = by_field(values, {"a": "ab", "b": "ab"}, "drop")
    assert dropped.group == ["ab", "ab", None, None, None] and dropped.ungrouped == {"no_value": 2, "unmapped": 1}


def test_groups_are_numbered_by_size_and_pruned_on_both_sides_of_the_thresholds():
    import numpy as np

    group = by_field(["x", "y", "y", "z", "z", "z", None])
    quality = np.array([5.0, 2.99, 3.0, 4.0, 4.0, 4.0, 1.0])
    ng = number_groups(group, quality, min_cluster_size=1, min_cluster_quality=3.0)
    assert ng.names == ["x", "y", "z"] and ng.reasons == [None, "quality", None]  # y's mean is 2.995
    assert ng.final_names() == ["z", "x"] and ng.cluster.tolist() == [1, -1, -1, 0, 0, 0, -1]
    ng = number_groups(group, quality, min_cluster_size=2, min_cluster_quality=2.0)
    assert ng.reasons == ["size", None, None] and ng.final_names() == ["z", "y"]
    with pytest.raises(GroupError, match="all 3 groups were pruned"):
        number_groups(group, quality, min_cluster_size=4, min_cluster_quality=0.0)


def test_a_malformed_assignments_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "no_group.csv").write_text("id,cluster\na,1\n")
    (tmp_path / "empty_group.csv").write_text("id,group\na,g\nb,\n")
    (tmp_path / "twice.csv").write_text("id,group\na,g\na,h\n")
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file at all")
    (tmp_path / "groups.txt").write_text("a g\n")
    pq.write_table(pa.table({"id": ["a", "b"], "group": ["g", None]}), tmp_path / "null.parquet")
    for name, says in [
        ("no_group.csv", "no column 'group'"),
        ("empty_group.csv", "row 2 has an empty id or group"),
        ("twice.csv", "id 'a' appears twice"),
        ("garbage.parquet", "not a readable file"),
        ("groups.txt", "must be a .parquet or .csv file"),
        ("null.parquet", "row 2"),
        ("missing.csv", "no such file"),
    ]:
        with pytest.raises(GroupError, match=says) as err:
            read_assignments(str(tmp_path / name))
        assert name in str(err.value)
    pq.write_table(pa.table({"id": [1, 2], "group": ["g", "h"]}), tmp_path / "ok.parquet")
    assert read_assignments(str(tmp_path / "ok.parquet")).to_pylist() == [
        {"id": "1", "group": "g"},
        {"id": "2", "group": "h"},
    ]
    # an id twice across the files of a folder names the file where it comes back
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.csv").write_text("id,group\nx,g\ny,g\n")
    (tmp_path / "folder" / "b.csv").write_text("id,group\nz,h\ny,h\n")
    with pytest.raises(GroupError, match=r"b.csv: id 'y' appears twice"):
        read_assignments(str(tmp_path / "folder"))


def test_id_uniqueness_is_exact_even_when_hashes_collide(monkeypatch):
    import numpy as np
    from mixture.cluster import groups

    ids = pa.array(["a", "b", "c", "d", "b"])
    assert groups.first_duplicate(ids) == 4 and groups.first_duplicate(ids.slice(0, 4)) is None
    # every id hashing to the same value: only the exact comparison decides
    monkeypatch.setattr(documents, "id_hashes", lambda ids, chunk=0: np.zeros(len(ids), np.uint64))
    assert groups.first_duplicate(ids.slice(0, 4)) is None and groups.first_duplicate(ids) == 4


# -------------------------------------------------------------------------------------- stages
def test_field_groups_skip_embedding_and_account_for_dropped_documents(curated, tracking_uri, tmp_path):
    root, records = curated
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"python-code": "code", "manpages": "code", "fortunes": "fun"}))
    cfg = _cfg(root, tracking_uri, method="field", field="source", mapping=str(mapping), unmapped="drop")
    emb = pipeline.run_stage(cfg, "embed").dataset
    assert emb.manifest.counts == {"documents_in": 40, "documents_out": 0}
    assert emb.manifest.extra["skipped"] == "cluster.method=field: no embedding needed"
    assert [Path(f).name for f in emb.files()] == ["lineage.json"]  # no embeddings; its version chain
    ds = pipeline.run_stage(cfg, "cluster").dataset
    assert ds.manifest.counts == {
        "documents_in": 40,
        "documents_out": 30,
        "groups": 2,
        "clusters": 2,
        "pruned_clusters": 0,
        "pruned_documents": 0,
        "ungrouped_documents": 10,
        "unknown_ids": 0,
    }
    rows = _assignments(ds)
    assert all((r["cluster"] == -1) == (r["group"] is None) for r in rows.values())
    assert {rows[r["id"]]["group"] for r in records if r["source"] == "dictionary"} == {None}
    assert json.loads(Path(ds.path("mapping.json")).read_text()) == {"code": 0, "fun": 1}  # code is larger
    assert not any(Path(ds.path(f)).exists() for f in ("centroids.npy", "centroids_init.npy", "map.png"))
    rep = json.loads(Path(ds.path("report.json")).read_text())
    assert [(c["name"], c["group"], c["documents"]) for c in rep["clusters"]] == [
        ("c00", "code", 20),
        ("c01", "fun", 10),
    ]
    assert rep["clusters"][0]["values"] == ["manpages", "python-code"]
    assert rep["groups"]["ungrouped"] == {"unmapped": 10}
    for c in rep["clusters"]:
        assert c["top_terms"] and len(c["snippets"]) == 3 and c["tokens_est"] > c["words"] * 0.8 > 0
    assert "map.png" not in Path(ds.path("report.md")).read_text()
    # a changed mapping file reruns the cluster stage (the file is in its hash), not embed
    mapping.write_text(json.dumps({"python-code": "code"}))
    assert not pipeline.run_stage(cfg, "cluster").skipped and pipeline.run_stage(cfg, "embed").skipped
    # back to k-means: embed must run again (its hash covers whether embeddings are needed)
    kmeans = _cfg(root, tracking_uri)
    assert pipeline.current(kmeans, "embed") is None
    with pytest.raises(ClusterError, match="holds no embeddings"):
        pipeline.run_stage(kmeans, "cluster")


def test_assignments_count_missing_and_unknown_ids_and_feed_the_shards(curated, tracking_uri, tmp_path):
    root, records = curated
    lines = ["id,group"] + [f"{r['id']},{'even' if i % 2 else 'odd'}" for i, r in enumerate(records[1:], 1)]
    lines.append("not-a-curated-id,odd")  # e.g. a document the curation filtered
    (tmp_path / "groups.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg(root, tracking_uri, method="assignments", assignments=str(tmp_path / "groups.csv"))
    pipeline.run_stage(cfg, "embed")
    res = pipeline.run_stage(cfg, "cluster")
    counts = res.dataset.manifest.counts
    assert counts["ungrouped_documents"] == 1 and counts["unknown_ids"] == 1 and counts["documents_out"] == 39
    assert res.dataset.manifest.extra["unknown_id_examples"] == ["not-a-curated-id"]
    assert _assignments(res.dataset)[records[0]["id"]]["cluster"] == -1
    assert "assignment ids not in curated" in dict(res.summary)
    lab = pipeline.run_stage(cfg, "shards").dataset  # reads the clusters; no centroids needed
    assert lab.manifest.counts["documents_out"] == 39 and lab.manifest.counts["pruned_documents"] == 1
    assert sorted(lab.manifest.extra["clusters"]) == ["c00", "c01"]


def test_a_bad_assignments_file_is_one_line_from_the_cli(curated, tracking_uri, tmp_path, capsys):
    root, _ = curated
    (tmp_path / "bad.csv").write_text("id;group\na;b\n")
    cfg = base_config(
        root,
        cluster={"method": "assignments", "assignments": str(tmp_path / "bad.csv")},
        tracking={"uri": tracking_uri},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["embed", "--config", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    assert cli.main(["cluster", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0] and "no column 'id'" in err[0]


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture
def sample_subset(tmp_path, sample_records) -> Path:
    """The first 10 documents of every source of the sample corpus (data/sample/corpus.jsonl.gz):
    all its sources, each with documents that pass curation (4 to 10; group quality means 4.5 to
    4.9, far above the 3.0 line), at a size where the stages' fixed costs dominate."""
    return write_jsonl(tmp_path / "input" / "sample.jsonl", pick(sample_records, 10))


def _demo_config(tmp_path: Path, tracking_uri: str, corpus: Path, **cluster) -> Path:
    """configs/demo.yaml on the sample corpus, grouped by `source`, with a tiny search."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.update(output_root=str(tmp_path / "out"), tracking={"experiment": "test", "uri": tracking_uri})
    cfg["input"]["uris"] = [str(corpus)]
    cfg["curate"].update(spark_master="local[2]", partitions=2)
    cfg["cluster"] = {"method": "field", "field": "source", **cluster}
    cfg["shards"] = {"vocab_size": 512, "tokenizer_train_docs": 300}
    cfg["search"] = {
        "iterations": [4, 2],
        "candidates": 2000,
        "top_n": 6,
        "top_k": 4,
        "proxy": {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64},
        "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
        "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
        "playoff": {"enabled": False},  # 6 runs cannot afford one
    }
    path = tmp_path / f"groups-{len(cluster)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _searched_groups(out: Path) -> tuple[dict[str, str], set[str]]:
    """(climblab cluster name -> user group, the groups the search's mixture weighs)."""
    clusters = open_dataset(str(out / "clusters"))
    final = {f"c{v:02d}": g for g, v in json.loads(Path(clusters.path("mapping.json")).read_text()).items() if v >= 0}
    weights = json.loads(Path(open_dataset(str(out / "search")).path("mixture.json")).read_text())["weights"]
    assert sorted(open_dataset(str(out / "climblab")).manifest.extra["clusters"]) == sorted(final)
    return final, {final[c] for c in weights}


@pytest.mark.slow
def test_a_search_over_source_groups_runs_with_the_cli_and_a_config_only(tmp_path, tracking_uri, sample_subset):
    config = _demo_config(tmp_path, tracking_uri, sample_subset)
    assert cli.main(["run", "--config", str(config), "--until", "search"]) == 0
    out = tmp_path / "out"
    emb = open_dataset(str(out / "embeddings"))
    assert emb.manifest.counts["documents_out"] == 0 and "skipped" in emb.manifest.extra
    assert not emb.files("emb-") and not emb.files("ids-")
    curated_sources = set(
        documents.read_table(open_dataset(str(out / "curated")), ["source"]).column("source").to_pylist()
    )
    assert "debian-reference" not in curated_sources  # the held-out target
    final, searched = _searched_groups(out)
    assert set(final.values()) == searched == curated_sources and len(final) == 9
    assert curated_sources == {r["source"] for r in read_jsonl_gz(SAMPLE)}  # every source

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({"python-docs": "python", "python-code": "python"}))
    config = _demo_config(tmp_path, tracking_uri, sample_subset, mapping=str(mapping))
    assert cli.main(["run", "--config", str(config), "--until", "search"]) == 0
    final, searched = _searched_groups(out)
    assert searched == set(final.values()) == curated_sources - {"python-docs", "python-code"} | {"python"}


def test_streamed_groups_match_a_dictionary_of_every_id(curated, tracking_uri, tmp_path):
    """The Arrow / hashed-id path gives each document the group a plain {id: group} lookup gives
    (the previous implementation), with `cluster_init` the group's index in the sorted names."""
    root, records = curated
    picked = {r["id"]: ("even" if i % 3 else "odd") for i, r in enumerate(records) if i % 7}
    pq.write_table(pa.table({"id": list(picked), "group": list(picked.values())}), tmp_path / "groups.parquet")
    cfg = _cfg(root, tracking_uri, method="assignments", assignments=str(tmp_path / "groups.parquet"))
    pipeline.run_stage(cfg, "embed")
    rows = pq.read_table(pipeline.run_stage(cfg, "cluster").dataset.path("assignments.parquet")).to_pylist()
    names = sorted(set(picked.values()))
    assert [r["id"] for r in rows] == documents.read_table(
        open_dataset(pipeline.dataset_uri(cfg, "curated")), ["id"]
    ).column("id").to_pylist()
    assert [r["group"] for r in rows] == [picked.get(r["id"]) for r in rows]
    assert [r["cluster_init"] for r in rows] == [
        names.index(picked[r["id"]]) if r["id"] in picked else -1 for r in rows
    ]
