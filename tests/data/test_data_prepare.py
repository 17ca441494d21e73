"""End to end: prepare_dataset on fixtures and real data, presets, reuse, atomic output, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.data import PreparedDataset
from intentrec.data.prepare import prepare_dataset, resolve_config, run_prepare
from intentrec.errors import ConfigError, DataError
from tests.helpers import child_env
from tests.helpers.data import fixture_data, require_data

DATA = fixture_data()
TINY = dict(min_item_support=1, min_session_length=2, test_fraction=0.3, valid_fraction=0.5)


def test_generic_fixture_end_to_end(tmp_path):
    ds = prepare_dataset("generic", DATA / "generic", tmp_path / "out", **TINY)
    # sessions: s1 [A B C], s2 [A B] (ordered by position), s3 [C D]; items by first appearance
    items = ds.items
    assert items["item_id"].tolist() == ["A", "B", "C", "D"]
    assert items.index.tolist() == [1, 2, 3, 4]
    assert items["title"].tolist()[:2] == ["Tom & Jerry, the Box", "Café Noir"]
    assert items["title"].isna().tolist() == [
        False,
        False,
        True,
        True,
    ]  # "   " → null; D has no row
    assert items["brand"].tolist()[0] == "Acme" and items["brand"].isna().tolist()[1]
    assert items["train_count"].tolist() == [1, 1, 1, 0]  # only s1 is train (s2 valid, s3 test)

    sessions = pd.read_parquet(ds.path / "sessions.parquet")
    assert sessions["session_id"].tolist() == ["s1", "s2", "s3"]
    assert sessions["split"].tolist() == ["train", "valid", "test"]
    assert [list(x) for x in sessions["items"]] == [[1, 2, 3], [1, 2], [3, 4]]

    examples = pd.read_parquet(ds.path / "examples.parquet")
    assert examples["example_id"].tolist() == [0, 1, 2, 3]
    assert examples["split"].tolist() == ["train", "train", "valid", "test"]
    assert examples["session_index"].tolist() == [0, 0, 1, 2]
    assert [list(p) for p in examples["prefix"]] == [[1], [1, 2], [1], [3]]
    assert examples["target"].tolist() == [2, 3, 2, 4]

    stats = ds.manifest["statistics"]
    assert stats["items_with_title"] == 2 and stats["items_without_title"] == 2
    assert stats["test_cold_targets"] == 1  # D never occurs in train
    assert stats["valid_cold_targets"] == 0
    assert ds.num_items == 4
    manifest = ds.manifest
    assert manifest["format_version"] == 1 and manifest["source"] == "generic"
    assert [os.path.basename(i["path"]) for i in manifest["inputs"]] == [
        "interactions.csv",
        "items.csv",
    ]
    assert all(len(i["sha256"]) == 64 and i["bytes"] > 0 for i in manifest["inputs"])
    assert manifest["parameters"]["min_item_support"] == 1
    assert manifest["parameters"]["augment"] == {
        "train": "prefix",
        "valid": "prefix",
        "test": "prefix",
    }
    # the reader hands them to models
    batch = next(ds.examples("train").batches(8))
    assert batch.targets.tolist() == [1, 2]  # column indices = item index - 1


def test_reuse_and_rebuild(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "generic", src)
    out = tmp_path / "out"
    first = run_prepare("generic", src, out, **TINY)
    assert not first.reused
    created = first.dataset.manifest["created"]
    again = run_prepare("generic", src, out, **TINY)
    assert again.reused and again.dataset.manifest["created"] == created
    changed_params = run_prepare("generic", src, out, **{**TINY, "augment": "last"})
    assert not changed_params.reused
    assert changed_params.statistics["train_examples"] == 1
    with open(src / "interactions.csv", "a", encoding="utf-8") as fh:
        fh.write("s4,A,0\ns4,D,1\n")
    changed_input = run_prepare("generic", src, out, **{**TINY, "augment": "last"})
    assert not changed_input.reused and changed_input.statistics["sessions"] == 4
    assert run_prepare("generic", src, out, force=True, **{**TINY, "augment": "last"}).reused is False


def test_failed_write_leaves_previous_dataset_and_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_dataset("generic", DATA / "generic", out, **TINY)
    before = (out / "manifest.json").read_text()

    import intentrec.data.prepare as prep

    calls = []

    def failing_write(table, where):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        return pq_write(table, where)

    pq_write = prep.pq.write_table
    monkeypatch.setattr(prep.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("generic", DATA / "generic", out, **{**TINY, "augment": "last"})
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared dataset; refusing"):
        prepare_dataset("generic", DATA / "generic", tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_nothing_left_after_filtering_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"interactions\.csv: nothing left after filtering"):
        prepare_dataset("generic", DATA / "generic", tmp_path / "out", min_item_support=50)
    assert not (tmp_path / "out").exists()


def test_on_bad_line_skip_is_counted(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "generic", src)
    with open(src / "interactions.csv", "a", encoding="utf-8") as fh:
        fh.write("s3,E\ns3,F,x\n")
    with pytest.raises(DataError, match=r"interactions\.csv, line 9: expected 3 fields"):
        prepare_dataset("generic", src, tmp_path / "out", **TINY)
    ds = prepare_dataset("generic", src, tmp_path / "out", on_bad_line="skip", **TINY)
    assert ds.manifest["statistics"]["bad_lines_skipped"] == 2
    assert ds.manifest["statistics"]["interactions"] == 7


def test_max_sessions_keeps_first_sessions_in_split_order(tmp_path):
    src = require_data("movielens/ml-latest-small/ratings.csv").parent
    ds = prepare_dataset("movielens", src, tmp_path / "out", max_sessions=20, augment="last")
    stats = ds.manifest["statistics"]
    assert stats["sessions"] == 20
    assert (stats["train_sessions"], stats["valid_sessions"], stats["test_sessions"]) == (17, 1, 2)
    sessions = pd.read_parquet(ds.path / "sessions.parquet")
    # users 1..20 in file order are the first 20 sessions; items re-indexed 1..n over them only
    assert sessions["session_id"].tolist() == [str(u) for u in range(1, 21)]
    assert ds.num_items == len(np.unique(np.concatenate(sessions["items"].to_numpy())))


def test_presets_and_overrides():
    config = resolve_config("movielens", "llm4sbr-ml1m", {"augment": "prefix", "split": None})
    assert config.session == "clock-bin" and config.rare_items == "drop-sessions"
    assert config.augment["train"] == "prefix" and config.split == "order"
    assert resolve_config("movielens", None, {}).session == "user"
    assert resolve_config("diginetica", None, {}).session == "given"
    assert resolve_config("diginetica", "srgnn-diginetica", {"test_fraction": 0.2}).test_days is None
    with pytest.raises(ConfigError, match="defined for SOURCE 'generic'"):
        resolve_config("movielens", "llm4sbr-beauty", {})
    with pytest.raises(ConfigError, match="unknown protocol"):
        resolve_config("movielens", "sasrec", {})
    with pytest.raises(ConfigError, match="test_days applies only"):
        resolve_config("movielens", None, {"test_days": 3})
    per_split = resolve_config("generic", None, {"augment": "train=prefix,test=last"})
    assert per_split.augment == {"train": "prefix", "valid": "last", "test": "last"}


# --- presets on the shared data (numbers documented in docs/data.md) --------------------------------


def _leakage_free(ds: PreparedDataset) -> None:
    sessions = pd.read_parquet(ds.path / "sessions.parquet")
    examples = pd.read_parquet(ds.path / "examples.parquet", columns=["split", "session_index"])
    assert sessions["session_id"].is_unique  # no session in two splits
    split_of_session = sessions.set_index("session_index")["split"]
    assert (split_of_session.loc[examples["session_index"]].to_numpy() == examples["split"].to_numpy()).all()
    rank = {"train": 0, "valid": 1, "test": 2}
    assert (np.diff(sessions["split"].map(rank).to_numpy()) >= 0).all()  # train, valid, test blocks
    assert (np.diff(examples["split"].map(rank).to_numpy()) >= 0).all()
    assert (np.diff(examples["session_index"].to_numpy()) >= 0).all()


def test_llm4sbr_beauty_exact_counts(tmp_path):
    folder = require_data("amazon/beauty-2014-5core/interactions.csv").parent
    before_carve = prepare_dataset("generic", folder, tmp_path / "a", protocol="llm4sbr-beauty", valid_fraction=0)
    stats = before_carve.manifest["statistics"]
    assert (stats["train_examples"], stats["test_examples"], stats["items"]) == (
        158_139,
        18_000,
        12_101,
    )
    assert stats["interactions"] == stats["raw_interactions"] == 198_502  # 5-core: nothing dropped
    assert stats["sessions"] == 22_363 and stats["train_sessions"] == 20_126

    ds = prepare_dataset("generic", folder, tmp_path / "b", protocol="llm4sbr-beauty")
    stats = ds.manifest["statistics"]
    assert (stats["train_sessions"], stats["valid_sessions"], stats["test_sessions"]) == (
        18_114,
        2_012,
        2_237,
    )
    assert (stats["train_examples"], stats["valid_examples"], stats["test_examples"]) == (
        142_390,
        15_749,
        18_000,
    )
    assert stats["items_with_title"] == 12_094 and stats["items_without_title"] == 7
    assert stats["test_cold_targets"] == 8
    _leakage_free(ds)
    sessions = pd.read_parquet(ds.path / "sessions.parquet")
    train_ids = set(sessions.loc[sessions["split"] == "train", "session_id"])
    test_ids = set(sessions.loc[sessions["split"] == "test", "session_id"])
    valid_ids = set(sessions.loc[sessions["split"] == "valid", "session_id"])
    assert not (train_ids & test_ids) and not (train_ids & valid_ids) and not (valid_ids & test_ids)
    assert ds.items["train_count"].sum() == sessions.loc[sessions["split"] == "train", "items"].map(len).sum()
    # the first session of the file is the first train session, ordered by position
    assert sessions["session_id"].iloc[0] == "A29TL36GESM0P0"
    assert ds.items["item_id"].iloc[0] == "B0015YIHXC"


@pytest.mark.parametrize(
    ("source", "relative", "protocol", "expected"),
    [
        (
            "movielens",
            "movielens/ml-1m/ratings.users-1-2999.dat.gz",
            "llm4sbr-ml1m",
            dict(sessions=26_266, items=3_266, interactions=463_853, train_examples=21_276,
                 valid_examples=2_363, test_examples=2_627, raw_sessions=33_227, test_cold_targets=0),
        ),
        (
            "movielens",
            "movielens/ml-1m/ratings.users-1-2999.dat.gz",
            "dmsrec-ml1m",
            dict(sessions=36_012, items=3_258, interactions=480_429, train_examples=29_169,
                 valid_examples=3_241, test_examples=3_602, raw_sessions=39_358, test_cold_targets=4),
        ),
        (
            "diginetica",
            "diginetica/sample_train-item-views.csv",
            "srgnn-diginetica",
            dict(sessions=525, items=317, interactions=1_877, train_examples=1_088,
                 valid_examples=146, test_examples=118, raw_sessions=2_986, test_cold_targets=31),
        ),
    ],
)  # fmt: skip
def test_presets_reproduce_documented_statistics(tmp_path, source, relative, protocol, expected):
    folder = require_data(relative).parent
    ds = prepare_dataset(source, folder, tmp_path / "out", protocol=protocol)
    stats = ds.manifest["statistics"]
    assert {k: stats[k] for k in expected} == expected
    _leakage_free(ds)


def test_time_split_puts_latest_sessions_in_test(tmp_path):
    from intentrec.data.filters import filter_sessions
    from intentrec.data.loaders import load_source
    from intentrec.data.sessions import build_sessions

    folder = require_data("movielens/ml-1m/ratings.users-1-2999.dat.gz").parent
    ds = prepare_dataset("movielens", folder, tmp_path / "out", protocol="dmsrec-ml1m")
    sessions = pd.read_parquet(ds.path / "sessions.parquet")
    # end time = latest interaction left after filtering
    built, _ = filter_sessions(build_sessions(load_source("movielens", folder), "day-window"))
    end_of = pd.Series(built.end_times(), index=built.session_ids)
    ends = end_of.loc[sessions["session_id"]].to_numpy()
    split = sessions["split"].to_numpy()
    assert ends[split == "train"].max() <= ends[split == "valid"].min()
    assert ends[split == "valid"].max() <= ends[split == "test"].min()
    assert (np.diff(ends) >= 0).all()  # sessions are stored in split order


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_json_on_ml_latest_small(tmp_path):
    folder = require_data("movielens/ml-latest-small/ratings.csv").parent
    runner = CliRunner()
    args = ["prepare", "movielens", str(folder), "--out", str(tmp_path / "ml"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    for key in ("sessions", "items", "interactions", "items_with_title", "train_examples",
                "valid_examples", "test_examples", "test_cold_targets"):  # fmt: skip
        assert isinstance(stats[key], int)
    assert stats["sessions"] == 671 and stats["items"] == stats["items_with_title"] == 3_496
    assert stats["up_to_date"] is False
    again = runner.invoke(app, args)
    assert json.loads(again.stdout)["up_to_date"] is True
    table = runner.invoke(app, args[:-1])
    assert "up to date" in table.output and "test_examples" in table.output


def test_cli_flags_override_protocol(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["prepare", "generic", str(DATA / "generic"), "--out", str(tmp_path / "o"), "--json",
         "--min-item-support", "1", "--augment", "last", "--test-fraction", "0.3", "--valid-fraction", "0",
         "--on-bad-line", "skip"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["train_examples"], stats["test_examples"]) == (2, 1)


@pytest.mark.slow  # a fresh interpreter imports the whole CLI (about 10 s on 2 shared cores)
def test_cli_errors_are_one_line_exit_2(tmp_path):
    env = child_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "intentrec.cli.main",
            "prepare",
            "movielens",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "not found" in proc.stderr and "grouplens" in proc.stderr


def test_amazon_2018_without_titles_prepares_and_reports(tmp_path):
    folder = require_data("amazon/all-beauty-2018-5core/All_Beauty_5.json.gz").parent
    ds = prepare_dataset("amazon", folder, tmp_path / "out")
    stats = ds.manifest["statistics"]
    assert stats["raw_interactions"] == 5_269 and stats["raw_sessions"] == 991
    assert stats["items_with_title"] == 0 and stats["items_without_title"] == stats["items"] > 0
    assert ds.items["title"].isna().all()
    assert any("no titles" in note for note in ds.manifest["notes"])
