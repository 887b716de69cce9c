"""Merged cluster experts: one continued run per cluster from the base; a mixture's model is the
experts' parameters averaged with its weights; the predictor's top candidates screened with it."""

import numpy as np
import pytest
import torch
from helpers.search import lab_texts, search_config
from mixture import pipeline, storage
from mixture.climblab import ClimbLab
from mixture.search import experts, proxy, steps

NAMES = ["c00", "c01", "c02", "c03"]
ON = {
    "base": {"enabled": True, "share": 0.25},
    "experts": {"enabled": True, "tokens": 16384, "eval_tokens": 1000, "screen": 3},
}


@pytest.fixture(scope="module")
def texts(sample_records):
    return lab_texts(sample_records)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, texts, tracking_uri):
    """A staged base and its four experts (about 10 s on one core)."""
    tmp = tmp_path_factory.mktemp("experts")
    cfg = search_config(tmp, texts, tracking_uri, **ON)
    ctx = pipeline.open_stage(cfg, "search")
    steps.base(ctx)
    records = [steps.run_proxy(ctx, job) for job in steps.expert_jobs(ctx)]
    return cfg, ctx, records


def test_expert_mixtures_hold_the_general_share_of_the_natural_mixture():
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    w = experts.expert_mixture(NAMES, prior, "c02", 0.25)
    assert w == pytest.approx({"c00": 0.1, "c01": 0.075, "c02": 0.05 + 0.75, "c03": 0.025})
    assert experts.expert_mixture(NAMES, prior, "c02", 0.0) == {"c00": 0.0, "c01": 0.0, "c02": 1.0, "c03": 0.0}


def test_each_expert_continues_the_base_on_its_cluster_and_is_stored_once(trained, monkeypatch):
    cfg, ctx, records = trained
    base = storage.read_json(ctx.writer.path("base/base.json"))
    assert [r["cluster"] for r in records] == NAMES
    for r in records:
        assert r["base"]["sha256"] == base["sha256"] and r["mixture"][r["cluster"]] > 0.75
        assert (r["train"]["first_step"], r["train"]["steps"]) == (base["steps"], 16384 // (4 * 64))
        assert r["metrics"]["val.tokens"] <= 1000  # scored on the screening subset
    # the expert of the target's own source (python code) is the best on it
    assert max(records, key=lambda r: r["score"])["cluster"] == "c00"

    monkeypatch.setattr(proxy, "train", lambda *a, **k: pytest.fail("trained again"))
    jobs = steps.expert_jobs(ctx)
    assert [steps.run_proxy(ctx, j) for j in jobs] == records  # a retry returns what is stored
    forged = {**jobs[0], "mixture": jobs[1]["mixture"]}
    with pytest.raises(experts.ExpertsError, match="another expert"):
        steps.run_proxy(ctx, forged)


def test_the_merged_model_is_the_weighted_average_of_the_experts(trained):
    cfg, ctx, records = trained
    lab = ClimbLab(ctx.inputs["climblab"])
    merged = experts.merged(cfg, ctx.writer, lab, NAMES)
    one_hot = merged.score_merged(np.eye(4))
    assert one_hot == pytest.approx([r["score"] for r in records], abs=1e-6)  # w = e_c: expert c itself
    w = np.array([0.5, 0.0, 0.2, 0.3])
    merged.load(w)
    states = [torch.load(ctx.writer.path(f"experts/{c}.pt"), weights_only=True)["model"] for c in NAMES]
    key = "transformer.h.0.mlp.c_fc.weight"
    expected = sum(wc * s[key] for wc, s in zip(w, states))
    assert torch.allclose(merged.model.state_dict()[key], expected, atol=1e-6)
    mixed = merged.score_merged(np.array([[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.5, 0.0]]))
    assert mixed[0] > mixed[1]  # half python code beats none of it
    assert one_hot.min() < mixed[0] < one_hot.max()
    with pytest.raises(experts.ExpertsError, match="one non-negative weight per expert"):
        merged.load(np.array([0.5, 0.5]))


def test_screening_reorders_the_predictors_top_candidates_by_merged_score(trained):
    cfg, ctx, _ = trained
    lab = ClimbLab(ctx.inputs["climblab"])
    screen = experts.screener(cfg, ctx.writer, lab, NAMES)
    C = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0.7, 0.1, 0.1, 0.1]], dtype=float)
    order, report = screen(C, np.arange(5))
    assert report["screened"] == 3 and len(report["merged_scores"]) == 3
    assert order[0] == 2  # the python-code mixture, third by the predictor, first by merged score
    assert sorted(order[:3].tolist()) == [0, 1, 2] and order[3:].tolist() == [3, 4]  # the rest keep their order
    off = cfg.model_copy(deep=True)
    off.search.experts.screen = 0
    assert experts.screener(off, ctx.writer, lab, NAMES) is None


def test_the_search_screens_with_experts_and_refuses_to_without_them(tmp_path, texts, tracking_uri):
    cfg = search_config(tmp_path, texts, tracking_uri, **{**ON, "experts": {**ON["experts"], "tokens": 4096}})
    ctx = pipeline.open_stage(cfg, "search")
    steps.base(ctx)
    for job in steps.propose(ctx, 0):
        steps.run_proxy(ctx, job)
    with pytest.raises(experts.ExpertsError, match="4 cluster experts are not finished"):
        steps.propose(ctx, 1)
    res = pipeline.run_stage(cfg, "search")  # the stage trains the experts, then goes on
    ds = res.dataset
    assert len(ds.files("experts/")) == 8 and len(ds.files("base/")) == 2
    report = storage.read_json(ds.path("proposals/iter-1.json"))["report"]
    assert report["screen"]["screened"] == 3
    assert all(r["base"]["path"] == "base/base.pt" for r in map(storage.read_json, ds.files("runs/")))
