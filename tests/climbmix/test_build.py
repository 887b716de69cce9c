"""Stage `build`: ClimbMix shards from ClimbLab clusters and a mixture.

The tiny climblab/search inputs are written here in the documented format (docs/DATASETS.md)
with numpy and pyarrow directly, not with the shards stage, so the build is tested against the
format itself. The helpers are imported by test_publish.py and test_reader.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.climbmix import BuildError, normalise_mixture, plan_clusters, select_documents
from mixture.dataset import content_hash, open_dataset
from mixture.pipeline import config_hash, run_stage, stage


@pytest.fixture
def lab_inputs(tmp_path, sample_records):
    root = tmp_path / "out"
    lab = make_climblab(root, sample_records)
    make_search(root, lab, WEIGHTS)
    return root, lab


# ------------------------------------------------------------------------- pure functions
def test_select_documents_reaches_target_with_whole_documents():
    rng = np.random.default_rng(0)
    lengths = np.array([100, 250, 40, 600, 80])
    total = lengths.sum()
    for target in (1, 99, 500, total, total + 1, int(2.5 * total)):
        idx = select_documents(lengths, target, np.random.default_rng(1))
        got = lengths[idx].sum()
        assert target <= got < target + lengths.max(), (target, got)
    idx = select_documents(lengths, 2 * total + 10, rng)
    counts = np.bincount(idx, minlength=len(lengths))
    assert counts.min() >= 2 and counts.max() <= 3  # two full passes and a part of a third
    assert len(select_documents(lengths, 0, rng)) == 0


def test_select_documents_is_seeded():
    lengths = np.arange(1, 200)
    a = select_documents(lengths, 5000, np.random.default_rng(3))
    b = select_documents(lengths, 5000, np.random.default_rng(3))
    c = select_documents(lengths, 5000, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_plan_caps_epochs_only_where_needed():
    plans = {
        p.cluster: p
        for p in plan_clusters(
            {"a": 0.5, "b": 0.5, "c": 0.0},
            {"a": 1000, "b": 100, "c": 50},
            {"a": 10, "b": 2, "c": 1},
            budget=2000,
            max_epochs=4.0,
        )
    }
    assert not plans["a"].capped and plans["a"].target_tokens == 1000 and plans["a"].wanted_epochs == 1.0
    assert plans["b"].capped and plans["b"].target_tokens == 400 and plans["b"].wanted_epochs == 10.0
    assert plans["c"].target_tokens == 0 and not plans["c"].capped
    # exactly at the cap is not capped
    edge = plan_clusters({"b": 1.0}, {"b": 100}, {"b": 2}, budget=400, max_epochs=4.0)[0]
    assert not edge.capped and edge.target_tokens == 400


def test_mixture_is_validated_and_normalised():
    assert normalise_mixture({"a": 2, "b": 2}, ["a", "b", "c"]) == {"a": 0.5, "b": 0.5, "c": 0.0}
    with pytest.raises(BuildError, match=r"\['zz'\]"):
        normalise_mixture({"a": 1, "zz": 1}, ["a", "b"])
    with pytest.raises(BuildError, match="cluster b"):
        normalise_mixture({"a": 1, "b": -0.1}, ["a", "b"])
    with pytest.raises(BuildError, match="every mixture weight is 0"):
        normalise_mixture({"a": 0}, ["a"])


def test_content_hash_ignores_order_but_not_content():
    files = [{"path": "a", "bytes": 1, "sha256": "x"}, {"path": "b", "bytes": 2, "sha256": "y"}]
    assert content_hash(files) == content_hash(files[::-1])
    assert content_hash(files) != content_hash([files[0], {**files[1], "sha256": "z"}])


# ------------------------------------------------------------------------------- the stage
def _read_all(ds):
    table = pa.concat_tables([pq.read_table(p) for p in sorted(ds.files("parquet/"))])
    docs = []
    for prefix in sorted(p[:-4] for p in ds.files("tokens/") if p.endswith(".bin")):
        tokens = np.memmap(prefix + ".bin", dtype=np.uint16, mode="r")
        offsets = np.load(prefix + ".idx")
        docs += [np.array(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return table, docs


def test_build_writes_mixture_shards(lab_inputs, caplog):
    root, lab = lab_inputs
    cfg = make_config(root)
    res = run_stage(cfg, "climbmix")
    ds = res.dataset
    m = ds.manifest
    info = m.extra["clusters"]
    avail = lab.manifest.extra["clusters"]
    # every cluster reaches its share of the budget with whole documents (overshoot < one doc)
    for c, w in WEIGHTS.items():
        target = w * cfg.build.tokens
        assert target <= info[c]["tokens"] < target + avail[c]["tokens"], c
        # epochs count the documents the validation split left (its documents and their copies)
        assert info[c]["epochs"] == pytest.approx(info[c]["tokens"] / info[c]["available_tokens"])
        assert info[c]["available_tokens"] + info[c]["validation_tokens"] == avail[c]["tokens"]
        assert info[c]["validation_documents"] >= 1 and info[c]["copies_excluded"] == 0
    assert m.extra["mixture"] == pytest.approx(WEIGHTS)
    assert m.counts["documents"] == sum(v["documents"] for v in info.values())
    assert m.counts["tokens"] == sum(v["tokens"] for v in info.values())

    table, docs = _read_all(ds)
    assert table.column_names == ["text", "cluster", "id"]
    assert table.num_rows == len(docs) == m.counts["documents"]
    assert sum(len(d) for d in docs) == m.counts["tokens"]
    # fixed-size shards
    sizes = [pq.read_metadata(p).num_rows for p in sorted(ds.files("parquet/"))]
    assert all(s == 16 for s in sizes[:-1]) and 0 < sizes[-1] <= 16
    # row i of the Parquet is document i of the token shards, in its cluster
    tok = open_dataset(str(root / "climblab"))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(ds.path("tokenizer/tokenizer.json"))))
    eos = m.extra["eos_id"]
    cluster_of = {}
    for c in WEIGHTS:
        for i in pq.read_table(tok.path(f"{c}/text.parquet")).column("id").to_pylist():
            cluster_of[i] = c
    for row, ids in zip(table.to_pylist(), docs):
        assert ids[-1] == eos
        assert tokenizer.decode(ids[:-1].tolist()) == row["text"]
        assert cluster_of[row["id"]] == row["cluster"]
    per_cluster_docs = {c: table.column("cluster").to_pylist().count(c) for c in WEIGHTS}
    assert per_cluster_docs == {c: info[c]["documents"] for c in WEIGHTS}
    # shuffled globally: not grouped by cluster
    clusters = table.column("cluster").to_pylist()
    runs = 1 + sum(a != b for a, b in zip(clusters, clusters[1:]))
    assert runs > 2 * len(WEIGHTS)
    # card and tokenizer
    card = Path(ds.path("README.md")).read_text()
    assert "| c00 | term0a, term0b | 0.4000 |" in card
    assert "np.memmap" in card and 'load_dataset("parquet"' in card and "pyarrow" in card
    assert "3 exact and 2 near duplicates" in card
    assert "gopher_quality 10" in card and "min_words=50" in card
    assert (
        Path(ds.path("tokenizer/tokenizer.json")).read_bytes()
        == Path(tok.path("tokenizer/tokenizer.json")).read_bytes()
    )
    ds.verify()


def test_build_is_reproducible_and_seeded(lab_inputs):
    root, _ = lab_inputs
    a = run_stage(make_config(root), "climbmix").dataset
    hash_a = content_hash(a.manifest.files)
    b = run_stage(make_config(root), "climbmix", force=True).dataset
    assert content_hash(b.manifest.files) == hash_a  # byte-identical rebuild
    ids_b = pq.read_table(b.files("parquet/")[0]).column("id").to_pylist()
    cfg = make_config(root)
    cfg.seed = 8
    c = run_stage(cfg, "climbmix").dataset  # replaces the dataset
    assert content_hash(c.manifest.files) != hash_a
    ids_c = pq.read_table(c.files("parquet/")[0]).column("id").to_pylist()
    assert ids_b != ids_c


def test_epoch_cap_warns_and_names_cluster(lab_inputs, caplog, tmp_path):
    root, lab = lab_inputs
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"weights": {"c00": 0.1, "c01": 0.1, "c02": 0.1, "c03": 0.7}}))
    cfg = make_config(root, mixture=str(mix), max_epochs=2.0)
    with caplog.at_level(logging.WARNING, logger="mixture.climbmix"):
        ds = run_stage(cfg, "climbmix").dataset
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cluster c03" in w and "max_epochs=2" in w for w in warned), warned
    assert not any("cluster c00" in w for w in warned)
    info = ds.manifest.extra["clusters"]
    avail = info["c03"]["available_tokens"]  # what the validation split left
    assert info["c03"]["capped"] and info["c03"]["epochs"] <= 2.0 + 1e-9
    assert 2 * avail <= info["c03"]["tokens"] + max(np.diff(np.load(lab.path("c03/tokens.idx"))))
    assert ds.manifest.extra["capped_clusters"] == ["c03"]
    assert ds.manifest.extra["mixture_source"] == "build.mixture"
    assert ds.manifest.counts["tokens"] < cfg.build.tokens
    assert "yes (wanted" in Path(ds.path("README.md")).read_text()


def test_mixture_with_unknown_cluster_fails_clearly(lab_inputs, tmp_path):
    root, _ = lab_inputs
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"c00": 0.5, "c99": 0.5}))
    with pytest.raises(BuildError, match="c99"):
        run_stage(make_config(root, mixture=str(mix)), "climbmix")
    assert not (root / "climbmix" / "_manifest.json").exists()


def test_card_without_upstream_says_so(tmp_path, sample_records):
    root = tmp_path / "out"
    lab = make_climblab(root, sample_records, with_upstream=False)
    make_search(root, lab, WEIGHTS)
    ds = run_stage(make_config(root, licence="CC-BY-4.0"), "climbmix").dataset
    card = Path(ds.path("README.md")).read_text()
    assert "license: CC-BY-4.0" in card
    assert "Curation counts: not available" in card and "Topic terms: not available" in card
    assert config_hash(make_config(root, licence="CC-BY-4.0"), stage("climbmix")) == ds.manifest.config_hash


def test_formats_select_what_is_written_and_the_card_follows(lab_inputs):
    root, _ = lab_inputs
    both = run_stage(make_config(root), "climbmix").dataset
    parquet_both = {Path(p).name: Path(p).read_bytes() for p in both.files("parquet/")}
    only = run_stage(make_config(root, formats=["parquet"]), "climbmix").dataset
    assert only.files("parquet/") and not only.files("tokens/")
    # the same rows whatever else is written
    assert {Path(p).name: Path(p).read_bytes() for p in only.files("parquet/")} == parquet_both
    card = Path(only.path("README.md")).read_text()
    assert 'load_dataset("parquet"' in card and "np.memmap" not in card
    assert only.manifest.extra["formats"] == ["parquet"]
    tokens = run_stage(make_config(root, formats=["tokens"]), "climbmix").dataset
    assert tokens.files("tokens/") and not tokens.files("parquet/")
    card = Path(tokens.path("README.md")).read_text()
    assert "np.memmap" in card and "data_files" not in card


def test_unknown_or_repeated_format_is_a_config_error(tmp_path):
    from mixture.config import ConfigError

    with pytest.raises(ConfigError, match="unknown output format 'csv'.*parquet, tokens"):
        make_config(tmp_path, formats=["parquet", "csv"])
    with pytest.raises(ConfigError, match="twice"):
        make_config(tmp_path, formats=["tokens", "tokens"])
    with pytest.raises(ConfigError):
        make_config(tmp_path, formats=[])


def test_card_title_comes_from_the_data_not_the_run_name(lab_inputs):
    root, _ = lab_inputs
    a = run_stage(make_config(root), "climbmix").dataset
    cfg = make_config(root)
    cfg.run_name = "another-name"
    b = run_stage(cfg, "climbmix")
    assert b.skipped  # run_name is outside the build's hash...
    title = next(line for line in Path(a.path("README.md")).read_text().splitlines() if line.startswith("# "))
    # ...so the title is made of what the build's hash covers: its size and the mixture's content
    assert title == (
        f"# ClimbMix-style dataset: {a.manifest.counts['tokens']:,} tokens from 4 clusters, "
        f"mixture {a.manifest.extra['mixture_sha256'][:12]}"
    )


def test_the_card_names_the_inputs_as_configured_whatever_directory_the_build_ran_from(
    tmp_path, sample_records, monkeypatch
):
    """`load_config` resolves relative paths against the directory a command runs in: a build run
    elsewhere would name a path that does not exist, on the machine it ran on. The card lists the
    input URIs as the curated manifest records them (as configured) and names each upstream
    dataset's version."""
    import yaml
    from mixture.config import load_config

    root = tmp_path / "out"
    recorded = ["data/corpus/*.jsonl.gz", "s3://corpus-bucket/crawl/"]
    lab = make_climblab(root, sample_records, sources=recorded, curated_version=3)
    make_search(root, lab, WEIGHTS)
    conf = tmp_path / "run.yaml"
    data = {"output_root": str(root), "seed": 7, "input": {"uris": ["data/corpus/*.jsonl.gz"]}}
    conf.write_text(
        yaml.safe_dump({**data, "build": {"tokens": 12_000, "shard_docs": 16}, "tracking": {"experiment": "t"}})
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(conf)
    assert cfg.input.uris == [str(elsewhere / "data/corpus/*.jsonl.gz")]  # resolved here: not a real input
    ds = run_stage(cfg, "build").dataset
    card = Path(ds.path("README.md")).read_text()
    sources = card.split("## Sources")[1].split("## ")[0]
    assert [line[3:-1] for line in sources.splitlines() if line.startswith("- `")] == recorded
    assert "recorded in the curated dataset's manifest" in sources and str(tmp_path) not in card
    curated = open_dataset(str(root / "curated"))
    assert f"- curated: version 3, content sha256 `{content_hash(curated.manifest.files)[:16]}`" in sources
    assert f"- climblab: content sha256 `{content_hash(lab.manifest.files)[:16]}`" in sources
    assert "- clusters: content sha256 `" in sources
    # a curated dataset that records none: the config as written, not as resolved
    lab = make_climblab(tmp_path / "other", sample_records)
    make_search(tmp_path / "other", lab, WEIGHTS)
    conf.write_text(conf.read_text().replace(str(root), str(tmp_path / "other")))
    card = Path(run_stage(load_config(conf), "build").dataset.path("README.md")).read_text()
    assert "- `data/corpus/*.jsonl.gz`" in card and str(tmp_path) not in card
