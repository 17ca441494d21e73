"""An item listed twice in an item file: identical rows are collapsed and counted, conflicting rows
are an error naming the file, the id and both lines (as the file shows them, header = line 1)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from intentrec.data.loaders import load_source
from intentrec.data.prepare import prepare_dataset
from intentrec.errors import DataError

INTERACTIONS = "session_id,item_id,position\ns1,A,0\ns1,B,1\ns2,A,0\ns2,B,1\n"


def _generic(folder, items: str):
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_text(INTERACTIONS, encoding="utf-8")
    (folder / "items.csv").write_text(items, encoding="utf-8")
    return folder


def test_generic_conflicting_titles_name_file_id_and_both_lines(tmp_path):
    # line 1 header, line 2 A, line 3 B, line 4 blank, line 5 A again with another title
    _generic(tmp_path, "item_id,title\nA,Alpha\nB,Beta\n\nA,Other title\n")
    with pytest.raises(DataError) as err:
        load_source("generic", tmp_path)
    message = str(err.value)
    assert "items.csv" in message and "'A'" in message
    assert "line 2" in message and "line 5" in message
    assert "'Alpha'" in message and "'Other title'" in message
    # not a bad line: skipping bad lines does not make the ambiguity go away
    with pytest.raises(DataError, match="listed twice"):
        load_source("generic", tmp_path, on_bad_line="skip")


def test_generic_conflict_in_an_extra_column_is_named(tmp_path):
    _generic(tmp_path, "item_id,title,brand\nA,Alpha,Acme\nA,Alpha,Zeta\nB,Beta,\n")
    with pytest.raises(DataError, match=r"'A'.*line 2 \(brand='Acme'\) and line 3 \(brand='Zeta'\)"):
        load_source("generic", tmp_path)


def test_generic_identical_rows_are_collapsed_and_counted(tmp_path):
    _generic(tmp_path, "item_id,title\nA,Alpha\nB,Beta\nA,Alpha\nB,Beta\nA,Alpha\n")
    raw = load_source("generic", tmp_path)
    assert raw.items["item_id"].tolist() == ["A", "B"]
    assert raw.items["title"].tolist() == ["Alpha", "Beta"]
    assert raw.duplicate_item_rows_collapsed == 3


def test_prepare_records_collapsed_rows_and_cli_reports_conflicts(tmp_path):
    folder = _generic(tmp_path / "in", "item_id,title\nA,Alpha\nB,Beta\nA,Alpha\n")
    ds = prepare_dataset("generic", folder, tmp_path / "out", min_item_support=1, test_fraction=0.5, valid_fraction=0)
    assert ds.manifest["statistics"]["duplicate_item_rows_collapsed"] == 1
    # a file without duplicates does not get the key (earlier datasets keep their fingerprint)
    clean = _generic(tmp_path / "clean", "item_id,title\nA,Alpha\nB,Beta\n")
    ds = prepare_dataset("generic", clean, tmp_path / "out2", min_item_support=1, valid_fraction=0)
    assert "duplicate_item_rows_collapsed" not in ds.manifest["statistics"]

    bad = _generic(tmp_path / "bad", "item_id,title\nA,Alpha\nB,Beta\nA,Gamma\n")
    result = subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", "prepare", "generic", str(bad)]
        + ["--out", str(tmp_path / "out3"), "--min-item-support", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "items.csv" in result.stderr and "line 2" in result.stderr and "line 4" in result.stderr
    assert not (tmp_path / "out3").exists()


def test_generic_parquet_items_name_rows(tmp_path):
    (tmp_path / "interactions.csv").write_text(INTERACTIONS, encoding="utf-8")
    pd.DataFrame({"item_id": ["A", "B", "A"], "title": ["Alpha", "Beta", "Other"]}).to_parquet(
        tmp_path / "items.parquet"
    )
    with pytest.raises(DataError, match=r"items\.parquet: item_id 'A' .*row 1 .* row 3"):
        load_source("generic", tmp_path)


def test_movielens_movies_conflicting_and_identical(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(b"1::10::5::978300760\n1::20::3::978300761\n")
    (tmp_path / "movies.dat").write_bytes(
        b"10::Am\xe9lie (2001)::Comedy\n20::Heat (1995)::Action\n10::Am\xe9lie (2001)::Drama\n"
    )
    with pytest.raises(DataError) as err:
        load_source("movielens", tmp_path)
    message = str(err.value)
    assert "movies.dat" in message and "'10'" in message
    assert "line 1" in message and "line 3" in message and "genres" in message

    (tmp_path / "movies.dat").write_bytes(
        b"10::Am\xe9lie (2001)::Comedy\n20::Heat (1995)::Action\n10::Am\xe9lie (2001)::Comedy\n"
    )
    raw = load_source("movielens", tmp_path)
    assert len(raw.items) == 2 and raw.duplicate_item_rows_collapsed == 1


def test_movielens_latest_movies_csv_conflict(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,100\n", encoding="utf-8")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n10,"Heat, The (1995)",Action\n10,Heat (1995),Action\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"movies\.csv: item_id '10' .*line 2 .* line 3"):
        load_source("movielens", tmp_path)


def test_amazon_meta_conflicting_and_identical(tmp_path):
    review = '{"reviewerID": "u", "asin": "P1", "unixReviewTime": 1}\n'
    (tmp_path / "reviews_X_5.json").write_text(review, encoding="utf-8")
    meta = tmp_path / "meta_X.json"
    meta.write_text(
        "{'asin': 'P1', 'title': 'Blocks'}\n"
        "{'asin': 'P2', 'title': 'Cars'}\n"
        "{'asin': 'P1', 'title': 'Blocks', 'salesRank': {'Toys': 3}}\n",  # same kept fields
        encoding="utf-8",
    )
    raw = load_source("amazon", tmp_path)
    assert raw.items["item_id"].tolist() == ["P1", "P2"] and raw.duplicate_item_rows_collapsed == 1

    meta.write_text("{'asin': 'P1', 'title': 'Blocks'}\n{'asin': 'P1', 'title': 'Bricks'}\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_source("amazon", tmp_path)
    message = str(err.value)
    assert "meta_X.json" in message and "'P1'" in message
    assert "line 1 (title='Blocks')" in message and "line 2 (title='Bricks')" in message
