"""The train/evaluate/recommend commands in-process, on the tiny dataset and test backbone."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.cli.train import resolve_settings
from intentrec.errors import ConfigError, DataError

# The helpers live next to this file; putting it on sys.path works in every pytest import mode.
sys.path.insert(0, str(Path(__file__).parent))
from tinyrun import TEST_BACKBONE, write_tiny_dataset  # noqa: E402

runner = CliRunner()
FAST = ["--set", "epochs=2", "--set", "num_threads=1", "--set", "model.embedding_dim=8"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_settings_resolve_trainer_first_then_model(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.5\n  epochs: 4\nmodel:\n  dropout: 0.1\nbatch_size: 8\nmethod:\n  k: 2\n")
    model, trainer, method = resolve_settings(
        TEST_BACKBONE, cfg, ["lr=0.2", "embedding_dim=12", "model.dropout=0.3", "train.seed=5", "method.k=5"]
    )
    assert model == {"dropout": 0.3, "embedding_dim": 12}
    assert trainer == {"lr": 0.2, "epochs": 4, "batch_size": 8, "seed": 5}
    assert method == {"k": 5}


def test_unknown_setting_names_the_key():
    with pytest.raises(ConfigError, match="unknown setting 'emb_dim'"):
        resolve_settings(TEST_BACKBONE, None, ["emb_dim=3"])
    with pytest.raises(ConfigError, match="'train' must be a section"):
        resolve_settings(TEST_BACKBONE, None, ["train=3"])


def test_train_evaluate_recommend(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    out = _invoke("train", tiny_dataset, "--model", TEST_BACKBONE, "--out", run, *FAST)
    assert "epoch   2" in out and "MRR@20" in out and "VALID" in out
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["config"]["embedding_dim"] == 8 and config["trainer"]["epochs"] == 2

    report = json.loads(_invoke("evaluate", run, "--json", "--slices"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["split"] == "test" and report["metrics"] == metrics["test"]
    assert sum(row["count"] for row in report["slices"].values()) == report["examples"]
    valid = json.loads(_invoke("evaluate", run, "--split", "valid", "--json"))
    assert valid["metrics"] == metrics["valid"]
    table = _invoke("evaluate", run, "--slices")
    assert "HR@20" in table and "head" in table

    recs = json.loads(_invoke("recommend", run, "--items", "it3, it4", "--k", "5", "--json"))
    assert [s["item_id"] for s in recs["session"]] == ["it3", "it4"]
    assert recs["session"][0]["title"] == "Item number 3"
    assert [r["rank"] for r in recs["recommendations"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in recs["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    excluded = json.loads(_invoke("recommend", run, "--items", "it3,it4", "--exclude-seen", "--json"))
    assert not {"it3", "it4"} & {r["item_id"] for r in excluded["recommendations"]}
    text = _invoke("recommend", run, "--items", "it3,it4")
    assert text.index("it3") < text.index("top 10")  # the given items are listed first

    result = runner.invoke(app, ["recommend", str(run), "--items", "it3,nope,zz"])
    assert isinstance(result.exception, DataError)
    assert "'nope', 'zz'" in str(result.exception)


def test_paper_mode_is_loud(tiny_dataset, tmp_path):
    out = _invoke(
        "train", tiny_dataset, "--model", TEST_BACKBONE, "--out", tmp_path / "p", "--select-on", "test", *FAST
    )
    assert out.count("PAPER MODE") >= 2 and "valid-selected" in out
    assert "paper mode" in _invoke("evaluate", tmp_path / "p")
    report = json.loads(_invoke("evaluate", tmp_path / "p", "--json"))
    assert "TEST (paper mode)" in report["checkpoint"]


def test_evaluate_errors_name_the_problem(tiny_dataset, tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert isinstance(result.exception, DataError) and "run folder not found" in str(result.exception)
    result = runner.invoke(
        app, ["train", str(tiny_dataset), "--model", TEST_BACKBONE, "--out", str(tmp_path), "--set", "lrr=1"]
    )
    assert isinstance(result.exception, ConfigError) and "'lrr'" in str(result.exception)


def test_help_shows_examples():
    for command in ("train", "evaluate", "recommend"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output
