"""Target metrics: bits per byte on validation text, lm-eval-style multiple choice, the score."""

import gzip
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mixture.climblab.tokens import eos_id, train_tokenizer
from mixture.config import TargetConfig
from mixture.search import evaluate as E

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Package managers install software and resolve dependencies. " * 5,
    "A dictionary defines words; a thesaurus lists their synonyms. " * 5,
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 3, 300)


class UniformLM(torch.nn.Module):
    """A model with a known answer: every next token has probability 1/V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return SimpleNamespace(logits=torch.zeros(ids.shape[0], ids.shape[1], self.vocab))


class CopyLM(torch.nn.Module):
    """Puts almost all mass on repeating the current token: a known, non-uniform answer."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(ids, self.vocab).float() * 20.0)


def _write(path, records):
    with gzip.open(path, "wt") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_acc_and_acc_norm_on_hand_made_items():
    # item 1: gold has the highest summed log-likelihood -> acc and acc_norm both right
    # item 2: the long wrong choice has the higher sum but the lower per-byte score
    loglik = [[-2.0, -5.0], [-12.0, -10.0]]
    choices = [["yes", "no"], ["a cat sat on the mat", "dog"]]
    gold = [0, 0]
    s = E.mc_scores(loglik, choices, gold)
    assert s["acc"] == 0.5  # item 2 is wrong by the raw sum
    assert s["acc_norm"] == 1.0  # -12/20 bytes beats -10/3 bytes
    expected = (-2.0 - np.logaddexp(-2.0, -5.0) + -12.0 - np.logaddexp(-12.0, -10.0)) / 2
    assert s["logprob"] == pytest.approx(expected)


def test_context_whitespace_moves_to_the_continuation(tok):
    ctx, cont = E.encode_pair(tok, "The quick brown ", "fox")
    assert tok.decode(ctx) == "The quick brown"
    assert tok.decode(cont) == " fox"


def test_bits_per_byte_of_a_uniform_model_is_exact(tok, tmp_path):
    uri = _write(tmp_path / "val.jsonl.gz", [{"text": t} for t in TEXTS])
    target = E.load_target(TargetConfig(val_uris=[uri]), tok, eos_id(tok))
    V = tok.get_vocab_size()
    out = E.evaluate(UniformLM(V), target, seq_len=16, batch_size=3)
    n_tokens = sum(len(tok.encode(t).ids) for t in TEXTS)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert out["metrics"]["val.tokens"] == n_tokens  # every token scored exactly once
    assert out["metrics"]["val.loss"] == pytest.approx(math.log(V))
    assert out["metrics"]["val.bpb"] == pytest.approx(n_tokens * math.log2(V) / n_bytes)
    assert out["score"] == pytest.approx(-out["metrics"]["val.bpb"])  # higher is better


def test_windows_cover_long_documents_once_each(tok):
    ids = [np.arange(1, 51), np.arange(1, 8)]
    rows = E.val_windows(ids, seq_len=16)
    assert sum(n for _, n in rows) == 49 + 6
    assert all(len(w) <= 17 for w, _ in rows)


def test_tasks_and_weights_combine_into_one_score(tok, tmp_path):
    val = _write(tmp_path / "val.jsonl.gz", [{"text": TEXTS[0]}])
    items = [
        {"context": "the the the", "choices": ["the", "fox jumps"], "gold": 0},
        {"context": "dog dog", "choices": ["dog", "lazy"], "gold": 0},
        {"context": "jumps over", "choices": ["the", "over"], "gold": 1},
    ]
    task = _write(tmp_path / "repeat.jsonl.gz", items)
    tcfg = TargetConfig(val_uris=[val], tasks=[task], task_metric="acc", weights={"val": 1.0, "repeat": 3.0})
    target = E.load_target(tcfg, tok, eos_id(tok))
    out = E.evaluate(CopyLM(tok.get_vocab_size()), target, seq_len=32)
    assert out["metrics"]["repeat.acc"] == 1.0  # the copying model picks the repeated word
    assert out["components"] == {"val": -out["metrics"]["val.bpb"], "repeat": 1.0}
    assert out["score"] == pytest.approx((-out["metrics"]["val.bpb"] + 3.0) / 4.0)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"context": "x", "choices": ["a"], "gold": 0}, "at least two"),
        ({"context": "x", "choices": ["a", "b"], "gold": 2}, "'gold' must be an index"),
        ({"choices": ["a", "b"], "gold": 0}, "string 'context'"),
    ],
)
def test_bad_task_items_are_named(tok, tmp_path, record, message):
    task = _write(tmp_path / "bad.jsonl.gz", [record])
    with pytest.raises(E.TargetError, match=message) as err:
        E.load_target(TargetConfig(tasks=[task]), tok, eos_id(tok))
    assert "bad.jsonl.gz" in str(err.value)


def test_target_configuration_errors(tok, tmp_path):
    with pytest.raises(E.TargetError, match="val_uris"):
        E.load_target(TargetConfig(), tok, eos_id(tok))
    val = _write(tmp_path / "val.jsonl.gz", [{"text": "some text"}])
    with pytest.raises(E.TargetError, match="weights names"):
        E.load_target(TargetConfig(val_uris=[val], weights={"piqa": 1.0}), tok, eos_id(tok))
    bad = _write(tmp_path / "nofield.jsonl.gz", [{"body": "no text field"}])
    with pytest.raises(E.TargetError, match="no string 'text'"):
        E.load_target(TargetConfig(val_uris=[bad]), tok, eos_id(tok))


def test_validation_token_cap_keeps_whole_documents(tok, tmp_path):
    val = _write(tmp_path / "val.jsonl.gz", [{"text": t} for t in TEXTS])
    first = len(tok.encode(TEXTS[0]).ids)
    target = E.load_target(TargetConfig(val_uris=[val], val_tokens=first + 1, sampling="first"), tok, eos_id(tok))
    assert len(target.val_ids) == 1 and target.val_bytes == len(TEXTS[0].encode())


def test_spread_sampling_covers_a_target_sorted_by_topic(tok, tmp_path):
    """A target file sorted by topic: the first documents are all one topic; spread windows come
    from the whole file, seeded, within the token budget."""
    docs = [{"text": f"alpha topic document {i} " + "the quick brown fox " * 20} for i in range(30)]
    docs += [{"text": f"omega topic document {i} " + "jumps over the lazy dog " * 20} for i in range(30)]
    val = _write(tmp_path / "sorted.jsonl.gz", docs)
    first = E.load_target(TargetConfig(val_uris=[val], val_docs=6, val_tokens=600, sampling="first"), tok, eos_id(tok))
    assert all("alpha" in tok.decode(ids[1:].tolist()) for ids in first.val_ids)  # the bias this fixes
    spread = E.load_target(TargetConfig(val_uris=[val], val_docs=6, val_tokens=600), tok, eos_id(tok), seed=3)
    picked = spread.val_info["document_indices"]
    assert len(picked) == 6 and sum(i < 30 for i in picked) == 3 and sum(i >= 30 for i in picked) == 3
    assert spread.val_info["tokens"] <= 600 and spread.val_info["of_documents"] == 60
    assert sum(len(ids) - 1 for ids in spread.val_ids) == spread.val_info["tokens"]
    again = E.load_target(TargetConfig(val_uris=[val], val_docs=6, val_tokens=600), tok, eos_id(tok), seed=3)
    assert [a.tolist() for a in again.val_ids] == [b.tolist() for b in spread.val_ids]  # seeded
    other = E.load_target(TargetConfig(val_uris=[val], val_docs=6, val_tokens=600), tok, eos_id(tok), seed=4)
    assert other.val_info["document_indices"] != picked


def _numbers(tok, target) -> set[int]:
    return {int(tok.decode(ids[1:].tolist()).split()[1]) for ids in target.val_ids}


def test_the_report_part_is_split_by_document_and_poisoning_it_changes_nothing_selected(tok, tmp_path):
    docs = [{"id": f"d{i}", "text": f"document {i} " + TEXTS[i % 3]} for i in range(40)]
    items = [{"id": f"q{i}", "context": f"question {i}", "choices": ["the", "fox"], "gold": i % 2} for i in range(30)]
    val, task = _write(tmp_path / "val.jsonl.gz", docs), _write(tmp_path / "quiz.jsonl.gz", items)
    kw = dict(val_uris=[val], tasks=[task], val_docs=40, val_tokens=10**6, sampling="first")
    eos = eos_id(tok)
    whole = E.load_target(TargetConfig(**kw), tok, eos)
    for part in E.PARTS:  # share 0: no split, both parts are the whole target as before
        t = E.load_target(TargetConfig(**kw), tok, eos, part=part)
        assert [a.tolist() for a in t.val_ids] == [a.tolist() for a in whole.val_ids] and "split" not in t.val_info
    split = TargetConfig(**kw, report_share=0.3)
    sel, rep = (E.load_target(split, tok, eos, part=p) for p in E.PARTS)
    assert _numbers(tok, sel).isdisjoint(_numbers(tok, rep)) and _numbers(tok, sel) | _numbers(tok, rep) == set(
        range(40)
    )
    assert 4 <= len(rep.val_ids) <= 20 and sel.val_info["split"] == {
        "part": "select",
        "report_share": 0.3,
        "of_all_documents": 40,
    }
    assert len(sel.tasks["quiz"]) + len(rep.tasks["quiz"]) == 30 and 0 < len(rep.tasks["quiz"]) < 15

    # poison every report document and item: the select part reads exactly the same
    reported = {f"d{n}" for n in _numbers(tok, rep)}
    poisoned_docs = [{**d, "text": "zzq qqz " * 30} if d["id"] in reported else d for d in docs]
    rep_items = {it.context for it in rep.tasks["quiz"]}
    poisoned_items = [{**it, "choices": ["zzq", "qqz"]} if it["context"] in rep_items else it for it in items]
    (tmp_path / "poisoned").mkdir()
    bad = TargetConfig(
        **{
            **kw,
            "val_uris": [_write(tmp_path / "poisoned" / "val.jsonl.gz", poisoned_docs)],
            "tasks": [_write(tmp_path / "poisoned" / "quiz.jsonl.gz", poisoned_items)],
        },
        report_share=0.3,
    )
    sel2, rep2 = (E.load_target(bad, tok, eos, part=p) for p in E.PARTS)
    assert [a.tolist() for a in sel2.val_ids] == [a.tolist() for a in sel.val_ids] and sel2.val_bytes == sel.val_bytes
    assert sel2.task_ids == sel.task_ids
    model = CopyLM(tok.get_vocab_size())
    assert E.evaluate(model, sel2, seq_len=32) == E.evaluate(model, sel, seq_len=32)
    assert E.evaluate(model, rep2, seq_len=32) != E.evaluate(model, rep, seq_len=32)


def test_a_report_share_that_empties_a_part_is_one_clear_error(tok, tmp_path):
    val = _write(tmp_path / "val.jsonl.gz", [{"text": t} for t in TEXTS])
    with pytest.raises(E.TargetError, match="leaves no validation document of 3 in the report part"):
        E.load_target(TargetConfig(val_uris=[val], report_share=1e-9), tok, eos_id(tok), part="report")
    with pytest.raises(E.TargetError, match="unknown target part"):
        E.load_target(TargetConfig(val_uris=[val], report_share=0.5), tok, eos_id(tok), part="holdout")
