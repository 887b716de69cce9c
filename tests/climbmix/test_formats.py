"""Output formats `megatron` and `nanogpt`, and the tokenizer folder: what Megatron-LM / NeMo and
nanoGPT read is exactly the build's documents, split as the build held them out, and their
tokenizers find the end-of-document and pad tokens without arguments. Megatron's files are read
with Megatron-Core's own `IndexedDataset`, `BlendedMegatronDatasetBuilder` and
`MegatronTokenizer` (the `megatron-core` test dependency), nanoGPT's with numpy.memmap as its
`get_batch` does and its `meta.pkl` as its `train.py` does, the tokenizer with `transformers`."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers.climbmix import make_climblab, make_config, make_search
from mixture.climbmix.formats.megatron import write_indexed
from mixture.pipeline import run_stage
from mixture.publish.reader import ClimbMix

# megatron-core imports its optimizers on first use and warns that the CUDA extensions are absent
pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

WEIGHTS = {"c00": 0.4, "c01": 0.3, "c02": 0.2, "c03": 0.1}


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_records):
    """One build in every format (shards of up to 16 documents, a validation split of 5%),
    shared by this module's tests."""
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


def test_nanogpt_train_and_val_are_the_two_splits_in_order(built):
    mix = ClimbMix(built.uri)
    docs, held = list(mix.iter_tokens()), list(mix.iter_tokens(split="validation"))
    meta = json.load(open(built.path("nanogpt/meta.json")))
    train = np.memmap(built.path("nanogpt/train.bin"), dtype=meta["dtype"], mode="r")
    val = np.memmap(built.path("nanogpt/val.bin"), dtype=meta["dtype"], mode="r")
    assert np.array_equal(train, np.concatenate(docs)) and np.array_equal(val, np.concatenate(held))
    assert meta["train"] == {"documents": len(docs), "tokens": len(train)}
    assert meta["val"] == {"documents": len(held), "tokens": len(val)} and len(held) >= 1
    assert meta["eos_id"] == mix.eos_id and meta["vocab_size"] == mix.info["vocab_size"] and meta["dtype"] == "uint16"
    assert not built.files("nanogpt/part-") and not built.files("validation/nanogpt/")  # the staged pieces are gone


def test_nanogpt_train_py_takes_the_vocabulary_size_from_meta_pkl(built):
    """What nanoGPT's train.py does with a dataset folder (data/<name>/): a meta.pkl's
    `vocab_size` sizes the model; without one it would use GPT-2's 50,304."""
    import os
    import pickle

    data_dir = built.path("nanogpt")
    meta_vocab_size = None
    meta_path = os.path.join(data_dir, "meta.pkl")
    if os.path.exists(meta_path):
        with open(meta_path, "rb") as f:
            meta = pickle.load(f)  # noqa: S301 - the build's own file, read as nanoGPT reads it
        meta_vocab_size = meta["vocab_size"]
    assert meta_vocab_size == built.manifest.extra["vocab_size"] == 300
    assert meta["dtype"] == "uint16" and meta["eos_id"] == built.manifest.extra["eos_id"]


def test_the_tokenizer_folder_names_the_end_of_document_and_pad_tokens(built, monkeypatch):
    """AutoTokenizer and Megatron-Core's tokenizer load `tokenizer/` without arguments and find
    the end-of-document and pad ids; the ids they encode are the dataset's."""
    from megatron.core.tokenizers import MegatronTokenizer
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = built.manifest.extra
    eos, pad = extra["eos_id"], extra["special_tokens"]["pad_id"]
    assert extra["special_tokens"]["eos_token"] == "<|endoftext|>" and extra["special_tokens"]["pad_token"] == "<|pad|>"
    hf = AutoTokenizer.from_pretrained(built.path("tokenizer"))
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (eos, eos, pad) and eos != pad
    row = next(ClimbMix(built.uri).iter_texts())
    first = next(ClimbMix(built.uri).iter_tokens())
    assert hf(row["text"]).input_ids + [hf.eos_token_id] == first.tolist()  # no special token added
    for meg in (
        MegatronTokenizer.from_pretrained(built.path("tokenizer")),  # reads tokenizer_metadata.json
        MegatronTokenizer.from_pretrained(built.path("tokenizer"), {"library": "huggingface"}),
    ):
        assert (meg.eod, meg.pad) == (eos, pad)
        assert meg.tokenize(row["text"]) + [meg.eod] == first.tolist()


def test_megatron_samples_training_and_validation_from_their_own_blends(built, tmp_path, monkeypatch):
    """The card's recipe, `--train-data-path $(cat megatron/blend.txt) --valid-data-path $(cat
    validation/megatron/blend.txt)`: GPTDataset per split over its weighted shards
    (BlendedMegatronDatasetBuilder with `blend_per_split`, as pretrain_gpt.py builds it) with the
    dataset's own tokenizer folder; every training sample is a run of training documents, every
    validation sample a run of held-out ones."""
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list
    from megatron.core.tokenizers import MegatronTokenizer

    monkeypatch.chdir(built.uri)  # the prefixes are relative to the dataset
    extra = built.manifest.extra
    cfg = GPTDatasetConfig(
        random_seed=1,
        sequence_length=64,
        blend_per_split=[
            get_blend_from_list(open("megatron/blend.txt").read().split()),
            get_blend_from_list(open("validation/megatron/blend.txt").read().split()),
            None,
        ],
        tokenizer=MegatronTokenizer.from_pretrained("tokenizer"),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"),
    )
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [60, 8, 0], lambda: True, cfg).build()
        samples = [train[i] for i in range(len(train))]
        held = [valid[i] for i in range(len(valid))]
    finally:
        torch.distributed.destroy_process_group()
    mix, per = ClimbMix(built.uri), extra["shard_docs"]
    every = [d.tolist() for d in mix.iter_tokens()]
    docs = {i: every[i * per : (i + 1) * per] for i in range(extra["shards"])}
    assert len(samples) >= 60 and {int(s["dataset_id"]) for s in samples} == set(range(extra["shards"]))
    for s in samples:
        window = np.append(s["tokens"].numpy(), s["labels"].numpy()[-1]).tolist()
        assert is_packed_from(window, docs[int(s["dataset_id"])], extra["eos_id"])
    val_docs = [d.tolist() for d in mix.iter_tokens(split="validation")]
    assert len(held) >= 8
    for s in held:
        window = np.append(s["tokens"].numpy(), s["labels"].numpy()[-1]).tolist()
        assert is_packed_from(window, val_docs, extra["eos_id"])


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
