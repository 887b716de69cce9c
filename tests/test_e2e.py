"""One end-to-end `climb run` on a tiny config: every stage real, every contract checked."""

import json

import numpy as np
import pytest
import yaml
from conftest import tiny_config_dict
from mixture import cli, pipeline
from mixture.climblab import ClimbLab
from mixture.config import load_config
from mixture.dataset import open_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample_records):
    tmp = tmp_path_factory.mktemp("e2e")
    by_source: dict[str, list] = {}
    for r in sample_records:
        by_source.setdefault(r["source"], []).append(r)
    picked = [r for recs in by_source.values() for r in recs[:30]]
    # an exact copy of one document of every source: some survive the filters as duplicates
    picked += [dict(recs[0], id=f"exact-copy-{src}") for src, recs in by_source.items()]
    inp = tmp / "input" / "tiny.jsonl"
    inp.parent.mkdir()
    inp.write_text("".join(json.dumps(r) + "\n" for r in picked) + "{not json\n")
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config_dict(tmp, [str(inp)])))
    assert cli.main(["run", "--config", str(cfg_path)]) == 0
    return load_config(cfg_path), cfg_path, len(picked) + 1


def test_every_stage_committed_and_counts_add_up(tiny_run):
    cfg, _, n_lines = tiny_run
    ds = {s.dataset: open_dataset(pipeline.dataset_uri(cfg, s.dataset)) for s in pipeline.STAGES}
    for d in ds.values():
        d.verify()
    cur = ds["curated"].manifest.counts
    assert cur["documents_in"] == n_lines
    rejected = (
        sum(cur["quarantined"].values())
        + sum(cur["filtered"].values())
        + cur["exact_duplicates"]
        + cur["near_duplicates"]
    )
    assert cur["documents_out"] + rejected == n_lines
    assert cur["quarantined"] and cur["exact_duplicates"] >= 1
    assert ds["embeddings"].manifest.counts["documents_out"] == cur["documents_out"]
    cl = ds["clusters"].manifest.counts
    assert cl["documents_in"] == cur["documents_out"]
    lab = ds["climblab"].manifest.counts
    assert lab["documents_out"] + lab["pruned_documents"] == cur["documents_out"]


def test_mixture_weights_sum_to_one(tiny_run):
    cfg, _, _ = tiny_run
    search = open_dataset(pipeline.dataset_uri(cfg, "search"))
    weights = json.loads(open(search.path("mixture.json")).read())["weights"]
    lab = ClimbLab(open_dataset(pipeline.dataset_uri(cfg, "climblab")))
    assert set(weights) <= set(lab.clusters)
    assert abs(sum(weights.values()) - 1) < 1e-6 and min(weights.values()) >= 0


def test_token_counts_in_shards_equal_the_manifest(tiny_run):
    cfg, _, _ = tiny_run
    lab = ClimbLab(open_dataset(pipeline.dataset_uri(cfg, "climblab")))
    for name in lab.clusters:
        shard = lab.shard(name)
        assert len(shard.tokens) == shard.n_tokens == lab.tokens_per_cluster[name]
    mix = open_dataset(pipeline.dataset_uri(cfg, "climbmix"))
    total = 0
    for f in mix.files("tokens/"):
        if f.endswith(".bin"):
            total += len(np.memmap(f, dtype=lab.dtype, mode="r"))
    assert total == mix.manifest.counts["tokens"]


def test_rerun_is_up_to_date(tiny_run, capsys):
    cfg, cfg_path, _ = tiny_run
    before = {s.dataset: open_dataset(pipeline.dataset_uri(cfg, s.dataset)).manifest_sha256 for s in pipeline.STAGES}
    assert cli.main(["run", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") >= len(pipeline.STAGES)
    after = {s.dataset: open_dataset(pipeline.dataset_uri(cfg, s.dataset)).manifest_sha256 for s in pipeline.STAGES}
    assert before == after


def test_mlflow_has_the_search(tiny_run):
    import mlflow
    from mixture import tracking

    cfg, _, _ = tiny_run
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) >= sum(cfg.search.iterations)  # at least one MLflow run per proxy


def test_two_clean_runs_commit_the_same_bytes_in_every_stage(tiny_run):
    """Committed files are a function of the inputs and the config: a second clean run (the
    first one's output moved aside, the same output_root) commits every file of every stage with
    the same sha256. Timings live in the run log, MLflow and the manifests' facts only."""
    from pathlib import Path

    cfg, cfg_path, _ = tiny_run

    def files() -> dict[str, dict[str, str]]:
        return {
            s.dataset: {
                f["path"]: f["sha256"] for f in open_dataset(pipeline.dataset_uri(cfg, s.dataset)).manifest.files
            }
            for s in pipeline.STAGES
        }

    first = files()
    root = Path(cfg.output_root)
    root.rename(root.with_name(root.name + "-first"))
    assert cli.main(["run", "--config", str(cfg_path)]) == 0
    second = files()
    differ = {
        ds: sorted(p for p in first[ds].keys() | second[ds].keys() if first[ds].get(p) != second[ds].get(p))
        for ds in first
    }
    assert {ds: paths for ds, paths in differ.items() if paths} == {}
    assert sum(len(f) for f in first.values()) > 20
