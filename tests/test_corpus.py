"""Pieces of the sample-corpus builder that need no Debian packages."""

import random

from mixture.corpus import chunk, html_to_text, paragraphs, roff_to_text


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
