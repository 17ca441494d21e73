"""``--split leave-one-out`` and the LLMGR presets (llmgr-beauty / -music / -pantry), on hand-computed examples.

Fixtures: ``tests/fixtures/data/llmgr-music-2014`` (Amazon 2014 format: reviews as JSON lines, meta as Python
dict literals) and ``llmgr-pantry-2018`` (Amazon 2018 format: both JSON lines), stored as ``*_json.fixture``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.data.identity import DatasetIdentity
from intentrec.data.prepare import PrepareConfig, prepare_dataset, resolve_config
from intentrec.data.sessions import Sessions
from intentrec.data.splits import LeaveOneOutConfig, leave_one_out
from intentrec.errors import ConfigError, DataError
from tests.helpers.data import fixture_data, require_data

DATA = fixture_data()
MUSIC = DATA / "llmgr-music-2014"
PANTRY = DATA / "llmgr-pantry-2018"


def _sessions(lists) -> Sessions:
    vocab = np.array(sorted({i for s in lists for i in s}), dtype=object)
    code = {v: i for i, v in enumerate(vocab)}
    values = np.array([code[i] for s in lists for i in s], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    ids = np.array([f"s{i}" for i in range(len(lists))], dtype=object)
    return Sessions(values, np.full(len(values), np.nan), offsets, ids, vocab)


def _lists(sessions: Sessions):
    items = sessions.item_vocab[sessions.values]
    return [list(items[a:b]) for a, b in zip(sessions.offsets[:-1], sessions.offsets[1:], strict=True)]


def _tables(ds):
    return pd.read_parquet(ds.path / "sessions.parquet"), pd.read_parquet(ds.path / "examples.parquet")


def _examples(examples, split):
    rows = examples[examples["split"] == split]
    return [(list(p), int(t)) for p, t in zip(rows["prefix"], rows["target"], strict=True)]


# --- the split itself --------------------------------------------------------------------------------


def test_each_session_is_cut_into_train_valid_and_test():
    cut, sizes = leave_one_out(_sessions([list("ABCDE"), list("FGH")]), LeaveOneOutConfig())
    assert (sizes.train, sizes.valid, sizes.test) == (2, 2, 2)
    assert _lists(cut) == [list("ABC"), list("F"), list("ABCD"), list("FG"), list("ABCDE"), list("FGH")]
    assert list(cut.session_ids) == ["s0", "s1"] * 3
    assert list(sizes.labels()) == ["train"] * 2 + ["valid"] * 2 + ["test"] * 2


def test_without_valid_only_the_last_item_is_held_out():
    cut, sizes = leave_one_out(_sessions([list("ABC"), list("DE")]), LeaveOneOutConfig(valid=False))
    assert (sizes.train, sizes.valid, sizes.test) == (2, 0, 2)
    assert _lists(cut) == [list("AB"), list("D"), list("ABC"), list("DE")]


def test_short_sessions_are_dropped_or_kept_whole_in_train():
    lists = [list("AB"), list("CDE"), list("F")]
    dropped, sizes = leave_one_out(_sessions(lists), LeaveOneOutConfig())
    assert _lists(dropped) == [["C"], list("CD"), list("CDE")] and (sizes.train, sizes.valid) == (1, 1)
    kept, sizes = leave_one_out(_sessions(lists), LeaveOneOutConfig(short_sessions="train"))
    assert _lists(kept) == [list("AB"), ["C"], ["F"], list("CD"), list("CDE")]
    assert (sizes.train, sizes.valid, sizes.test) == (3, 1, 1)


def test_options_are_typed_and_reject_unknown_keys():
    config = resolve_config("generic", None, {"split": "leave-one-out"})
    assert config.leave_one_out == LeaveOneOutConfig()
    assert config.augment == {"train": "prefix", "valid": "last", "test": "last"}
    text = resolve_config(
        "generic", None, {"split": "leave-one-out", "leave_one_out": "valid=false,short_sessions=train"}
    )
    assert text.leave_one_out == LeaveOneOutConfig(valid=False, short_sessions="train")
    with pytest.raises(ConfigError, match=r"unknown key 'holdout' \(known keys: short_sessions, valid\)"):
        resolve_config("generic", None, {"split": "leave-one-out", "leave_one_out": {"holdout": 2}})
    with pytest.raises(ConfigError, match="short_sessions"):
        PrepareConfig.build({"split": "leave-one-out", "leave_one_out": "short_sessions=keep"})
    with pytest.raises(ConfigError, match="key=value"):
        PrepareConfig.build({"split": "leave-one-out", "leave_one_out": "valid"})
    with pytest.raises(ConfigError, match="apply only with split='leave-one-out'"):
        PrepareConfig.build({"split": "order", "leave_one_out": {}})
    with pytest.raises(ConfigError, match="valid and test take 'last' examples"):
        PrepareConfig.build({"split": "leave-one-out", "augment": "prefix"})
    with pytest.raises(ConfigError, match="valid_fraction does not apply"):
        PrepareConfig.build({"split": "leave-one-out", "valid_fraction": 0.0})


def test_other_splits_keep_their_manifest_parameters():
    from intentrec.data.prepare import manifest_parameters

    config = resolve_config("generic", "llm4sbr-beauty", {})
    assert "leave_one_out" not in manifest_parameters("generic", "llm4sbr-beauty", config)
    loo = resolve_config("generic", "llmgr-beauty", {})
    assert manifest_parameters("generic", "llmgr-beauty", loo)["leave_one_out"] == {
        "valid": True,
        "short_sessions": "drop",
    }


# --- the presets on fixtures ---------------------------------------------------------------------------


def _check_no_leakage(ds):
    """Per session id: train ⊂ valid ⊂ test as prefixes, one target per held-out position, and the
    train examples stop before the valid target's position."""
    sessions, examples = _tables(ds)
    by_split = {
        s: sessions[sessions["split"] == s].set_index("session_id")["items"].map(list)
        for s in ("train", "valid", "test")
    }
    for user, full in by_split["test"].items():
        assert by_split["valid"][user] == full[:-1] and by_split["train"][user] == full[:-2]
    rows = examples.merge(sessions[["session_index", "session_id"]], on="session_index")
    for split, offset in (("valid", 2), ("test", 1)):
        part = rows[rows["split"] == split]
        assert part["session_id"].is_unique and len(part) == len(by_split["test"])
        for user, prefix, target in zip(part["session_id"], part["prefix"], part["target"], strict=True):
            full = by_split["test"][user]
            assert list(prefix) == full[:-offset] and target == full[-offset]
    train = rows[rows["split"] == "train"]
    # a train example [i1..ik] -> i(k+1) needs k + 1 <= L - 2: it never reaches a held-out position
    lengths = train["session_id"].map(by_split["test"].map(len))
    assert (train["prefix"].map(len) + 1 <= lengths - 2).all()
    counted = np.bincount(np.concatenate(by_split["train"].to_list()), minlength=len(ds.items) + 1)[1:]
    assert ds.items["train_count"].tolist() == counted.tolist()


def test_llmgr_music_on_the_2014_fixture(tmp_path):
    ds = prepare_dataset("amazon", MUSIC, tmp_path / "music", protocol="llmgr-music")
    stats = ds.manifest["statistics"]
    assert ds.manifest["variant"] == "amazon-2014"
    # U6 = [M2, M6, M1]: M6 has one review and goes, U6 keeps 2 items (< 3) and is dropped by the split
    assert {k: stats[k] for k in ("raw_sessions", "sessions_after_filter", "leave_one_out_short_sessions")} == {
        "raw_sessions": 6,
        "sessions_after_filter": 6,
        "leave_one_out_short_sessions": 1,
    }
    assert (stats["sessions"], stats["items"], stats["interactions"]) == (5, 4, 20)
    assert (stats["train_sessions"], stats["valid_sessions"], stats["test_sessions"]) == (5, 5, 5)
    assert (stats["train_examples"], stats["valid_examples"], stats["test_examples"]) == (5, 5, 5)
    # users by first line in the file (U3, U1, U5, U4, U2); items by first appearance: M3 M4 M1 M2 = 1..4.
    # U5 reviewed M2 and M3 on the same day: file order (M2's line first) decides.
    assert ds.items["item_id"].tolist() == ["M3", "M4", "M1", "M2"]
    assert ds.items["title"].tolist()[1:] == ["Quiet Nights", "Songs & Stories", 'Bob\'s "Live" Album']
    assert pd.isna(ds.items["title"].iloc[0]) and stats["items_without_title"] == 1  # M3's meta has no title
    sessions, examples = _tables(ds)
    assert sessions["session_id"].tolist() == ["U3", "U1", "U5", "U4", "U2"] * 3
    assert _examples(examples, "train") == [([1], 2), ([3], 4), ([3], 4), ([2], 1), ([4], 3)]
    assert _examples(examples, "valid") == [([1, 2], 3), ([3, 4], 1), ([3, 4], 1), ([2, 1], 4), ([4, 3], 2)]
    assert _examples(examples, "test") == [
        ([1, 2, 3], 4),
        ([3, 4, 1], 2),
        ([3, 4, 1], 2),
        ([2, 1, 4], 3),
        ([4, 3, 2], 1),
    ]
    assert examples["example_id"].tolist() == list(range(15))
    _check_no_leakage(ds)


def test_llmgr_pantry_on_the_2018_fixture(tmp_path):
    ds = prepare_dataset("amazon", PANTRY, tmp_path / "pantry", protocol="llmgr-pantry")
    stats = ds.manifest["statistics"]
    assert ds.manifest["variant"] == "amazon-2018"
    # RB = [P3 P4 P1 P2] loses P4 (one review); RC = [P2 P3] is too short for leave-one-out
    assert (stats["sessions"], stats["items"], stats["interactions"]) == (3, 3, 13)
    assert (stats["leave_one_out_short_sessions"], stats["duplicate_item_rows_collapsed"]) == (1, 1)
    assert ds.items["item_id"].tolist() == ["P1", "P3", "P2"]
    assert ds.items["title"].iloc[0] == "Oat & Honey Bars" and pd.isna(ds.items["title"].iloc[1])
    sessions, examples = _tables(ds)
    assert sessions.loc[sessions["split"] == "test", "items"].map(list).tolist() == [
        [1, 2, 3, 1, 2],  # RD: repeat purchases stay in the sequence
        [1, 3, 2, 1, 3],
        [2, 1, 3],
    ]
    assert _examples(examples, "train") == [([1], 2), ([1, 2], 3), ([1], 3), ([1, 3], 2)]  # RB: train = [2], none
    assert _examples(examples, "valid") == [([1, 2, 3], 1), ([1, 3, 2], 1), ([2], 1)]
    assert _examples(examples, "test") == [([1, 2, 3, 1], 2), ([1, 3, 2, 1], 3), ([2, 1], 3)]
    _check_no_leakage(ds)


def test_short_sessions_can_stay_in_train(tmp_path):
    ds = prepare_dataset(
        "amazon", PANTRY, tmp_path / "p", protocol="llmgr-pantry", leave_one_out="short_sessions=train"
    )
    stats = ds.manifest["statistics"]
    sessions, examples = _tables(ds)
    assert (stats["sessions"], stats["train_sessions"], stats["test_sessions"]) == (4, 4, 3)
    assert stats["leave_one_out_short_sessions"] == 1
    rc = sessions[sessions["session_id"] == "RC"]
    assert rc["split"].tolist() == ["train"] and len(rc["items"].iloc[0]) == 2  # whole, in train only
    assert int((examples["session_index"] == rc["session_index"].iloc[0]).sum()) == 1


def test_preparing_twice_gives_identical_files(tmp_path):
    a = prepare_dataset("amazon", MUSIC, tmp_path / "a", protocol="llmgr-music")
    b = prepare_dataset("amazon", MUSIC, tmp_path / "b", protocol="llmgr-music")
    for name in ("items.parquet", "sessions.parquet", "examples.parquet"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    assert DatasetIdentity.of(a.path).fingerprint == DatasetIdentity.of(b.path).fingerprint


def test_missing_files_name_them_and_the_official_page(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    shutil.copy(MUSIC / "reviews_Digital_Music_5.json", folder)
    with pytest.raises(DataError) as err:
        prepare_dataset("amazon", folder, tmp_path / "out", protocol="llmgr-music")
    message = str(err.value)
    assert "not found in" in message and message.splitlines()[0].endswith(
        "meta_Digital_Music.json.gz or meta_Digital_Music.json"
    )
    assert "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html" in message
    assert f"put reviews_Digital_Music_5.json.gz and meta_Digital_Music.json.gz into {folder}/" in message

    with pytest.raises(DataError, match=r"nijianmo\.github\.io/amazon/index\.html") as err:
        prepare_dataset("amazon", MUSIC, tmp_path / "out", protocol="llmgr-pantry")  # another category's files
    assert "Prime_Pantry_5.json.gz or Prime_Pantry_5.json, meta_Prime_Pantry.json.gz" in str(err.value)

    generic = tmp_path / "beauty"
    generic.mkdir()
    (generic / "interactions.csv").write_text("session_id,item_id,position\nu,a,0\nu,b,1\nu,c,2\n")
    with pytest.raises(DataError, match="items.csv or items.parquet or items.csv.gz") as err:
        prepare_dataset("generic", generic, tmp_path / "out", protocol="llmgr-beauty")
    assert "derived from amazon-2014 data" in str(err.value)


def test_cli_prepares_with_leave_one_out_and_lists_it(tmp_path):
    runner = CliRunner()
    args = ["prepare", "amazon", str(PANTRY), "--out", str(tmp_path / "p"), "--protocol", "llmgr-pantry"]
    result = runner.invoke(app, [*args, "--leave-one-out", "valid=false", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    # without valid: RC = [P2 P3] is long enough; every user gives one test example
    assert (stats["valid_sessions"], stats["test_examples"], stats["leave_one_out_short_sessions"]) == (0, 4, 0)
    bad = runner.invoke(app, [*args, "--leave-one-out", "folds=3"])
    assert isinstance(bad.exception, ConfigError) and "unknown key 'folds'" in str(bad.exception)
    help_text = runner.invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"}).output
    assert "leave-one-out" in help_text and "llmgr-beauty" in help_text and "llmgr-pantry" in help_text


# --- real data -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_llmgr_beauty_on_the_shared_5core(tmp_path):
    folder = require_data("amazon/beauty-2014-5core/interactions.csv").parent
    ds = prepare_dataset("generic", folder, tmp_path / "beauty", protocol="llmgr-beauty")
    stats = ds.manifest["statistics"]
    lengths = pd.read_csv(folder / "interactions.csv", usecols=["session_id"]).groupby("session_id").size()
    users = int((lengths >= 3).sum())
    assert stats["sessions"] == stats["valid_sessions"] == stats["test_sessions"] == users == 22_363
    assert stats["valid_examples"] == stats["test_examples"] == users
    assert stats["leave_one_out_short_sessions"] == int((lengths < 3).sum()) == 0
    assert stats["train_examples"] == int((lengths - 3).sum()) == 131_413
    assert (stats["items"], stats["interactions"], stats["items_with_title"]) == (12_101, 198_502, 12_094)
    assert (stats["valid_cold_targets"], stats["test_cold_targets"]) == (51, 138)
    assert ds.items["train_count"].sum() == int((lengths - 2).sum())
    _check_no_leakage(ds)
