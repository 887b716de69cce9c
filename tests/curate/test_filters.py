"""Every heuristic filter rule with hand-written documents on both sides of its threshold."""

from __future__ import annotations

import pytest
from mixture.config import FiltersConfig
from mixture.curate.filters import FilterChain, TextStats
from mixture.curate.filters.c4 import C4Config
from mixture.curate.filters.c4 import check as c4
from mixture.curate.filters.fineweb import FineWebConfig
from mixture.curate.filters.fineweb import check as fineweb
from mixture.curate.filters.gopher_quality import GopherQualityConfig
from mixture.curate.filters.gopher_quality import check as gopher_quality
from mixture.curate.filters.gopher_repetition import GopherRepetitionConfig
from mixture.curate.filters.gopher_repetition import check as gopher_repetition

# Twelve distinct prose sentences (about 130 words): passes every filter with the defaults.
PROSE = [
    "The river carried the small boat past the old mill and toward the quiet harbour.",
    "Farmers in the northern valley have planted barley with great care for many generations.",
    "A careful reader will notice that the second chapter contradicts the opening pages.",
    "Engineers measured the bridge twice before they allowed any heavy trucks across it.",
    "Our neighbours keep bees, and their honey tastes faintly of lavender and thyme.",
    "During the winter storm the lighthouse keeper wrote letters to his distant sister.",
    "Most museums close on Mondays so that the staff can repair and clean the exhibits.",
    "She learned to play the violin from an elderly teacher who lived above the bakery.",
    "Scientists believe that the comet will return to our part of the sky next century.",
    "The committee postponed its decision because several members were travelling abroad.",
    "Children gathered around the fountain to watch the pigeons bathe in the cold water.",
    "Every spring the town repaints the fences along the road that leads to the station.",
]
GOOD = "\n".join(PROSE)
WORDS = GOOD.split()


def words_text(words: list[str], per_line: int = 10) -> str:
    return "\n".join(" ".join(words[i : i + per_line]) + "." for i in range(0, len(words), per_line))


def test_good_document_passes_everything():
    chain = FilterChain(FiltersConfig())
    verdict = chain(GOOD)
    assert verdict.reason is None and verdict.failed == {}
    assert verdict.n_words == len(WORDS)
    assert set(verdict.signals) == set(chain.signal_names)
    assert all(isinstance(v, float) for v in verdict.signals.values())


# ------------------------------------------------------------------------ Gopher quality
GQ = GopherQualityConfig()


def test_word_count_bounds():
    assert gopher_quality(" ".join(WORDS[:49]), GQ) == "min_words"
    assert gopher_quality(" ".join(WORDS[:50]), GQ) is None
    small = GopherQualityConfig(min_words=5, max_words=60)
    assert gopher_quality(" ".join(WORDS[:60]), small) is None
    assert gopher_quality(" ".join(WORDS[:61]), small) == "max_words"


@pytest.mark.parametrize(
    "length,rule", [(2, "min_mean_word_length"), (3, None), (10, None), (11, "max_mean_word_length")]
)
def test_mean_word_length(length, rule):
    # 57 words of `length` letters plus "the and the" (3 letters each, stop words).
    words = ["x" * length] * 57 + ["the", "and", "the"]
    text = " ".join(words)
    assert gopher_quality(text, GQ) == rule


@pytest.mark.parametrize("hashes,rule", [(10, None), (11, "symbol_word_ratio")])
def test_hash_symbol_ratio(hashes, rule):
    words = WORDS[:100]
    text = " ".join("#" + w if i < hashes else w for i, w in enumerate(words))
    assert TextStats(text).n_words == 100
    assert gopher_quality(text, GQ) == rule


@pytest.mark.parametrize("ellipses,rule", [(10, None), (11, "symbol_word_ratio")])
def test_ellipsis_symbol_ratio(ellipses, rule):
    words = WORDS[:100]
    text = " ".join(w + "\u2026" if i < ellipses else w for i, w in enumerate(words))
    relaxed = GopherQualityConfig(max_ellipsis_lines_ratio=1.0)
    assert gopher_quality(text, relaxed) == rule


@pytest.mark.parametrize("bullets,rule", [(9, None), (10, "bullet_lines")])
def test_bullet_lines(bullets, rule):
    lines = [("- " if i < bullets else "") + " ".join(WORDS[i * 8 : (i + 1) * 8]) for i in range(10)]
    assert gopher_quality("\n".join(lines), GQ) == rule


@pytest.mark.parametrize("ellipsis_lines,rule", [(3, None), (4, "ellipsis_lines")])
def test_ellipsis_lines(ellipsis_lines, rule):
    lines = [" ".join(WORDS[i * 8 : (i + 1) * 8]) + ("..." if i < ellipsis_lines else ".") for i in range(10)]
    assert gopher_quality("\n".join(lines), GQ) == rule


@pytest.mark.parametrize("numbers,rule", [(20, None), (21, "alpha_words")])
def test_alpha_words(numbers, rule):
    words = ["1234" if i < numbers else w for i, w in enumerate(WORDS[:100])]
    assert gopher_quality(" ".join(words), GQ) == rule


@pytest.mark.parametrize("stops,rule", [(1, "stop_words"), (2, None)])
def test_stop_words(stops, rule):
    words = ["river", "valley", "barley", "chapter", "bridge", "honey", "winter", "museum", "violin", "comet"] * 6
    words[:stops] = ["The"] * stops
    assert gopher_quality(" ".join(words), GQ) == rule


# --------------------------------------------------------------------- Gopher repetition
def only(**kwargs) -> GopherRepetitionConfig:
    """A repetition config where every rule but the named ones is off (limits at 1)."""
    base = dict(
        dup_line_frac=1.0,
        dup_para_frac=1.0,
        dup_line_char_frac=1.0,
        dup_para_char_frac=1.0,
        top_ngram_char_frac={},
        dup_ngram_char_frac={},
    )
    base.update(kwargs)
    return GopherRepetitionConfig(**base)


@pytest.mark.parametrize("dups,rule", [(3, None), (4, "dup_line_frac")])
def test_dup_line_fraction(dups, rule):
    lines = PROSE[: 10 - dups] + ["Same line again."] * dups
    lines[0] = "Same line again."  # the first occurrence is not a duplicate
    text = "\n".join(lines)
    assert TextStats(text).dup_line_frac == pytest.approx(dups / 10)
    assert gopher_repetition(text, only(dup_line_frac=0.3)) == rule


@pytest.mark.parametrize("dups,rule", [(3, None), (4, "dup_para_frac")])
def test_dup_paragraph_fraction(dups, rule):
    paras = ["Repeated paragraph."] + PROSE[: 9 - dups] + ["Repeated paragraph."] * dups
    text = "\n\n".join(paras)
    assert TextStats(text).dup_para_frac == pytest.approx(dups / 10)
    assert gopher_repetition(text, only(dup_para_frac=0.3)) == rule


def _dup_char_text(dup_len: int, sep: str) -> str:
    """Unique prose plus one block of `dup_len` characters that appears twice."""
    block = ("abc " * 400)[:dup_len].strip() + "z"
    return sep.join([block] + PROSE + [block])


@pytest.mark.parametrize("dup_len,rule", [(300, None), (420, "dup_line_char_frac")])
def test_dup_line_chars(dup_len, rule):
    text = _dup_char_text(dup_len, "\n")
    frac = TextStats(text).dup_line_char_frac
    assert (frac <= 0.2) == (rule is None)
    assert gopher_repetition(text, only(dup_line_char_frac=0.2)) == rule


@pytest.mark.parametrize("dup_len,rule", [(300, None), (420, "dup_para_char_frac")])
def test_dup_paragraph_chars(dup_len, rule):
    text = _dup_char_text(dup_len, "\n\n")
    frac = TextStats(text).dup_para_char_frac
    assert (frac <= 0.2) == (rule is None)
    assert gopher_repetition(text, only(dup_para_char_frac=0.2)) == rule


@pytest.mark.parametrize("repeats,rule", [(5, None), (6, "top_2gram_char_frac")])
def test_top_bigram_share(repeats, rule):
    # "enormous blueberries" `repeats` times after distinct words: 17% vs 20.2% of the characters.
    words = WORDS[: 100 - 2 * repeats] + ["enormous", "blueberries"] * repeats
    text = " ".join(words)
    share = TextStats(text).top_ngram_char_frac(2)
    assert (share <= 0.2) == (rule is None)
    assert gopher_repetition(text, only(top_ngram_char_frac={2: 0.2})) == rule


@pytest.mark.parametrize("copy_words,rule", [(10, None), (20, "dup_5gram_char_frac")])
def test_duplicated_5gram_share(copy_words, rule):
    # The first `copy_words` words appear again at the end: their characters are duplicated.
    words = WORDS[:100] + WORDS[:copy_words]
    text = " ".join(words)
    share = TextStats(text).dup_ngram_char_frac(5)
    assert (share <= 0.15) == (rule is None)
    assert gopher_repetition(text, only(dup_ngram_char_frac={5: 0.15})) == rule


def test_repetition_defaults_pass_prose_and_reject_a_repeated_page():
    assert gopher_repetition(GOOD, GopherRepetitionConfig()) is None
    assert gopher_repetition("\n".join(PROSE[:3] * 4), GopherRepetitionConfig()) == "dup_line_frac"


# ----------------------------------------------------------------------------------- C4
def test_c4_rules():
    cfg = C4Config()
    assert c4(GOOD, cfg) is None
    assert c4(GOOD + "\nLorem ipsum dolor sit amet.", cfg) == "lorem_ipsum"
    assert c4(GOOD + "\nint main() { return 0; }", cfg) == "curly_brace"
    assert c4(GOOD + "\nint main() { return 0; }", C4Config(reject_curly_brace=False)) is None
    assert c4("One sentence here. Two sentences here.", cfg) == "min_sentences"
    assert c4("One sentence here. Two sentences here. Three without a stop", cfg) is None
    assert c4("One. Two. Three.", cfg) is None


# ------------------------------------------------------------------------------ FineWeb
FW = FineWebConfig()


@pytest.mark.parametrize("punct,rule", [(1, "punct_lines"), (2, None)])
def test_fineweb_punctuated_lines(punct, rule):
    # 10 long lines, `punct` of them end with a full stop: 0.1 < 0.12 <= 0.2.
    lines = [" ".join(WORDS[i * 10 : (i + 1) * 10]).rstrip(".,") + ("." if i < punct else "") for i in range(10)]
    assert fineweb("\n".join(lines), FW) == rule


@pytest.mark.parametrize("short,rule", [(6, None), (7, "short_lines")])
def test_fineweb_short_lines(short, rule):
    # 9 lines, `short` of them at most 30 characters: 6/9 = 0.667 <= 0.67 < 7/9.
    long_lines = PROSE[: 9 - short]
    short_lines = [f"Short line {i} ends here." for i in range(short)]
    text = "\n".join(long_lines + short_lines)
    assert fineweb(text, FineWebConfig(max_newlines_per_word=1.0)) == rule


@pytest.mark.parametrize("dup,rule", [(False, None), (True, "dup_line_chars")])
def test_fineweb_duplicate_line_chars(dup, rule):
    lines = PROSE + ([PROSE[0]] if dup else [])
    assert fineweb("\n".join(lines), FW) == rule


@pytest.mark.parametrize("per_line,rule", [(4, None), (3, "newlines_per_word")])
def test_fineweb_newlines_per_word(per_line, rule):
    # One line per `per_line` words: newlines/words = 1/4 <= 0.3 < 1/3.
    words = WORDS[:60]
    lines = [" ".join(words[i : i + per_line]) + "." for i in range(0, len(words), per_line)]
    cfg = FineWebConfig(max_short_line_ratio=1.0)
    assert fineweb("\n".join(lines), cfg) == rule


# ------------------------------------------------------------------- chain, switches, exempt
def test_chain_reports_first_failure_and_every_failure():
    text = GOOD + "\nint main() { return 0; }\n" + PROSE[0]
    verdict = FilterChain(FiltersConfig())(text)
    assert verdict.reason == "filter:c4:curly_brace"
    assert verdict.failed == {"c4": "curly_brace", "fineweb": "dup_line_chars"}


def test_disabled_filter_does_not_reject():
    text = GOOD + "\nint main() { return 0; }"
    cfg = FiltersConfig(c4=C4Config(enabled=False))
    assert FilterChain(cfg)(text).reason is None


def test_exempt_if_skips_only_that_filter():
    code = GOOD + "\ndef main() { return 0; }"
    cfg = FiltersConfig(c4=C4Config(exempt_if=r"(?m)^def "))
    verdict = FilterChain(cfg)(code)
    assert verdict.reason is None and verdict.exempt == ["c4"]
    # A document the pattern does not match is still filtered.
    assert FilterChain(cfg)(GOOD + "\nint main() { return 0; }").reason == "filter:c4:curly_brace"
    # Exempt from c4, but the other filters still apply.
    assert FilterChain(cfg)("def f() { }").reason == "filter:gopher_quality:min_words"


def test_invalid_exempt_regex_is_a_config_error():
    with pytest.raises(ValueError, match="exempt_if"):
        FiltersConfig.model_validate({"c4": {"exempt_if": "("}})


def test_unknown_filter_name_is_a_config_error_listing_the_known_ones():
    from mixture.config import ConfigError, parse_config

    base = {"output_root": "/tmp/x", "input": {"uris": ["a"]}}
    with pytest.raises(ConfigError, match="unknown filter 'gopher'; known: c4, fineweb, gopher_quality"):
        parse_config({**base, "curate": {"filters": {"gopher": {"min_words": 10}}}})
    with pytest.raises(ConfigError, match="curate.filters.c4.min_sentence: unknown key"):
        parse_config({**base, "curate": {"filters": {"c4": {"min_sentence": 2}}}})
    # the existing keys keep their meaning and defaults
    cfg = parse_config({**base, "curate": {"filters": {"gopher_quality": {"min_words": 10}}}})
    assert cfg.curate.filters.gopher_quality.min_words == 10
    assert cfg.curate.filters.gopher_quality.max_words == 100_000 and cfg.curate.filters.c4.min_sentences == 3


def test_stored_signals_replay_the_live_decision():
    # every rule reads only its stored signals: a count where the rule counts (stop words)
    chain = FilterChain(FiltersConfig())
    for text in (GOOD, " ".join(WORDS[:49]), GOOD + "\nint main() { return 0; }", "\n".join(PROSE[:3] * 4)):
        live = chain(text)
        replay = chain.decide(dict(live.stored), text)
        assert (replay.reason, replay.failed) == (live.reason, live.failed)
    stored = chain(GOOD).stored
    assert stored["stop_words"] == TextStats(GOOD).stop_word_count(frozenset(GopherQualityConfig().stop_words))
    assert stored["q_stop_words"] == stored["stop_words"] / stored["n_words"]


# ----------------------------------------------------------------- batch = one at a time
def _tricky_texts(n: int, seed: int) -> list[str]:
    """Texts that exercise every definition: Unicode whitespace (Python's, not only ASCII),
    punctuation at word ends, bullets and ellipses at line ends, blank lines with tabs or a
    no-break space, sentence ends before quotes, repeated lines, paragraphs and n-grams, ties for
    the most frequent n-gram, astral and multi-character-lowercase letters, empty texts."""
    import random

    rng = random.Random(seed)
    pieces = list("abXY ÀÉß İΣςK … ... .!? \"'”’)] [ # { } • - * · – → \t\r\f\v\x1c\xa0\u2028\u3000 0½_,;:")
    pieces += ["lorem ipsum", "\n \n", "\n\t\n", "\n\xa0\n", "....", "😀", "𝐀", "𐐀", "\n\n\n", "\n"]
    words = ["the", "of", "and", "cat", "dog", "The", "OF", "(the)", "the.", "...", "a", "sat", "—", "«and»"]
    texts = ["", " ", "\n", "a", "...", "a.", ".", "...\n\n...", "The end.\n", "İİ the THE", GOOD, GOOD + "\n" + GOOD]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 200)):
            parts.append(rng.choice(words) if rng.random() < 0.6 else rng.choice(pieces))
            parts.append(rng.choice([" ", " ", "\n", "", "\n\n", "  "]))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("stop_words", [None, ["the", "and", "ß", "über"]])
def test_batch_signals_equal_textstats_bit_for_bit(stop_words, monkeypatch):
    """`curate` computes the signals of a whole batch at once (`BatchStats`); every value must
    be the float64 that `TextStats` gives for the document alone, in small and large chunks."""
    import numpy as np
    from mixture.curate.filters import _batch, batch_signals, compute_signals, signal_functions

    filters = {"gopher_quality": {"stop_words": stop_words}} if stop_words else {}
    functions = signal_functions(FiltersConfig.model_validate(filters))
    texts = _tricky_texts(300, seed=len(filters))
    expected = [compute_signals(TextStats(t), functions) for t in texts]
    for chunk in (_batch.CHUNK_CHARS, 500):  # 500 code points: many chunks, one document alone in some
        monkeypatch.setattr(_batch, "CHUNK_CHARS", chunk)
        n_words, values = batch_signals(texts, functions)
        assert n_words.tolist() == [e["n_words"] for e in expected]
        for j, name in enumerate(functions):
            want = np.array([e[name] for e in expected])
            assert np.array_equal(values[:, j], want), (name, np.flatnonzero(values[:, j] != want)[:5])


def test_each_filter_s_signals_alone_are_the_values_of_the_whole_set():
    """The annotation computes only the enabled filters' signals (none with every filter off):
    each filter's alone, and none at all (n_words only), give the same float64 as all together."""
    import numpy as np
    from mixture.curate.filters import batch_signals, registered, signal_functions

    texts = _tricky_texts(120, seed=3)
    every = signal_functions(FiltersConfig())
    n_all, v_all = batch_signals(texts, every)
    names = list(every)
    for name, _ in [("none", None), *registered()]:
        only = FiltersConfig.model_validate({n: {"enabled": n == name} for n, _ in registered()})
        functions = signal_functions(only)
        assert (name == "none") == (not functions)
        n_words, values = batch_signals(texts, functions)
        assert n_words.tolist() == n_all.tolist() and values.shape == (len(texts), len(functions))
        for j, sig in enumerate(functions):
            assert np.array_equal(values[:, j], v_all[:, names.index(sig)]), (name, sig)


def test_a_signal_only_textstats_has_is_computed_per_document():
    from mixture.curate.filters import batch_signals

    texts = ["one two three", "four five"]
    n_words, values = batch_signals(texts, {"q_first_word": lambda s: len(s.words[0])})
    assert n_words.tolist() == [3, 2] and values[:, 0].tolist() == [3.0, 4.0]
