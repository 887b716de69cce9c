"""Proxy trainer: mixture-proportional packed batches, schedules, determinism, learning."""

import numpy as np
import pytest
import torch
from mixture.config import ProxyConfig
from mixture.search import proxy as P

TINY = ProxyConfig(preset="cpu-tiny", tokens=64 * 4 * 12, batch_size=4, seq_len=64, lr=1e-2)


def _shards():
    # cluster a: a repeating pattern over ids 1..8; cluster b: ids 20..39 at random (0 is eos)
    rng = np.random.default_rng(0)
    a = np.tile(np.arange(1, 9, dtype=np.uint16), 400)
    b = rng.integers(20, 40, size=3000).astype(np.uint16)
    return {"a": a, "b": b}


def test_allocation_is_exact_and_sums_to_n():
    counts = P.allocate(np.array([0.5, 0.3, 0.2, 0.0]), 10)
    assert counts.tolist() == [5, 3, 2, 0]
    counts = P.allocate(np.array([1 / 3, 1 / 3, 1 / 3]), 10)
    assert counts.sum() == 10 and sorted(counts.tolist()) == [3, 3, 4]


def test_batches_draw_each_cluster_in_proportion_to_the_mixture():
    data = P.MixtureBatches(_shards(), {"a": 0.75, "b": 0.25}, seq_len=16, batch_size=4, steps=10, seed=0)
    rows = np.concatenate([data.batch(s) for s in range(10)])
    from_a = (rows < 10).all(axis=1)
    from_b = (rows >= 20).all(axis=1)
    assert from_a.sum() == 30 and from_b.sum() == 10  # exactly 75% / 25% of 40 sequences
    assert rows.shape == (40, 17)
    only_a = P.MixtureBatches(_shards(), {"a": 1.0, "b": 0.0}, 16, 4, 5, seed=0)
    assert (np.concatenate([only_a.batch(s) for s in range(5)]) < 10).all()


def test_batches_refuse_clusters_without_tokens():
    with pytest.raises(ValueError, match="without shards"):
        P.MixtureBatches(_shards(), {"zz": 1.0}, 16, 4, 2, seed=0)
    with pytest.raises(ValueError, match="empty clusters"):
        P.MixtureBatches({"e": np.zeros(0, np.uint16)}, {"e": 1.0}, 16, 4, 2, seed=0)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedules_warm_up_peak_and_end_at_the_floor(schedule):
    cfg = ProxyConfig(schedule=schedule, warmup_frac=0.1, min_lr_frac=0.1)
    f = [P.lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a <= b + 1e-12 for a, b in zip(f[:10], f[1:10]))
    assert f[-1] == pytest.approx(0.1)
    if schedule == "wsd":
        assert f[10:80] == [1.0] * 70  # stable until the last 20%
    else:
        assert 0.1 < f[55] < 1.0


def test_training_is_deterministic_for_a_seed_and_learns():
    torch.set_num_threads(1)
    mixture = {"a": 0.5, "b": 0.5}
    r1 = P.train(TINY, _shards(), mixture, vocab_size=64, eos_id=0, seed=3, device="cpu")
    r2 = P.train(TINY, _shards(), mixture, vocab_size=64, eos_id=0, seed=3, device="cpu")
    r3 = P.train(TINY, _shards(), mixture, vocab_size=64, eos_id=0, seed=4, device="cpu")
    assert r1.loss_curve == r2.loss_curve
    for p1, p2 in zip(r1.model.parameters(), r2.model.parameters()):
        assert torch.equal(p1, p2)
    assert r1.loss_curve != r3.loss_curve
    assert r1.steps == 12 and r1.tokens == 12 * 4 * 64
    first, last = r1.loss_curve[0][1], r1.loss_curve[-1][1]
    assert first > np.log(64) - 0.5  # starts near uniform over the vocabulary
    assert last < first - 1.0  # and learns the repeating pattern


def test_presets_grow_and_unknown_presets_are_refused():
    sizes = [
        P.count_params(P.build_model(ProxyConfig(preset=p, seq_len=64), 4096, 0))
        for p in ("cpu-tiny", "cpu-2m", "cpu-6m")
    ]
    assert sizes[0] < 200_000 < sizes[1] < 2_000_000 < sizes[2] < 8_000_000
    with pytest.raises(ValueError, match="unknown proxy preset"):
        P.preset("7b")


def test_auto_dtype_picks_bf16_on_a_cpu_only_with_native_bf16(tmp_path):
    from mixture.search.proxy import cpu_has_native_bf16, dtype_for

    with_amx = tmp_path / "amx"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(str(with_amx)) and not cpu_has_native_bf16(str(without))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    assert dtype_for("auto", "cuda") == "bfloat16"
    assert dtype_for("float32", "cuda") == "float32" and dtype_for("bfloat16", "cpu") == "bfloat16"
    assert dtype_for("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")


def _largest_gap(starts: np.ndarray) -> float:
    x = np.sort(starts)
    return float(max(np.diff(x).max(), 1.0 - x[-1] + x[0]))


@pytest.mark.parametrize("n", [10, 50, 200])
def test_spread_windows_cover_a_cluster_evenly_where_random_ones_leave_gaps(n):
    spread = P.window_draws(seed=3, name="c07", first=0, n=n, data_order="spread")
    random = P.window_draws(seed=3, name="c07", first=0, n=n, data_order="cluster")
    assert _largest_gap(spread) < 3.0 / n  # the golden-ratio sequence: its points evenly spread
    assert _largest_gap(random) > 3.0 / n  # independent draws: about ln(n) / n


def test_spread_windows_are_common_to_every_mixture_and_go_on_after_a_base():
    whole = P.window_draws(seed=1, name="a", first=0, n=30, data_order="spread")
    assert np.allclose(P.window_draws(seed=1, name="a", first=12, n=18, data_order="spread"), whole[12:])
    assert not np.allclose(P.window_draws(seed=2, name="a", first=0, n=30, data_order="spread"), whole)
    # cluster a's i-th window is the same whatever its weight: only how many are taken changes
    starts = {}
    for share in (0.25, 0.75):
        data = P.MixtureBatches(_shards(), {"a": share, "b": 1 - share}, 16, 4, 10, 1, "spread")
        starts[share] = np.sort(data.starts[data.cluster_of == 0])
    n = len(starts[0.25])
    expected = np.sort((whole[:n] * len(_shards()["a"])).astype(np.int64))
    assert np.array_equal(starts[0.25], expected)
    assert set(starts[0.25]) <= set(starts[0.75])
