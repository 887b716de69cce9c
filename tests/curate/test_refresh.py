"""Incremental curation (`refresh.incremental`, `mixture.increments`, `mixture.curate.prior`):
a corpus grown in three refreshes gives the curated set a full run over all its files gives,
while each refresh reads only its new files; new files' copies of earlier documents (exact, and
edited the ways the dedup benchmark edits them) are removed as duplicates of the earlier ones,
which survive; changed and deleted input files withdraw their old documents, and the duplicates
of a withdrawn survivor are decided again (one of them survives, as in a full run)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import first_passing
from mixture import increments, pipeline, storage
from mixture.config import parse_config

pytestmark = pytest.mark.slow

FILES, PER = 6, 30


def edited(text: str, seed: int, rate: float = 0.01) -> str:
    """A copy with about `rate` of its words edited, inserted or deleted (the dedup benchmark's
    kinds of edits, `bench/curate_dedup.py`)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        i = rng.randrange(len(words))
        kind = rng.choice(["edit", "insert", "delete"])
        if kind == "edit":
            words[i] = f"edited{rng.getrandbits(24):x}"
        elif kind == "insert":
            words.insert(i, f"inserted{rng.getrandbits(24):x}")
        elif len(words) > 10:
            del words[i]
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(sample_records) -> dict[str, list[dict]]:
    """Six files of 30 real documents that pass the filters (ids `<file>-<n>`, unique across files, a later file's
    ids sorting after an earlier file's); file 3 also holds exact copies of three documents of
    file 0, file 4 edited copies of four documents of file 1."""
    pool = first_passing(sample_records, FILES * PER, min_words=150)
    files = {
        f"f{k}.jsonl": [{"id": f"f{k}-{i:03d}", "text": pool[k * PER + i]["text"]} for i in range(PER)]
        for k in range(FILES)
    }
    files["f3.jsonl"] += [{"id": f"f3-copy-{i}", "text": files["f0.jsonl"][i]["text"]} for i in range(3)]
    files["f4.jsonl"] += [
        {"id": f"f4-edit-{i}", "text": edited(files["f1.jsonl"][i]["text"], seed=i)} for i in range(4)
    ]
    return files


def write(folder: Path, name: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))


def config(root: Path, inputs: Path, incremental: bool = True):
    return parse_config(
        {
            "run_name": "refresh",
            "output_root": str(root / "out"),
            "input": {"uris": [str(inputs)]},
            "curate": {"spark_master": "local[2]", "partitions": 2, "keep_rejected": True},
            "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"},
            "refresh": {"incremental": incremental},
        }
    )


def curate(cfg):
    ann = pipeline.run_stage(cfg, "curate").dataset
    cur = pipeline.run_stage(cfg, "select").dataset
    return ann, cur


def rows(ds, prefix: str) -> dict[str, dict]:
    return {r["id"]: r for f in ds.files(prefix) for r in pq.read_table(f).to_pylist()}


def test_three_refreshes_give_the_full_runs_curated_set_reading_only_new_files(spark, corpus, tmp_path):
    inputs = tmp_path / "in"
    cfg = config(tmp_path / "inc", inputs)
    names = sorted(corpus)
    inodes: list[int] = []
    for step in range(3):
        for name in names[2 * step : 2 * step + 2]:
            write(inputs, name, corpus[name])
        ann, cur = curate(cfg)
        lin = increments.lineage(ann)
        assert lin is not None and lin.version == step + 1
        # Each refresh read only its two new files.
        assert lin.delta["files_new"] == 2 and lin.delta["files_unchanged"] == 2 * step
        read = sum(len(corpus[n]) for n in names[2 * step : 2 * step + 2])
        assert lin.delta["documents_read"] == read
        assert lin.mode == ("full" if step == 0 else "incremental")
        if step == 0:
            inodes = [Path(f).stat().st_ino for f in ann.files("docs/part-")]
    full_ann, full_cur = curate(config(tmp_path / "full", inputs))

    kept, full_kept = rows(cur, "docs/"), rows(full_cur, "docs/")
    assert sorted(kept) == sorted(full_kept)
    assert {i: r["text"] for i, r in kept.items()} == {i: r["text"] for i, r in full_kept.items()}
    rejected = rows(cur, "rejected/")
    # The copies in later files are duplicates of the earlier documents, which survive.
    for i in range(3):
        assert rejected[f"f3-copy-{i}"]["reason"] == "exact_duplicate"
        assert rejected[f"f3-copy-{i}"]["duplicate_of"] == f"f0-{i:03d}"
    for i in range(4):
        assert rejected[f"f4-edit-{i}"]["reason"] == "near_duplicate"
        assert rejected[f"f4-edit-{i}"]["duplicate_of"] == f"f1-{i:03d}"
    assert {i: (r["reason"], r["duplicate_of"]) for i, r in rejected.items()} == {
        i: (r["reason"], r["duplicate_of"]) for i, r in rows(full_cur, "rejected/").items()
    }
    # Counts add up per file exactly as in the full run; the delta says what the refresh found.
    assert cur.manifest.counts == full_cur.manifest.counts
    assert ann.manifest.counts == full_ann.manifest.counts
    d = increments.lineage(cur).delta
    assert d["near_duplicates_of_existing"] == 4 and d["exact_duplicates_of_existing"] == 0
    chain = increments.history(cur)
    assert [c["version"] for c in chain] == [1, 2, 3] and [c["mode"] for c in chain][-1] == "incremental"
    # A full selection over the refreshed dataset (a threshold change, or refresh.incremental off)
    # merges the groups across the curation runs: the same curated set, the copies rejected.
    again = pipeline.run_stage(config(tmp_path / "inc", inputs, incremental=False), "select", force=True).dataset
    assert increments.lineage(again).mode == "full"
    assert sorted(rows(again, "docs/")) == sorted(full_kept)
    assert again.manifest.counts == full_cur.manifest.counts
    # Unchanged parts are carried, not copied: the first version's parts are the same files.
    first = [f["path"] for f in ann.manifest.files if f["path"].startswith("docs/part-")]
    assert first and [Path(ann.path(p)).stat().st_ino for p in first] == inodes


def test_an_earlier_document_survives_over_a_new_near_duplicate_with_a_smaller_id(spark, corpus, tmp_path):
    inputs = tmp_path / "in"
    original = corpus["f2.jsonl"][5]
    write(inputs, "m.jsonl", [{"id": "m-1", "text": original["text"]}])
    cfg = config(tmp_path / "inc", inputs)
    curate(cfg)
    write(inputs, "a.jsonl", [{"id": "a-1", "text": edited(original["text"], seed=7)}])
    _, cur = curate(cfg)
    assert sorted(rows(cur, "docs/")) == ["m-1"]
    assert rows(cur, "rejected/")["a-1"]["duplicate_of"] == "m-1"
    # A full run over both files keeps the smaller id instead (no earlier version to prefer).
    _, full = curate(config(tmp_path / "full", inputs))
    assert sorted(rows(full, "docs/")) == ["a-1"]


def test_changed_and_deleted_files_withdraw_their_documents(spark, corpus, tmp_path):
    inputs = tmp_path / "in"
    for name in ("f0.jsonl", "f1.jsonl", "f2.jsonl"):
        write(inputs, name, corpus[name])
    cfg = config(tmp_path / "inc", inputs)
    ann1, _ = curate(cfg)
    changed = [dict(r) for r in corpus["f1.jsonl"][1:]]  # f1-000 dropped
    changed[0]["text"] = corpus["f5.jsonl"][0]["text"]  # f1-001 rewritten
    changed.append({"id": "f1-new", "text": corpus["f5.jsonl"][1]["text"]})
    write(inputs, "f1.jsonl", changed)
    (inputs / "f2.jsonl").unlink()
    ann, cur = curate(cfg)
    d = increments.lineage(ann).delta
    assert (d["files_new"], d["files_changed"], d["files_deleted"], d["files_unchanged"]) == (0, 1, 1, 1)
    assert d["documents_read"] == len(changed)
    assert d["withdrawn"] == len(corpus["f1.jsonl"]) + len(corpus["f2.jsonl"])
    kept = rows(cur, "docs/")
    assert "f1-000" not in kept and not any(i.startswith("f2-") for i in kept)
    assert kept["f1-001"]["text"] == corpus["f5.jsonl"][0]["text"] and "f1-new" in kept
    removed = increments.removed_since(cur, 1)
    assert set(removed.column("reason").to_pylist()) == {"withdrawn"}
    _, full = curate(config(tmp_path / "full", inputs))
    assert sorted(kept) == sorted(rows(full, "docs/"))
    assert cur.manifest.counts == full.manifest.counts
    assert f"{inputs / 'f2.jsonl'}" not in cur.manifest.counts["per_file"]
    # What the version covers: every input file with its size and checksum, and the parent.
    listing = {r["uri"]: r for r in json.loads(Path(ann.path("inputs.json")).read_text())}
    assert sorted(listing) == sorted(str(p) for p in inputs.iterdir())
    assert listing[str(inputs / "f1.jsonl")]["checksum"].startswith("sha256:")
    assert increments.lineage(ann).parent == ann1.manifest_sha256


def test_ids_repeated_across_refreshes_keep_every_document_and_never_change(spark, sample_records, tmp_path):
    inputs = tmp_path / "in"
    texts = [r["text"] for r in first_passing(sample_records, 6, min_words=150)]
    write(inputs, "a.jsonl", [{"id": f"r{i}", "text": texts[i]} for i in range(3)])
    cfg = config(tmp_path / "inc", inputs)
    _, first = curate(cfg)
    write(inputs, "b.jsonl", [{"id": f"r{i}", "text": texts[3 + i]} for i in range(3)])
    _, cur = curate(cfg)
    kept = rows(cur, "docs/")
    assert sorted(rows(first, "docs/")) == ["r0", "r1", "r2"]
    # The earlier documents keep their ids; the new ones with the same ids get their file's path.
    assert sorted(kept) == ["b.jsonl:r0", "b.jsonl:r1", "b.jsonl:r2", "r0", "r1", "r2"]
    assert {kept[f"b.jsonl:r{i}"]["text"] for i in range(3)} == set(texts[3:])


def test_a_withdrawn_survivors_duplicate_is_revived_as_a_full_run_keeps_it(spark, corpus, tmp_path):
    inputs = tmp_path / "in"
    docs = corpus["f2.jsonl"]
    x = docs[3]["text"]
    write(inputs, "a.jsonl", [{"id": "a-1", "text": x}, {"id": "a-2", "text": docs[4]["text"]}])
    cfg = config(tmp_path / "inc", inputs)
    curate(cfg)
    copies = [{"id": "b-1", "text": edited(x, seed=11)}, {"id": "b-2", "text": docs[5]["text"]}]
    write(inputs, "b.jsonl", [*copies, {"id": "b-3", "text": edited(docs[4]["text"], seed=13)}])
    _, cur = curate(cfg)
    assert rows(cur, "rejected/")["b-1"]["duplicate_of"] == "a-1"
    assert rows(cur, "rejected/")["b-3"]["duplicate_of"] == "a-2"
    # File a changes (a-1 rewritten to unrelated text, a-2 read again as it was: b-3 stays its
    # duplicate); a new file holds another edited copy of x.
    write(inputs, "a.jsonl", [{"id": "a-1", "text": docs[6]["text"]}, {"id": "a-2", "text": docs[4]["text"]}])
    write(inputs, "c.jsonl", [{"id": "c-1", "text": edited(x, seed=12)}])
    _, cur = curate(cfg)
    kept, rejected = rows(cur, "docs/"), rows(cur, "rejected/")
    # b-1 survives now, added by this version for the stages downstream; c-1 is its duplicate.
    assert kept["b-1"]["text"] == edited(x, seed=11) and "b-1" not in rejected
    assert rejected["c-1"]["reason"] == "near_duplicate" and rejected["c-1"]["duplicate_of"] == "b-1"
    assert "a-2" in kept and rejected["b-3"]["duplicate_of"] == "a-2"
    [revived] = [f for f in cur.files("docs/") if "b-1" in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert increments.version_of(revived[len(cur.uri) + 1 :]) == 3
    d = increments.lineage(cur).delta
    assert d["revived"] == 1 and d["near_duplicates_of_existing"] == 1
    assert rows(cur, "state/")["b-1"]["outcome"] == "kept"
    # The same curated set, counts and rejected reasons as a full run over the current files.
    assert_same_as_full(cur, config(tmp_path / "full", inputs))
    # File b goes away: the revived b-1 is withdrawn in turn, and c-1 survives now (a refresh
    # that reads no new file).
    (inputs / "b.jsonl").unlink()
    _, cur = curate(cfg)
    assert "c-1" in rows(cur, "docs/") and increments.lineage(cur).delta["revived"] == 1
    assert_same_as_full(cur, config(tmp_path / "full2", inputs))


def assert_same_as_full(cur, full_cfg) -> None:
    _, full = curate(full_cfg)
    kept, rejected = rows(cur, "docs/"), rows(cur, "rejected/")
    assert {i: r["text"] for i, r in kept.items()} == {i: r["text"] for i, r in rows(full, "docs/").items()}
    assert {i: (r["reason"], r["duplicate_of"]) for i, r in rejected.items()} == {
        i: (r["reason"], r["duplicate_of"]) for i, r in rows(full, "rejected/").items()
    }
    assert cur.manifest.counts == full.manifest.counts
    state = [i for f in cur.files("state/") for i in pq.read_table(f).column("id").to_pylist()]
    assert sorted(state) == sorted([*kept, *rejected])  # every id once
    for prefix, ids in (("docs/", kept), ("rejected/", rejected)):
        assert sum(pq.read_metadata(f).num_rows for f in cur.files(prefix)) == len(ids)


def test_regrouping_a_withdrawn_survivors_group_follows_the_full_run_rule(tmp_path):
    import pyarrow as pa
    from mixture.curate import curated_versions, survivors

    state = tmp_path / "state.parquet"
    rows_ = [
        ("s", "kept", "s"),  # withdrawn survivor: m2 (the smallest passing member) is revived
        ("f1", "filter:length:min_words", "s"),
        ("m2", "near_duplicate", "s"),
        ("m3", "exact_duplicate", "s"),
        ("s2", "kept", "s2"),  # withdrawn survivor of a group no member of which passes
        ("f2", "filter:length:min_words", "s2"),
        ("t", "kept", "t"),  # retracted: its near copy u is revived, as a full run keeps it
        ("u", "near_duplicate", "t"),
    ]
    pq.write_table(
        pa.table({k: [r[i] for r in rows_] for i, k in enumerate(["id", "outcome", "survivor"])}).append_column(
            "file", pa.array(["a"] * len(rows_))
        ),
        state,
    )
    removed = pa.table(
        {"id": ["s", "s2", "t"], "reason": [increments.WITHDRAWN, increments.WITHDRAWN, increments.RETRACTED]}
    )
    withdrawn = curated_versions._withdrawn(removed)
    assert withdrawn == {"s", "s2", "t"}
    g = survivors.regroup([str(state)], withdrawn, {"s", "s2", "t"})
    assert {r["id"]: (r["outcome"], r["survivor"]) for r in g.rows} == {
        "f1": ("filter:length:min_words", "m2"),
        "m2": ("kept", "m2"),
        "m3": ("exact_duplicate", "m2"),
        "f2": ("filter:length:min_words", None),
        "u": ("kept", "u"),
    }
    assert [r["id"] for r in g.revived] == ["m2", "u"] and g.moved == {"s": "m2", "s2": None, "t": "u"}
    assert survivors.regroup([str(state)], set(), {"t"}).rows == []
    # New documents linked to the regrouped groups see the revived survivor (or none).
    part = tmp_path / "part.parquet"
    links = [("n1", None, "s"), ("n2", "m3", None), ("n3", None, "u"), ("n4", None, "f2")]
    pq.write_table(
        pa.table(
            {
                "id": [n for n, _, _ in links],
                "exact_group": pa.array([None] * 4, pa.string()),
                "near_group": pa.array([None] * 4, pa.string()),
                "prior_exact": pa.array([e for _, e, _ in links], pa.string()),
                "prior_near": pa.array([p for _, _, p in links], pa.string()),
            }
        ),
        part,
    )
    earlier = survivors.load([str(part)], [str(state)], {"s", "s2", "t"}, g)
    assert earlier.survivor == {"s": "m2", "m3": "m2", "u": "u"}


def test_a_refresh_on_s3_reads_only_the_new_file_and_keeps_the_earlier_parts(
    spark, corpus, tmp_path, s3_endpoint, s3_bucket
):
    """The same refresh with the input files and the output root on S3 (an HTTP endpoint): the
    input files told apart by ETag, the earlier parts carried by server-side copies."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def upload(name: str) -> None:
        body = "".join(json.dumps(r) + "\n" for r in corpus[name]).encode()
        s3.put_object(Bucket=s3_bucket, Key=f"refresh/raw/{name}", Body=body)

    for name in ("f0.jsonl", "f1.jsonl"):
        upload(name)
    cfg = config(tmp_path, tmp_path / "unused")
    cfg = cfg.model_copy(
        update={
            "output_root": f"s3://{s3_bucket}/refresh/out",
            "input": cfg.input.model_copy(update={"uris": [f"s3://{s3_bucket}/refresh/raw/"]}),
        }
    )
    ann1, _ = curate(cfg)
    upload("f3.jsonl")
    ann, cur = curate(cfg)
    d = increments.lineage(ann).delta
    assert (d["files_new"], d["files_unchanged"], d["documents_read"]) == (1, 2, len(corpus["f3.jsonl"]))
    listing = {r["uri"]: r for r in json.loads(storage.read_text(ann.path("inputs.json")))}
    assert all(r["checksum"].startswith("etag:") for r in listing.values())
    rejected = {
        r["id"]: r
        for f in cur.files("rejected/")
        for r in pq.read_table(pa.BufferReader(storage.read_bytes(f))).to_pylist()
    }
    assert {rejected[f"f3-copy-{i}"]["duplicate_of"] for i in range(3)} == {f"f0-{i:03d}" for i in range(3)}
    first = {f["path"]: f["sha256"] for f in ann1.manifest.files if f["path"].startswith("docs/part-")}
    assert first and all(e["sha256"] == first[e["path"]] for e in ann.manifest.files if e["path"] in first)
    ann.verify()
    cur.verify()


def test_a_selection_that_skipped_curation_versions_still_links_them(spark, corpus, tmp_path):
    """Curation refreshed twice before `select` runs: the copies in the second refresh of
    documents the first one added are still duplicates (decided together, linked across runs)."""
    inputs = tmp_path / "in"
    for name in ("f0.jsonl", "f1.jsonl"):
        write(inputs, name, corpus[name])
    cfg = config(tmp_path / "inc", inputs)
    curate(cfg)
    write(inputs, "f2.jsonl", corpus["f2.jsonl"])
    pipeline.run_stage(cfg, "curate")
    copies = [{"id": f"f3-copy-{i}", "text": corpus["f2.jsonl"][i]["text"]} for i in range(3)]
    write(inputs, "f3.jsonl", copies)
    pipeline.run_stage(cfg, "curate")
    cur = pipeline.run_stage(cfg, "select").dataset
    rejected = rows(cur, "rejected/")
    assert {rejected[c["id"]]["duplicate_of"] for c in copies} == {f"f2-{i:03d}" for i in range(3)}
    _, full = curate(config(tmp_path / "full", inputs))
    assert sorted(rows(cur, "docs/")) == sorted(rows(full, "docs/"))
    assert cur.manifest.counts == full.manifest.counts
