"""A built ClimbMix loads, unchanged, in the trainers' own readers: every Python snippet of the
dataset card runs as printed in the dataset folder, and Megatron-Core's `IndexedDataset`, Hugging
Face `datasets` (text, tokenized with the dataset's tokenizer), numpy (nanoGPT's train.bin /
val.bin and the token shards) and the streaming loader return the same token ids for the same
documents."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.pipeline import run_stage
from mixture.publish.reader import ClimbMix
from mixture.publish.streaming import ClimbMixLoader, ClimbMixStream

pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

FORMATS = ["parquet", "tokens", "megatron", "nanogpt"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_records):
    root = tmp_path_factory.mktemp("loading") / "out"
    lab = make_climblab(root, sample_records)
    make_search(root, lab, WEIGHTS)
    return run_stage(make_config(root, formats=FORMATS, val_fraction=0.05), "build").dataset


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """`datasets` caches what it loads: into the test's folder, never the user's."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


S3_VERSION = "s3://my-bucket/climbmix/<version>"  # the card's and the manual's published version


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_every_python_snippet_of_the_card_runs_in_the_dataset_folder(built, monkeypatch, hf_offline):
    card = open(built.path("README.md")).read()
    blocks = python_blocks(card)
    for marker in (
        "pyarrow.dataset",
        "load_dataset",
        'np.memmap("tokens/',
        "IndexedDataset",
        "nanogpt/train.bin",
        'ClimbMix(".")',
        "ClimbMixLoader",
        "num_workers=2",
        'split="validation"',
        "AutoTokenizer",
        S3_VERSION,
    ):
        assert any(marker in b for b in blocks), marker
    assert "--train-data-path $(cat megatron/blend.txt) --valid-data-path $(cat validation/megatron/blend.txt)" in card
    assert "  - split: validation\n    path: validation/parquet/part-*.parquet" in card
    monkeypatch.chdir(built.uri)
    docs = list(ClimbMix(".").iter_tokens())
    names: dict = {}
    for block in blocks:
        if S3_VERSION not in block:  # that one runs against a published version (below)
            exec(compile(block, "README.md", "exec"), names)  # noqa: S102 - the card's own code
    counts, extra = built.manifest.counts, built.manifest.extra
    assert names["table"].num_rows == len(names["data"]) == counts["documents"]  # pyarrow, datasets
    assert names["splits"]["validation"].num_rows == counts["validation_documents"] >= 1
    assert np.array_equal(names["doc0"], docs[0])  # megatron-core
    assert np.array_equal(names["tokens"][names["offsets"][0] : names["offsets"][1]], docs[0])  # token shards
    assert len(names["train"]) == counts["tokens"] and len(names["val"]) == counts["validation_tokens"]  # nanoGPT
    assert (names["eos_id"], names["pad_id"]) == (extra["eos_id"], extra["special_tokens"]["pad_id"])  # transformers
    assert len(names["stream"]) > 0 and names["state"]["position"] == 0  # a whole pass: the next starts at 0
    assert 0 < len(names["held_out"]) < len(names["stream"])


# --------------------------------------------------------------------------- four readers, one answer
def from_datasets(built) -> list[np.ndarray]:
    """Each document's text from Hugging Face `datasets`, tokenized with the dataset's tokenizer."""
    from datasets import load_dataset
    from tokenizers import Tokenizer

    data = load_dataset("parquet", data_files=built.path("parquet/part-*.parquet"), split="train")
    tok = Tokenizer.from_file(built.path("tokenizer/tokenizer.json"))
    eos = built.manifest.extra["eos_id"]
    return [np.array(tok.encode(t, add_special_tokens=False).ids + [eos]) for t in data["text"]]


def from_megatron(built) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out = []
    for i in range(built.manifest.extra["shards"]):
        ds = IndexedDataset(built.path(f"megatron/part-{i:05d}"))
        out += [np.array(ds[j]) for j in range(len(ds))]  # copies: the reader unmaps on close
    return out


def from_nanogpt(built) -> list[np.ndarray]:
    """Documents from train.bin with numpy (cut at the end-of-document ids), in build order."""
    meta = json.load(open(built.path("nanogpt/meta.json")))
    flat = np.memmap(built.path("nanogpt/train.bin"), dtype=meta["dtype"], mode="r")
    return [np.array(d) for d in np.split(flat, np.flatnonzero(flat == meta["eos_id"]) + 1)[:-1]]


def from_stream(built, seq_len: int = 8) -> list[np.ndarray]:
    """Each shard's token run from the streaming loader's windows (2 workers), stitched back."""
    stream = ClimbMixStream(built.uri, seq_len)
    windows = [
        w
        for x, y in ClimbMixLoader(stream, batch_size=4, num_workers=2)
        for w in np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)
    ]
    runs = []
    for s in range(len(stream.shards)):
        ws = windows[stream.first_window[s] : stream.first_window[s + 1]]
        runs.append(np.concatenate([ws[0]] + [w[1:] for w in ws[1:]]))
    return runs


def test_megatron_datasets_numpy_and_the_stream_return_the_same_token_ids(built, hf_offline):
    eos = built.manifest.extra["eos_id"]
    docs = from_datasets(built)
    assert len(docs) == built.manifest.counts["documents"] and all(d[-1] == eos for d in docs)
    for name, got in (
        ("megatron-core", from_megatron(built)),
        ("numpy nanoGPT", from_nanogpt(built)),
        ("numpy tokens", list(ClimbMix(built.uri).iter_tokens())),
    ):
        assert len(got) == len(docs), name
        assert all(np.array_equal(a, b) for a, b in zip(got, docs, strict=True)), name
    shard_docs = built.manifest.extra["shard_docs"]
    for s, run in enumerate(from_stream(built)):  # windows cross documents: per shard
        flat = np.concatenate(docs[s * shard_docs : (s + 1) * shard_docs])
        assert len(flat) - 8 < len(run) <= len(flat)  # the tail under one window is unused
        assert np.array_equal(run, flat[: len(run)]), s


def test_the_s3_snippets_of_the_manual_and_the_card_run_against_a_published_version(
    built, s3_endpoint, s3_bucket, monkeypatch, tmp_path, hf_offline
):
    """docs/BUILD_AND_PUBLISH.md (the manual README.md links) and the card's S3 block: their
    Python, with `s3://my-bucket/climbmix` pointing at a version published to the S3 endpoint
    (`<version>`: that version), in a folder that is not the dataset's."""
    from pathlib import Path

    from mixture.pipeline import publish

    cfg = make_config(Path(built.uri).parent, formats=FORMATS, val_fraction=0.05)
    cfg.publish.uri, cfg.publish.track = f"s3://{s3_bucket}/climbmix", False
    publish(cfg, version="v1")
    manual = (Path(__file__).resolve().parents[2] / "docs" / "BUILD_AND_PUBLISH.md").read_text()
    card = open(built.path("README.md")).read()
    blocks = python_blocks(manual) + [b for b in python_blocks(card) if S3_VERSION in b]
    assert len(blocks) >= 4 and any("ClimbMixStream" in b for b in blocks)
    assert sum("s3://my-bucket/climbmix/<version>" in b for b in blocks) >= 2  # the manual's and the card's
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    n = built.manifest.counts["documents"]
    for block in blocks:
        code = block.replace("s3://my-bucket/climbmix", cfg.publish.uri).replace("<version>", "v1")
        exec(compile(code, "BUILD_AND_PUBLISH.md", "exec"), names)  # noqa: S102 - the manual's own code
        if "Dataset(table)" in block:
            assert names["table"].num_rows == len(names["data"]) == n  # pyarrow from s3://, then datasets
            names.pop("data")
    assert names["table"].num_rows == n
    assert names["state"]["position"] == 8 and len(names["resumed"]) == len(ClimbMixStream(built.uri, 1024)) - 8
