"""``intentrec candidates``: writes the cross-fitted file, reports it as JSON, reuses it, errors, help."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.errors import ConfigError
from intentrec.training.candidates import ALL_RUN
from tests.helpers.tiny_dataset import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cli_writes_the_file_and_reports_json(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "ds")
    runner = CliRunner()
    args = [
        "candidates",
        str(dataset.path),
        "--model",
        "srgnn",
        "--folds",
        "2",
        "--top",
        "5",
        "--no-progress",
        "--set",
        "train.epochs=1",
        "--set",
        "model.embedding_dim=8",
        "--work-dir",
        str(tmp_path / "w"),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["path"].endswith("candidates.srgnn.f2.parquet") and summary["leaky"] is False
    assert set(summary["runs"]) == {"fold-0", "fold-1", ALL_RUN}
    assert (
        summary["runs"]["fold-0"]["scored"]["train"] + summary["runs"]["fold-1"]["scored"]["train"]
        == summary["examples"]["train"]
    )
    again = runner.invoke(app, args[:-1])
    assert again.exit_code == 0 and "up to date" in again.output and "cross-fitted" in again.output
    bad = runner.invoke(app, ["candidates", str(dataset.path), "--set", "method.beta=1"])
    assert isinstance(bad.exception, ConfigError)
    helped = runner.invoke(app, ["candidates", "--help"])
    assert helped.exit_code == 0 and "--leaky" in helped.output and "Examples" in helped.output
