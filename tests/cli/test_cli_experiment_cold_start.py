"""``intentrec experiment`` on a tiny grid trained with ``train.cold_start``: each record gets the run's
cold-start evaluation after training (and finished records get it backfilled), and the report shows it;
a grid without cold-start runs reports as before. Text encoder: the stand-in of tests/models/test_cold_start.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from intentrec import training
from intentrec.cli.main import app
from intentrec.errors import ConfigError
from intentrec.experiments.records import COLD_START_KEY
from intentrec.experiments.report import COLD_RANKERS, Report, pct_cell, render_csv, render_markdown
from intentrec.experiments.runner import Experiment
from intentrec.training import load_run
from intentrec.training.cold_start import evaluate_cold_start
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset
from tests.models.test_cold_start import ENCODER

runner = CliRunner()
IDS = [f"tiny/{TEST_BACKBONE}/default/s0", f"tiny/{TEST_BACKBONE}/default/s1", "tiny/niser/default/s0"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENTREC_HOME", str(tmp_path / "home"))


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def _write(folder: Path, **extra) -> Path:
    spec = {
        "name": "tiny-cold",
        "runs_dir": "out/runs",
        "records_dir": "out/records",
        "results_dir": "out/results",
        "datasets": {"tiny": {"path": "data"}},
        "seeds": [0, 1],
        "settings": {"train.epochs": 1, "train.batch_size": 64, "model.embedding_dim": 8, "train.cold_start": 0.2},
        "grids": [{"backbones": [TEST_BACKBONE]}, {"backbones": ["niser"], "seeds": [0]}],
        "cold_start_eval": {"encoder": ENCODER},
        **extra,
    }
    path = folder / "tiny-cold.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _records(folder: Path) -> dict[str, dict]:
    return {p.relative_to(folder).with_suffix("").as_posix(): json.loads(p.read_text()) for p in folder.rglob("*.json")}


def test_cold_start_grid_records_and_reports_the_cold_start_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    _write(tmp_path)
    out = _invoke("experiment", "tiny-cold.yaml", "--threads", "1", "--no-progress")
    assert out.count("cold-start evaluation: 0.2 of the items") == 3
    records = _records(tmp_path / "out/records")
    assert set(records) == set(IDS)

    # each record holds what `intentrec evaluate RUN --cold-start 0.2` reports for its run folder
    for run_id in IDS:
        entry = records[run_id][COLD_START_KEY]
        again = evaluate_cold_start(load_run(tmp_path / "out/runs" / run_id), 0.2, encoder=ENCODER)
        assert entry["metrics"] == again["metrics"] and set(entry["metrics"]) == set(COLD_RANKERS)
        assert entry["split"] == "test" and entry["cold_start"]["cold_items"] == 6
        assert 0 < entry["cold_start"]["cold_targets"] < entry["cold_start"]["examples"]
        assert entry["map"]["encoder"] == ENCODER and entry["scoring"] == again["scoring"]

    md = (tmp_path / "out/results/tiny-cold.md").read_text()
    assert "## Cold-start items" in md and "| HR@20 cold | MRR@20 cold | HR@20 warm |" in md
    pair = [records[i][COLD_START_KEY]["metrics"] for i in IDS[:2]]
    row = next(line for line in md.splitlines() if line.startswith(f"| {TEST_BACKBONE} ") and "rows from text" in line)
    cells = [pct_cell([m["model"][t][k] for m in pair]) for t in ("cold", "warm", "all") for k in ("HR@20", "MRR@20")]
    assert row.endswith(" | ".join(cells) + " |") and "| 2 | model, rows from text |" in row
    popularity = next(line for line in md.splitlines() if line.startswith("| niser ") and "| popularity |" in line)
    assert "| 0.00 |" in popularity  # a cold item has no train click
    assert "`tiny`: 6 cold items (20% of the items, seed 0)" in md and f"encoder `{ENCODER}`" in md

    with open(tmp_path / "out/results/tiny-cold.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    mean = float(table[0]["cold_start_text_similarity_cold_HR@20_mean_pct"])
    values = [100 * m["text_similarity"]["cold"]["HR@20"] for m in pair]
    assert mean == pytest.approx(sum(values) / 2, abs=1e-4) and table[1]["cold_start_n"] == "1"

    # a finished record without the evaluation gets it from its run folder, without training
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("train() must not be called"))
    legacy = tmp_path / "out/records" / f"{IDS[1]}.json"
    legacy.write_text(json.dumps({k: v for k, v in records[IDS[1]].items() if k != COLD_START_KEY}))
    out = _invoke("experiment", "tiny-cold.yaml")
    assert f"{IDS[1]}: cold-start evaluation added to its record" in out and "0 to train now" in out
    assert json.loads(legacy.read_text())[COLD_START_KEY] == records[IDS[1]][COLD_START_KEY]
    assert (tmp_path / "out/results/tiny-cold.md").read_text() == md

    # without any cold-start evaluation in the records, the report has no trace of one
    experiment = Experiment.load("tiny-cold.yaml")
    full = experiment.report()
    bare = {i: {k: v for k, v in r.items() if k != COLD_START_KEY} for i, r in full.records.items()}
    report = Report(full.spec, full.spec_file, full.runs, bare)
    assert "Cold-start" not in render_markdown(report) and "cold_start" not in render_csv(report)
    assert render_csv(report).splitlines()[0] == render_csv(full).splitlines()[0].split(",cold_start_n")[0]


def test_cold_start_eval_settings_are_checked(tmp_path):
    _write(tmp_path, cold_start_eval={"map": {"kind": "mlp", "lambda": 1}})
    with pytest.raises(ConfigError, match=r"(?s)cold_start_eval.map.*unknown key 'lambda'"):
        Experiment.load(tmp_path / "tiny-cold.yaml")
    _write(tmp_path, cold_start_eval={"scoring": {"text_weight": 0.5, "calibration": "none"}})
    with pytest.raises(ConfigError, match=r"(?s)cold_start_eval.scoring.*text_weight.*calibrate"):
        Experiment.load(tmp_path / "tiny-cold.yaml")
