"""``intentrec tune``: a 2-trial study on the tiny dataset whose best.yaml ``intentrec train --config`` accepts."""

import json
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("optuna")

from intentrec.cli.main import app, main  # noqa: E402
from intentrec.config import load_config_file  # noqa: E402
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset  # noqa: E402

runner = CliRunner()
FIXED = ["--set", "train.epochs=1", "--set", "train.num_threads=1"]


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_help_has_examples():
    out = _invoke("tune", "--help")
    assert "Examples" in out and "best.yaml" in out and "intentrec tune data/beauty --model srgnn" in out


def test_tune_then_train_with_best_yaml(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\n")
    out = _invoke(
        "tune", data, "--model", TEST_BACKBONE, "--trials", 2, "--space", space, "--out", tmp_path / "tune",
        "--no-progress", *FIXED,
    )  # fmt: skip
    assert "trial 0 complete" in out and "trial 1 complete" in out and "best config" in out
    best = load_config_file(tmp_path / "tune" / "best.yaml")
    assert set(best) == {"model", "train"} and "dropout" in best["model"]

    run = tmp_path / "run"
    _invoke("train", data, "--model", TEST_BACKBONE, "--config", tmp_path / "tune" / "best.yaml", "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["config"]["dropout"] == best["model"]["dropout"]
    assert config["trainer"]["lr"] == best["train"]["lr"] and config["trainer"]["epochs"] == 1
    assert "test" in json.loads((run / "metrics.json").read_text())


def test_space_file_error_exits_2_naming_the_field(tmp_path, monkeypatch, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  model.dropuot: {type: float, low: 0.0, high: 0.5}\n")
    argv = ["intentrec", "tune", str(data), "--model", TEST_BACKBONE, "--space", str(space), "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "space.yaml" in err and "'dropuot' is not a field of MeanConfig" in err
