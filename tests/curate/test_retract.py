"""`climb retract`: documents taken out of every dataset, ClimbMix republished without them.

The end-to-end test runs the real pipeline (local Spark, MLflow's SQLite store) on a tiny corpus,
publishes to a real S3 endpoint (moto's server over HTTP), retracts three documents (one quoted
in the cluster report, one upsampled several times in ClimbMix, one by an id pattern) and checks
what a user would: the ids are in no dataset and not in the published version `latest` points
to, the old version is gone, and the texts are in no manifest, no output and no MLflow record.
The other tests build small `annotated` datasets by hand (no Spark) for the edges.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import tiny_config_dict, write_jsonl
from mixture import cli, increments, pipeline, storage
from mixture.config import load_config
from mixture.curate import retract as retraction
from mixture.dataset import DatasetWriter, open_dataset
from mixture.publish.reader import ClimbMix

REASON = "legal request 42"


# ----------------------------------------------------------------------------- helpers
def _ids(ds, prefix: str, column: str = "id") -> list[str]:
    """Every value of `column` in the dataset's Parquet files under `prefix` (copies included)."""
    out: list[str] = []
    for uri in ds.files(prefix):
        if uri.endswith(".parquet"):
            out += [str(v) for v in pq.read_table(uri, columns=[column]).column(column).to_pylist()]
    return out


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _holds(path: Path, phrases: list[str]) -> bool:
    """Whether the file holds one of the phrases (as written, or escaped in JSON)."""
    blob = path.read_bytes()
    forms = {f for p in phrases for f in (p.encode(), json.dumps(p)[1:-1].encode())}
    return any(f in blob for f in forms)


def _texts_under(root: Path, phrases: list[str], suffixes=None) -> list[str]:
    """Files under `root` holding one of the phrases."""
    return [
        str(p) for p in root.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes) and _holds(p, phrases)
    ]


# ------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def retracted(tmp_path_factory, sample_records, s3_endpoint):
    """Run, publish, retract three documents with --delete-old-versions; what came out."""
    tmp = tmp_path_factory.mktemp("retract")
    by_source: dict[str, list] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r)
    corpus = write_jsonl(tmp / "input" / "tiny.jsonl", [r for recs in by_source.values() for r in recs[:30]])
    bucket = "retract-test"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    data = tiny_config_dict(tmp, [str(corpus)])
    data["publish"] = {"uri": f"s3://{bucket}/climbmix"}
    # more tokens than the curated corpus has: ClimbMix repeats documents whatever the mixture is
    data["build"]["tokens"] = 2_000_000
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert cli.main(["run", "--config", str(config)]) == 0
    first = retraction.published_ids_absent(ClimbMix(cfg.publish.uri), [])
    picked = _pick(cfg)
    # the first run's cluster report (an MLflow artifact) quotes the snippet: the grep can see it
    picked["quoted_before"] = _texts_under(Path(cfg.output_root) / "mlartifacts", picked["phrases"])
    ids_file = tmp / "retract.txt"
    ids_file.write_text(
        "# documents to retract\n"
        + "\n".join([picked["snippet"], picked["upsampled"], picked["pattern"], "no-such-id", "source:no-such-source"])
        + "\n"
    )
    out, logs = io.StringIO(), _LogCapture()
    logging.getLogger().addHandler(logs)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = cli.main(
                [
                    "retract",
                    "--config",
                    str(config),
                    "--ids",
                    str(ids_file),
                    "--reason",
                    REASON,
                    "--delete-old-versions",
                ]
            )
    finally:
        logging.getLogger().removeHandler(logs)
    return {
        "cfg": cfg,
        "config": config,
        "ids_file": ids_file,
        "code": code,
        "output": out.getvalue(),
        "logs": logs.text(),
        "first_version": first.version,
        **picked,
    }


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


def _pick(cfg) -> dict:
    """Three kept documents in no duplicate group (so nothing else carries their text): one the
    cluster report quotes, the one ClimbMix repeats most, and one matched by a pattern alone."""
    annotated = open_dataset(pipeline.dataset_uri(cfg, "annotated"))
    docs = pa.concat_tables([pq.read_table(u) for u in annotated.files("docs/")]).to_pylist()
    texts = {d["id"]: d["text"] for d in docs}
    single = {d["id"] for d in docs if d["exact_group"] is None and d["near_group"] is None}
    mix_ids = Counter(_ids(open_dataset(pipeline.dataset_uri(cfg, "climbmix")), "parquet/"))
    report = json.loads(Path(open_dataset(pipeline.dataset_uri(cfg, "clusters")).path("report.json")).read_text())
    quoted = [s["id"] for c in report["clusters"] for s in c["snippets"] if s["id"] in single and mix_ids[s["id"]]]
    snippet = quoted[0]
    upsampled, copies = next((i, n) for i, n in mix_ids.most_common() if i in single and i != snippet)
    assert copies >= 2, "the tiny build must repeat a document"
    all_ids = sorted(texts)
    pattern, matched = next(
        (p, m)
        for i in sorted(single & set(mix_ids), reverse=True)
        if i not in (snippet, upsampled)
        for k in range(len(i) - 1, 0, -1)  # a `?` for the last character first, then earlier ones
        for p in [i[:k] + "?" + i[k + 1 :]]
        for m in [fnmatch.filter(all_ids, p)]
        if m == [i]
    )
    ids = sorted({snippet, upsampled, *matched})
    # a phrase of each text that no other document holds: the start of its snippet
    phrases = [_flat(texts[i])[:60] for i in ids]
    others = [_flat(t) for k, t in texts.items() if k not in ids]
    assert not any(p in t for p in phrases for t in others)
    return {
        "ids": ids,
        "snippet": snippet,
        "upsampled": upsampled,
        "copies": copies,
        "pattern": pattern,
        "phrases": phrases,
    }


@pytest.mark.slow
def test_retracted_documents_are_gone_from_every_dataset(retracted):
    assert retracted["code"] == 0, retracted["output"]
    cfg, ids = retracted["cfg"], set(retracted["ids"])
    ds = {s.dataset: open_dataset(pipeline.dataset_uri(cfg, s.dataset)) for s in pipeline.STAGES}
    for d in ds.values():
        d.verify()
    where = {
        "annotated": _ids(ds["annotated"], "docs/"),
        "curated": _ids(ds["curated"], "docs/") + _ids(ds["curated"], "rejected/"),
        "embeddings": _ids(ds["embeddings"], "ids-"),
        "clusters": _ids(ds["clusters"], "assignments.parquet"),
        "climblab": _ids(ds["climblab"], "c"),
        "climbmix": _ids(ds["climbmix"], "parquet/"),
    }
    for name, found in where.items():
        assert found, f"{name} is empty"
        assert not ids & set(found), f"{name} still holds {ids & set(found)}"
    # the removal list says which ids and why; the counts account for them per input file
    removed = increments.removed_since(ds["annotated"], 0).to_pylist()
    assert removed == [{"id": i, "reason": "retracted"} for i in sorted(ids)]
    counts = ds["annotated"].manifest.counts
    assert counts["retracted"] == len(ids)
    for c in counts["per_file"].values():
        assert c["documents_in"] == c["documents_out"] + sum(c["quarantined"].values()) + c.get("retracted", 0)
    lin = ds["annotated"].manifest.extra["lineage"]
    assert lin["mode"] == "retract" and lin["delta"]["retracted"] == len(ids) and lin["delta"]["reason"] == REASON
    # still up to date: `climb run` does not curate again
    assert pipeline.current(cfg, "curate") is not None


@pytest.mark.slow
def test_the_new_version_is_published_clean_and_the_old_one_deleted(retracted, s3_endpoint):
    from mixture.publish.reader import ClimbMix

    assert retracted["code"] == 0, retracted["output"]
    cfg = retracted["cfg"]
    remote = ClimbMix(cfg.publish.uri)  # through `latest`
    assert remote.version != retracted["first_version"]
    assert not set(retracted["ids"]) & {str(i) for i in remote.read_table(columns=["id"]).column("id").to_pylist()}
    local = open_dataset(pipeline.dataset_uri(cfg, "climbmix"))
    assert remote.manifest.files == local.manifest.files
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="retract-test").get("Contents", [])]
    assert not [k for k in keys if k.startswith(f"climbmix/{retracted['first_version']}/")]
    assert f"climbmix/{remote.version}/_manifest.json" in keys
    out = retracted["output"]
    assert re.search(rf"documents retracted\s+{len(retracted['ids'])}\b", out)
    assert re.search(r"entries matching nothing\s+2\b", out)
    assert f"versions deleted          {retracted['first_version']}" in out or retracted["first_version"] in out
    assert "no retracted id in s3://retract-test/climbmix/" in out


@pytest.mark.slow
def test_retracted_texts_are_in_no_manifest_output_or_mlflow_record(retracted):
    assert retracted["code"] == 0, retracted["output"]
    cfg, phrases = retracted["cfg"], retracted["phrases"]
    root = Path(cfg.output_root)
    manifests = list(root.rglob("_manifest.json")) + list(root.rglob("lineage.json"))
    assert len(manifests) >= len(pipeline.STAGES)
    assert [m for m in manifests if _holds(m, phrases)] == []
    for phrase in phrases:
        assert phrase not in retracted["output"] and phrase not in retracted["logs"]
    # MLflow: the SQLite store and every artifact (the first run's cluster report quoted one)
    assert retracted["quoted_before"], "the grep must see a quoted text before the retraction"
    assert _texts_under(root, phrases, suffixes={".db"}) == []
    assert _texts_under(root / "mlartifacts", phrases) == []
    assert _texts_under(root, phrases) == []  # nor any other file of the output root
    assert re.search(r"MLflow snippets replaced\s+[1-9]", retracted["output"])


@pytest.mark.slow
def test_status_shows_the_retraction_in_the_version_chain(retracted, capsys):
    assert cli.main(["status", "--config", str(retracted["config"])]) == 0
    out = capsys.readouterr().out
    # the chain table's row (the annotated dataset the lead's curation commits has a v1 before it)
    line = next(ln for ln in out.splitlines() if ln.startswith("annotated") and "(retract," in ln)
    version = increments.version(open_dataset(pipeline.dataset_uri(retracted["cfg"], "annotated")))
    assert f"v{version} (retract, {len(retracted['ids'])} retracted" in line
    assert f"<- v{version - 1} (full" in line
    assert REASON not in out


@pytest.mark.slow
def test_a_retraction_run_again_carries_on_and_one_matching_nothing_is_one_line(retracted, tmp_path, capsys):
    cfg = retracted["cfg"]
    before = open_dataset(pipeline.dataset_uri(cfg, "annotated")).manifest_sha256
    args = ["retract", "--config", str(retracted["config"]), "--reason", REASON]
    assert cli.main([*args, "--ids", str(retracted["ids_file"])]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"documents retracted\s+0 \(and {len(retracted['ids'])} retracted before\)", out)
    assert open_dataset(pipeline.dataset_uri(cfg, "annotated")).manifest_sha256 == before
    nothing = tmp_path / "nothing.txt"
    nothing.write_text("no-such-id\nsource:nowhere\n")
    assert cli.main([*args, "--ids", str(nothing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "none of the 2 entries" in err


@pytest.mark.slow
def test_a_full_rebuild_keeps_retracted_documents_out(retracted):
    """The input file still holds the retracted documents: a full curation (a settings change,
    `refresh.incremental: false`) counts them as retracted and writes them nowhere."""
    from mixture import increments
    from mixture.config import RefreshConfig

    cfg = retracted["cfg"].model_copy(update={"refresh": RefreshConfig(incremental=False)})
    ann = pipeline.run_stage(cfg, "curate", force=True).dataset
    cur = pipeline.run_stage(cfg, "select").dataset
    ids = set(retracted["ids"])
    assert increments.lineage(ann).mode == "full"
    assert (
        not ids & set(_ids(ann, "docs/"))
        and not ids & set(_ids(cur, "docs/"))
        and not ids & set(_ids(cur, "rejected/"))
    )
    assert ann.manifest.counts["retracted"] == cur.manifest.counts["retracted"] == len(ids)
    assert _texts_under(Path(cfg.output_root) / "annotated", retracted["phrases"]) == []


# ------------------------------------------------------------------ without the pipeline
def _annotated(root: Path, docs_per_part: int = 3):
    """A committed `annotated` dataset made by hand: two docs parts, a dedup part, a
    quarantine part and lineage v1; 6 documents from two files, one quarantined record."""
    rows = [
        {"id": f"a-{i}", "text": f"text {i}", "source": "web" if i < 4 else "books", "file": f"f{i % 2}.jsonl"}
        for i in range(6)
    ]
    w = DatasetWriter(str(root / "annotated"), "curate", "cfg-hash", {})
    for p in range(2):
        part = rows[p * docs_per_part : (p + 1) * docs_per_part]
        pq.write_table(pa.Table.from_pylist(part), w.path(f"docs/part-{p:05d}.parquet"))
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "key": list(range(6))}), w.path("dedup/part-00000.parquet"))
    pq.write_table(pa.table({"file": ["f0.jsonl"], "reason": ["bad_json"]}), w.path("quarantine/part-00000.parquet"))
    per_file = {
        "f0.jsonl": {"documents_in": 4, "documents_out": 3, "quarantined": {"bad_json": 1}},
        "f1.jsonl": {"documents_in": 3, "documents_out": 3, "quarantined": {}},
    }
    counts = {"documents_in": 7, "documents_out": 6, "quarantined": {"bad_json": 1}, "per_file": per_file}
    lin = increments.next_lineage(None, "full", "settings-1", {})
    return w.commit(counts, increments.record(w, None, lin, {"input_files": 2}))


def test_entries_ids_patterns_and_sources():
    e = retraction.parse_entries(["# c", "", " a-1 ", "a-*", "source:web", "a-1", "x?"])
    assert e.ids == ("a-1",) and e.patterns == ("a-*", "x?") and e.sources == ("web",) and len(e) == 4
    assert re.match(retraction.pattern_regex("a.?[1]*"), "a.x[1]zz") and not re.match(
        retraction.pattern_regex("a.?"), "abxx"
    )


def test_commit_rewrites_only_the_files_holding_retracted_ids(tmp_path):
    prev = _annotated(tmp_path)
    match = retraction.resolve(prev, retraction.parse_entries(["a-0", "source:books", "nope", "z*"]))
    assert match.ids == ["a-0", "a-4", "a-5"] and match.unmatched == ["nope", "z*"]
    ds = retraction.commit(load_config_for(tmp_path), prev, match, REASON, "settings-1")
    assert ds.manifest.config_hash == "cfg-hash" and ds.manifest.inputs == {}
    assert sorted(_ids(ds, "docs/")) == ["a-1", "a-2", "a-3"]
    assert sorted(_ids(ds, "dedup/")) == ["a-1", "a-2", "a-3"]
    entry = {f["path"]: f for f in ds.manifest.files}
    before = {f["path"]: f for f in prev.manifest.files}
    assert entry["quarantine/part-00000.parquet"] == before["quarantine/part-00000.parquet"]  # kept
    assert entry["docs/part-00000.parquet"] != before["docs/part-00000.parquet"]  # rewritten
    c = ds.manifest.counts
    assert c["documents_out"] == 3 and c["retracted"] == 3
    assert c["per_file"]["f0.jsonl"] == {
        "documents_in": 4,
        "documents_out": 1,
        "quarantined": {"bad_json": 1},
        "retracted": 2,
    }
    assert c["per_file"]["f1.jsonl"]["retracted"] == 1
    lin = increments.lineage(ds)
    assert (lin.version, lin.base, lin.mode, lin.settings) == (2, 1, "retract", "settings-1")
    assert lin.parent == prev.manifest_sha256 and lin.delta["retracted"] == 3
    assert [h["mode"] for h in increments.history(ds)] == ["full", "retract"]
    assert ds.manifest.extra["input_files"] == 2 and ds.manifest.extra["retraction"]["documents"] == 3
    assert "text 0" not in storage.read_text(ds.path("_manifest.json"))
    # a downstream stage that covered v1 extends it and removes exactly these ids
    delta = increments.Delta(prev, {"annotated": 1})
    assert sorted(delta.removed(ds, "annotated").column("id").to_pylist()) == ["a-0", "a-4", "a-5"]
    # a second retraction carries the first one's list
    again = retraction.commit(
        load_config_for(tmp_path), ds, retraction.resolve(ds, retraction.parse_entries(["a-1"])), "second", "s"
    )
    assert increments.removed_since(again, 0).num_rows == 4 and increments.removed_since(again, 2).num_rows == 1
    assert retraction.already_retracted(again, retraction.parse_entries(["a-0", "a-?", "b"])) == [
        "a-0",
        "a-1",
        "a-4",
        "a-5",
    ]


def load_config_for(tmp_path: Path):
    path = tmp_path / "c.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump({"output_root": str(tmp_path), "input": {"uris": [str(tmp_path / "x")]}}))
    return load_config(path)


def test_report_snippets_are_redacted_by_id():
    rep = {"clusters": [{"snippets": [{"id": "a-1", "text": "secret"}, {"id": "a-2", "text": "fine"}]}]}
    out, n = retraction.redact_json(rep, {"a-1"})
    assert n == 1 and out["clusters"][0]["snippets"] == [
        {"id": "a-1", "text": "[retracted]"},
        {"id": "a-2", "text": "fine"},
    ]
    md, n = retraction.redact_markdown("## c00\n> `a-1`: secret words\n>\n> `a-2`: fine\n", {"a-1"})
    assert n == 1 and "secret" not in md and "> `a-2`: fine" in md
    assert retraction.redact_markdown(md, {"a-1"})[1] == 0  # idempotent


def test_status_prints_each_datasets_version_chain(tmp_path, capsys):
    cfg = load_config_for(tmp_path)
    prev = _annotated(tmp_path)
    ds = retraction.commit(cfg, prev, retraction.resolve(prev, retraction.parse_entries(["a-0"])), REASON, "settings-1")
    w = DatasetWriter(str(tmp_path / "annotated"), "curate", "cfg-hash", {})
    w.keep_all(ds, "docs/")
    delta = {"files_new": 1, "files_changed": 0, "documents_new": 212, "withdrawn": 0, "retracted": 0}
    lin = increments.next_lineage(ds, "incremental", "settings-1", {}, delta)
    w.commit(ds.manifest.counts, increments.record(w, ds, lin, {}))
    assert cli.main(["status", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("annotated") and "<-" in ln)
    assert (
        "v3 (incremental, +1 new file, 212 new docs) <- v2 (retract, 1 retracted, 2 files rewritten) <- v1 (full)"
        in line
    )
    assert REASON not in out
    assert cli.version_chain([{"version": 1, "mode": "full", "upstream": {"annotated": 4}, "delta": {}}]) == (
        "v1 (full, of annotated v4)"
    )


def test_earlier_versions_are_deleted_under_their_lease_and_latest_never(tmp_path, s3_bucket, s3_endpoint):
    from mixture.publish import versions as P
    from mixture.publish.s3 import PublishError

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for v in ("2025-01", "2025-02", "2025-03"):
        for rel in ("_manifest.json", "parquet/part-00000.parquet"):
            s3.put_object(Bucket=s3_bucket, Key=f"mix/{v}/{rel}", Body=b"x")
    s3.put_object(Bucket=s3_bucket, Key="mix/2025-04/parquet/part-00000.parquet", Body=b"x")  # never committed
    s3.put_object(Bucket=s3_bucket, Key="mix/latest", Body=json.dumps({"version": "2025-03"}).encode())
    cfg = load_config_for(tmp_path)
    cfg.publish.uri = f"s3://{s3_bucket}/mix"
    assert P.published_versions(cfg) == ["2025-01", "2025-02", "2025-03", "2025-04"]
    with pytest.raises(PublishError, match="does not point at version 2025-02"):
        P.delete_versions_except(cfg, "2025-02")
    with pytest.raises(PublishError, match="is the one `latest` points at"):
        P.delete_version(cfg, "2025-03")
    assert P.delete_versions_except(cfg, "2025-03") == ["2025-01", "2025-02", "2025-04"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert [k for k in keys if not k.startswith("mix/_leases/")] == [
        "mix/2025-03/_manifest.json",
        "mix/2025-03/parquet/part-00000.parquet",
        "mix/latest",
    ]
    assert P.published_versions(cfg) == ["2025-03"]


def test_exact_copies_under_other_ids_are_retracted_with_the_document(tmp_path):
    """`with_exact_copies` adds every document with the same exact-dedup hash as a matched one
    (a copy of the text under another id), from the small `dedup/` columns only."""
    w = DatasetWriter(str(tmp_path / "annotated"), "curate", "cfg-hash", {})
    state = {"id": ["a", "b", "c", "d"], "file": ["f0", "f1", "f1", "f2"], "text_hash": ["h1", "h1", "h2", "h1"]}
    pq.write_table(pa.table(state), w.path("dedup/part-00000.parquet"))
    ds = w.commit({}, {})
    match = retraction.Match(files={"a": "f0"})
    assert retraction.with_exact_copies(ds, match) == 2
    assert match.files == {"a": "f0", "b": "f1", "d": "f2"}
    assert retraction.with_exact_copies(ds, retraction.Match()) == 0
