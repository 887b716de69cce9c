"""Stage `embed`: embeddings equal sentence-transformers', pooling from the model's config,
resumable shards, and the committed dataset's layout (docs/DATASETS.md, "embeddings")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.curated import MODEL, base_config, make_curated, pick
from mixture import pipeline
from mixture.cluster.embeddings import shard_names
from mixture.cluster.encoder import (
    Embedder,
    EmbedError,
    read_model_spec,
    resolve_model,
    token_budget_batches,
    whitespace_prefix,
)
from mixture.config import parse_config
from mixture.dataset import DatasetWriter, open_dataset


@pytest.fixture(scope="module")
def embedder():
    return Embedder(MODEL, max_tokens=128, batch_size=8)


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_model(MODEL)), device="cpu")


# --------------------------------------------------------------------------------------- tests
def test_model_package_resolves_and_config_says_mean_pooling_and_normalize():
    folder = resolve_model(MODEL)
    assert (folder / "config.json").exists()
    spec = read_model_spec(folder)
    assert spec.pooling == ("mean",) and spec.normalize is True
    assert spec.source == "sentence-transformers config"
    with pytest.raises(EmbedError, match="neither a local folder nor an installed model package"):
        resolve_model("no-such-model-package-xyz")


def test_pooling_config_is_followed_and_missing_config_falls_back(tmp_path):
    src = resolve_model(MODEL)
    cls_model = tmp_path / "cls"
    shutil.copytree(src, cls_model, ignore=shutil.ignore_patterns("model.safetensors"))
    (cls_model / "model.safetensors").symlink_to(src / "model.safetensors")
    conf = json.loads((cls_model / "1_Pooling" / "config.json").read_text())
    conf.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (cls_model / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    modules = [m for m in json.loads((cls_model / "modules.json").read_text()) if m["name"] != "2"]
    (cls_model / "modules.json").write_text(json.dumps(modules))  # no Normalize module
    spec = read_model_spec(cls_model)
    assert spec.pooling == ("cls",) and spec.normalize is False
    (cls_model / "modules.json").unlink()
    assert read_model_spec(cls_model).pooling == ("mean",)
    assert read_model_spec(cls_model).source.startswith("fallback")
    dense = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (cls_model / "modules.json").write_text(json.dumps(dense))
    with pytest.raises(EmbedError, match="Dense"):
        read_model_spec(cls_model)


def test_cls_pooling_without_normalisation_matches_sentence_transformers(tmp_path, sample_records):
    from sentence_transformers import SentenceTransformer

    src = resolve_model(MODEL)
    folder = tmp_path / "cls"
    folder.mkdir()
    for f in src.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "modules.json").unlink()
    (folder / "1_Pooling").unlink()
    (folder / "1_Pooling").mkdir()
    conf = json.loads((src / "1_Pooling" / "config.json").read_text())
    conf.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    modules = json.loads((src / "modules.json").read_text())[:2]
    (folder / "modules.json").write_text(json.dumps(modules))
    texts = [r["text"] for r in sample_records[:3]] + ["a short one"]
    ours = Embedder(str(folder), max_tokens=64).encode(texts)
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = 64
    ref = st.encode(texts)
    assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() > 1e-3  # not normalised
    assert np.allclose(ours, ref, atol=1e-4)


def test_embeddings_equal_sentence_transformers(embedder, st_model, sample_records):
    by_source = pick(sample_records, 1)
    texts = [r["text"] for r in by_source] + ["", "short text.", "two words", "ü ß ñ — 中文 テスト"]
    ours = embedder.encode(texts)
    st_model.max_seq_length = 128
    ref = st_model.encode(texts, batch_size=4)
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_prefix_tokenization_gives_the_ids_of_the_full_text(embedder, sample_records):
    texts = [r["text"] for r in sample_records[:60]]
    # whitespace-poor text: the prefix cut cannot shorten it, and a long run of spaces yields no tokens
    texts += ["x" * 5000, "word " + " " * 3000 + "tail " * 50]
    ids, owner = embedder.tokenize(texts)
    full = embedder.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    assert ids == full
    assert list(owner) == list(range(len(texts)))


def test_whitespace_prefix_and_token_budget_batches():
    assert whitespace_prefix("aaa bbb ccc", 100) == "aaa bbb ccc"
    assert whitespace_prefix("aaa bbb ccc", 6) == "aaa"
    assert whitespace_prefix("aaaaaaa", 3) == "aaaaaaa"
    lengths = np.array([5, 100, 7, 100, 50, 3, 6, 80, 4])
    # budget 200 tokens: two of 100; 80 alone (50 < 0.75 * 80); 50 alone; 7 and 6 (5 < 5.25);
    # 5 and 4 (3 < 3.75); 3
    batches = token_budget_batches(lengths, token_budget=200, max_docs=3, min_fill=0.75)
    assert [b.tolist() for b in batches] == [[1, 3], [7], [4], [2, 6], [0, 8], [5]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(9))
    for b in batches:
        assert len(b) * lengths[b].max() <= 200 and len(b) <= 3
        assert lengths[b].min() >= 0.75 * lengths[b].max()
    assert [b.tolist() for b in token_budget_batches(lengths, 200, 2, min_fill=0.75)][3:5] == [[2, 6], [0, 8]]
    # without the fill rule, a count-based batch would pad 3-token texts to 100
    assert [b.tolist() for b in token_budget_batches(lengths, 300, 3, min_fill=0.0)][0] == [1, 3, 7]


def test_chunk_mean_averages_windows_of_long_documents(sample_records):
    long_text = " ".join(sample_records[0]["text"].split()[:250])  # ~10 windows of 32 tokens
    short = "just a few words here"
    trunc = Embedder(MODEL, max_tokens=32)
    chunk = Embedder(MODEL, max_tokens=32, long_documents="chunk_mean")
    t, c = trunc.encode([long_text, short]), chunk.encode([long_text, short])
    assert np.allclose(t[1], c[1], atol=1e-5)  # fits one window: identical
    assert float(t[0] @ c[0]) < 0.98  # the rest of the document counts
    # the chunk mean is the token-weighted mean of the windows' mean-pooled vectors
    pieces, _ = chunk.tokenize([long_text])
    lens = np.array([len(p) for p in pieces], dtype=float)
    raw = Embedder(MODEL, max_tokens=32)
    raw.spec = raw.spec.__class__(raw.spec.path, raw.spec.pooling, False, raw.spec.max_seq_length, "")
    windows = raw._forward(pieces)  # one padded batch: the mask keeps the windows apart
    expect = (windows * lens[:, None]).sum(0) / lens.sum()
    assert np.allclose(c[0], expect / np.linalg.norm(expect), atol=1e-5)


def test_embed_stage_resumes_a_killed_run(tmp_path, sample_records):
    cfg = parse_config(base_config(tmp_path / "out"))
    records = pick(sample_records, 3)[:25]
    make_curated(cfg, records, files=2)
    ctx = pipeline.open_stage(cfg, "embed")
    stage, inputs, writer = ctx.stage, ctx.inputs, ctx.writer
    ctx = pipeline.StageContext(cfg, stage, inputs, writer)
    from mixture.stages.embed import embed_corpus

    class Killed(Exception):
        pass

    def kill_after_first(index, computed):
        if index == 0:
            raise Killed

    with pytest.raises(Killed):
        embed_corpus(ctx, on_shard=kill_after_first)
    assert not (tmp_path / "out" / "embeddings" / "_manifest.json").exists()
    first = Path(writer.path(shard_names(0)[0]))
    stamp = first.stat().st_mtime_ns
    result = pipeline.run_stage(cfg, "embeddings")  # rerun: only the missing shards
    ds = result.dataset
    summary = dict(result.summary)["embedded"]
    assert "2 shards computed, 1 reused" in summary
    assert Path(ds.path(shard_names(0)[0])).stat().st_mtime_ns == stamp
    assert ds.manifest.counts == {"documents_in": 25, "documents_out": 25, "dim": 384}
    assert ds.manifest.extra["pooling"] == "mean" and ds.manifest.extra["normalize"] is True
    assert ds.manifest.extra["model"] == MODEL
    emb = np.vstack([np.load(f) for f in ds.files("emb-")])
    ids = [i for f in ds.files("ids-") for i in pq.read_table(f).column("id").to_pylist()]
    assert [len(np.load(f)) for f in ds.files("emb-")] == [10, 10, 5]
    assert ids == [r["id"] for r in records]
    fresh = Embedder(MODEL, max_tokens=64).encode([r["text"] for r in records])
    assert np.allclose(emb, fresh, atol=1e-5)
    assert pipeline.run_stage(cfg, "embeddings").skipped


def test_null_text_is_a_clear_error(tmp_path, sample_records):
    cfg = parse_config(base_config(tmp_path / "out"))
    records = pick(sample_records, 1)[:3]
    records.append({"id": "broken", "text": None, "source": "x"})
    w = DatasetWriter(pipeline.dataset_uri(cfg, "curated"), "curated", "h", {})
    with open(w.path("docs/part-00000.parquet"), "wb") as f:
        pq.write_table(pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]}), f)
    w.commit({"documents_in": 4, "documents_out": 4})
    with pytest.raises(EmbedError, match="null id or text"):
        pipeline.run_stage(cfg, "embeddings")


def test_jobs_entry_point_runs_the_stage(tmp_path, sample_records):
    import subprocess
    import sys

    import yaml

    root = tmp_path / "out"
    cfg_dict = base_config(root)
    cfg = parse_config(cfg_dict)
    make_curated(cfg, pick(sample_records, 1)[:5])
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg_dict))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(repo / "jobs" / "embed.py"), "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert open_dataset(str(root / "embeddings")).manifest.counts["documents_out"] == 5
    bad = subprocess.run(
        [sys.executable, str(repo / "jobs" / "embed.py"), "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode != 0 and "not found" in bad.stderr


def test_bf16_on_the_cpu_stays_within_cosine_0999(embedder, sample_records):
    texts = [r["text"] for r in pick(sample_records, 1)][:4] + ["a short text"]
    bf16 = Embedder(MODEL, max_tokens=128, dtype="bfloat16")
    cos = (bf16.encode(texts) * embedder.encode(texts)).sum(1)
    assert cos.min() > 0.999
