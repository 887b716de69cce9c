"""The search stage and its steps: propose / run_proxy / finish, resume, MLflow, the job entry point."""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mixture import pipeline, storage
from mixture.climblab import ClimbLab
from mixture.config import parse_config
from mixture.dataset import open_dataset
from mixture.search import steps
from mixture.search.synthetic import SyntheticObjective, make_climblab
from mixture.stages import search as stage

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "data" / "sample" / "target_val.jsonl.gz"
NAMES = ["c00", "c01", "c02", "c03"]


@pytest.fixture(scope="module")
def climblab_texts(sample_records):
    by_source = defaultdict(list)
    for r in sample_records:
        by_source[r["source"]].append(r["text"][:3000])
    sources = sorted(by_source)[:4]
    return {name: by_source[s][:8] for name, s in zip(NAMES, sources)}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module (creating a SQLite store runs its migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _config(tmp_path, climblab_texts, tracking_uri, run_name="t", **search):
    root = tmp_path / "out"
    if not (root / "climblab" / "_manifest.json").exists():
        make_climblab(str(root / "climblab"), climblab_texts, vocab_size=400)
    base = {
        "iterations": [6, 3],
        "candidates": 2000,
        "top_n": 6,
        "top_k": 4,
        "proxy": {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64},
        "transfer_proxy": {"preset": "cpu-tiny", "tokens": 4096, "batch_size": 4, "seq_len": 64},
        "target": {"val_uris": [str(TARGET)], "val_docs": 4, "val_tokens": 3000},
        "predictor": {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1},
        "playoff": {"enabled": False},  # a few tiny runs cannot afford one (tests/search/test_playoff.py)
    }
    base.update(search)
    return parse_config(
        {
            "run_name": run_name,
            "output_root": str(root),
            "input": {"uris": ["unused"]},
            "search": base,
            "tracking": {"experiment": "test", "uri": tracking_uri},
        }
    )


class CountingObjective:
    """The synthetic objective, counting how often a 'proxy' was trained."""

    def __init__(self):
        self.calls = []
        self.objective = SyntheticObjective(np.array([0.1, 0.2, 0.3, 0.4]), noise=0.02, names=NAMES)

    def __call__(self, mixture, seed):
        self.calls.append((tuple(sorted(mixture.items())), seed))
        return self.objective.proxy(mixture, seed)


def _ctx(cfg):
    return pipeline.open_stage(cfg, "search")


def _runs_by_kind(cfg):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    df = mlflow.search_runs(experiment_names=[f"test-{cfg.run_name}-search"])
    return df, df.groupby("tags.climb.kind").size().to_dict()


def test_a_killed_search_resumes_reusing_finished_runs(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="resume", final="top_mean")  # a trust region
    obj = CountingObjective()
    jobs = steps.propose(_ctx(cfg), 0)
    assert len(jobs) == 6 and {j["iteration"] for j in jobs} == {0}
    for job in jobs[:2]:  # two proxies finish, then the search is "killed"
        steps.run_proxy(_ctx(cfg), job, objective=obj)
    with pytest.raises(steps.SearchError, match="not finished"):
        steps.propose(_ctx(cfg), 1)

    ctx = _ctx(cfg)
    out = stage.run(ctx, objective=obj)
    assert len(obj.calls) == 2 + 4 + 3  # the two finished runs were not trained again
    assert out.extra["reused_runs"] == 2
    ds = ctx.writer.commit(out.counts, out.extra)

    assert ds.manifest.counts == {"runs": 9, "iterations": 2}
    assert len(ds.files("runs/")) == 9
    mixture = storage.read_json(ds.path("mixture.json"))
    assert set(mixture["weights"]) == set(NAMES)
    assert sum(mixture["weights"].values()) == pytest.approx(1.0)
    assert mixture["method"] in {"top_mean", "best_observed"} and mixture["reason"]
    region = mixture["trust_region"]  # on by default: the final among candidates near the runs
    assert region["radius"] > 0 and 0 < region["kept"] <= region["of"]
    its = storage.read_json(ds.path("iterations.json"))
    assert [len(i["runs"]) for i in its["iterations"]] == [6, 3]
    assert its["iterations"][0]["predictor"] is None
    fitted = {"lightgbm", "ridge", "ridge_sqrt", "mixing_law", "gp", "ngram", "ngram_gp"}  # the target has text
    assert set(its["iterations"][1]["predictor"]["cv"]) == fitted
    assert all(r["predicted"] is not None for r in its["iterations"][1]["runs"])

    df, kinds = _runs_by_kind(cfg)
    assert kinds == {"search": 1, "iteration": 2, "proxy": 9}  # each proxy logged once
    proxies = df[df["tags.climb.kind"] == "proxy"]
    for c in NAMES:  # same param names on every run
        assert proxies[f"params.w.{c}"].notna().all()
    assert proxies["metrics.score"].notna().all()
    it1 = df[(df["tags.climb.kind"] == "iteration") & (df["tags.climb.iteration"] == "1")]
    assert it1["metrics.cv.ridge_sqrt.spearman"].notna().all()


def test_steps_are_deterministic_and_idempotent(tmp_path, climblab_texts, tracking_uri):
    a = _config(tmp_path / "a", climblab_texts, tracking_uri, run_name="idem-a")
    b = _config(tmp_path / "b", climblab_texts, tracking_uri, run_name="idem-b")
    jobs_a, jobs_b = steps.propose(_ctx(a), 0), steps.propose(_ctx(b), 0)
    assert [j["mixture"] for j in jobs_a] == [j["mixture"] for j in jobs_b]
    assert steps.propose(_ctx(a), 0) == jobs_a
    obj = CountingObjective()
    first = steps.run_proxy(_ctx(a), jobs_a[0], objective=obj)
    again = steps.run_proxy(_ctx(a), jobs_a[0], objective=obj)
    assert steps.without_timings(first) == again and len(obj.calls) == 1  # timings: never staged
    forged = {**jobs_a[1], "run_id": jobs_a[0]["run_id"]}  # a different mixture, same id
    with pytest.raises(steps.SearchError, match="different run"):
        steps.run_proxy(_ctx(a), forged, objective=obj)
    with pytest.raises(steps.SearchError, match="out of range"):
        steps.propose(_ctx(a), 2)
    bad = {**jobs_a[2], "mixture": {**jobs_a[2]["mixture"], "c99": 0.0}}
    with pytest.raises(steps.SearchError, match="unknown clusters"):
        steps.run_proxy(_ctx(a), bad, objective=obj)


def test_search_stage_trains_real_proxies_and_commits(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="real", iterations=[4, 2])
    res = pipeline.run_stage(cfg, "search")
    ds = res.dataset
    assert ds.manifest.counts["runs"] == 6
    run = storage.read_json(ds.files("runs/")[0])
    assert run["score"] == pytest.approx(-run["metrics"]["val.bpb"])  # higher is better
    assert 0 < run["metrics"]["val.bpb"] < 20
    assert len(run["loss_curve"]) == run["train"]["steps"] == 4096 // (4 * 64)
    assert run["proxy"]["preset"] == "cpu-tiny" and set(run["mixture"]) == set(NAMES)
    assert pipeline.run_stage(cfg, "search").skipped  # up to date: no work
    assert ds.manifest.extra["mixture"] == storage.read_json(ds.path("mixture.json"))["weights"]
    for png in ("weights.png", "progress.png"):
        assert storage.read_bytes(ds.path(f"plots/{png}"))[:4] == b"\x89PNG"


@pytest.mark.slow
def test_process_pool_and_the_job_entry_point(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="pool", iterations=[4, 2], workers=2)
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    job = steps.propose(_ctx(cfg), 0)[0]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "proxy.py"), "--config", str(config_file), "--job", str(job_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["run_id"] == job["run_id"] and printed["score"] < 0
    # the job's run is reused by the pooled stage; the pool trains the rest
    res = pipeline.run_stage(cfg, "search")
    assert res.dataset.manifest.counts["runs"] == 6 and res.dataset.manifest.extra["reused_runs"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "proxy.py"), "--config", str(config_file), "--job", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "one job object" in proc.stderr


def _baselines(cfg, obj):
    from mixture.stages import baselines as stage_baselines

    if done := pipeline.current(cfg, "baselines"):
        return storage.read_text(done.path("table.md")).rstrip("\n")
    ctx = pipeline.open_stage(cfg, "baselines")
    ds = pipeline.commit(ctx, stage_baselines.run(ctx, objective=obj))
    return storage.read_text(ds.path("table.md")).rstrip("\n")


def test_baselines_compare_every_method_under_the_same_budget(tmp_path, climblab_texts, tracking_uri):
    from mixture.search import baselines

    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="baselines", iterations=[6, 3], transfer_seeds=2)
    obj = CountingObjective()
    ctx = _ctx(cfg)
    out = stage.run(ctx, objective=obj)
    ctx.writer.commit(out.counts, out.extra)
    searched = len(obj.calls)

    text = _baselines(cfg, obj)
    # random pool = the search's 6 first-iteration runs + 3 new (budget 9); 5 methods x 2 seeds x 2 scales
    assert len(obj.calls) - searched == 3 + 5 * 2 * 2
    for m in baselines.METHODS:
        assert f"| {m} |" in text
    ds = open_dataset(str(tmp_path / "out" / "baselines"))
    results = storage.read_json(ds.path("results.json"))
    assert results["pool_runs"] == 9
    tokens = open_dataset(str(tmp_path / "out" / "climblab")).manifest.extra["clusters"]
    total = sum(v["tokens"] for v in tokens.values())
    assert results["methods"]["natural"]["weights"] == pytest.approx(
        {c: v["tokens"] / total for c, v in tokens.items()}
    )
    assert results["methods"]["uniform"]["weights"] == pytest.approx({c: 0.25 for c in NAMES})
    for m in baselines.METHODS:
        assert results["methods"][m]["transfer"]["score"]["n"] == 2
    climb = results["methods"]["climb"]["transfer"]["score"]["mean"]
    assert results["climb_beats_every_baseline"] == all(
        climb > results["methods"][m]["transfer"]["score"]["mean"] for m in baselines.METHODS if m != "climb"
    )
    calls = len(obj.calls)
    assert _baselines(cfg, obj) == text and len(obj.calls) == calls  # up to date: no work


def test_baselines_reuse_the_search_when_only_transfer_settings_change(tmp_path, climblab_texts, tracking_uri):
    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="reuse", iterations=[6, 3])
    obj = CountingObjective()
    ctx = _ctx(cfg)
    out = stage.run(ctx, objective=obj)
    searched = ctx.writer.commit(out.counts, out.extra)
    other_transfer = cfg.model_copy(update={"search": cfg.search.model_copy(update={"transfer_seeds": 3})})
    assert pipeline.current(other_transfer, "search").manifest_sha256 == searched.manifest_sha256
    assert pipeline.config_hash(other_transfer, pipeline.stage("baselines")) != pipeline.config_hash(
        cfg, pipeline.stage("baselines")
    )  # the baselines do rerun
    other_search = cfg.model_copy(update={"search": cfg.search.model_copy(update={"top_n": 5})})
    assert pipeline.current(other_search, "search") is None


def test_a_wrong_token_count_in_the_climblab_manifest_is_one_clear_error(tmp_path, climblab_texts, tracking_uri):
    """The prior comes from the manifest's per-cluster token counts; the search checks them
    against the shards before it samples anything."""
    from mixture.dataset import DatasetError

    cfg = _config(tmp_path, climblab_texts, tracking_uri, run_name="prior")
    path = tmp_path / "out" / "climblab" / "_manifest.json"
    manifest = json.loads(path.read_text())
    assert steps.names_and_prior(ClimbLab(open_dataset(str(path.parent))))[0] == NAMES  # intact: fine
    manifest["extra"]["clusters"][NAMES[1]]["tokens"] += 17
    path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=f"cluster {NAMES[1]}'s manifest says .* tokens but its shard holds"):
        steps.propose(_ctx(cfg), 0)


def test_a_final_among_trained_mixtures_commits_one_the_search_trained(tmp_path, climblab_texts, tracking_uri):
    rank_anyway = {"cv_folds": 3, "min_child_samples": 2, "min_data_in_bin": 1, "min_spearman": -1}  # 9 runs
    cfg = _config(
        tmp_path,
        climblab_texts,
        tracking_uri,
        run_name="fitted",
        iterations=[6, 3],
        final="best_fitted",
        predictor=rank_anyway,
    )
    ctx = _ctx(cfg)
    out = stage.run(ctx, objective=CountingObjective())
    ds = ctx.writer.commit(out.counts, out.extra)
    mixture = storage.read_json(ds.path("mixture.json"))
    trained = [storage.read_json(f)["mixture"] for f in ds.files("runs/")]
    assert mixture["method"] == "best_fitted" and "trained mixtures" in mixture["reason"]
    assert any(all(abs(m[c] - mixture["weights"][c]) < 1e-9 for c in NAMES) for m in trained)
    assert mixture["trust_region"] is None  # no candidate is ranked
    lines = dict(out.summary)
    assert lines["final mixture"].startswith("best_fitted") and "trained mixture" in lines["trust region"]
