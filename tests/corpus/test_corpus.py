"""Pieces of the sample-corpus builder that need no Debian packages."""

import random

from mixture.corpus.sample import chunk, html_to_text, paragraphs, read_jsonl_gz, roff_to_text, write_scale


def test_roff_to_text_drops_requests_and_font_escapes():
    src = ".TH LS 1\n.SH NAME\nls \\- list directory contents\n.PP\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR\ndo not ignore\n"
    text = roff_to_text(src)
    assert "NAME" in text and "ls - list directory contents" in text and "-a, --all" in text
    assert ".TH" not in text and "\\f" not in text


def test_html_to_text():
    assert "a & b" in html_to_text("<html><head><title>x</title></head><p>a &amp; b</p></html>")


def test_chunks_stay_within_word_limits():
    paras = [" ".join(["word"] * n) for n in [50, 120, 80, 400, 30, 6000, 90, 300, 10]]
    docs = list(chunk(paras, random.Random(0), min_words=200, max_words=5000))
    assert docs
    for d in docs:
        assert 200 <= len(d.split()) <= 5000
    assert all("word " * 5999 not in d for d in docs)  # a paragraph over the limit is left out
    assert paragraphs("a\n\n\nb\n \nc") == ["a", "b", "c"]


def test_chunk_target_words_cuts_shorter_documents():
    paras = [" ".join(f"w{i}-{j}" for j in range(30)) for i in range(400)]
    docs = list(chunk(paras, random.Random(0), min_words=150, max_words=500, target_words=(150, 400)))
    lengths = [len(d.split()) for d in docs]
    assert len(docs) > 25
    assert all(150 <= n <= 430 for n in lengths)  # a target plus at most one paragraph


def test_write_scale_nests_corpora_of_one_pool_with_copies(tmp_path):
    pool = [
        {"id": f"s{i % 3}-{i:07d}", "text": " ".join(f"t{i}w{j}" for j in range(200)), "source": f"s{i % 3}"}
        for i in range(300)
    ]
    small = write_scale(tmp_path / "small", iter(pool), 100, dup_frac=0.03, docs_per_file=40)
    big = write_scale(tmp_path / "big", iter(pool), 250, dup_frac=0.03, docs_per_file=40)
    assert small["documents"] == 100 and small["copies"] == 3 and big["documents"] == 250
    recs = list(read_jsonl_gz(sorted((tmp_path / "small").glob("part-*.jsonl.gz"))))
    assert len(recs) == 100 and len(list((tmp_path / "small").glob("part-*"))) == 3
    originals = {r["id"] for r in recs if not r["id"].endswith("-copy")}
    assert originals == {p["id"] for p in pool[:97]}  # the pool's first documents
    assert all(r["id"].removesuffix("-copy") in originals for r in recs)
    big_ids = {r["id"] for r in read_jsonl_gz(sorted((tmp_path / "big").glob("part-*.jsonl.gz")))}
    assert originals <= big_ids  # nested
