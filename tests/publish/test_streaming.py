"""The streaming loader (`mixture.publish.streaming.ClimbMixStream`, `ClimbMixLoader`): every window
once across DataLoader workers and ranks, checksums checked before tokens are used, exact resume
after a kill with any batch size, a resumed pass followed by passes from the first window, a plain
DataLoader with workers refused, and the same windows from a published S3 version as from the
local build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.pipeline import publish, run_stage
from mixture.publish.reader import ChecksumError, ClimbMix
from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream
from torch.utils.data import DataLoader

SEQ = 32


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_records):
    root = tmp_path_factory.mktemp("stream") / "out"
    lab = make_climblab(root, sample_records, with_upstream=False)
    make_search(root, lab, WEIGHTS)
    cfg = make_config(root)
    cfg.publish.track = False
    return cfg, run_stage(cfg, "build").dataset


def expected_windows(uri: str, seq_len: int = SEQ) -> list[list[int]]:
    """Every window of every token shard, in order, read with numpy from the shards themselves."""
    mix, out = ClimbMix(uri), []
    for i in range(len(mix.token_shards)):
        tokens, _ = mix.tokens(i)
        out += [tokens[j * seq_len : j * seq_len + seq_len + 1].tolist() for j in range((len(tokens) - 1) // seq_len)]
    return out


def windows(batches) -> list[list[int]]:
    """Windows (inputs plus the last target) from (inputs, targets) samples or batches."""
    out = []
    for x, y in batches:
        x, y = (x[None], y[None]) if x.dim() == 1 else (x, y)
        assert torch.equal(x[:, 1:], y[:, :-1]) and x.dtype == torch.int64
        out += torch.cat([x, y[:, -1:]], dim=1).tolist()
    return out


def test_one_process_yields_every_window_in_order(built):
    _, ds = built
    expected = expected_windows(ds.uri)
    stream = ClimbMixStream(ds.uri, SEQ)
    assert len(expected) > 100 and len(stream) == len(expected)
    assert windows(stream) == expected


def test_two_workers_yield_every_window_exactly_once_in_order(built):
    _, ds = built
    expected = expected_windows(ds.uri)
    stream = ClimbMixStream(ds.uri, SEQ)
    got = windows(ClimbMixLoader(stream, batch_size=4, num_workers=2))
    assert got == expected  # each once, and in the rank's order (the position is one number)


def test_two_ranks_do_not_overlap_and_together_cover_the_windows(built):
    _, ds = built
    expected = expected_windows(ds.uri)
    per_rank = [
        windows(ClimbMixLoader(ClimbMixStream(ds.uri, SEQ, rank=r, world_size=2), batch_size=3, num_workers=2))
        for r in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == len(expected) // 2
    assert per_rank[0] + per_rank[1] == expected[: 2 * (len(expected) // 2)]
    with pytest.raises(ValueError, match="rank 2"):
        ClimbMixStream(ds.uri, SEQ, rank=2, world_size=2)


KILLED_RUN = """
import json, os, signal, sys
from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream

uri, state_file, k, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stream = ClimbMixStream(uri, {seq})
seen = []
for i, (x, y) in enumerate(ClimbMixLoader(stream, batch_size=batch, num_workers=2)):
    seen += x[:, 0].tolist()
    if i + 1 == k:
        json.dump({{"state": stream.state_dict(), "first_tokens": seen}}, open(state_file, "w"))
        os.kill(os.getpid(), signal.SIGKILL)      # killed mid-epoch, its workers with it
"""


@pytest.mark.parametrize("batch", [4, 8])
def test_kill_and_resume_continues_at_the_next_window(built, tmp_path, batch):
    """Killed after k batches of any size: the state the loader counted resumes at exactly the
    next window (a stream dealing blocks of another size than the DataLoader's batches would
    repeat some windows and never yield others)."""
    _, ds = built
    expected = expected_windows(ds.uri)
    script, state_file, k = tmp_path / "train.py", tmp_path / "state.json", 5
    script.write_text(textwrap.dedent(KILLED_RUN.format(seq=SEQ)))
    proc = subprocess.run([sys.executable, str(script), ds.uri, str(state_file), str(k), str(batch)], timeout=300)
    assert proc.returncode == -9
    saved = json.loads(state_file.read_text())
    assert saved["state"]["position"] == batch * k
    assert saved["first_tokens"] == [w[0] for w in expected[: batch * k]]
    resumed = ClimbMixStream(ds.uri, SEQ)
    resumed.load_state_dict(saved["state"])
    assert len(resumed) == len(expected) - batch * k
    assert windows(ClimbMixLoader(resumed, batch_size=batch, num_workers=2)) == expected[batch * k :]
    # in one process the stream counts what it yielded itself
    solo = ClimbMixStream(ds.uri, SEQ)
    it = iter(solo)
    [next(it) for _ in range(7)]
    again = ClimbMixStream(ds.uri, SEQ)
    again.load_state_dict(solo.state_dict())
    assert windows([next(iter(again))]) == [expected[7]]


@pytest.mark.parametrize("workers, persistent", [(0, False), (2, False), (2, True)])
def test_a_resumed_pass_ends_and_every_later_pass_starts_at_the_first_window(built, workers, persistent):
    """Without `reset()`: the loaded position is used by one pass, in-process and with DataLoader
    workers, persistent or not."""
    _, ds = built
    expected = expected_windows(ds.uri)
    stream = ClimbMixStream(ds.uri, SEQ)
    stream.load_state_dict({**stream.state_dict(0), "position": 7})
    loader = ClimbMixLoader(stream, batch_size=4, num_workers=workers, persistent_workers=persistent)
    assert windows(loader) == expected[7:]
    assert stream.state_dict()["position"] == 0  # a pass ended: the next starts at the first window
    assert windows(loader) == expected and windows(loader) == expected


def test_a_resumed_pass_cut_short_does_not_make_the_next_one_start_there(built):
    _, ds = built
    expected = expected_windows(ds.uri)
    stream = ClimbMixStream(ds.uri, SEQ)
    stream.load_state_dict({**stream.state_dict(0), "position": 7})
    loader = ClimbMixLoader(stream, batch_size=4, num_workers=2)
    for i, _ in enumerate(loader):
        if i == 1:
            assert stream.state_dict()["position"] == 7 + 8  # the loader counts what it handed out
            break
    assert windows(loader) == expected
    solo = ClimbMixStream(ds.uri, SEQ)  # in one process, iterating the stream itself
    solo.load_state_dict({**solo.state_dict(0), "position": 7})
    assert windows(solo) == expected[7:] and windows(solo) == expected
    solo.load_state_dict({**solo.state_dict(0), "position": 7})
    solo.reset()  # drops a loaded position
    assert windows(solo) == expected


def test_a_plain_dataloader_with_workers_is_refused_in_one_line(built):
    """A worker cannot see the DataLoader's batch size: without `ClimbMixLoader` the stream would
    deal blocks of another size, and a resume would repeat or skip windows."""
    _, ds = built
    stream = ClimbMixStream(ds.uri, SEQ)
    with pytest.raises(ValueError, match=r"needs ClimbMixLoader\(stream, batch_size=B, num_workers=W\)") as err:
        next(iter(DataLoader(stream, batch_size=8, num_workers=2)))
    assert str(err.value).strip().splitlines()[-1].startswith("ValueError: ClimbMixStream in DataLoader workers")
    expected = expected_windows(ds.uri)
    assert windows(DataLoader(stream, batch_size=8)) == expected  # in one process: in order, any batch size
    with pytest.raises(ValueError, match="batch_size of at least 1"):
        ClimbMixLoader(stream, batch_size=None)


def test_a_state_from_another_stream_is_refused(built):
    _, ds = built
    state = ClimbMixStream(ds.uri, SEQ).state_dict(3)
    with pytest.raises(ValueError, match="seq_len"):
        ClimbMixStream(ds.uri, 16).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        ClimbMixStream(ds.uri, SEQ, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="split='train', this stream has 'validation'"):
        ClimbMixStream(ds.uri, SEQ, split="validation").load_state_dict(state)


def test_a_corrupted_shard_is_refused_before_its_tokens_are_used(built, tmp_path):
    _, ds = built
    copy = tmp_path / "climbmix"
    shutil.copytree(ds.uri, copy)
    part = copy / "tokens" / "part-00001.bin"
    raw = bytearray(part.read_bytes())
    raw[10] ^= 0xFF
    part.write_bytes(bytes(raw))
    stream = ClimbMixStream(str(copy), SEQ)
    first_shard = int(stream.first_window[1])
    got = []
    with pytest.raises(ChecksumError, match="part-00001.bin"):
        for x, _ in stream:
            got.append(x)
    assert len(got) == first_shard  # all of shard 0, nothing of shard 1


def test_a_published_version_streams_the_same_windows_from_s3(built, s3_endpoint, s3_bucket, tmp_path):
    cfg, ds = built
    cfg.publish.uri = f"s3://{s3_bucket}/cm"
    publish(cfg, version="v1")
    expected = expected_windows(ds.uri)
    stream = ClimbMixStream(f"s3://{s3_bucket}/cm", SEQ, cache_dir=str(tmp_path / "cache"))
    assert stream.mix.version == "v1"  # through the `latest` pointer
    assert windows(ClimbMixLoader(stream, batch_size=4, num_workers=2)) == expected
    cached = sorted(p.name for p in Path(stream.mix.cache_dir).rglob("*.bin"))
    assert cached == [Path(p).name + ".bin" for p in stream.mix.token_shards]  # each shard downloaded once


@pytest.mark.slow
def test_the_cpu_proxy_trains_from_a_published_version_through_the_stream(built, s3_endpoint, s3_bucket, tmp_path):
    """A real consumer: the search's CPU proxy (cpu-tiny) trained for 300 steps on windows streamed
    from S3 by a DataLoader with 2 workers; its loss falls from the uniform guess to about the unigram entropy."""
    import math

    import torch.nn.functional as F
    from mixture.config import ProxyConfig
    from mixture.search.proxy import build_model

    cfg, ds = built
    cfg.publish.uri = f"s3://{s3_bucket}/train"
    publish(cfg, version="v1")
    stream = ClimbMixStream(cfg.publish.uri, SEQ, cache_dir=str(tmp_path / "cache"))
    vocab, eos = stream.mix.info["vocab_size"], stream.mix.eos_id
    torch.manual_seed(0)
    model = build_model(ProxyConfig(preset="cpu-tiny", seq_len=SEQ), vocab, eos)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses: list[float] = []
    loader = ClimbMixLoader(stream, batch_size=8, num_workers=2, persistent_workers=True)
    while len(losses) < 300:  # epochs: a fresh pass each time
        for inputs, targets in loader:
            logits = model(inputs).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == 300:
                break
    tokens = np.concatenate(list(ClimbMix(ds.uri).iter_tokens()))
    p = np.bincount(tokens, minlength=vocab) / len(tokens)
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())  # the loss of knowing only token frequencies
    last = float(np.mean(losses[-20:]))
    assert abs(losses[0] - math.log(vocab)) < 0.1 * math.log(vocab) and last < 0.8 * math.log(vocab)
    assert last < unigram + 0.2  # about what token frequencies give, or better
    print(f"loss {losses[0]:.2f} -> {last:.2f}; uniform {math.log(vocab):.2f}, unigram {unigram:.2f}")
