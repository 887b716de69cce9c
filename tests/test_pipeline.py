"""What makes a stage run again: its config sections, its inputs, the files its config names."""

from mixture import pipeline
from mixture.config import parse_config


def _cfg(tmp_path, **extra):
    return parse_config({"output_root": str(tmp_path / "out"), "input": {"uris": [str(tmp_path / "in")]}, **extra})


def test_hash_follows_own_sections_only(tmp_path):
    (tmp_path / "in").mkdir()
    a, b = _cfg(tmp_path), _cfg(tmp_path, build={"tokens": 5})
    h = lambda c, n: pipeline.config_hash(c, pipeline.stage(n))  # noqa: E731
    assert h(a, "curated") == h(b, "curated") and h(a, "search") == h(b, "search")
    assert h(a, "climbmix") != h(b, "climbmix")
    # where MLflow records runs does not change what the search computes
    assert h(a, "search") == h(_cfg(tmp_path, tracking={"uri": "http://mlflow:5000"}), "search")


def test_new_input_files_make_curation_run_again(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "x"}\n')
    cfg = _cfg(tmp_path)
    before = pipeline.config_hash(cfg, pipeline.stage("annotated"))
    (tmp_path / "in" / "b.jsonl").write_text('{"text": "y"}\n')
    assert pipeline.config_hash(cfg, pipeline.stage("annotated")) != before


def test_a_new_dump_named_by_its_own_uri_keeps_the_settings_of_a_refresh(tmp_path):
    """Naming one more input URI makes curation run (the listing changed) as a refresh of the
    committed version (the settings, what a refresh must share with it, are the same)."""
    for name in ("week1", "week2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dump.jsonl").write_text('{"text": "x"}\n')
    st = pipeline.stage("curate")
    one = parse_config({"output_root": str(tmp_path / "out"), "input": {"uris": [str(tmp_path / "week1")]}})
    two = one.model_copy(
        update={"input": one.input.model_copy(update={"uris": [str(tmp_path / n) for n in ("week1", "week2")]})}
    )
    assert pipeline.config_hash(one, st) != pipeline.config_hash(two, st)
    assert pipeline.config_hash(one, st, listing=False) == pipeline.config_hash(two, st, listing=False)
    other = one.model_copy(update={"input": one.input.model_copy(update={"text_field": "body"})})
    assert pipeline.config_hash(other, st, listing=False) != pipeline.config_hash(one, st, listing=False)


def test_editing_a_named_file_in_place_changes_the_hash(tmp_path):
    (tmp_path / "in").mkdir()
    target = tmp_path / "target.jsonl"
    target.write_text('{"text": "a"}\n')
    mix = tmp_path / "mix.json"
    mix.write_text('{"weights": {"c00": 1.0}}')
    cfg = _cfg(tmp_path, search={"target": {"val_uris": [str(target)]}}, build={"mixture": str(mix)})
    s0 = pipeline.config_hash(cfg, pipeline.stage("search"))
    b0 = pipeline.config_hash(cfg, pipeline.stage("climbmix"))
    target.write_text('{"text": "b"}\n')
    mix.write_text('{"weights": {"c00": 0.5, "c01": 0.5}}')
    assert pipeline.config_hash(cfg, pipeline.stage("search")) != s0
    assert pipeline.config_hash(cfg, pipeline.stage("climbmix")) != b0


def test_where_it_runs_does_not_change_the_hash(tmp_path):
    (tmp_path / "in").mkdir()
    a = _cfg(tmp_path)
    b = _cfg(
        tmp_path,
        curate={"spark_master": "spark://spark-master:7077", "partitions": 64},
        search={"workers": 8, "proxy": {"threads": 4}},
    )
    c = _cfg(tmp_path, curate={"exact_dedup": False})
    h = lambda cfg, n: pipeline.config_hash(cfg, pipeline.stage(n))  # noqa: E731
    assert h(a, "curated") == h(b, "curated") and h(a, "search") == h(b, "search")
    assert h(a, "annotated") == h(b, "annotated")
    assert h(a, "curated") != h(c, "curated")


def test_each_config_logs_to_its_own_store(tmp_path, monkeypatch):
    from mixture import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = _cfg(tmp_path / "a"), _cfg(tmp_path / "b")
    tracking.setup(a)
    assert tracking.tracking_uri(b) == f"sqlite:///{tmp_path / 'b' / 'out' / 'mlflow.db'}"


def test_a_threshold_changes_only_the_selection_and_a_signal_parameter_the_annotation(tmp_path):
    (tmp_path / "in").mkdir()
    h = lambda cfg, n: pipeline.config_hash(cfg, pipeline.stage(n))  # noqa: E731
    base = _cfg(tmp_path)
    for curate in (
        {"filters": {"gopher_quality": {"min_words": 60}}},  # a threshold
        {"filters": {"fineweb": {"exempt_if": "^def "}}},  # an exemption
        {"fuzzy_dedup": {"enabled": False}},
        {"keep_rejected": False},
        {"signals": "all"},  # every filter is on: the same signals
    ):
        changed = _cfg(tmp_path, curate=curate)
        assert h(changed, "annotated") == h(base, "annotated"), curate
        assert h(changed, "curated") != h(base, "curated") or curate == {"signals": "all"}, curate
    for curate in (
        {"filters": {"gopher_quality": {"stop_words": ["the", "a"]}}},  # what a signal measures
        {"filters": {"gopher_repetition": {"top_ngram_char_frac": {2: 0.2}}}},
        {"filters": {"c4": {"enabled": False}}},  # which signals are stored
        {"fuzzy_dedup": {"threshold": 0.7}},
        {"max_doc_bytes": 10_000},
    ):
        assert h(_cfg(tmp_path, curate=curate), "annotated") != h(base, "annotated"), curate
    assert pipeline.stage("select").inputs == ("annotated",)


def test_a_switch_changes_which_signals_are_stored_unless_every_filter_s_are(tmp_path):
    """`curate.signals: enabled` (default): a filter switched on or off annotates again, with its
    signals or without; `all`: every filter's are stored, so a switch reruns only `select`."""
    from mixture.curate.filters import signal_params, stored_signal_names

    (tmp_path / "in").mkdir()
    h = lambda cfg, n: pipeline.config_hash(cfg, pipeline.stage(n))  # noqa: E731
    off = {name: {"enabled": False} for name in ("gopher_quality", "gopher_repetition", "c4", "fineweb")}
    c4_on = {**off, "c4": {"enabled": True, "min_sentences": 5}}
    none, c4 = _cfg(tmp_path, curate={"filters": off}), _cfg(tmp_path, curate={"filters": c4_on})
    assert stored_signal_names(none.curate.filters) == []
    assert stored_signal_names(c4.curate.filters) == ["has_lorem_ipsum", "has_curly_brace", "q_sentences"]
    assert h(none, "annotated") != h(c4, "annotated") != h(_cfg(tmp_path), "annotated")
    c4_strict = _cfg(tmp_path, curate={"filters": {**c4_on, "c4": {"min_sentences": 9}}})
    assert h(c4_strict, "annotated") == h(c4, "annotated") and h(c4_strict, "curated") != h(c4, "curated")
    every = [_cfg(tmp_path, curate={"filters": f, "signals": "all"}) for f in (off, c4_on, {})]
    assert len({h(cfg, "annotated") for cfg in every}) == 1
    assert len({h(cfg, "curated") for cfg in every}) == 3
    all_on = stored_signal_names(_cfg(tmp_path).curate.filters)
    assert stored_signal_names(every[0].curate.filters, every=True) == all_on
    for cfg in [none, c4, *every]:  # the stage's hash and the filters' own account agree
        assert cfg.curate.annotation["signals"] == signal_params(cfg.curate.filters, cfg.curate.every_signal)


def test_a_stage_run_alone_asks_only_for_the_config_it_reads(tmp_path, capsys):
    """`climb search` / `climb build` never read input.uris; `climb curate` needs it."""
    from mixture import cli
    from mixture.config import parse_config

    cfg = parse_config({"output_root": str(tmp_path)})  # no input section at all
    assert cfg.input.uris == []
    path = tmp_path / "c.yaml"
    path.write_text(f"output_root: {tmp_path}\n")
    assert cli.main(["curate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["climb: input.uris: required by the curate stage (climb curate) and not set"]
    assert cli.main(["search", "--config", str(path)]) == 2  # its input is missing, not its config
    err = capsys.readouterr().err
    assert "input.uris" not in err and "climblab" in err
