"""The one configuration: validated at load, one clear error naming the key."""

import pytest
import yaml
from mixture.config import ConfigError, load_config, parse_config

BASE = {"output_root": "/tmp/out", "input": {"uris": ["/data/in.jsonl"]}}


def _cfg(**sections):
    data = {**BASE, **sections}
    return parse_config(data)


def test_defaults_follow_the_paper():
    cfg = _cfg()
    assert cfg.cluster.k_init == 1000
    assert cfg.cluster.quality.min_cluster_quality == 3.0
    assert cfg.cluster.merge_distance == 1.5 and cfg.cluster.target_clusters == 20
    assert cfg.search.iterations == [64, 32, 16]
    assert cfg.search.temperature == 0.5 and cfg.search.concentration == (0.1, 5.0)
    assert cfg.search.epoch_cap == 15 and cfg.search.weight_floor == 2e-4
    assert cfg.search.candidates == 100_000
    p = cfg.search.predictor
    assert (p.max_depth, p.learning_rate, p.n_estimators, p.early_stopping_rounds) == (4, 0.01, 1000, 20)
    assert (p.reg_alpha, p.reg_lambda, p.min_child_samples) == (1.0, 1.0, 5)
    assert cfg.curate.fuzzy_dedup.threshold == 0.8 and cfg.curate.fuzzy_dedup.ngram == 5


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"curate": {"spark_mastr": "local[2]"}}, "curate.spark_mastr"),  # unknown key
        ({"embed": {"batch_size": "big"}}, "embed.batch_size"),  # wrong type
        ({"search": {"iterations": [8, -1]}}, "search.iterations"),  # negative budget
        ({"build": {"tokens": 0}}, "build.tokens"),  # empty budget
        ({"search": {"concentration": [5.0, 0.1]}}, "search.concentration"),  # impossible range
        ({"search": {"weight_floor": 1.5}}, "search.weight_floor"),  # weights can't sum to 1
        ({"curate": {"fuzzy_dedup": {"threshold": 1.2}}}, "curate.fuzzy_dedup.threshold"),
        (
            {"curate": {"filters": {"gopher_quality": {"min_words": 500, "max_words": 100}}}},
            "curate.filters.gopher_quality",
        ),
    ],
)
def test_bad_values_name_the_key(sections, key):
    with pytest.raises(ConfigError) as err:
        _cfg(**sections)
    assert key in str(err.value) and "\n" not in str(err.value)  # one line


def test_missing_required_keys_are_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"input": {"uris": ["x"]}})
    assert "output_root" in str(err.value)


def test_values_inside_limits_are_accepted():
    cfg = _cfg(search={"iterations": [1], "weight_floor": 0.0, "concentration": [1.0, 1.0]}, build={"tokens": 1})
    assert cfg.search.iterations == [1] and cfg.build.tokens == 1


def test_load_yaml_resolves_relative_paths_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"output_root": "out", "input": {"uris": ["data/a.jsonl", "s3://b/k"]}}))
    cfg = load_config(f, {"search.iterations": [4, 2]})
    assert cfg.output_root == str(tmp_path / "out")
    assert cfg.input.uris == [str(tmp_path / "data/a.jsonl"), "s3://b/k"]
    assert cfg.input.configured_uris == ["data/a.jsonl", "s3://b/k"]  # as written: what manifests record
    assert cfg.search.iterations == [4, 2]


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_root: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_section_hash_changes_only_with_its_section():
    a, b = _cfg(), _cfg(build={"tokens": 123})
    assert a.section_hash("curate") == b.section_hash("curate")
    assert a.section_hash("build") != b.section_hash("build")


def test_demo_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    assert len(cfg.search.iterations) == 3


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"input": {"uris": ["/ok.jsonl", "s3://USER:SECRET@bucket/x"]}}, "input.uris.1"),
        ({"output_root": "s3://USER:SECRET@bucket/out"}, "output_root"),
        ({"search": {"target": {"val_uris": ["https://USER:SECRET@host/val.jsonl"]}}}, "search.target.val_uris.0"),
        ({"publish": {"uri": "s3://USER:SECRET@bucket/p"}}, "publish.uri"),
        ({"tracking": {"uri": "http://USER:SECRET@mlflow:5000"}}, "tracking.uri"),
        ({"build": {"mixture": "s3://USER:SECRET@bucket/m.json"}}, "build.mixture"),
    ],
)
def test_credentials_in_any_uri_are_refused_without_echoing_them(sections, key):
    with pytest.raises(ConfigError) as err:
        _cfg(**sections)
    msg = str(err.value)
    assert f"{key}: " in msg and "must not contain credentials" in msg and "AWS environment" in msg
    assert "SECRET" not in msg and "USER" not in msg


def test_uris_without_user_info_are_kept():
    cfg = _cfg(input={"uris": ["s3://bucket/a@b.jsonl", "/data/x@y"]}, tracking={"uri": "http://mlflow:5000"})
    assert cfg.input.uris == ["s3://bucket/a@b.jsonl", "/data/x@y"]


def test_malformed_yaml_is_one_line_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_root: out\ninput:\n  uris: [a.jsonl\ncurate: {partitions: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "\n" not in str(err.value) and "not valid YAML" in str(err.value) and "line 4" in str(err.value)
