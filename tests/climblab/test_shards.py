"""ClimbLab token shards: the reader returns exactly each document's tokens."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mixture import climblab, storage
from mixture.climblab import tokens
from mixture.contract import StageContext
from mixture.dataset import DatasetWriter
from mixture.pipeline import stage
from mixture.stages import shards


def test_shard_roundtrip_exact_tokens(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, 70000, size=n), 3) for n in [0, 1, 5, 1000]]
    prefix = str(tmp_path / "s" / "tokens")
    assert tokens.write_token_shard(prefix, docs, tokens.token_dtype(70000)) == (4, sum(len(d) for d in docs))
    shard = tokens.TokenShard(prefix, np.uint32)
    assert len(shard) == 4
    for i, d in enumerate(docs):
        assert np.array_equal(shard.document(i), d)
    # the documented numpy recipe reads the same thing
    raw = np.memmap(prefix + ".bin", dtype=np.uint32, mode="r")
    off = np.load(prefix + ".idx")
    assert np.array_equal(raw[off[3] : off[4]], docs[3])


def test_dtype_follows_vocab():
    assert tokens.token_dtype(65535) == np.uint16
    assert tokens.token_dtype(65536) == np.uint32


def _committed(tmp_path, name, stage, files: dict[str, pa.Table], counts=None, extra=None):
    w = DatasetWriter(str(tmp_path / name), stage, "h", {})
    for rel, table in files.items():
        with storage.open_write(w.path(rel)) as f:
            pq.write_table(table, f)
    return w.commit(counts or {}, extra or {})


def test_stage_tokenizes_every_kept_document(tmp_path, sample_records):
    recs = sample_records[:120]
    curated = _committed(
        tmp_path,
        "curated",
        "curated",
        {"docs/part-0.parquet": pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]})},
    )
    clusters = [(-1 if i % 10 == 0 else i % 3) for i in range(len(recs))]
    assign = _committed(
        tmp_path,
        "clusters",
        "clusters",
        {"assignments.parquet": pa.table({"id": [r["id"] for r in recs], "cluster": clusters})},
    )
    from mixture.config import parse_config

    cfg = parse_config(
        {
            "output_root": str(tmp_path),
            "input": {"uris": ["x"]},
            "shards": {"vocab_size": 400, "tokenizer_train_docs": 50},
        }
    )
    w = DatasetWriter(str(tmp_path / "climblab"), "climblab", "h", {})
    out = shards.run(StageContext(cfg, stage("climblab"), {"curated": curated, "clusters": assign}, w))
    ds = w.commit(out.counts, out.extra)
    lab = climblab.ClimbLab(ds)
    assert lab.clusters == ["c00", "c01", "c02"]
    assert out.counts["documents_out"] == sum(c >= 0 for c in clusters)
    assert out.counts["pruned_documents"] == clusters.count(-1)
    total = 0
    for name in lab.clusters:
        shard, texts = lab.shard(name), lab.texts(name)
        assert len(shard) == texts.num_rows
        for i, text in enumerate(texts.column("text").to_pylist()):
            doc = shard.document(i)
            assert doc[-1] == lab.eos_id
            assert lab.tokenizer.decode(doc[:-1].tolist()) == text  # byte-level BPE is lossless
        assert shard.n_tokens == lab.tokens_per_cluster[name]
        total += shard.n_tokens
    assert total == out.counts["tokens"]
    assert abs(sum(lab.prior.values()) - 1) < 1e-9


def test_appending_writer_writes_what_the_whole_shard_writer_writes(tmp_path):
    rng = np.random.default_rng(1)
    docs = [np.append(rng.integers(0, 4000, size=n), 3) for n in [3, 0, 17, 250, 1]]
    whole = str(tmp_path / "whole" / "tokens")
    tokens.write_token_shard(whole, docs, np.uint16)
    parts = str(tmp_path / "parts" / "tokens")
    with tokens.TokenShardWriter(parts, np.uint16) as w:
        w.append(docs[:2])
        w.append([])
        w.append(docs[2:])
        assert w.close() == (5, sum(len(d) for d in docs))
    for ext in (".bin", ".idx"):
        assert open(whole + ext, "rb").read() == open(parts + ext, "rb").read()


def _shards_ctx(tmp_path, recs, clusters, name, **shards_cfg):
    """The shards stage's context on curated documents in two files and their assignments."""
    curated = _committed(
        tmp_path / name,
        "curated",
        "curated",
        {
            f"docs/part-{p}.parquet": pa.table({"id": [r["id"] for r in part], "text": [r["text"] for r in part]})
            for p, part in enumerate((recs[:50], recs[50:]))
        },
    )
    assign = _committed(
        tmp_path / name,
        "clusters",
        "clusters",
        {"assignments.parquet": pa.table({"id": [r["id"] for r in recs[: len(clusters)]], "cluster": clusters})},
    )
    from mixture.config import parse_config

    cfg = parse_config(
        {
            "output_root": str(tmp_path),
            "input": {"uris": ["x"]},
            "shards": {"vocab_size": 400, "tokenizer_train_docs": 50, **shards_cfg},
        }
    )
    w = DatasetWriter(
        str(tmp_path / name / "climblab"),
        "climblab",
        "h",
        {},
        staging_root=str(tmp_path / name / "_staging"),
        resume=True,
    )
    return StageContext(cfg, stage("climblab"), {"curated": curated, "clusters": assign}, w)


def _shards_stage(tmp_path, recs, clusters, name, **shards_cfg):
    ctx = _shards_ctx(tmp_path, recs, clusters, name, **shards_cfg)
    out = shards.run(ctx)
    return ctx.writer.commit(out.counts, out.extra)


def _files(ds) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in ds.manifest.files}


def test_small_batches_merge_to_the_same_bytes_in_id_order(tmp_path, sample_records, monkeypatch):
    recs, clusters = _reverse_ids(sample_records)
    one = _shards_stage(tmp_path, recs, clusters, "one")
    monkeypatch.setattr(shards, "BATCH_ROWS", 16)  # 8 runs per cluster instead of 1
    many = _shards_stage(tmp_path, recs, clusters, "many")
    assert _files(one) == _files(many)
    texts = climblab.ClimbLab(many).texts("c01").column("id").to_pylist()
    assert texts == sorted(r["id"] for r, c in zip(recs, clusters) if c == 1)


def test_curated_documents_without_an_assignment_are_a_clear_error(tmp_path, sample_records):
    import pytest

    recs = sample_records[:60]
    with pytest.raises(RuntimeError, match="1 curated documents have no cluster assignment"):
        _shards_stage(tmp_path, recs, [0] * 59, "short")  # the assignments lack the last document


def _reverse_ids(sample_records, n=120):
    # ids in reverse order of the curated rows: every cluster's runs must be merged by id
    recs = [dict(r, id=f"d{999 - i:04d}") for i, r in enumerate(sample_records[:n])]
    return recs, [(-1 if i % 10 == 0 else i % 3) for i in range(len(recs))]


def test_parts_and_workers_give_the_same_committed_files(tmp_path, sample_records):
    recs, clusters = _reverse_ids(sample_records)
    one = _shards_stage(tmp_path, recs, clusters, "one")  # one part, here
    parts = _shards_stage(tmp_path, recs, clusters, "parts", part_docs=35)  # 4 parts, here
    two = _shards_stage(tmp_path, recs, clusters, "two", part_docs=35, workers=2)  # 4 parts, 2 processes
    assert _files(one) == _files(parts) == _files(two)
    assert "c00/tokens.bin" in _files(two)
    assert not [p for p in _files(two) if p.startswith("_parts")]  # the runs are not part of the dataset
    assert not (tmp_path / "two" / "climblab" / "_parts").exists()


def test_a_staging_folder_with_some_parts_done_resumes_with_the_missing_ones(tmp_path, sample_records):
    recs, clusters = _reverse_ids(sample_records)
    clean = _shards_stage(tmp_path, recs, clusters, "clean")
    ctx = _shards_ctx(tmp_path, recs, clusters, "killed", part_docs=35)
    planned = shards.parts(ctx)  # stages the tokenizer
    assert [(p.first_doc, p.docs) for p in planned] == [(0, 35), (35, 35), (70, 35), (105, 15)]
    shards.tokenize_part(ctx, planned[0])
    shards.tokenize_part(ctx, planned[2])
    # a part killed half-way: its runs written, its done.json not yet
    shards.tokenize_part(ctx, planned[3])
    done = next((tmp_path / "killed" / "_staging").glob(f"climblab-*/{planned[3].folder}/done.json"))
    done.unlink()
    resumed = _shards_ctx(tmp_path, recs, clusters, "killed", part_docs=35)
    out = shards.run(resumed)
    assert ("parts", "2 tokenized, 2 reused; 3 clusters merged, 0 reused") in out.summary
    assert _files(resumed.writer.commit(out.counts, out.extra)) == _files(clean)


def test_merging_before_every_part_is_tokenized_is_a_clear_error(tmp_path, sample_records):
    import pytest
    from mixture.climblab.parts import ShardsError

    recs, clusters = _reverse_ids(sample_records)
    ctx = _shards_ctx(tmp_path, recs, clusters, "early", part_docs=60)
    planned = shards.parts(ctx)
    shards.tokenize_part(ctx, planned[0])
    with pytest.raises(ShardsError, match=r"part 1 \(documents 60-119\) is not tokenized: run it before merging c00"):
        shards.merge_cluster(ctx, 0)
    with pytest.raises(ShardsError, match="cluster c00 is not merged"):
        shards.finish(ctx)


def test_a_commit_that_fails_after_finish_is_retried_with_the_same_files(tmp_path, sample_records):
    """`finish` removes the runs; a retried commit (the Airflow task again) must not need them."""
    recs, clusters = _reverse_ids(sample_records)
    clean = _shards_stage(tmp_path, recs, clusters, "clean")
    ctx = _shards_ctx(tmp_path, recs, clusters, "retried", part_docs=35)
    shards.run(ctx)  # every part and merge done, the runs removed; the commit then fails
    retried = _shards_ctx(tmp_path, recs, clusters, "retried", part_docs=35)
    out = shards.finish(retried)
    assert _files(retried.writer.commit(out.counts, out.extra)) == _files(clean)
    assert "clusters.json" in _files(clean)


def test_a_tiny_merge_budget_gives_the_same_bytes(tmp_path, sample_records, monkeypatch):
    from mixture.climblab import merge

    recs, clusters = _reverse_ids(sample_records)
    one = _shards_stage(tmp_path, recs, clusters, "one")
    monkeypatch.setattr(shards, "BATCH_ROWS", 16)  # 8 runs per cluster
    monkeypatch.setattr(merge, "MERGE_IDS", 8)  # 16 ids of a run at a time (the floor)
    assert _files(_shards_stage(tmp_path, recs, clusters, "tiny")) == _files(one)
