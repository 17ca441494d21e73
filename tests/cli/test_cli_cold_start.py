"""``intentrec train … --cold-start F`` and ``intentrec evaluate RUN --cold-start F`` in-process on the
tiny dataset, with a stand-in text encoder (registered by tests/models/test_cold_start.py)."""

import json

import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.errors import ConfigError, IntentrecError
from tests.helpers.tinyrun import write_tiny_dataset
from tests.models.test_cold_start import ENCODER

runner = CliRunner()
FAST = ["--set", "epochs=1", "--set", "num_threads=1", "--set", "model.embedding_dim=8"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_train_and_evaluate_cold_start(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    _invoke(
        "train", tiny_dataset, "--model", "niser", "--out", run, "--cold-start", "0.2", "--cold-start-seed", "2", *FAST
    )
    config = json.loads((run / "config.json").read_text())
    assert config["trainer"]["cold_start"] == 0.2 and config["trainer"]["cold_start_seed"] == 2
    cold = json.loads((run / "cold_items.json").read_text())
    assert cold["cold_items"] == 6 and cold["seed"] == 2

    saved = tmp_path / "map.safetensors"
    out = _invoke("evaluate", run, "--cold-start", "0.2", "--encoder", ENCODER, "--save-map", saved, "--json")
    report = json.loads(out)
    assert report["cold_start"]["cold_items"] == 6 and report["map"]["kind"] == "ridge" and report["map"]["normalize"]
    assert saved.is_file() and saved.with_suffix(".json").is_file()
    again = json.loads(_invoke("evaluate", run, "--cold-start", "0.2", "--map", saved, "--json"))
    assert again["metrics"] == report["metrics"]  # the saved map places the items as the fitted one did

    table = _invoke("evaluate", run, "--cold-start", "0.2", "--encoder", ENCODER, "--map", "mlp")
    assert "HR@20 cold" in table and "popularity" in table and "text similarity" in table and "mlp map" in table

    with pytest.raises(IntentrecError, match=r"trained with --cold-start 0.2 \(seed 2\), not 0.1.*--cold-start 0.1"):
        _invoke("evaluate", run, "--cold-start", "0.1")
    warm = tmp_path / "warm"
    _invoke("train", tiny_dataset, "--model", "niser", "--out", warm, *FAST)
    with pytest.raises(IntentrecError, match="trained with every item.*--model niser --cold-start 0.1 --out RUN"):
        _invoke("evaluate", warm, "--cold-start", "0.1")
    with pytest.raises(ConfigError, match="go with --cold-start"):
        _invoke("evaluate", warm, "--map", "mlp")


def test_help_shows_the_options():
    assert "--cold-start" in _invoke("train", "--help")
    out = _invoke("evaluate", "--help")
    assert "--cold-start" in out and "--save-map" in out
