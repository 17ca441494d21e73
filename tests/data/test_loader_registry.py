"""One registered loader class per SOURCE: name, key kind, files, official downloads, defaults."""

from __future__ import annotations

import pytest

from intentrec.data.loaders import (
    LOADERS,
    BadLines,
    get_loader,
    official_urls,
    source_defaults,
    sources,
)
from intentrec.data.prepare import resolve_config
from intentrec.errors import DataError
from tests.helpers.data import fixture_data

DATA = fixture_data()
FIXTURE_OF = {
    "generic": "generic",
    "movielens": "ml-1m",
    "amazon": "amazon-2014",
    "diginetica": "diginetica",
    "yoochoose": "yoochoose",
}  # amazon-m2's fixture is stored under another name (tests/data/test_amazon_m2.py restores and loads it)


def test_every_source_is_one_registered_class():
    assert sources() == ["generic", "movielens", "amazon", "diginetica", "yoochoose", "amazon-m2"]
    assert sorted(LOADERS.names()) == sorted(sources())
    for name in sources():
        loader = get_loader(name)
        assert loader.name == name and loader.registry_name == name


@pytest.mark.parametrize("name", list(FIXTURE_OF))
def test_loader_locates_what_it_loads_and_declares_its_key(name):
    loader = get_loader(name)
    folder = DATA / FIXTURE_OF[name]
    raw = loader.load(folder, BadLines())
    assert raw.source == name
    assert raw.key_kind == loader.key_kind
    assert [p.name for p in loader.locate(folder)] == [p.name for p in raw.inputs]


def test_keys_and_default_sessions():
    assert {n: get_loader(n).key_kind for n in sources()} == {
        "generic": "session",
        "movielens": "user",
        "amazon": "user",
        "diginetica": "session",
        "yoochoose": "session",
        "amazon-m2": "session",
    }
    assert source_defaults("movielens") == {"session": "user"}
    assert source_defaults("yoochoose") == {"session": "given"}
    assert source_defaults("lastfm") == {}
    assert resolve_config("amazon", None, {}).session == "user"
    assert resolve_config("generic", None, {"session": "gap"}).session == "gap"
    assert resolve_config("movielens", "llm4sbr-ml1m", {}).session == "clock-bin"


def test_official_downloads():
    urls = official_urls()
    assert urls["ml-1m"] == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert set(urls) == {
        "ml-1m",
        "ml-100k",
        "ml-latest-small",
        "amazon-2014",
        "amazon-2018",
        "diginetica",
        "yoochoose",
        "amazon-m2",
    }
    movielens = get_loader("movielens")
    assert all(not d.needs_browser for d in movielens.downloads)
    ml1m = movielens.download("ml-1m")
    assert ml1m.folder == "movielens/ml-1m" and len(ml1m.files[0].sha256) == 64
    for name in ("amazon", "diginetica", "yoochoose", "amazon-m2"):
        assert all(d.needs_browser and d.page.startswith("https://") for d in get_loader(name).downloads)
    assert get_loader("generic").download() is None
    with pytest.raises(DataError, match=r"unknown variant 'x' of SOURCE 'movielens'"):
        movielens.download("x")
