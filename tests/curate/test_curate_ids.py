"""Document identity (`input.unique_ids`): by default a document is its file plus its id, so 12
files whose ids are `r0, r1, ...` each keep every document (the ids that occur in several files
get the file's path as prefix); the same content under a second name is still caught (exact
duplicates); an id repeated inside one file is still a `duplicate_id`. With `unique_ids: true` a
repeated id is a duplicate wherever it is (the old behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import first_passing
from mixture import pipeline
from mixture.config import parse_config

FILES, PER_FILE = 12, 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_records) -> tuple[Path, list[str]]:
    """12 files of 3 distinct passing documents with ids r0..r2 each, a file with an id repeated
    inside it, and `z-copy-of-f00.jsonl` (f00's content under another name)."""
    texts = [r["text"] for r in first_passing(sample_records, FILES * PER_FILE + 1, min_words=300)]
    root = tmp_path_factory.mktemp("ids-in")
    for f in range(FILES):
        lines = [json.dumps({"id": f"r{i}", "text": texts[f * PER_FILE + i]}) for i in range(PER_FILE)]
        (root / f"f{f:02d}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "z-copy-of-f00.jsonl").write_text((root / "f00.jsonl").read_text())
    clash = [json.dumps({"id": "solo", "text": texts[-1]}), json.dumps({"id": "solo", "text": "another text"})]
    (root / "g-clash.jsonl").write_text("\n".join(clash) + "\n")
    return root, texts


def _run(tmp: Path, inputs: Path, unique_ids: bool, **curate):
    cfg = parse_config(
        {
            "run_name": "ids",
            "output_root": str(tmp),
            "input": {"uris": [str(inputs)], "unique_ids": unique_ids},
            "curate": {"spark_master": "local[2]", "partitions": 2, **curate},
            "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
        }
    )
    pipeline.run_stage(cfg, "curate")
    result = pipeline.run_stage(cfg, "select")
    docs = {r["id"]: r for f in result.dataset.files("docs/") for r in pq.read_table(f).to_pylist()}
    rejected = {r["id"]: r for f in result.dataset.files("rejected/") for r in pq.read_table(f).to_pylist()}
    return result.dataset.manifest.counts, docs, rejected


def test_same_ids_in_different_files_are_different_documents(spark, inputs, tmp_path):
    root, texts = inputs
    counts, docs, rejected = _run(tmp_path, root, unique_ids=False)
    # Every document of the 12 files survives, under an id prefixed with its file's path.
    expected = {f"f{f:02d}.jsonl:r{i}": texts[f * PER_FILE + i] for f in range(FILES) for i in range(PER_FILE)}
    assert {i: docs[i]["text"] for i in expected} == expected
    # The copy is caught: same texts, so exact duplicates of f00's documents.
    copies = {f"z-copy-of-f00.jsonl:r{i}" for i in range(PER_FILE)}
    assert {rejected[i]["reason"] for i in copies} == {"exact_duplicate"}
    assert {rejected[i]["duplicate_of"] for i in copies} == {f"f00.jsonl:r{i}" for i in range(PER_FILE)}
    # An id repeated inside one file is still a duplicate id; an id no other file has is kept as is.
    assert counts["quarantined"] == {"duplicate_id": 1}
    assert docs["solo"]["text"] == texts[-1]
    assert counts["documents_out"] == FILES * PER_FILE + 1


def test_unique_ids_true_quarantines_a_repeated_id_wherever_it_is(spark, inputs, tmp_path):
    root, texts = inputs
    counts, docs, _ = _run(tmp_path, root, unique_ids=True)
    # The first file (by path) keeps r0..r2; the 11 other files and the copy repeat them.
    assert counts["quarantined"] == {"duplicate_id": (FILES - 1 + 1) * PER_FILE + 1}
    assert sorted(docs) == ["r0", "r1", "r2", "solo"]
    # Files are ordered by URI: f00.jsonl comes first.
    assert [docs[f"r{i}"]["text"] for i in range(PER_FILE)] == texts[:PER_FILE]


@pytest.mark.parametrize("driver_rows", [200_000, 0], ids=["driver", "spark"])
def test_a_prefixed_id_that_equals_another_documents_id_is_a_clear_error(spark, sample_records, tmp_path, driver_rows):
    """a.jsonl's id "2" is also in b.jsonl, so it becomes `a.jsonl:2`; a.jsonl's second record has
    no id, so its id is `a.jsonl:2` too: two distinct documents, one curated id. The stage stops
    with one line saying so instead of dropping one of them as a `duplicate_id`."""
    from mixture.curate.annotate import IdCollisionError

    texts = [r["text"] for r in sample_records[:3]]
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jsonl").write_text(
        json.dumps({"id": "2", "text": texts[0]}) + "\n" + json.dumps({"text": texts[1]}) + "\n"
    )
    (root / "b.jsonl").write_text(json.dumps({"id": "2", "text": texts[2]}) + "\n")
    with pytest.raises(IdCollisionError, match=r"curated id 'a.jsonl:2' .* input.unique_ids"):
        _run(tmp_path / "out", root, unique_ids=False, driver_rows=driver_rows)
