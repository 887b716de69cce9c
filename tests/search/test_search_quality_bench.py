"""The search benchmark's bookkeeping (`bench/search_quality.py`): a search's cache folder keeps
the name of the proxy settings it was searched with when the search's defaults change, and the
transfer runs judge every method by the one yardstick the recorded tables used."""

import importlib.util
import sys
from pathlib import Path

import pytest
from mixture.config import ProxyConfig, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[2]
WSD_SPREAD = ["search.proxy.schedule=wsd", "search.proxy.data_order=spread"]
COSINE_CLUSTER = ["search.proxy.schedule=cosine", "search.proxy.data_order=cluster"]


@pytest.fixture(scope="module")
def sq():
    spec = importlib.util.spec_from_file_location("search_quality", REPO / "bench" / "search_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_todays_defaults_find_the_searches_run_with_them_as_sets(sq):
    """The searches of WSD + spread, run with `--set` before they became the defaults, sit in
    folders ending 337f5a4aee: a run without `--set` reads them back instead of training again."""
    assert ProxyConfig().schedule == "wsd" and ProxyConfig().data_order == "spread"
    assert sq.folder_key([]) == sq.folder_key(WSD_SPREAD) == "337f5a4aee"


def test_the_earlier_defaults_keep_their_folders(sq):
    """A search with the earlier defaults (cosine, `cluster`) is the one first run with no
    `--set` (folders ending 4f53cda18c); asking for them now finds it, and one setting back
    names neither."""
    assert sq.folder_key(COSINE_CLUSTER) == "4f53cda18c"
    one_back = sq.folder_key(["search.proxy.schedule=cosine"])
    assert one_back not in ("4f53cda18c", "337f5a4aee")
    assert sq.folder_sets(["search.proxy.schedule=cosine"]) == ["search.proxy.data_order=spread"]


def test_other_sets_are_kept_in_the_name(sq):
    sets = ["search.iterations=[8,4]"]
    assert sq.folder_sets(sets) == WSD_SPREAD + sets
    assert sq.folder_key(sets) != sq.folder_key([])


def test_transfer_runs_keep_the_yardstick_whatever_the_search_uses(sq):
    """`--set` changes the search's proxies, never the transfer runs that judge every method."""

    def make_cfg(extra):
        return load_config(REPO / "configs" / "demo.yaml", parse_overrides(extra))

    for sets in ([], WSD_SPREAD, ["search.proxy.schedule=wsd", "search.proxy.tokens=123456"]):
        truth = sq.lab_truth(make_cfg, sets)
        assert (truth["schedule"], truth["data_order"]) == ("cosine", "cluster")
    assert sq.lab_truth(make_cfg, ["search.proxy.tokens=123456"])["tokens"] == 123456
    assert make_cfg([]).search.proxy.schedule == "wsd"  # the search's own default is today's


def test_a_search_folder_names_its_lab_target_seed_and_key(sq):
    """debian-kmeans-32's searches are not debian-kmeans's (whose target would read `32-perl-docs`)."""
    assert sq.parse_search_folder("debian-kmeans-32-perl-docs-s0-337f5a4aee") == (
        "debian-kmeans-32",
        "perl-docs",
        0,
        "337f5a4aee",
    )
    assert sq.parse_search_folder("debian-kmeans-perl-docs-s2-337f5a4aee")[:3] == ("debian-kmeans", "perl-docs", 2)
    name = sq.search_folder("sample-kmeans", "debian-reference+debian-policy", 1, "4f53cda18c")
    assert sq.parse_search_folder(name) == ("sample-kmeans", "debian-reference+debian-policy", 1, "4f53cda18c")
    assert sq.parse_search_folder("out-demo-search") is None
    assert sq.parse_search_folder("debian-kmeans-perl-docs-337f5a4aee") is None  # no seed
