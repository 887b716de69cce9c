"""Curation end to end (`curate` on Spark, local[2], one shared session, then `select`): an input
with every kind of defect, filtered documents, exact and near duplicates in three formats; the
accounting equation per file; the same committed files for 1, 4 and 16 partitions; `climb curate`
and `spark-submit jobs/curate.py` commit the same annotated dataset."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import first_passing, short_jvm_env
from mixture import pipeline
from mixture.config import FiltersConfig, parse_config
from mixture.curate import accounting, dedup_groups, texts
from mixture.curate.filters import FilterChain

REPO = Path(__file__).resolve().parents[2]

DEFECT_LINES: list[tuple[bytes, str]] = [
    (b'{"id": "bad-1", "text": "unterminated', "malformed_json"),
    (b'{"id": "bad-2", "text": "bad \xff bytes"}', "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"id": "bad-4", "body": "no text"}', "missing_text"),
    (b'{"id": "bad-5", "text": 5}', "non_string_text"),
    (b'{"id": "bad-6", "text": "   "}', "empty_text"),
    (b'{"id": {"x": 1}, "text": "object id"}', "invalid_id"),
    (b'{"id": "bad-8", "text": "' + b"y" * 210_000 + b'"}', "too_large"),
    (b"", "blank_line"),
    (b'{"id": "bad-10", "text": "\\udc00"}', "lone_surrogate"),
]


def _substitute(text: str, positions: list[int], tag: str) -> str:
    words = text.split()
    for p in positions:
        words[p] = f"{tag}{p}"
    return " ".join(words)


@pytest.fixture(scope="module")
def crafted_input(tmp_path_factory, sample_records) -> tuple[Path, dict]:
    """Three files: JSONL with defects, gzip'd JSONL with duplicates, Parquet; and what to expect."""
    root = tmp_path_factory.mktemp("curate-in")
    chain = FilterChain(FiltersConfig())
    passing = first_passing(sample_records, 14, min_words=300)
    failing = list(islice((r for r in sample_records if chain(r["text"]).reason is not None), 6))
    base = passing[0]
    # A chain: b is a 4-word edit of a, c a 4-word edit of b (c is further from a).
    n = len(base["text"].split())
    step = n // 10
    b_text = _substitute(base["text"], [step, 3 * step, 5 * step, 7 * step], "zb")
    c_text = _substitute(b_text, [2 * step, 4 * step, 6 * step, 8 * step], "zc")
    docs = (
        [{"id": r["id"], "text": r["text"], "source": r["source"]} for r in passing[1:9]]
        + [
            {"id": "chain-a", "text": base["text"], "source": "chain"},
            {"id": "chain-b", "text": b_text, "source": "chain"},
            {"id": "chain-c", "text": c_text, "source": "chain"},
            {"id": "zz-exact-1", "text": passing[1]["text"].upper(), "source": "copy"},  # same after normalising
            {"id": "zz-exact-2", "text": "  " + passing[2]["text"] + "\n", "source": "copy"},
        ]
        + [{"id": r["id"], "text": r["text"], "source": r["source"]} for r in failing]
    )
    lines = [line for line, _ in DEFECT_LINES] + [json.dumps({"id": "chain-a", "text": "same id again"}).encode()]
    (root / "z-defects.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "b-docs.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(d) for d in docs).encode() + b"\n"))
    # Parquet without ids: ids are derived from file and row.
    pq.write_table(
        pa.table({"text": [r["text"] for r in passing[9:14]], "source": [r["source"] for r in passing[9:14]]}),
        root / "c-docs.parquet",
    )
    expected = {
        "defects": [(i, reason) for i, (_, reason) in enumerate(DEFECT_LINES, start=1)]
        + [(len(DEFECT_LINES) + 1, "duplicate_id")],
        "documents_in": len(lines) + len(docs) + 5,
        "filtered": len(failing),
    }
    return root, expected


def _config(tmp: Path, inputs: Path, partitions: int, tracking_uri: str | None = None) -> dict:
    return {
        "run_name": "test",
        "output_root": str(tmp),
        # ids unique across files: the defects file repeats an id of the gzip'd file
        # (tests/curate/test_curate_ids.py covers the default, ids per file)
        "input": {"uris": [str(inputs)], "unique_ids": True},
        "curate": {"spark_master": "local[2]", "partitions": partitions, "max_doc_bytes": 200_000, "docs_per_file": 6},
        "tracking": {"experiment": "test-curate", "uri": tracking_uri},
    }


@pytest.fixture(scope="module")
def runs(spark, crafted_input, tmp_path_factory):
    inputs, _ = crafted_input
    # One MLflow store for the three runs (the tracking section is not part of the stage's hash).
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    out = {}
    after_shuffle = texts.AFTER_SHUFFLE_PARTS
    shingle_words, chunk_words = dedup_groups.DRIVER_SHINGLE_WORDS, dedup_groups.SHINGLE_CHUNK_WORDS
    for partitions in (1, 4, 16):
        root = tmp_path_factory.mktemp(f"curate-out-{partitions}")
        raw = _config(root, inputs, partitions, store)
        # 16 partitions: groups on Spark (no set is small enough for the driver) and the docs'
        # texts read before the write's shuffle (as for many parts); 1 and 4: on the driver, the
        # texts read by the part writers, the candidates' shingles computed on the driver (1: in
        # chunks of 500 words, so each candidate of 300+ words its own) or, as for candidates of
        # many words, on the executors (4). The committed files must be the same.
        raw["curate"]["driver_rows"] = 0 if partitions == 16 else 200_000
        cfg = parse_config(raw)
        texts.AFTER_SHUFFLE_PARTS = 0 if partitions == 16 else after_shuffle
        dedup_groups.DRIVER_SHINGLE_WORDS = 0 if partitions == 4 else shingle_words
        dedup_groups.SHINGLE_CHUNK_WORDS = 500 if partitions == 1 else chunk_words
        try:
            annotated = pipeline.run_stage(cfg, "curate")
        finally:
            texts.AFTER_SHUFFLE_PARTS = after_shuffle
            dedup_groups.DRIVER_SHINGLE_WORDS, dedup_groups.SHINGLE_CHUNK_WORDS = shingle_words, chunk_words
        out[partitions] = (cfg, pipeline.run_stage(cfg, "select"))
        out[partitions][1].seconds += annotated.seconds
        print(f"curate with {partitions} partitions: {out[partitions][1].seconds:.1f} s")
    return out


def _read(ds, prefix: str) -> list[dict]:
    files = ds.files(prefix)
    assert files, prefix
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_every_record_is_accounted_for(runs, crafted_input):
    _, expected = crafted_input
    _, result = runs[1]
    counts = result.dataset.manifest.counts
    assert counts["documents_in"] == expected["documents_in"]
    for f, c in counts["per_file"].items():
        assert c["documents_in"] == accounting.accounted(c), f
    assert counts["documents_in"] == accounting.accounted(counts)
    assert counts["quarantined"] == {reason: 1 for _, reason in expected["defects"]}
    assert sum(counts["filtered"].values()) == expected["filtered"]
    assert counts["exact_duplicates"] == 2 and counts["near_duplicates"] == 2
    assert len(counts["per_file"]) == 3
    # The annotation stage's own equation: read = annotated + quarantined, per file.
    from mixture.dataset import open_dataset

    annotated = open_dataset(pipeline.dataset_uri(runs[1][0], "annotated")).manifest.counts
    assert annotated["documents_in"] == counts["documents_in"]
    for f, c in annotated["per_file"].items():
        assert c["documents_in"] == c["documents_out"] + sum(c["quarantined"].values()), f
        assert c["quarantined"] == counts["per_file"][f]["quarantined"], f


def test_quarantine_rejected_and_docs_contents(runs, crafted_input):
    inputs, expected = crafted_input
    _, result = runs[1]
    ds = result.dataset
    quarantine = _read(ds, "quarantine/")
    assert sorted((q["line"], q["reason"]) for q in quarantine) == expected["defects"]
    assert {q["file"] for q in quarantine} == {str(inputs / "z-defects.jsonl")}
    assert all(len(q["raw"]) <= 1000 for q in quarantine)
    (dup,) = [q for q in quarantine if q["reason"] == "duplicate_id"]  # its text read back from the scan's files
    assert json.loads(dup["raw"]) == {"id": "chain-a", "text": "same id again"}

    docs = _read(ds, "docs/")
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) == result.dataset.manifest.counts["documents_out"]
    # Rows are sorted by id inside every part file; a part is a hash bucket of ids.
    for f in ds.files("docs/"):
        part_ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        assert part_ids == sorted(part_ids)
    assert len(ds.files("docs/")) >= 2  # docs_per_file = 6
    assert {"chain-a", "c-docs.parquet:1"} <= set(ids) and "chain-b" not in ids
    schema = pq.read_schema(ds.files("docs/")[0])
    assert schema.field("n_words").type == pa.int32()
    assert schema.field("id").type == pa.string() and schema.field("source").type == pa.string()
    q_fields = [f for f in schema.names if f.startswith("q_")]
    assert len(q_fields) >= 10 and all(schema.field(f).type == pa.float32() for f in q_fields)

    rejected = {r["id"]: r for r in _read(ds, "rejected/")}
    assert rejected["chain-b"]["reason"] == "near_duplicate" and rejected["chain-b"]["duplicate_of"] == "chain-a"
    assert rejected["chain-c"]["duplicate_of"] == "chain-a"  # via b: c is not similar to a
    assert rejected["zz-exact-1"]["reason"] == "exact_duplicate"
    assert rejected["zz-exact-1"]["duplicate_of"] in ids
    filtered = [r for r in rejected.values() if r["reason"].startswith("filter:")]
    assert len(filtered) == expected["filtered"]
    assert all(len(r["reason"].split(":")) == 3 and r["duplicate_of"] is None for r in filtered)
    assert not set(rejected) & set(ids)


def test_same_committed_files_for_1_4_16_partitions_on_the_driver_or_spark(runs):
    from mixture.dataset import open_dataset

    files = {p: {f["path"]: f["sha256"] for f in res.dataset.manifest.files} for p, (_, res) in runs.items()}
    assert files[1] == files[4] == files[16]
    annotated = {
        p: {f["path"]: f["sha256"] for f in open_dataset(pipeline.dataset_uri(cfg, "annotated")).manifest.files}
        for p, (cfg, _) in runs.items()
    }
    assert annotated[1] == annotated[4] == annotated[16]
    counts = {p: res.dataset.manifest.counts for p, (_, res) in runs.items()}
    strip = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    assert strip(counts[1]) == strip(counts[4]) == strip(counts[16])


def test_statistics_in_manifest_and_mlflow(runs):
    import mlflow
    from mixture import tracking

    cfg, result = runs[4]
    extra = result.dataset.manifest.extra
    assert extra["filter_stats"]["rejects_alone"]  # filters alone, before first-failure attribution
    assert extra["filters"]["gopher_quality"]["min_words"] == cfg.curate.filters.gopher_quality.min_words
    assert extra["fuzzy_dedup"]["near_duplicates"] == 2 and extra["fuzzy_dedup"]["groups"] == 1
    # the input URIs as configured, for the ClimbMix card's "Sources" (annotated's, carried by select)
    assert extra["sources"] == cfg.input.configured_uris == cfg.input.uris
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    found = mlflow.search_runs(experiment_names=["test-curate"], filter_string="attributes.run_name = 'curate'")
    assert len(found) >= 1
    assert found["metrics.documents_in"].iloc[0] == result.dataset.manifest.counts["documents_in"]
    found = mlflow.search_runs(experiment_names=["test-curate"], filter_string="attributes.run_name = 'select'")
    assert found["metrics.documents_out"].iloc[0] == result.dataset.manifest.counts["documents_out"]
    # The same config again is up to date: nothing runs.
    assert pipeline.run_stage(cfg, "curate").skipped
    again = pipeline.run_stage(cfg, "curated")
    assert again.skipped


def test_accounting_fails_loudly_when_counts_do_not_add_up():
    with pytest.raises(accounting.AccountingError, match="read 3, accounted for 2"):
        accounting.build_counts(["f"], {"f": 3}, [("f", "kept", 1), ("f", "quarantine:blank_line", 1)])
    counts = accounting.build_counts(
        ["f", "g"], {"f": 3}, [("f", "kept", 1), ("f", "filter:c4:curly_brace", 1), ("f", "near_duplicate", 1)]
    )
    assert counts["per_file"]["g"]["documents_in"] == 0 and counts["filtered"] == {"c4": 1}


def test_missing_input_is_a_clear_error(spark, tmp_path):
    cfg = parse_config(_config(tmp_path / "out", tmp_path / "nothing-here", 2))
    with pytest.raises(FileNotFoundError, match="no input files"):
        pipeline.run_stage(cfg, "curate")


@pytest.mark.slow
def test_climb_cli_and_spark_submit_commit_the_same_dataset(tmp_path, tiny_corpus):
    import yaml

    outputs = {}
    # one MLflow store for both (its tables are created once; the tracking section is not hashed)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("cli", "submit"):
        cfg = _config(tmp_path / name, tiny_corpus, 2, store)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = short_jvm_env({**os.environ, "PYSPARK_PYTHON": sys.executable})
        if name == "cli":
            cmd = [str(Path(sys.executable).parent / "climb"), "curate", "--config", str(path)]
        else:
            cmd = [
                str(Path(sys.executable).parent / "spark-submit"),
                "--master",
                "local[2]",
                str(REPO / "jobs" / "curate.py"),
                "--config",
                str(path),
            ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifest = json.loads((tmp_path / name / "annotated" / "_manifest.json").read_text())
        outputs[name] = manifest
    assert outputs["cli"]["files"] == outputs["submit"]["files"]
    assert outputs["cli"]["counts"] == outputs["submit"]["counts"]
    assert outputs["cli"]["config_hash"] == outputs["submit"]["config_hash"]


@pytest.mark.slow
def test_reads_and_commits_on_s3(spark, crafted_input, tmp_path, s3_endpoint, s3_bucket):
    import boto3
    from mixture import storage

    inputs, expected = crafted_input
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for f in sorted(inputs.iterdir()):
        s3.put_object(Bucket=s3_bucket, Key=f"raw/{f.name}", Body=f.read_bytes())
    cfg_dict = _config(tmp_path, inputs, 4, f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg_dict["output_root"] = f"s3://{s3_bucket}/out"
    cfg_dict["input"]["uris"] = [f"s3://{s3_bucket}/raw/"]
    cfg = parse_config(cfg_dict)
    pipeline.run_stage(cfg, "curate")
    result = pipeline.run_stage(cfg, "select")
    counts = result.dataset.manifest.counts
    assert counts["documents_in"] == expected["documents_in"]
    assert counts["exact_duplicates"] == 2 and counts["near_duplicates"] == 2
    assert set(counts["per_file"]) == {f"s3://{s3_bucket}/raw/{f.name}" for f in inputs.iterdir()}
    quarantine = [
        row
        for f in result.dataset.files("quarantine/")
        for row in pq.read_table(pa.BufferReader(storage.read_bytes(f))).to_pylist()
    ]
    assert sorted((q["line"], q["reason"]) for q in quarantine) == expected["defects"]
    result.dataset.verify()
