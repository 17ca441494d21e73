"""The ``amazon-m2`` loader (KDD Cup 2023 Task 1 files) on a hand-written fixture in the upstream format,
its bad-input errors, the ``locale`` parameter, and the SemSR presets (``semsr-m2``, ``semsr-beauty``)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.data.filters import filter_sessions
from intentrec.data.loaders import get_loader, load_source, locate_inputs
from intentrec.data.prepare import prepare_dataset, resolve_config
from intentrec.data.presets import get_preset
from intentrec.data.sessions import Sessions
from intentrec.errors import ConfigError, DataError
from tests.helpers.data import fixture_data, require_data

M2 = fixture_data() / "amazon-m2"
UK = ["B07UKSERUM", "B08UKTONER", "B09UKCREAM", "B06UKBRUSH", "B05UKMASKS"]
SERUM, TONER, CREAM, BRUSH, MASKS = UK


def _sessions(raw) -> dict[str, list[str]]:
    grouped = raw.events.sort_values(["key", "order"], kind="stable").groupby("key", sort=False)["item"]
    return {key: list(items) for key, items in grouped}


def _copy(tmp_path):
    folder = tmp_path / "m2"
    shutil.copytree(M2, folder)
    return folder


def _append(path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


# --- the loader on the fixture -------------------------------------------------------------------------


def test_one_locale_keeps_upstream_ids_and_every_product_field():
    raw = load_source("amazon-m2", M2, locale="UK")
    assert raw.source == "amazon-m2" and raw.key_kind == "session" and not raw.has_time
    sessions = _sessions(raw)
    # session id = the row's 0-based number over the whole file: UK rows are 4..15
    assert sorted(sessions, key=int) == [str(r) for r in range(4, 16)]
    assert sessions["4"] == [SERUM, TONER, CREAM]  # prev_items, then next_item
    # prev_items wrapped onto two lines inside the quoted field (as numpy prints long arrays)
    assert sessions["8"] == [SERUM, TONER, CREAM, BRUSH, MASKS, TONER, SERUM, CREAM]
    assert sessions["13"] == ["B04UKRARE1", SERUM]
    assert raw.events.loc[raw.events["key"] == "8", "order"].tolist() == list(range(8))

    items = raw.items.set_index("item_id")
    assert list(raw.items.columns) == ["item_id", "title", "locale", "price", "brand", "color", "size"] + [
        "model",
        "material",
        "author",
        "desc",
    ]
    assert len(items) == 7 and set(items["locale"]) == {"UK"}  # UK products only
    assert items.at[SERUM, "title"] == 'Vitamin C Serum, 30 ml - "Glow" edition'
    assert items.at[SERUM, "desc"] == "Brightening serum.\nApply morning and evening."  # raw, cleaned on write
    assert items.at[CREAM, "brand"] == "Smith & Sons, Ltd."
    assert items.at["1234567890", "author"] == "Jane Doe"
    assert items.at[BRUSH, "brand"] is None and items.at[SERUM, "price"] == "14.99"  # text as written
    assert raw.duplicate_item_rows_collapsed == 1  # the repeated Rose Toner row
    assert [p.name for p in raw.inputs] == ["sessions_train.csv", "products_train.csv"]


def test_every_locale_qualifies_ids_so_one_id_in_two_locales_is_two_items():
    raw = load_source("amazon-m2", M2)
    sessions = _sessions(raw)
    assert len(sessions) == 16
    assert sessions["0"] == ["DE:B07UKSERUM", "DE:B0DEKAFFEE", "DE:B0DETASSE1"]
    assert sessions["3"] == ["JP:B0JPWHISK1", "JP:B0JPMATCHA"]
    assert sessions["4"] == ["UK:" + i for i in (SERUM, TONER, CREAM)]
    titles = dict(zip(raw.items["item_id"], raw.items["title"], strict=True))
    assert titles["DE:B07UKSERUM"] == "Vitamin-C-Serum, 30 ml"
    assert titles["UK:B07UKSERUM"].startswith("Vitamin C Serum")
    assert titles["JP:B0JPMATCHA"] == "抹茶 100g"
    assert len(raw.items) == 13


def test_declarations_locate_and_gz(tmp_path):
    loader = get_loader("amazon-m2")
    assert loader.key_kind == "session" and loader.default_session() == "given"
    assert "UK" in loader.locales
    (download,) = loader.downloads
    assert download.needs_browser
    assert download.page == "https://www.aicrowd.com/challenges/amazon-kdd-cup-23-multilingual-recommendation-challenge"
    assert [p.name for p in locate_inputs("amazon-m2", M2)] == ["sessions_train.csv", "products_train.csv"]

    folder = tmp_path / "gz"
    folder.mkdir()
    for name in ("sessions_train.csv", "products_train.csv"):
        with open(M2 / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
            dst.write(src.read())
    raw = load_source("amazon-m2", folder, locale="UK")
    assert _sessions(raw) == _sessions(load_source("amazon-m2", M2, locale="UK"))
    # PATH may also be the sessions file itself; the products file next to it is found
    assert len(load_source("amazon-m2", M2 / "sessions_train.csv", locale="UK").items) == 7


# --- missing and bad input -----------------------------------------------------------------------------


def test_missing_sessions_file_names_the_official_page_and_the_browser(tmp_path):
    with pytest.raises(DataError) as err:
        load_source("amazon-m2", tmp_path)
    message = str(err.value)
    assert "sessions_train.csv" in message and str(tmp_path) in message
    assert "https://www.aicrowd.com/challenges/amazon-kdd-cup-23-multilingual-recommendation-challenge" in message
    assert "browser only" in message and "log in to AIcrowd" in message


def test_without_products_items_have_no_text(tmp_path):
    folder = _copy(tmp_path)
    (folder / "products_train.csv").unlink()
    raw = load_source("amazon-m2", folder, locale="UK")
    assert raw.items.empty and any("products_train.csv" in n for n in raw.notes)
    assert [p.name for p in raw.inputs] == ["sessions_train.csv"]


def test_conflicting_product_rows_name_file_id_and_both_lines(tmp_path):
    folder = _copy(tmp_path)
    # line 11 is Night Cream (line 8 holds a description spanning lines 8-9); the new row is line 17
    _append(folder / "products_train.csv", 'B09UKCREAM,UK,Day Cream,21.0,"Smith & Sons, Ltd.",,50 ml,,,,\n')
    for policy in ("error", "skip"):  # an ambiguity, not a parsing problem: skip does not hide it
        with pytest.raises(DataError) as err:
            load_source("amazon-m2", folder, policy, locale="UK")
        message = str(err.value)
        assert "products_train.csv" in message and "'UK:B09UKCREAM'" in message
        assert "line 11 (title='Night Cream')" in message and "line 17 (title='Day Cream')" in message
    # the same id in another locale is another item, not a conflict
    ok = _copy(tmp_path / "ok")
    _append(ok / "products_train.csv", "B09UKCREAM,DE,Nachtcreme,21.0,,,50 ml,,,,\n")
    assert len(load_source("amazon-m2", ok).items) == 14


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("B09UKCREAM,B06UKBRUSH,UK\n", r"column 'prev_items': expected quoted ids in brackets.*'B09UKCREAM'"),
        ("\"['B09UKCREAM']\",,UK\n", "column 'next_item' is empty"),
        ("\"['B09UKCREAM']\",B06UKBRUSH\n", r"expected 3 fields \(prev_items, next_item, locale\), found 2"),
        ("\"['B09UKCREAM']\"x,B06UKBRUSH,UK\n", "badly quoted field"),
        ('"[]",B06UKBRUSH,UK\n', "column 'prev_items'"),
    ],
)
def test_bad_session_rows_name_file_and_line_or_are_skipped(tmp_path, row, expected):
    folder = _copy(tmp_path)
    # 16 rows after the header, one of them on two lines: the appended row is line 19
    _append(folder / "sessions_train.csv", row + "\"['B09UKCREAM']\",B05UKMASKS,UK\n")
    with pytest.raises(DataError, match=expected) as err:
        load_source("amazon-m2", folder, locale="UK")
    assert "sessions_train.csv, line 19: " in str(err.value) and "--on-bad-line skip" in str(err.value)
    raw = load_source("amazon-m2", folder, "skip", locale="UK")
    assert raw.bad_lines_skipped == 1
    # the row after the bad one keeps its number (data rows are counted, bad ones included)
    assert _sessions(raw)["17"] == [CREAM, MASKS]


def test_line_numbers_count_blank_lines_and_crlf_line_ends(tmp_path):
    folder = _copy(tmp_path)
    products = folder / "products_train.csv"
    text = products.read_text(encoding="utf-8") + "B09UKCREAM,UK,Day Cream,21.0,,,50 ml,,,,\n"
    lines = text.split("\n")
    lines.insert(3, "")  # a blank line before the third product: Night Cream moves to line 12, the new row to 18
    products.write_bytes("\r\n".join(lines).encode("utf-8"))
    with pytest.raises(DataError, match=r"'UK:B09UKCREAM'.*line 12 \(.*line 18 \("):
        load_source("amazon-m2", folder, locale="UK")
    (folder / "sessions_train.csv").write_bytes(
        (folder / "sessions_train.csv").read_bytes().replace(b"\n", b"\r\n") + b"\r\nB0X,B0Y,UK\r\n"
    )
    with pytest.raises(DataError, match=r"sessions_train\.csv, line 20: column 'prev_items'"):
        load_source("amazon-m2", folder, locale="UK")


@pytest.mark.parametrize("name", ["sessions_train.csv", "products_train.csv"])
def test_fast_and_record_by_record_readers_agree(name):
    from intentrec.data.loaders import amazon_m2
    from intentrec.data.loaders.base import BadLines

    text = (M2 / name).read_text(encoding="utf-8")
    fast = amazon_m2._records_at_once(text)
    careful = amazon_m2._records_one_by_one(text, M2 / name, BadLines(), undecodable=False)
    assert fast is not None
    pd.testing.assert_frame_equal(fast, careful)


def test_undecodable_bytes_are_a_bad_line(tmp_path):
    folder = _copy(tmp_path)
    with open(folder / "products_train.csv", "ab") as fh:
        fh.write(b"B0BADBYTES,UK,Caf\xe9,1.0,,,,,,,\n")
    with pytest.raises(DataError, match=r"products_train\.csv, line 17: not valid utf-8"):
        load_source("amazon-m2", folder, locale="UK")
    assert load_source("amazon-m2", folder, "skip", locale="UK").bad_lines_skipped == 1


def test_missing_column_and_empty_file(tmp_path):
    folder = _copy(tmp_path)
    (folder / "sessions_train.csv").write_text("prev_items,next_item\n\"['A']\",B\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) 'locale'"):
        load_source("amazon-m2", folder)
    (folder / "sessions_train.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty or has no header"):
        load_source("amazon-m2", folder)


def test_locale_parameter_is_checked():
    with pytest.raises(ConfigError, match=r"unknown locale 'EN' of SOURCE 'amazon-m2' \(known: DE, JP, UK"):
        load_source("amazon-m2", M2, locale="EN")
    with pytest.raises(ConfigError, match="locale applies only to sources with several locales"):
        load_source("generic", fixture_data() / "generic", locale="UK")
    with pytest.raises(ConfigError, match="locale applies only"):
        resolve_config("generic", None, {"locale": "UK"})
    # a known locale the file does not hold
    with pytest.raises(DataError, match=r"no session has locale 'FR' \(locales in the file: DE, JP, UK\)"):
        load_source("amazon-m2", M2, locale="FR")


# --- the raw-session-length filter and the presets -----------------------------------------------------


def test_min_raw_session_length_drops_short_sessions_once_before_the_other_filters():
    lengths = [6, 5, 7]
    values = np.array([0, 1, 2, 3, 4, 5] + [0, 1, 2, 3, 4] + [0, 1, 2, 3, 4, 5, 6])
    sessions = Sessions(
        values=values,
        times=np.full(len(values), np.nan),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        session_ids=np.array(["a", "b", "c"], dtype=object),
        item_vocab=np.array(list("ABCDEFG"), dtype=object),
    )
    kept, report = filter_sessions(sessions, min_item_support=2, min_session_length=2, min_raw_session_length=6)
    # "b" (5 items) goes first; then item support is counted over a and c only (G occurs once)
    assert kept.session_ids.tolist() == ["a", "c"]
    assert kept.lengths.tolist() == [6, 6]
    assert report.sessions_before == 3 and report.sessions_after == 2
    unfiltered, _ = filter_sessions(sessions, min_item_support=2, min_session_length=2)
    assert unfiltered.lengths.tolist() == [6, 5, 6]


def test_presets_resolve():
    m2 = resolve_config("amazon-m2", "semsr-m2", {})
    assert m2.locale == "UK" and m2.session == "given" and m2.split == "random"
    assert (m2.min_item_support, m2.min_session_length, m2.min_raw_session_length) == (5, 2, 1)
    assert m2.augment == {"train": "prefix", "valid": "prefix", "test": "prefix"}
    beauty = resolve_config("generic", "semsr-beauty", {})
    assert beauty.min_raw_session_length == 6 and beauty.test_fraction == 0.1
    assert beauty.valid_fraction == pytest.approx(1 / 9)
    assert get_preset("semsr-beauty").source == "generic"
    with pytest.raises(ConfigError, match="defined for SOURCE 'amazon-m2'"):
        resolve_config("generic", "semsr-m2", {})
    # without a locale the source's default reads every locale
    assert resolve_config("amazon-m2", None, {}).locale is None


def test_semsr_m2_end_to_end_with_the_cli(tmp_path):
    out = tmp_path / "m2"
    args = ["prepare", "amazon-m2", str(M2), "--protocol", "semsr-m2", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    # 12 UK sessions; the two products with < 5 clicks go, and with them session 13 (one item left)
    assert (stats["raw_sessions"], stats["raw_interactions"]) == (12, 39)
    assert (stats["sessions"], stats["items"], stats["interactions"]) == (11, 5, 35)
    assert (stats["train_sessions"], stats["valid_sessions"], stats["test_sessions"]) == (8, 1, 2)
    assert stats["train_examples"] + stats["valid_examples"] + stats["test_examples"] == 35 - 11
    assert stats["items_with_title"] == 5 and stats["duplicate_item_rows_collapsed"] == 1

    items = pd.read_parquet(out / "items.parquet")
    assert sorted(items["item_id"]) == sorted(UK)
    serum = items.set_index("item_id").loc[SERUM]
    assert serum["title"] == 'Vitamin C Serum, 30 ml - "Glow" edition'
    assert serum["desc"] == "Brightening serum. Apply morning and evening."  # whitespace cleaned on write
    assert serum["brand"] == "GlowLab" and serum["locale"] == "UK"
    sessions = pd.read_parquet(out / "sessions.parquet")
    assert "13" not in set(sessions["session_id"]) and set(sessions["split"]) == {"train", "valid", "test"}
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parameters"]["locale"] == "UK" and manifest["source"] == "amazon-m2"


def test_the_cli_flags_reach_the_new_parameters(tmp_path):
    out = tmp_path / "de"
    args = ["prepare", "amazon-m2", str(M2), "--locale", "DE", "--min-item-support", "1",
            "--min-raw-session-length", "3", "--out", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parameters"]["locale"] == "DE" and manifest["parameters"]["min_raw_session_length"] == 3
    assert set(pd.read_parquet(out / "items.parquet")["locale"]) == {"DE"}


def test_new_parameters_stay_out_of_manifests_that_do_not_use_them(tmp_path):
    ds = prepare_dataset("generic", fixture_data() / "generic", tmp_path / "g", min_item_support=1)
    parameters = ds.manifest["parameters"]
    assert "locale" not in parameters and "min_raw_session_length" not in parameters


def test_semsr_beauty_on_the_shared_5core_copy(tmp_path):
    folder = require_data("amazon/beauty-2014-5core/interactions.csv").parent
    ds = prepare_dataset("generic", folder, tmp_path / "beauty", protocol="semsr-beauty")
    stats = ds.manifest["statistics"]
    assert stats["raw_sessions"] == 22_363 and stats["raw_interactions"] == 198_502
    # 15,201 reviewers have more than 5 reviews; their items with < 5 clicks go, no session falls below 2
    assert (stats["sessions"], stats["items"], stats["interactions"]) == (15_201, 9_680, 154_150)
    assert (stats["train_sessions"], stats["valid_sessions"], stats["test_sessions"]) == (12_160, 1_520, 1_521)
    assert (stats["train_examples"], stats["valid_examples"], stats["test_examples"]) == (110_923, 14_319, 13_707)
    assert (stats["valid_cold_targets"], stats["test_cold_targets"]) == (7, 2)
    assert stats["items_with_title"] == 9_673
    assert ds.manifest["parameters"]["min_raw_session_length"] == 6
