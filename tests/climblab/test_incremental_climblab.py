"""Incremental ClimbLab shards and a search that re-runs only when it must (issue #12).

Curated and clusters versions are committed here the way the contract lays them out
(`mixture.increments`): version 2 keeps version 1's files (rewritten without removed rows), adds
`docs/v0002-part-00000.parquet` / `assignments-v0002.parquet` and lists `removed/v0002.parquet`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mixture import climblab, increments, pipeline, storage
from mixture.climblab import merge, parts
from mixture.cluster.groups import assignment_files
from mixture.config import parse_config
from mixture.contract import StageContext
from mixture.dataset import Dataset, DatasetWriter, try_open
from mixture.pipeline import stage
from mixture.search import carry, steps
from mixture.search.synthetic import SyntheticObjective, make_climblab
from mixture.stages import search as search_stage
from mixture.stages import shards

SETTINGS = "shards-settings"
N_BASE, N_NEW = 120, 30


def _write(writer: DatasetWriter, rel: str, table: pa.Table) -> None:
    with storage.open_write(writer.path(rel)) as f:
        pq.write_table(table, f)


def _commit(writer: DatasetWriter, previous: Dataset | None, mode: str, inputs: dict, delta=None) -> Dataset:
    lin = increments.next_lineage(previous, mode, "upstream-settings", inputs, delta or {})
    return writer.commit({}, increments.record(writer, previous, lin, {}))


def _docs(recs: list[dict]) -> pa.Table:
    return pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs]})


def _cluster_of(i: int) -> int:
    return -1 if i % 10 == 0 else i % 4


class Corpus:
    """Committed curated + clusters versions under one output root."""

    def __init__(self, root, sample_records):
        self.root = root
        recs = [dict(r, id=f"d{999 - i:04d}") for i, r in enumerate(sample_records[: N_BASE + N_NEW])]
        self.base, self.new = recs[:N_BASE], recs[N_BASE:]
        self.cluster = {r["id"]: _cluster_of(i) for i, r in enumerate(recs)}
        w = DatasetWriter(str(root / "curated"), "select", "h", {})
        for p, part in enumerate((self.base[:60], self.base[60:])):
            _write(w, f"docs/part-{p:05d}.parquet", _docs(part))
        self.curated = _commit(w, None, "full", {})
        w = DatasetWriter(str(root / "clusters"), "cluster", "h", {"curated": self.curated.manifest_sha256})
        ids = [r["id"] for r in self.base]
        _write(w, "assignments.parquet", pa.table({"id": ids, "cluster": [self.cluster[i] for i in ids]}))
        self.clusters = _commit(w, None, "full", {"curated": self.curated})

    def extend(self, new: list[dict], removed: list[str], cluster_of: dict[str, int]) -> None:
        """Curated and clusters version 2: `removed` withdrawn, `new` added (an id in both:
        a changed document, its new text added)."""
        self.cluster.update(cluster_of)
        drop = pa.array(removed, pa.string())
        table = increments.ids_table(removed, increments.WITHDRAWN)
        w = DatasetWriter(str(self.root / "curated"), "select", "h2", {})
        increments.carry_parquet(w, self.curated, "docs/", drop)
        _write(w, "docs/v0002-part-00000.parquet", _docs(new))
        increments.keep_removed(w, self.curated)
        increments.write_removed(w, 2, table)
        self.curated = _commit(w, self.curated, "incremental", {}, {"added": len(new), "removed": len(removed)})
        w = DatasetWriter(str(self.root / "clusters"), "cluster", "h2", {"curated": self.curated.manifest_sha256})
        increments.carry_parquet(w, self.clusters, "assignments.parquet", drop)
        ids = [r["id"] for r in new]
        _write(w, "assignments-v0002.parquet", pa.table({"id": ids, "cluster": [cluster_of[i] for i in ids]}))
        self.clusters = _commit(w, self.clusters, "incremental", {"curated": self.curated})

    def rebuild_clusters(self) -> None:
        """Clusters version 3: a full rebuild (same assignments, one file)."""
        files = assignment_files(self.clusters)
        table = pa.concat_tables([pq.read_table(u) for u in files])
        w = DatasetWriter(str(self.root / "clusters"), "cluster", "h3", {"curated": self.curated.manifest_sha256})
        _write(w, "assignments.parquet", table)
        self.clusters = _commit(w, self.clusters, "full", {"curated": self.curated})

    def shards(self, out: str = "climblab", incremental: bool = True, **shards_cfg) -> tuple[Dataset, list]:
        """Run the shards stage into `root/out` (extending what is committed there)."""
        ctx = self.ctx(out, incremental, **shards_cfg)
        result = shards.run(ctx)
        return ctx.writer.commit(result.counts, result.extra), result.summary

    def ctx(self, out: str = "climblab", incremental: bool = True, **shards_cfg) -> StageContext:
        """The shards stage's context, as `pipeline.open_stage` gives it to each step."""
        cfg = parse_config(
            {
                "output_root": str(self.root),
                "input": {"uris": ["x"]},
                "shards": {"vocab_size": 400, "tokenizer_train_docs": 50, **shards_cfg},
                "refresh": {"incremental": incremental},
            }
        )
        inputs = {"curated": self.curated, "clusters": self.clusters}
        uri = str(self.root / out)
        w = DatasetWriter(
            uri, "shards", "h", {n: d.manifest_sha256 for n, d in inputs.items()}, str(self.root / "_staging"), True
        )
        return StageContext(cfg, stage("climblab"), inputs, w, try_open(uri), SETTINGS)


def _files(ds: Dataset, prefix: str = "") -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in ds.manifest.files if f["path"].startswith(prefix)}


def _inode(ds: Dataset, rel: str) -> int:
    return os.stat(ds.path(rel)).st_ino


def _cluster_files(name: str) -> list[str]:
    return [climblab.shard_prefix(name) + ".bin", climblab.shard_prefix(name) + ".idx", climblab.text_file(name)]


@pytest.fixture()
def corpus(tmp_path, sample_records):
    return Corpus(tmp_path, sample_records)


class CountingEncode:
    """The real tokenizer call, counting the documents it tokenized."""

    def __init__(self):
        self.texts = 0

    def __call__(self, tok, texts, eos, **kw):
        self.texts += len(texts)
        return self.real(tok, texts, eos, **kw)

    real = staticmethod(parts.encode)


def _extend_two_clusters(corpus: Corpus) -> tuple[list[str], str, dict[str, int]]:
    """Version 2: new documents in clusters 1 and 2 and pruned ones, one removed document of
    cluster 3, and a changed document of cluster 1 (removed, its new text added)."""
    by_cluster = {c: [r["id"] for r in corpus.base if corpus.cluster[r["id"]] == c] for c in range(4)}
    gone, changed = by_cluster[3][5], by_cluster[1][2]
    new = [dict(r) for r in corpus.new]
    cluster_of = {r["id"]: (1 if i % 3 == 0 else 2 if i % 3 == 1 else -1) for i, r in enumerate(new)}
    new.append({"id": changed, "text": "a changed document: its new text replaces the old one."})
    cluster_of[changed] = 1
    corpus.extend(new, [gone, changed], cluster_of)
    return [gone, changed], changed, cluster_of


def test_an_incremental_version_tokenizes_only_new_documents_and_keeps_untouched_clusters(corpus, monkeypatch):
    v1, _ = corpus.shards()
    assert increments.lineage(v1).mode == "full"
    inodes = {rel: _inode(v1, rel) for rel in _files(v1)}
    before = _files(v1)
    removed, changed, cluster_of = _extend_two_clusters(corpus)
    counting = CountingEncode()
    monkeypatch.setattr(parts, "encode", counting)
    v2, summary = corpus.shards()

    # only the new documents of kept clusters were tokenized (the changed one among them)
    new_kept = sum(1 for c in cluster_of.values() if c >= 0)
    assert counting.texts == new_kept
    lin = increments.lineage(v2)
    assert (lin.version, lin.base, lin.mode, lin.parent) == (2, 1, "incremental", v1.manifest_sha256)
    assert lin.upstream == {"curated": 2, "clusters": 2}
    assert lin.delta["clusters_touched"] == 3 and lin.delta["clusters_kept"] == 1  # c01, c02, c03 | c00
    assert lin.delta["documents_added"] == new_kept
    assert lin.delta["documents_removed"] == 2
    assert "incremental" in dict(summary)["mode"] and "3 clusters rewritten, 1 kept" in dict(summary)["mode"]

    # the untouched cluster and the tokenizer are the same files (hard links), the others rewritten
    for rel in _cluster_files("c00") + [climblab.TOKENIZER]:
        assert _inode(v2, rel) == inodes[rel] and _files(v2)[rel] == before[rel]
    for name in ("c01", "c02", "c03"):
        assert _files(v2)[climblab.text_file(name)] != before[climblab.text_file(name)]

    # removed ids appear nowhere; the changed document has its new text; counts add up
    lab = climblab.ClimbLab(v2)
    texts = {n: lab.texts(n) for n in lab.clusters}
    ids = [i for t in texts.values() for i in t.column("id").to_pylist()]
    assert removed[0] not in ids and ids.count(changed) == 1
    c01 = dict(zip(texts["c01"].column("id").to_pylist(), texts["c01"].column("text").to_pylist()))
    assert c01[changed].startswith("a changed document")
    assert sorted(ids) == sorted(i for i, c in corpus.cluster.items() if c >= 0 and i != removed[0])
    assert v2.manifest.counts["documents_out"] == len(ids)
    assert lab.checked_tokens_per_cluster() == {n: lab.shard(n).n_tokens for n in lab.clusters}
    assert storage.read_json(v2.path(merge.COUNTS)) == v2.manifest.extra["clusters"]
    listed = pq.read_table(v2.path("removed/v0002.parquet"))
    assert sorted(listed.column("id").to_pylist()) == sorted(removed)
    assert len(increments.history(v2)) == 2
    assert not [p for p in _files(v2) if p.startswith("_parts") or ".tmp-" in p]


def test_an_incremental_version_is_the_same_bytes_as_a_full_build_with_its_tokenizer(corpus):
    corpus.shards()
    _extend_two_clusters(corpus)
    v2, _ = corpus.shards()
    full, summary = corpus.shards("full", tokenizer=v2.path(climblab.TOKENIZER))
    assert increments.lineage(full).mode == "full" and "full build" in dict(summary)["mode"]
    data = lambda ds: {p: h for p, h in _files(ds).items() if p[0] == "c" or p == climblab.TOKENIZER}  # noqa: E731
    assert data(v2) == data(full)
    assert v2.manifest.counts == full.manifest.counts
    assert v2.manifest.extra["clusters"] == full.manifest.extra["clusters"]


def _data(ds: Dataset) -> dict[str, str]:
    return {p: h for p, h in _files(ds).items() if p != increments.HISTORY}


def test_parts_workers_and_mapped_steps_in_incremental_mode_give_the_same_files(corpus):
    for out in ("one", "two", "steps"):
        corpus.shards(out)
    _extend_two_clusters(corpus)
    one, _ = corpus.shards("one")
    two, _ = corpus.shards("two", part_docs=7, workers=2)
    assert increments.lineage(two).mode == "incremental"
    assert _data(one) == _data(two)
    # the Airflow tasks: parts over the new documents only, merges of the touched clusters, a
    # part killed before its done.json, then the commit retried after `finish`
    ctx = corpus.ctx("steps", part_docs=7)
    planned = shards.parts(ctx)
    assert [p.docs for p in planned] == [7, 7, 7, 7, 3]  # 31 new documents
    for p in planned:
        shards.tokenize_part(corpus.ctx("steps", part_docs=7), p)
    next((corpus.root / "_staging").glob(f"steps-*/{planned[1].folder}/done.json")).unlink()
    assert shards.clusters(corpus.ctx("steps", part_docs=7)) == [1, 2, 3]
    with pytest.raises(parts.ShardsError, match="is not tokenized"):
        shards.merge_cluster(corpus.ctx("steps", part_docs=7), 1)
    assert shards.tokenize_part(corpus.ctx("steps", part_docs=7), planned[1])["computed"]
    for c in (1, 2, 3):
        shards.merge_cluster(corpus.ctx("steps", part_docs=7), c)
    shards.finish(corpus.ctx("steps", part_docs=7))  # the commit then fails: retried
    retried = corpus.ctx("steps", part_docs=7)
    out = shards.finish(retried)
    steps = retried.writer.commit(out.counts, out.extra)
    assert _data(steps) == _data(one)
    assert increments.lineage(steps).delta == increments.lineage(one).delta


def test_rebuilt_clusters_or_incremental_off_mean_a_full_build(corpus):
    corpus.shards()
    corpus.rebuild_clusters()
    v2, summary = corpus.shards()
    assert increments.lineage(v2).mode == "full"
    assert dict(summary)["mode"] == "full build: clusters was rebuilt since the committed version"
    _extend_two_clusters(corpus)  # an increment that `refresh.incremental: false` rebuilds whole
    v3, summary = corpus.shards(incremental=False)
    lin = increments.lineage(v3)
    assert (lin.version, lin.base, lin.mode) == (3, 3, "full")
    assert dict(summary)["mode"] == "full build: refresh.incremental is off"
    assert not _files(v3, "removed/")


def test_pieces_staged_by_a_full_attempt_are_not_taken_for_an_increment(corpus):
    """The same inputs, `refresh.incremental` toggled between two attempts: the parts staged by
    the killed full attempt cover other documents, so the increment starts from an empty folder."""
    corpus.shards()
    corpus.shards("clean")
    _extend_two_clusters(corpus)
    clean, _ = corpus.shards("clean")
    killed = corpus.ctx(incremental=False, part_docs=7)
    for p in shards.parts(killed)[:3]:
        shards.tokenize_part(killed, p)
    v2, _ = corpus.shards(part_docs=7)
    assert increments.lineage(v2).mode == "incremental"
    assert _data(v2) == _data(clean)


# ------------------------------------------------------------------------------- the search
SEARCH_NAMES = ["c00", "c01", "c02", "c03"]
TARGET = Path(__file__).resolve().parents[2] / "data" / "sample" / "target_val.jsonl.gz"


@pytest.fixture(scope="module")
def lab_texts(sample_records) -> dict[str, list[str]]:
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:3000])
    return {name: by_source[s][:8] for name, s in zip(SEARCH_NAMES, sorted(by_source)[:4])}


def _climblab_version(root, texts: dict[str, list[str]], mode: str) -> Dataset:
    """Commit a climblab version (real token shards of `texts`) with its lineage."""
    made = make_climblab(str(root / "_made" / str(len(list(root.glob("_made/*"))))), texts, vocab_size=400)
    uri = str(root / "climblab")
    previous = try_open(uri)
    w = DatasetWriter(uri, "shards", "h", {})
    w.keep_all(made)
    lin = increments.next_lineage(previous, mode, SETTINGS, {}, {})
    return w.commit(made.manifest.counts, increments.record(w, previous, lin, dict(made.manifest.extra)))


def _search_config(root, tracking: str, shift: float = 0.05, incremental: bool = True):
    return parse_config(
        {
            "run_name": "carry",
            "output_root": str(root),
            "input": {"uris": ["unused"]},
            "search": {
                "iterations": [6, 3],
                "candidates": 2000,
                "top_n": 6,
                "top_k": 4,
                "proxy": {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64},
                "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
                "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
                "playoff": {"enabled": False},  # a few tiny runs cannot afford one (tests/search/test_playoff.py)
            },
            "tracking": {"experiment": "test", "uri": tracking},
            "refresh": {"incremental": incremental, "search_share_shift": shift},
        }
    )


class Proxies:
    """The synthetic objective in place of training proxies, counting the runs."""

    def __init__(self):
        self.calls = 0
        self.objective = SyntheticObjective(np.array([0.1, 0.2, 0.3, 0.4]), noise=0.02, names=SEARCH_NAMES)

    def __call__(self, mixture, seed):
        self.calls += 1
        return self.objective.proxy(mixture, seed)


def _search(cfg, proxies: Proxies) -> tuple[Dataset, dict]:
    ctx = pipeline.open_stage(cfg, "search")
    out = search_stage.run(ctx, objective=proxies)
    return pipeline.commit(ctx, out), dict(out.summary)


def test_the_search_is_carried_below_the_share_shift_and_runs_again_above_it(tmp_path, lab_texts):
    root = tmp_path / "out"
    texts = {c: list(v) for c, v in lab_texts.items()}
    _climblab_version(root, texts, "full")
    cfg = _search_config(root, f"sqlite:///{tmp_path}/mlflow.db")
    proxies = Proxies()
    s1, summary = _search(cfg, proxies)
    assert proxies.calls == 9 and summary["search ran"] == "no earlier version to extend"
    searched = s1.manifest.extra["searched_on"]["shares"]
    inodes = {p: _inode(s1, p) for p in _files(s1)}

    # climblab version 2: one short document more in c00, the shares barely move
    texts["c00"].append(texts["c00"][0][:300])
    lab2 = _climblab_version(root, texts, "incremental")
    shift = carry.share_shift(searched, carry.shares(lab2))
    assert 0 < shift < 0.05
    assert steps.propose(pipeline.open_stage(cfg, "search"), 0) == []  # the DAG's tasks train nothing
    s2, summary = _search(cfg, proxies)
    assert proxies.calls == 9
    assert summary["search kept"] == f"token shares moved {shift * 100:.1f}% (< 5%)"
    lin = increments.lineage(s2)
    assert (lin.version, lin.mode, lin.upstream) == (2, "carried", {"climblab": 2})
    assert lin.delta == {
        "share_shift": pytest.approx(shift, abs=1e-6),
        "threshold": 0.05,
        "reason": summary["search kept"],
    }
    kept = [p for p in _files(s1) if p != increments.HISTORY]
    assert {p: _files(s2)[p] for p in kept} == {p: _files(s1)[p] for p in kept}
    assert all(_inode(s2, p) == inodes[p] for p in kept)  # hard links: no copy
    assert s2.manifest.counts == s1.manifest.counts
    assert {k: v for k, v in s2.manifest.extra.items() if k != "lineage"} == {
        k: v for k, v in s1.manifest.extra.items() if k != "lineage"
    }
    assert pipeline.current(cfg, "search").manifest_sha256 == s2.manifest_sha256  # up to date for the build

    # version 3: c03 doubled; measured from the shares the search ran on, not from version 2
    texts["c03"] += texts["c03"]
    lab3 = _climblab_version(root, texts, "incremental")
    moved = carry.share_shift(searched, carry.shares(lab3))
    assert moved > 0.05
    assert carry.decide(pipeline.open_stage(_search_config(root, cfg.tracking.uri, shift=moved + 0.01), "search")).carry
    s3, summary = _search(cfg, proxies)
    assert proxies.calls == 18
    assert summary["search ran"] == f"token shares moved {moved * 100:.1f}% (> 5%)"
    assert increments.lineage(s3).mode == "full"
    assert s3.manifest.extra["searched_on"]["shares"] == carry.shares(lab3)


def test_a_rebuilt_climblab_or_incremental_off_runs_the_search(tmp_path, lab_texts):
    root = tmp_path / "out"
    _climblab_version(root, lab_texts, "full")
    cfg = _search_config(root, f"sqlite:///{tmp_path}/mlflow.db")
    _search(cfg, Proxies())
    _climblab_version(root, lab_texts, "incremental")  # the same shares
    assert carry.decide(pipeline.open_stage(cfg, "search")) == carry.Decision(
        True, "token shares moved 0.0% (< 5%)", 0.0, 0.05
    )
    off = _search_config(root, cfg.tracking.uri, incremental=False)
    assert carry.decide(pipeline.open_stage(off, "search")).why == "refresh.incremental is off"
    _climblab_version(root, lab_texts, "full")  # new clusters
    d = carry.decide(pipeline.open_stage(cfg, "search"))
    assert (d.carry, d.why) == (False, "climblab was rebuilt since the committed version")


def test_a_retraction_with_only_pruned_new_documents_rewrites_one_cluster_and_tokenizes_nothing(corpus, monkeypatch):
    v1, _ = corpus.shards()
    inodes = {rel: _inode(v1, rel) for rel in _files(v1)}
    retracted = next(r["id"] for r in corpus.base if corpus.cluster[r["id"]] == 2)
    corpus.extend(corpus.new[:5], [retracted], {r["id"]: -1 for r in corpus.new[:5]})
    counting = CountingEncode()
    monkeypatch.setattr(parts, "encode", counting)
    v2, _ = corpus.shards()
    assert counting.texts == 0
    delta = increments.lineage(v2).delta
    assert delta == {
        "clusters_touched": 1,
        "clusters_kept": 3,
        "documents_added": 0,
        "documents_removed": 1,
        "tokens_added": 0,
    }
    for name in ("c00", "c01", "c03"):
        assert all(_inode(v2, rel) == inodes[rel] for rel in _cluster_files(name))
    assert _inode(v2, climblab.text_file("c02")) != inodes[climblab.text_file("c02")]
    lab = climblab.ClimbLab(v2)
    assert retracted not in lab.texts("c02").column("id").to_pylist()
    assert lab.shard("c02").n_tokens == lab.tokens_per_cluster["c02"] < climblab.ClimbLab(v1).tokens_per_cluster["c02"]
    assert v2.manifest.counts["pruned_documents"] == v1.manifest.counts["pruned_documents"] + 5


def test_the_runner_extends_the_committed_version_when_the_corpus_grows(corpus):
    """`climb shards` (the runner: open_stage, its settings hash, the lease, the commit)."""
    cfg = parse_config(
        {
            "output_root": str(corpus.root),
            "input": {"uris": ["x"]},
            "shards": {"vocab_size": 400, "tokenizer_train_docs": 50},
        }
    )
    first = pipeline.run_stage(cfg, "shards")
    assert increments.lineage(first.dataset).mode == "full"
    assert pipeline.run_stage(cfg, "shards").skipped
    _extend_two_clusters(corpus)
    second = pipeline.run_stage(cfg, "shards")
    lin = increments.lineage(second.dataset)
    assert (lin.version, lin.mode) == (2, "incremental")
    assert dict(second.summary)["mode"].startswith("incremental (extends version 1)")
    assert pipeline.current(cfg, "shards").manifest_sha256 == second.dataset.manifest_sha256
    second.dataset.verify()  # kept files' manifest entries match their bytes
