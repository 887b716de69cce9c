"""The held-out validation split (`mixture.climbmix.holdout`): chosen among distinct documents
before upsampling, so that no validation document, nor an exact copy of one, is in any training
file of any format: Parquet, token shards, Megatron's training blend, nanoGPT's train.bin and the
streaming loader's training windows. Checked by document hash on a build whose clusters are
upsampled and hold exact-text duplicates of each other."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from helpers.climbmix import WEIGHTS, make_climblab, make_config, make_search
from mixture.climbmix.holdout import document_hashes, hold_out
from mixture.pipeline import run_stage
from mixture.publish.reader import ClimbMix
from mixture.publish.streaming import ClimbMixStream

pytestmark = pytest.mark.filterwarnings("ignore:Transformer Engine and Apex are not installed")

FORMATS = ["parquet", "tokens", "megatron", "nanogpt"]
SEQ = 16


# ---------------------------------------------------------------------------- the rules
def test_hold_out_takes_whole_distinct_documents_up_to_the_target_and_half_the_cluster():
    lengths = np.array([10, 20, 30, 40, 50, 60, 70, 80])
    hashes = np.arange(8, dtype=np.uint64)
    none = np.zeros(0, dtype=np.uint64)
    for target in (1, 45, 100):
        got = hold_out(lengths, hashes, target, np.random.default_rng(0), none)
        assert len(got) >= 1 and np.all(np.diff(got) > 0)
        total = int(lengths[got].sum())
        assert target <= total < target + lengths.max()  # whole documents, less than one over
    assert len(hold_out(lengths, hashes, 10_000, np.random.default_rng(0), none)) == 4  # at most half of 8
    assert len(hold_out(lengths, hashes, 0, np.random.default_rng(0), none)) == 0
    assert len(hold_out(lengths[:1], hashes[:1], 5, np.random.default_rng(0), none)) == 0  # a lone document stays
    a = hold_out(lengths, hashes, 100, np.random.default_rng(1), none)
    assert np.array_equal(a, hold_out(lengths, hashes, 100, np.random.default_rng(1), none))  # seeded


def test_hold_out_skips_hashes_held_already_and_repeats_of_one_text():
    lengths = np.full(6, 10)
    hashes = np.array([7, 7, 7, 8, 9, 9], dtype=np.uint64)  # three distinct texts
    got = hold_out(lengths, hashes, 10_000, np.random.default_rng(0), np.zeros(0, dtype=np.uint64))
    assert len(set(hashes[got].tolist())) == len(got) == 3  # one document per text (6 // 2 = 3)
    taken = np.array([7, 9], dtype=np.uint64)
    assert hashes[hold_out(lengths, hashes, 10_000, np.random.default_rng(0), taken)].tolist() == [8]


def test_document_hashes_tell_texts_apart_by_their_bytes():
    data = b"abcabcxyz"
    got = document_hashes(data, [0, 3, 6, 9])
    assert got[0] == got[1] != got[2] and got.dtype == np.uint64


# ------------------------------------------------------------------- every format, one split
@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_records):
    """Every format, 40,000 tokens: the clusters are upsampled (c00 about 3x), and every
    document of c03 is in c02 too, under another id (exact-text duplicates)."""
    root = tmp_path_factory.mktemp("holdout") / "out"
    lab = make_climblab(root, sample_records, copies=("c03", "c02"))
    make_search(root, lab, WEIGHTS)
    return run_stage(make_config(root, formats=FORMATS, tokens=40_000, val_fraction=0.02), "build").dataset


def digest(doc) -> str:
    return hashlib.sha256(doc.encode() if isinstance(doc, str) else np.asarray(doc).tobytes()).hexdigest()


def split_at_eos(flat: np.ndarray, eos: int) -> list[np.ndarray]:
    return [np.array(d) for d in np.split(flat, np.flatnonzero(flat == eos) + 1)[:-1]]


def megatron_docs(built, blend: str) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, _ = get_blend_from_list(open(built.path(blend)).read().split())
    out = []
    for prefix in prefixes:
        ds = IndexedDataset(built.path(prefix))
        out += [np.array(ds[i]) for i in range(len(ds))]
    return out


def test_no_validation_document_nor_a_copy_is_in_any_training_file(built):
    mix, extra = ClimbMix(built.uri), built.manifest.extra
    clusters, eos = extra["clusters"], extra["eos_id"]
    assert max(v["epochs"] for v in clusters.values()) > 2  # upsampled: documents repeat in training
    assert extra["validation"]["copies_excluded"] >= 1  # a held-out text had a copy in another cluster
    val_texts = mix.read_table(split="validation").to_pylist()
    val_tokens = list(mix.iter_tokens(split="validation"))
    assert len(val_texts) == len(val_tokens) == built.manifest.counts["validation_documents"] >= 4
    held_text = {digest(r["text"]) for r in val_texts}
    held_tokens = {digest(d) for d in val_tokens}
    assert len(held_text) == len(val_texts)  # distinct texts
    train = mix.read_table().to_pylist()
    assert not held_text & {digest(r["text"]) for r in train}  # parquet, by text
    assert not {r["id"] for r in val_texts} & {r["id"].removesuffix("-copy") for r in train}
    meta = json.load(open(built.path("nanogpt/meta.json")))
    nanogpt = np.memmap(built.path("nanogpt/train.bin"), dtype=meta["dtype"], mode="r")
    for name, docs in (
        ("tokens", list(mix.iter_tokens())),
        ("megatron training blend", megatron_docs(built, "megatron/blend.txt")),
        ("nanoGPT train.bin", split_at_eos(nanogpt, eos)),
    ):
        assert len(docs) == len(train), name
        assert not held_tokens & {digest(d) for d in docs}, name
    # and each format's validation files hold exactly the held-out documents
    assert [digest(d) for d in megatron_docs(built, "validation/megatron/blend.txt")] == [digest(d) for d in val_tokens]
    val_bin = np.memmap(built.path("nanogpt/val.bin"), dtype=meta["dtype"], mode="r")
    assert [digest(d) for d in split_at_eos(val_bin, eos)] == [digest(d) for d in val_tokens]


def windows(stream) -> list[np.ndarray]:
    return [np.concatenate([x.numpy(), y.numpy()[-1:]]) for x, y in stream]


def test_the_streams_validation_view_reads_the_held_out_documents_only(built):
    val_docs = list(ClimbMix(built.uri).iter_tokens(split="validation"))
    flat = np.concatenate(val_docs)
    got = windows(ClimbMixStream(built.uri, SEQ, split="validation"))
    stitched = np.concatenate([got[0]] + [w[1:] for w in got[1:]])
    assert len(flat) - SEQ < len(stitched) <= len(flat) and np.array_equal(stitched, flat[: len(stitched)])
    train = ClimbMixStream(built.uri, SEQ)  # the training view: the training shards only
    assert train.shards == [p + ".bin" for p in ClimbMix(built.uri).token_shards] and len(train) > len(got)


def test_a_build_without_a_validation_share_writes_no_split(tmp_path, sample_records):
    root = tmp_path / "out"
    make_search(root, make_climblab(root, sample_records), WEIGHTS)
    ds = run_stage(make_config(root, formats=FORMATS, val_fraction=0.0), "build").dataset
    assert not ds.files("validation/") and ds.manifest.counts["validation_documents"] == 0
    assert open(ds.path("nanogpt/val.bin"), "rb").read() == b""
    assert "split: validation" not in open(ds.path("README.md")).read()
