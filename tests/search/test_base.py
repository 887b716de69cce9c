"""Common random numbers per cluster and proxies continued from a shared base proxy."""

import hashlib
import io

import numpy as np
import pytest
import torch
from helpers.search import lab_texts, search_config
from mixture import pipeline, storage
from mixture.climblab import ClimbLab
from mixture.config import ConfigError, ProxyConfig, parse_config
from mixture.config.search import BaseConfig, SearchConfig
from mixture.search import base, proxy, steps


def _shards():
    rng = np.random.default_rng(0)
    return {
        "a": np.tile(np.arange(1, 9, dtype=np.uint16), 400),
        "b": rng.integers(20, 40, size=3000).astype(np.uint16),
        "c": rng.integers(40, 60, size=2000).astype(np.uint16),
    }


def _windows(data: proxy.MixtureBatches, steps_: int, cluster: str) -> list[list[int]]:
    """The windows of `cluster` in training order."""
    lo, hi = {"a": (1, 9), "b": (20, 40), "c": (40, 60)}[cluster]
    rows = np.concatenate([data.batch(s) for s in range(steps_)])
    return [r.tolist() for r in rows if lo <= r[0] < hi]


@pytest.mark.parametrize("order", ["run", "cluster"])
def test_cluster_order_draws_the_same_windows_of_a_shared_cluster_whatever_the_mixture(order):
    one = proxy.MixtureBatches(_shards(), {"a": 0.25, "b": 0.75}, 16, 4, 20, seed=3, data_order=order)
    two = proxy.MixtureBatches(_shards(), {"b": 0.5, "c": 0.5}, 16, 4, 20, seed=3, data_order=order)
    b1, b2 = _windows(one, 20, "b"), _windows(two, 20, "b")
    assert len(b1) == 60 and len(b2) == 40
    if order == "cluster":
        assert b1[:40] == b2  # cluster b's i-th window is the same in both runs
    else:
        assert sum(x == y for x, y in zip(b1, b2)) < 5  # today: one stream per run
    other_seed = proxy.MixtureBatches(_shards(), {"b": 0.5, "c": 0.5}, 16, 4, 20, seed=4, data_order=order)
    assert _windows(other_seed, 20, "b")[:10] != b2[:10]


def test_run_order_is_what_runs_drew_before():
    """data_order run keeps the windows every search before per-cluster streams drew."""
    data = proxy.MixtureBatches(_shards(), {"a": 0.5, "b": 0.5}, 16, 4, 10, seed=0)
    rng = np.random.default_rng(0)
    cluster_of = rng.permutation(np.repeat(np.arange(2), [20, 20]))
    lengths = np.array([3200, 3000])
    starts = (rng.random(40) * lengths[cluster_of]).astype(np.int64)
    assert (data.cluster_of == cluster_of).all() and (data.starts == starts).all()


def test_skipped_windows_continue_each_clusters_stream():
    whole = proxy.MixtureBatches(_shards(), {"b": 1.0}, 16, 4, 10, seed=1, data_order="cluster")
    first = proxy.MixtureBatches(_shards(), {"b": 1.0}, 16, 4, 4, seed=1, data_order="cluster")
    rest = proxy.MixtureBatches(_shards(), {"b": 1.0}, 16, 4, 6, seed=1, data_order="cluster", skip=first.windows)
    assert first.windows == {"b": 16}
    assert _windows(first, 4, "b") + _windows(rest, 6, "b") == _windows(whole, 10, "b")


@pytest.mark.parametrize("schedule", ["stable_decay", "split"])
def test_base_and_run_follow_one_schedule_without_a_restart(schedule):
    scfg = SearchConfig(
        proxy=ProxyConfig(tokens=100 * 4 * 256, schedule="cosine", warmup_frac=0.05, min_lr_frac=0.1),
        base=BaseConfig(enabled=True, share=0.6, schedule=schedule),
    )
    seg = base.base_segment(scfg)
    cont = base.continued(scfg, {"steps": 60, "windows": {}}, {})
    assert (seg.first, seg.steps, seg.total) == (0, 60, 100) and (cont.first, cont.steps) == (60, 40)
    lrs = [seg.lr(s, scfg.proxy) for s in range(60)] + [cont.lr(s, scfg.proxy) for s in range(40)]
    assert lrs[-1] == pytest.approx(0.1)
    jumps = np.abs(np.diff(lrs))
    assert jumps[59] <= jumps.max() + 1e-12  # the run starts where the base ended: no warm restart
    if schedule == "stable_decay":
        assert lrs[4:80] == [1.0] * 76  # the base ends at the peak; the decay is the run's last 20%
    else:
        assert lrs == pytest.approx([proxy.lr_factor(s, 100, scfg.proxy) for s in range(100)])
        assert lrs[60] < 0.7  # a cosine cut at 60%: the run starts below the peak


def test_a_run_continued_from_its_own_base_equals_the_whole_run():
    """Weights, AdamW state, schedule and data streams carry over: base + continuation on one
    mixture trains exactly the run that does it in one go."""
    torch.set_num_threads(1)
    pcfg = ProxyConfig(preset="cpu-tiny", tokens=64 * 4 * 12, batch_size=4, seq_len=64, lr=1e-2, data_order="cluster")
    scfg = SearchConfig(proxy=pcfg, base=BaseConfig(enabled=True, share=0.5))
    mix = {"a": 1.0}
    kw = {"vocab_size": 64, "eos_id": 0, "seed": 5, "device": "cpu"}
    whole = proxy.train(pcfg, _shards(), mix, segment=proxy.Segment(0, 12, 12, "wsd", 6), **kw)
    first = proxy.train(pcfg, _shards(), mix, segment=base.base_segment(scfg), **kw)
    state = torch.load(io.BytesIO(base.state_bytes(first.model, first.optimizer)), weights_only=True)
    segment = base.continued(scfg, {"steps": 6, "windows": first.windows}, state)
    rest = proxy.train(pcfg, _shards(), mix, segment=segment, **kw)
    for p1, p2 in zip(whole.model.parameters(), rest.model.parameters()):
        assert torch.allclose(p1, p2, atol=1e-5)
    scratch = proxy.train(pcfg, _shards(), mix, segment=proxy.Segment(6, 6, 12, "wsd", 6), **kw)
    assert not torch.allclose(next(scratch.model.parameters()), next(rest.model.parameters()), atol=1e-3)


def test_experts_without_a_base_are_one_config_error(tmp_path):
    data = {"output_root": str(tmp_path), "input": {"uris": ["x"]}, "search": {"experts": {"enabled": True}}}
    with pytest.raises(ConfigError, match="search.experts.enabled needs search.base.enabled") as err:
        parse_config(data)
    assert "\n" not in str(err.value).strip()
    data["search"]["base"] = {"enabled": True}
    assert parse_config(data).search.experts.enabled


# ------------------------------------------------------------------------ in the search stage
@pytest.fixture(scope="module")
def texts(sample_records):
    return lab_texts(sample_records)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow store for the module (creating a SQLite store runs its migrations: seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_every_run_continues_from_the_one_base_and_says_so(tmp_path, texts, tracking_uri, monkeypatch):
    cfg = search_config(tmp_path, texts, tracking_uri, base={"enabled": True, "share": 0.25})
    ctx = pipeline.open_stage(cfg, "search")
    with pytest.raises(base.BaseError, match="no base proxy"):
        steps.propose(ctx, 0)  # the base step comes first
    record = steps.base(ctx)
    pt = ctx.writer.path(base.BASE_STATE)
    assert record["sha256"] == hashlib.sha256(storage.read_bytes(pt)).hexdigest()
    assert (record["steps"], record["of_steps"]) == (8, 32)
    assert record["mixture"] == pytest.approx(ClimbLab(ctx.inputs["climblab"]).prior)  # the natural mixture
    assert record["score"] < 0 and sum(record["windows"].values()) == 8 * 4

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(proxy, "train", no_training)
    assert steps.base(pipeline.open_stage(cfg, "search")) == record  # a second call returns the stored one
    monkeypatch.undo()

    jobs = steps.propose(ctx, 0)
    assert all(j["base"] == {"uri": pt, "path": "base/base.pt", "sha256": record["sha256"]} for j in jobs)
    run = steps.run_proxy(ctx, jobs[0])
    assert run["base"]["sha256"] == record["sha256"]
    assert (run["train"]["first_step"], run["train"]["steps"], run["train"]["of_steps"]) == (8, 24, 32)

    bare = {k: v for k, v in jobs[1].items() if k != "base"}
    with pytest.raises(steps.SearchError, match="names no base"):
        steps.run_proxy(ctx, bare)
    storage.write_bytes(pt, storage.read_bytes(pt) + b"tampered")
    with pytest.raises(base.BaseError, match="was replaced"):
        steps.run_proxy(ctx, jobs[1])


def test_with_the_base_off_nothing_changes(tmp_path, texts, tracking_uri):
    cfg = search_config(tmp_path, texts, tracking_uri)
    ctx = pipeline.open_stage(cfg, "search")
    assert steps.base(ctx) is None and steps.expert_jobs(ctx) == []
    jobs = steps.propose(ctx, 0)
    assert all("base" not in j for j in jobs) and not ctx.writer.has(base.BASE_JSON)
    run = steps.run_proxy(ctx, jobs[0])
    assert "first_step" not in run["train"] and run["train"]["steps"] == 32
