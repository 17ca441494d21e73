"""Each loader on hand-written fixtures (tests/fixtures/data) and on the shared real data."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from intentrec.data.loaders import load_source, locate_inputs
from intentrec.errors import DataError
from tests.helpers.data import fixture_data, require_data

DATA = fixture_data()


def _events(raw) -> list[tuple]:
    return list(raw.events[["key", "item"]].itertuples(index=False, name=None))


def _titles(raw) -> dict[str, object]:
    return dict(zip(raw.items["item_id"], raw.items["title"], strict=True))


def test_generic_fixture():
    raw = load_source("generic", DATA / "generic")
    assert raw.key_kind == "session"
    assert _events(raw)[:3] == [("s1", "A"), ("s1", "B"), ("s1", "C")]
    assert raw.events["order"].tolist() == [0, 1, 2, 1, 0, 0, 1]
    assert raw.events["time"].isna().all()
    assert not raw.has_time
    # raw titles are kept as written; cleaning happens when the dataset is written
    assert _titles(raw)["A"] == "Tom &amp; Jerry,  the   Box"
    assert list(raw.items.columns) == ["item_id", "title", "brand"]
    assert [p.name for p in raw.inputs] == ["interactions.csv", "items.csv"]


def test_generic_parquet_and_iso_timestamps(tmp_path):
    import pandas as pd

    pd.DataFrame(
        {
            "session_id": ["a", "a", "b"],
            "item_id": [1, 2, 1],
            "timestamp": ["2020-01-01T00:00:10Z"] * 3,
        }
    ).to_parquet(tmp_path / "interactions.parquet")
    raw = load_source("generic", tmp_path)
    assert raw.events["item"].tolist() == ["1", "2", "1"]
    assert raw.events["time"].tolist() == [1577836810.0] * 3
    assert raw.items.empty and raw.notes  # no items file: reported, not an error


def test_movielens_1m_latin1_and_gz(tmp_path):
    raw = load_source("movielens", DATA / "ml-1m")
    assert raw.variant == "ml-1m" and raw.key_kind == "user"
    assert _events(raw) == [("1", "10"), ("1", "20"), ("2", "10"), ("2", "30")]
    assert raw.events["time"].tolist() == [978300760, 978300100, 978000000, 978000500]
    titles = _titles(raw)
    assert titles["10"] == "Amélie (2001)"  # 0xE9 decoded as ISO-8859-1
    assert titles["30"] == "Se7en: Director's Cut (1995)"  # a ':' inside the title survives '::' parsing
    # our shared copy is a renamed, gzipped ratings file: ratings.<anything>.dat.gz must be found
    with (
        open(DATA / "ml-1m" / "ratings.dat", "rb") as src,
        gzip.open(tmp_path / "ratings.part.dat.gz", "wb") as dst,
    ):
        dst.write(src.read())
    shutil.copy(DATA / "ml-1m" / "movies.dat", tmp_path / "movies.dat")
    gz = load_source("movielens", tmp_path)
    assert gz.variant == "ml-1m" and _events(gz) == _events(raw)


def test_movielens_100k():
    raw = load_source("movielens", DATA / "ml-100k")
    assert raw.variant == "ml-100k"
    assert _events(raw) == [("196", "242"), ("186", "302"), ("196", "302")]
    items = raw.items.set_index("item_id")
    assert items.loc["242", "title"] == "Kolya (1996)"
    assert items.loc["242", "genres"] == "Comedy"
    assert items.loc["302", "genres"] == "Drama|Thriller"


def test_movielens_latest_quoted_titles():
    raw = load_source("movielens", DATA / "ml-latest")
    assert raw.variant == "ml-latest"
    assert _titles(raw)["1029"] == "American President, The (1995)"
    assert raw.events["time"].tolist() == [1260759144, 1260759179, 1260759200]


def test_amazon_2014_python_dict_meta():
    raw = load_source("amazon", DATA / "amazon-2014")
    assert raw.variant == "amazon-2014"
    assert _events(raw) == [("U1", "P1"), ("U1", "P2"), ("U2", "P1")]
    assert raw.events["time"].tolist() == [1400000000, 1300000000, 1350000000]
    items = raw.items.set_index("item_id")
    assert items.loc["P1", "title"] == 'Kid&#39;s  "Best" Blocks'  # single-quoted dict literal parsed
    assert items.loc["P1", "categories"] == "Toys | Blocks"
    assert items.loc["P2", "title"] is None  # no title in meta → reported later, not an error


def test_amazon_2018_strict_json_and_gz(tmp_path):
    raw = load_source("amazon", DATA / "amazon-2018")
    assert raw.variant == "amazon-2018"
    assert _titles(raw) == {"Q1": "Shampoo &amp; Conditioner", "Q2": ""}
    for name in ("Mini_5.json", "meta_Mini.json"):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as fh:
            fh.write((DATA / "amazon-2018" / name).read_bytes())
    gz = load_source("amazon", tmp_path)
    assert _events(gz) == _events(raw) and len(gz.items) == 2


def test_amazon_python_literal_is_not_evaluated(tmp_path):
    (tmp_path / "reviews_X.json").write_text(
        '{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n', encoding="utf-8"
    )
    (tmp_path / "meta_X.json").write_text("__import__('os').getcwd()\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"meta_X\.json, line 1: neither JSON nor a Python dict literal"):
        load_source("amazon", tmp_path)


def test_diginetica_orders_by_timeframe():
    raw = load_source("diginetica", DATA / "diginetica")
    assert raw.events["order"].tolist() == [526309, 1031018, 243569, 75848, 0]
    assert raw.events["time"].iloc[0] == 1462752000.0  # 2016-05-09 00:00 UTC
    assert raw.items.empty


def test_yoochoose_iso_times():
    raw = load_source("yoochoose", DATA / "yoochoose")
    assert _events(raw)[2] == ("2", "214536502")
    assert raw.events["time"].iloc[0] == pytest.approx(1396867869.277)


def test_locate_inputs_lists_the_files_read():
    assert [p.name for p in locate_inputs("movielens", DATA / "ml-1m")] == [
        "ratings.dat",
        "movies.dat",
    ]
    assert [p.name for p in locate_inputs("amazon", DATA / "amazon-2014")] == [
        "reviews_Toys_5.json",
        "meta_Toys.json",
    ]


# --- bad input -------------------------------------------------------------------------------------


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::978300760\n1::20::3\n1::30::3::978300999\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2: expected 4 fields"):
        load_source("movielens", tmp_path)
    raw = load_source("movielens", tmp_path, on_bad_line="skip")
    assert raw.bad_lines_skipped == 1 and raw.events["item"].tolist() == ["10", "30"]


def test_bad_number_names_column(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,2,3.0,100\n1,3,3.0,soon\n1,4,3.0,\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"ratings\.csv, line 3: column 'timestamp': expected a number, got 'soon'"):
        load_source("movielens", tmp_path)
    raw = load_source("movielens", tmp_path, on_bad_line="skip")
    assert raw.bad_lines_skipped == 2 and raw.events["item"].tolist() == ["2"]


def test_wrong_encoding_names_line(tmp_path):
    (tmp_path / "interactions.csv").write_bytes(b"session_id,item_id,position\na,x,0\na,caf\xe9,1\n")
    with pytest.raises(DataError, match=r"interactions\.csv, line 3: not valid utf-8"):
        load_source("generic", tmp_path)
    raw = load_source("generic", tmp_path, on_bad_line="skip")
    assert raw.bad_lines_skipped == 1 and len(raw.events) == 1


def test_missing_column_is_named(tmp_path):
    (tmp_path / "interactions.csv").write_text("session,item_id,position\na,x,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) 'session_id'"):
        load_source("generic", tmp_path)


def test_bad_json_review_line(tmp_path):
    good = '{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}'
    (tmp_path / "reviews_X_5.json").write_text(f"{good}\n{{broken\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews_X_5\.json, line 2: not valid JSON"):
        load_source("amazon", tmp_path)
    assert load_source("amazon", tmp_path, on_bad_line="skip").bad_lines_skipped == 1


def test_missing_files_and_unknown_source_say_where_to_download(tmp_path):
    with pytest.raises(DataError, match=r"files\.grouplens\.org.*") as err:
        load_source("movielens", tmp_path)
    assert str(tmp_path) in str(err.value) and "INTENTREC_DATA" in str(err.value)
    with pytest.raises(DataError, match=r"(?s)unknown SOURCE 'lastfm'.*nijianmo"):
        load_source("lastfm", tmp_path)


# --- the shared real data --------------------------------------------------------------------------


def test_real_beauty_generic():
    folder = require_data("amazon/beauty-2014-5core/interactions.csv").parent
    raw = load_source("generic", folder)
    assert len(raw.events) == 198_502
    assert raw.events["key"].nunique() == 22_363
    assert raw.events["item"].nunique() == 12_101
    assert len(raw.items) == 12_101


def test_real_movielens_1m_partial():
    folder = require_data("movielens/ml-1m/ratings.users-1-2999.dat.gz").parent
    raw = load_source("movielens", folder)
    assert raw.variant == "ml-1m"
    assert len(raw.events) == 487_650  # PROVENANCE: every rating of users 1–2999
    assert raw.events["key"].nunique() == 2_999
    assert len(raw.items) == 3_883
    titles = raw.items.set_index("item_id")["title"]
    assert titles["73"] == "Misérables, Les (1995)"  # ISO-8859-1 byte 0xE9 in the upstream file


def test_real_movielens_latest_small():
    folder = require_data("movielens/ml-latest-small/ratings.csv").parent
    raw = load_source("movielens", folder)
    assert raw.variant == "ml-latest"
    assert len(raw.events) == 100_004 and raw.events["key"].nunique() == 671
    assert len(raw.items) == 9_125


def test_real_amazon_2018_without_meta():
    folder = require_data("amazon/all-beauty-2018-5core/All_Beauty_5.json.gz").parent
    raw = load_source("amazon", folder)
    assert raw.variant == "amazon-2018"
    assert len(raw.events) == 5_269
    assert raw.events["key"].nunique() == 991 and raw.events["item"].nunique() == 85
    assert raw.items.empty and any("no titles" in n for n in raw.notes)


def test_real_diginetica_sample():
    path = require_data("diginetica/sample_train-item-views.csv")
    raw = load_source("diginetica", path.parent)
    assert len(raw.events) == 12_391  # 12,392 lines with the header; the last has no newline
    assert raw.events["key"].nunique() == 2_986
    assert raw.events["item"].nunique() == 7_139
    assert np.isfinite(raw.events["time"]).all()


def test_real_data_relative_to_data_root():
    require_data("movielens/ml-latest-small/ratings.csv")
    assert Path(locate_inputs("movielens", "movielens/ml-latest-small")[0]).name == "ratings.csv"
