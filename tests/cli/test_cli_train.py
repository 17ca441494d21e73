"""End to end through the installed command: prepare → train → evaluate → recommend, on real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# tests/conftest.py's require_data, importable in every pytest import mode.
sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import require_data  # noqa: E402

pytestmark = pytest.mark.slow

#: A fast real backbone; the first one that is registered is used.
FAST_BACKBONES = ("stamp", "gru4rec", "narm")


def _intentrec(*args, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "intentrec.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _fast_backbone() -> str:
    from intentrec.models.registry import BACKBONES, load_all

    load_all()
    for name in FAST_BACKBONES:
        if name in BACKBONES:
            return name
    pytest.fail(f"none of the backbones {FAST_BACKBONES} is registered")


def test_prepare_train_evaluate_recommend_on_ml_latest_small(tmp_path):
    source = require_data("movielens/ml-latest-small/ratings.csv").parent
    data, run = tmp_path / "data", tmp_path / "run"
    _intentrec("prepare", "movielens", source, "--max-sessions", "200", "--out", data)
    model = _fast_backbone()

    out = _intentrec(
        "train", data, "--model", model, "--out", run,
        "--set", "embedding_dim=16", "--set", "epochs=2", "--set", "max_length=20",
        "--set", "num_threads=1", "--set", "patience=null",
    ).stdout
    assert "epoch   2" in out and "best epoch" in out
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == model and config["command"].startswith("intentrec train")
    assert config["dataset"]["path"] == str(data.resolve())
    assert metrics["epochs_run"] == 2 and len((run / "log.jsonl").read_text().splitlines()) == 2
    assert all(0.0 <= v <= 1.0 for v in metrics["test"].values())
    # 2 epochs already beat random ranking (HR@20 = 20 / num_items < 0.01) by far
    num_items = json.loads((data / "manifest.json").read_text())["statistics"]["items"]
    assert metrics["test"]["HR@20"] > 3 * 20 / num_items

    report = json.loads(_intentrec("evaluate", run, "--json").stdout)
    assert report["metrics"] == pytest.approx(metrics["test"], abs=1e-12)

    items = pd.read_parquet(data / "items.parquet").sort_values("train_count", ascending=False)
    given = [str(i) for i in items["item_id"].head(2)]
    recs = json.loads(_intentrec("recommend", run, "--items", ",".join(given), "--k", "5", "--json").stdout)
    assert [s["item_id"] for s in recs["session"]] == given
    assert all(s["title"] for s in recs["session"])  # movie titles from movies.csv
    assert len(recs["recommendations"]) == 5
    assert set(r["item_id"] for r in recs["recommendations"]) <= set(items["item_id"].astype(str))

    bad = _intentrec("recommend", run, "--items", f"{given[0]},no-such-movie", expect=2)
    assert "no-such-movie" in bad.stderr and "Traceback" not in bad.stderr
