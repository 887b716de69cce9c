"""Output formats `megatron` and `nanogpt`: what Megatron-LM / NeMo and nanoGPT read is exactly the
build's documents. Megatron's files are read with Megatron-Core's own `IndexedDataset` (the
`megatron-core` test dependency), nanoGPT's with numpy.memmap as its `get_batch` does."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers.climbmix import make_climblab, make_config, make_search
from mixture.climbmix.formats.megatron import write_indexed
from mixture.climbmix.formats.nanogpt import val_documents
from mixture.pipeline import run_stage
from mixture.publish.reader import ClimbMix

# megatron-core imports its optimizers on first use and warns that the CUDA extensions are absent
pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

WEIGHTS = {"c00": 0.4, "c01": 0.3, "c02": 0.2, "c03": 0.1}


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_records):
    """One build in every format (5 shards of up to 16 documents), shared by this module's tests."""
    root = tmp_path_factory.mktemp("formats") / "out"
    lab = make_climblab(root, sample_records)
    make_search(root, lab, WEIGHTS)
    cfg = make_config(root, formats=["parquet", "tokens", "megatron", "nanogpt"], val_fraction=0.05)
    return run_stage(cfg, "build").dataset


def indexed_dataset(prefix: str):
    logging.getLogger("megatron").setLevel(logging.WARNING)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix)


def test_megatron_core_reads_every_document_of_every_shard(built):
    mix = ClimbMix(built.uri)
    expected = list(mix.iter_tokens())
    got = []
    for prefix in mix.token_shards:
        ds = indexed_dataset(built.path(prefix.replace("tokens/", "megatron/")))
        assert len(ds) == ds.document_indices[-1] == len(ds.document_indices) - 1
        got += [np.array(ds[i]) for i in range(len(ds))]  # a copy: the reader unmaps on close
    assert len(got) == len(expected) == built.manifest.counts["documents"]
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == np.uint16 and np.array_equal(a, b)
    assert all(d[-1] == mix.eos_id for d in got)


def test_the_blend_file_is_what_data_path_takes(built):
    from megatron.core.datasets.utils import get_blend_from_list

    words = open(built.path("megatron/blend.txt")).read().split()
    prefixes, weights = get_blend_from_list(words)
    assert prefixes == [f"megatron/part-{i:05d}" for i in range(built.manifest.extra["shards"])]
    readers = [indexed_dataset(built.path(p)) for p in prefixes]  # kept open while read
    sizes = [int(r.sequence_lengths.sum()) for r in readers]
    assert [int(w) for w in weights] == sizes and sum(sizes) == built.manifest.counts["tokens"]


def test_a_vocabulary_over_uint16_is_stored_as_megatron_int32(tmp_path):
    docs = [
        np.array([70_000, 5, 1], dtype=np.uint32),
        np.array([65_536, 1], dtype=np.uint32),
        np.array([1], dtype=np.uint32),
    ]
    assert write_indexed(str(tmp_path / "big"), docs, np.dtype(np.uint32)) == 6
    ds = indexed_dataset(str(tmp_path / "big"))
    assert ds.index.dtype == np.int32
    assert [ds[i].tolist() for i in range(3)] == [d.tolist() for d in docs]


def test_nanogpt_splits_whole_documents_seeded(built):
    mix = ClimbMix(built.uri)
    docs = list(mix.iter_tokens())
    meta = json.load(open(built.path("nanogpt/meta.json")))
    val = np.load(built.path("nanogpt/val_index.npy"))
    assert np.array_equal(val, val_documents(len(docs), 0.05, 7))  # the run's seed
    assert meta["val"]["documents"] == len(val) == round(0.05 * len(docs)) >= 1
    train = np.memmap(built.path("nanogpt/train.bin"), dtype=meta["dtype"], mode="r")
    held = np.memmap(built.path("nanogpt/val.bin"), dtype=meta["dtype"], mode="r")
    in_val = set(val.tolist())
    assert np.array_equal(held, np.concatenate([docs[i] for i in val]))
    assert np.array_equal(train, np.concatenate([d for i, d in enumerate(docs) if i not in in_val]))
    assert meta["train"] == {"documents": len(docs) - len(val), "tokens": len(train)}
    assert meta["val"]["tokens"] == len(held) and meta["eos_id"] == mix.eos_id
    assert meta["vocab_size"] == mix.info["vocab_size"] and meta["dtype"] == "uint16"
    assert not built.files("nanogpt/part-")  # the staged pieces are gone


def test_the_validation_split_has_a_document_even_when_the_share_rounds_to_none():
    assert len(val_documents(40, 0.005, 1)) == 1  # 0.2 documents -> 1
    assert len(val_documents(1000, 0.005, 1)) == 5
    assert len(val_documents(1, 0.5, 1)) == 0 and len(val_documents(40, 0.0, 1)) == 0  # nothing to hold out
    assert not np.array_equal(val_documents(1000, 0.05, 1), val_documents(1000, 0.05, 2))
    assert np.array_equal(val_documents(1000, 0.05, 1), val_documents(1000, 0.05, 1))


class _Tokenizer:
    """What Megatron's GPTDataset asks of a tokenizer: the end-of-document and padding ids."""

    def __init__(self, eod: int, vocab_size: int):
        self.eod, self.pad, self.vocab_size = eod, vocab_size, vocab_size  # padding: no token id
        self.unique_identifiers = {"class": "climbmix-test", "eod": eod}


def test_megatron_gpt_dataset_samples_from_the_blend_as_data_path_does(built, tmp_path, monkeypatch):
    """`--data-path $(cat megatron/blend.txt)` in Megatron-LM: GPTDataset over the weighted shards
    (BlendedMegatronDatasetBuilder, as pretrain_gpt.py builds it), every sample a run of a shard."""
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    monkeypatch.chdir(built.uri)  # the prefixes are relative to the dataset
    extra = built.manifest.extra
    cfg = GPTDatasetConfig(
        random_seed=1,
        sequence_length=64,
        split="100,0,0",
        blend=get_blend_from_list(open("megatron/blend.txt").read().split()),
        tokenizer=_Tokenizer(extra["eos_id"], extra["vocab_size"]),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"),
    )
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [60, 0, 0], lambda: True, cfg).build()
        samples = [train[i] for i in range(len(train))]
    finally:
        torch.distributed.destroy_process_group()
    every, per = [d.tolist() for d in ClimbMix(built.uri).iter_tokens()], extra["shard_docs"]
    docs = {i: every[i * per : (i + 1) * per] for i in range(extra["shards"])}
    assert len(samples) >= 60 and {int(s["dataset_id"]) for s in samples} == set(range(extra["shards"]))
    for s in samples:
        window = np.append(s["tokens"].numpy(), s["labels"].numpy()[-1]).tolist()
        assert is_packed_from(window, docs[int(s["dataset_id"])], extra["eos_id"])


def is_packed_from(window: list[int], docs: list[list[int]], eos: int) -> bool:
    """Whether `window` is documents of `docs` packed end to end (GPTDataset shuffles their order):
    a document's tail, whole documents, a document's head, cut at the end-of-document ids."""
    cuts = [i + 1 for i, t in enumerate(window) if t == eos]
    pieces = [window[a:b] for a, b in zip([0] + cuts, cuts + [len(window)], strict=True) if b > a]
    if len(pieces) == 1:
        return any(f" {str(pieces[0])[1:-1]}," in f" {str(d)[1:-1]}," for d in docs)  # a run inside one
    head_ok = any(d[-len(pieces[0]) :] == pieces[0] for d in docs)
    whole_ok = all(p in docs for p in pieces[1:-1])
    last = pieces[-1]
    tail_ok = any(d[: len(last)] == last for d in docs) if last[-1] != eos else last in docs
    return head_ok and whole_ok and tail_ok
