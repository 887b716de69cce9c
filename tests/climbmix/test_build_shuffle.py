"""The build's external shuffle (`mixture.climbmix.shuffle`): the committed files do not depend on how the
work is cut (workers, parts, buckets), a killed build resumes what it staged, the text of a
cluster is never read whole and a bucket holds at most `build.bucket_docs` documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.climblab import ClimbLab
from mixture.climbmix import build as climbmix_build
from mixture.climbmix import global_order, shuffle
from mixture.dataset import open_dataset
from mixture.pipeline import run_stage

FORMATS = ["parquet", "tokens", "megatron", "nanogpt"]


@pytest.fixture
def lab_root(tmp_path, sample_records):
    """A ClimbLab whose text.parquet files have row groups of 4 documents."""
    root = tmp_path / "out"
    lab = make_climblab(root, sample_records, row_group_size=4)
    make_search(root, lab, WEIGHTS)
    return root


def committed(ds) -> dict[str, str]:
    """path -> sha256 of every file of a committed dataset, the card aside (it names no layout)."""
    return {f["path"]: f["sha256"] for f in ds.manifest.files}


def config(root: Path, **settings):
    """Shards of 4 documents (about 8 of them), every format."""
    return make_config(root, formats=FORMATS, shard_docs=4, **{"val_fraction": 0.05, **settings})


def build(root: Path, **settings):
    return run_stage(config(root, **settings), "build", force=True).dataset


def test_positions_invert_the_documented_global_order():
    rng = np.random.default_rng(3)
    selected = {"a": rng.integers(0, 9, 20), "b": np.zeros(0, dtype=np.int64), "c": rng.integers(0, 5, 13)}
    clusters = ["a", "b", "c"]
    cluster_index, doc_index = global_order(selected, clusters, seed=11)
    where = shuffle.positions(selected, clusters, seed=11)
    items_cluster = np.concatenate([np.full(len(selected[c]), i) for i, c in enumerate(clusters)])
    items_doc = np.concatenate([selected[c] for c in clusters])
    assert sorted(where.tolist()) == list(range(len(items_doc)))
    assert np.array_equal(cluster_index[where], items_cluster) and np.array_equal(doc_index[where], items_doc)


def test_buckets_are_whole_shards_and_parts_whole_row_groups():
    assert [b.to_dict() for b in shuffle.plan_buckets(70, 16, 40)] == [
        {"index": 0, "first_shard": 0, "shards": 2, "first_doc": 0, "docs": 32},
        {"index": 1, "first_shard": 2, "shards": 2, "first_doc": 32, "docs": 32},
        {"index": 2, "first_shard": 4, "shards": 1, "first_doc": 64, "docs": 6},
    ]
    assert len(shuffle.plan_buckets(70, 16, 1)) == 5  # at least one shard per bucket


def test_same_files_whatever_the_workers_parts_and_buckets(lab_root):
    one = build(lab_root)  # one bucket (200,000 documents), one part per cluster
    assert one.manifest.extra["shards"] >= 6
    reference = committed(one)
    assert any(p.startswith("nanogpt/") for p in reference) and "megatron/blend.txt" in reference
    small = build(lab_root, bucket_docs=4, part_docs=4)  # a bucket per shard, a part per row group
    assert committed(small) == reference
    two = build(lab_root, bucket_docs=10, part_docs=8, workers=2)  # 2 shards a bucket
    assert committed(two) == reference
    assert not list(Path(two.uri).rglob("*.tmp-*"))  # no scratch in the committed folder
    assert not (Path(two.uri) / shuffle.SCRATCH).exists()
    two.verify()


def test_a_killed_build_resumes_what_it_staged(lab_root, monkeypatch):
    clean = committed(build(lab_root, bucket_docs=4, part_docs=4))
    real_gather, real_iter = shuffle.gather_bucket, shuffle.iter_routed
    calls = {"scatter": 0, "gather": 0}

    def failing_gather(lab, writer, bucket, *args):
        if bucket.index == 2:
            raise RuntimeError("injected: killed while gathering bucket 2")
        calls["gather"] += 1
        return real_gather(lab, writer, bucket, *args)

    monkeypatch.setattr(shuffle, "gather_bucket", failing_gather)
    with pytest.raises(RuntimeError, match="bucket 2"):
        build(lab_root, bucket_docs=4, part_docs=4)
    assert committed(open_dataset(str(lab_root / "climbmix"))) == clean  # the killed build committed nothing
    assert calls["gather"] == 2

    def counting_iter(*args):
        calls["scatter"] += 1
        return real_iter(*args)

    monkeypatch.setattr(shuffle, "gather_bucket", real_gather)
    monkeypatch.setattr(shuffle, "iter_routed", counting_iter)
    resumed = build(lab_root, bucket_docs=4, part_docs=4)
    assert calls["scatter"] == 0  # every part was scattered before the kill
    assert committed(resumed) == clean


def test_a_resume_with_another_bucket_size_starts_the_shuffle_again(lab_root, monkeypatch):
    clean = committed(build(lab_root))
    real = shuffle.gather_bucket

    def failing(lab, writer, bucket, *args):
        if bucket.index == 1:
            raise RuntimeError("injected")
        return real(lab, writer, bucket, *args)

    monkeypatch.setattr(shuffle, "gather_bucket", failing)
    with pytest.raises(RuntimeError):
        build(lab_root, bucket_docs=4)
    monkeypatch.setattr(shuffle, "gather_bucket", real)
    assert committed(build(lab_root, bucket_docs=10)) == clean


def test_no_cluster_text_is_read_whole_and_a_bucket_holds_at_most_bucket_docs(lab_root, monkeypatch):
    def whole(self, name):
        raise AssertionError(f"the build read all of {name}/text.parquet")

    monkeypatch.setattr(ClimbLab, "texts", whole)
    real = shuffle.bucket_rows
    sizes = []

    def recording(writer, plan, bucket):
        batches = real(writer, plan, bucket)
        sizes.append(sum(b.num_rows for b in batches))
        return batches

    monkeypatch.setattr(shuffle, "bucket_rows", recording)
    ds = build(lab_root, bucket_docs=8, part_docs=4)
    counts = ds.manifest.counts  # the validation split's buckets are gathered too
    assert sum(sizes) == counts["documents"] + counts["validation_documents"] and max(sizes) <= 8 and len(sizes) >= 3


def test_steps_run_in_any_order_and_each_missing_piece_is_a_clear_error(lab_root):
    """The Airflow way: plan, scatter the parts and gather the buckets as separate calls, then
    finish and commit; the files are those of one `climb build`."""
    from mixture import pipeline
    from mixture.climbmix import BuildError
    from mixture.stages import build as stage

    clean = committed(build(lab_root))
    ctx = pipeline.open_stage(config(lab_root, bucket_docs=4, part_docs=4), "build")
    with pytest.raises(BuildError, match="not planned"):
        stage.scatter(ctx, shuffle.Part(0, 0, 0, 1, 0, 4))
    layout = stage.plan(ctx)
    parts, buckets = climbmix_build.parts(layout), climbmix_build.buckets(layout)
    assert len(parts) > 4 and len(buckets) > 1
    for p in parts[:0:-1]:  # in any order, and again
        stage.scatter(ctx, p)
    stage.scatter(ctx, parts[-1])
    with pytest.raises(BuildError, match="part 0 is not scattered yet"):
        stage.gather(ctx, buckets[0])
    stage.scatter(ctx, parts[0])
    for b in buckets[:0:-1]:
        stage.gather(ctx, b)
    with pytest.raises(BuildError, match="bucket 0 .* not written yet"):
        stage.finish(ctx)
    stage.gather(ctx, buckets[0])
    ds = pipeline.commit(ctx, stage.finish(ctx))
    assert committed(ds) == clean


def test_a_build_on_s3_commits_the_same_files(lab_root, s3_endpoint, s3_bucket):
    """Output root on S3 (moto over HTTP): routes read whole, IPC batches read by range, the
    scratch deleted by prefix; the files are the local build's."""
    import boto3
    from mixture.config import parse_config

    clean = committed(build(lab_root, bucket_docs=4, part_docs=4))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for name in ("climblab", "search", "curated", "clusters"):
        for f in sorted((lab_root / name).rglob("*")):
            if f.is_file():
                s3.put_object(Bucket=s3_bucket, Key=f"out/{f.relative_to(lab_root)}", Body=f.read_bytes())
    data = config(lab_root, bucket_docs=4, part_docs=4).model_dump(mode="json")
    data["output_root"] = f"s3://{s3_bucket}/out"
    ds = run_stage(parse_config(data), "build").dataset
    assert committed(ds) == clean
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]]
    assert not [k for k in keys if ".tmp-" in k]


def test_a_commit_that_fails_after_finish_is_retried_with_the_same_files(lab_root, monkeypatch):
    """The Airflow `build` task: finish, then the commit fails (a busy lease, an S3 error); the
    retried task finishes again and commits the clean run's files, with no scratch left."""
    from mixture import pipeline
    from mixture.stages import build as stage

    clean = committed(build(lab_root, bucket_docs=4, part_docs=4))
    ctx = pipeline.open_stage(config(lab_root, bucket_docs=4, part_docs=4), "build")
    layout = stage.plan(ctx)
    stage.run_steps(ctx, layout)
    first = stage.finish(ctx)

    def failing(*args, **kwargs):
        raise RuntimeError("injected: the commit failed")

    monkeypatch.setattr(pipeline, "exclusive", failing)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.commit(ctx, first)
    monkeypatch.undo()
    ctx = pipeline.open_stage(config(lab_root, bucket_docs=4, part_docs=4), "build")  # the retried task
    again = stage.finish(ctx)
    assert again == first
    assert stage.plan(ctx) == layout  # and the steps before it, run again, keep what was finished
    stage.run_steps(ctx, layout)
    assert stage.finish(ctx) == first
    ds = pipeline.commit(ctx, again)
    assert committed(ds) == clean and ds.manifest.extra == open_dataset(ds.uri).manifest.extra
    assert not list(Path(ds.uri).rglob("*.tmp-*")) and not (Path(ds.uri) / shuffle.SCRATCH).exists()


def test_a_finish_killed_after_the_nanogpt_files_finishes_again(lab_root, monkeypatch):
    from mixture import pipeline
    from mixture.stages import build as stage

    clean = committed(build(lab_root, bucket_docs=4, part_docs=4))
    ctx = pipeline.open_stage(config(lab_root, bucket_docs=4, part_docs=4), "build")
    stage.run_steps(ctx, stage.plan(ctx))
    monkeypatch.setattr(shuffle, "clear", lambda writer: (_ for _ in ()).throw(RuntimeError("injected: killed")))
    monkeypatch.setattr(stage, "render_card", lambda *a: (_ for _ in ()).throw(RuntimeError("injected: killed")))
    with pytest.raises(RuntimeError, match="killed"):
        stage.finish(ctx)  # the nanogpt pieces are gone, the finish was not recorded
    monkeypatch.undo()
    assert committed(pipeline.commit(ctx, stage.finish(ctx))) == clean


def test_a_staging_folder_of_another_plan_is_started_again(lab_root, monkeypatch):
    """A resumed staging folder whose plan differs (here: a smaller budget under the same
    staging key) is dropped whole: no shard of the old plan is committed."""
    from mixture import pipeline
    from mixture.stages import build as stage

    small = committed(build(lab_root, tokens=6_000))
    monkeypatch.setattr(pipeline, "config_hash", lambda cfg, st, listing=True: "same-key")
    ctx = pipeline.open_stage(config(lab_root), "build")
    stage.run_steps(ctx, stage.plan(ctx))  # 12,000 tokens: more shards, not finished
    assert committed(build(lab_root, tokens=6_000)) == small


def test_a_shard_file_outside_the_plan_fails_the_finish(lab_root):
    from mixture import pipeline
    from mixture.climbmix import BuildError
    from mixture.stages import build as stage

    ctx = pipeline.open_stage(config(lab_root), "build")
    stage.run_steps(ctx, stage.plan(ctx))
    Path(ctx.writer.path("parquet/part-00099.parquet")).write_bytes(b"old")
    with pytest.raises(BuildError, match=r"parquet files do not match the plan's \d+ shard\(s\): parquet/part-00099"):
        stage.finish(ctx)


def test_tokens_travel_with_the_scatter_and_are_read_by_range(lab_root, monkeypatch):
    """No step reads a ClimbLab token file whole (on S3 that would be every token of a cluster
    per gather): the scatter reads each part's offsets and each batch's tokens by range."""
    from mixture import storage
    from mixture.climblab.tokens import TokenShard

    clean = committed(build(lab_root))
    whole = []
    real_read_bytes = storage.read_bytes

    def read_bytes(uri):
        if "climblab/" in str(uri) and str(uri).endswith((".bin", ".idx")):
            whole.append(uri)
        return real_read_bytes(uri)

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    monkeypatch.setattr(TokenShard, "tokens", property(lambda self: pytest.fail(f"{self.prefix}.bin read whole")))
    assert committed(build(lab_root, bucket_docs=4, part_docs=4)) == clean
    assert whole == []


def test_a_part_writes_one_batch_per_bucket_unless_its_rows_pass_the_buffer(lab_root, monkeypatch):
    from mixture import pipeline
    from mixture.stages import build as stage

    clean = committed(build(lab_root))

    def scatter_all() -> list[int]:
        """Batches per (part, bucket) of a fresh scatter."""
        ctx = pipeline.open_stage(config(lab_root, bucket_docs=4, part_docs=8), "build")
        ctx.writer.reset()
        layout = stage.plan(ctx)
        counts = []
        for p in climbmix_build.parts(layout):
            stage.scatter(ctx, p)
            sidecar = shuffle.storage.read_json(ctx.writer.path(shuffle.part_names(p.index)[1]))
            counts += [len(b) for b in sidecar["batches"].values()]
        return counts

    monkeypatch.setattr(shuffle, "CHUNK_ROWS", 2)  # many chunks a part
    assert set(scatter_all()) == {1}
    monkeypatch.setattr(shuffle, "BUFFER_BYTES", 1)  # every chunk's rows written at once
    assert max(scatter_all()) > 1
    assert committed(build(lab_root, bucket_docs=4, part_docs=8)) == clean  # resumes that scatter


def test_the_plan_skips_row_groups_with_no_selected_document(lab_root, monkeypatch):
    """Parts hold a selected document each (no part reads text for nothing), and the plan reads
    each cluster's offsets three times: its size, its documents' hashes for the validation split
    (`mixture.climbmix.holdout`), then its lengths to sample by; without a split, twice."""
    from collections import Counter

    from mixture import pipeline, storage
    from mixture.stages import build as stage

    lab = ClimbLab(open_dataset(str(lab_root / "climblab")))
    docs = {c: len(lab.shard(c)) for c in lab.clusters}
    selected = {c: np.zeros(0, dtype=np.int64) for c in lab.clusters}
    selected["c00"] = np.array([9, 1, 9])  # row groups of 4 documents: groups 0 and 2 of c00
    parts = shuffle.plan_parts(lab, selected, 4, docs)
    assert [(p.index, p.cluster, p.first_group, p.first_row) for p in parts] == [(0, 0, 0, 0), (1, 0, 2, 8)]

    opened = Counter()
    real_open = storage.open_read

    def open_read(uri):
        if str(uri).endswith(".idx"):
            opened[uri] += 1
        return real_open(uri)

    monkeypatch.setattr(storage, "open_read", open_read)
    stage.plan(pipeline.open_stage(config(lab_root, part_docs=4), "build"))
    assert len(opened) == 4 and set(opened.values()) == {3}
    opened.clear()
    stage.plan(pipeline.open_stage(config(lab_root, part_docs=4, val_fraction=0.0), "build"))
    assert len(opened) == 4 and set(opened.values()) == {2}
