"""``intentrec train`` / ``evaluate`` / ``recommend``: in-process on the tiny dataset and test backbone,
with the LLM4SBR method over a real backbone, and end to end through the installed command on real data."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from intentrec.cli.main import app
from intentrec.cli.train import resolve_settings
from intentrec.errors import ConfigError, DataError, IntentrecError
from tests.helpers.data import require_data
from tests.helpers.tiny_dataset import write_tiny_dataset as write_tiny_prepared_dataset
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset

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


def test_evaluate_with_a_rerank_stage(tiny_dataset, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _invoke("train", tiny_dataset, "--model", TEST_BACKBONE, "--out", first, *FAST)
    _invoke("train", tiny_dataset, "--model", "srgnn", "--out", second, *FAST)
    report = json.loads(_invoke("evaluate", first, "--rerank-with", second, "--json"))
    own = json.loads((first / "metrics.json").read_text())["test"]
    assert report["metrics_before_rerank"] == own and report["reranked_by"] == str(second)
    for k in (5, 10, 20):  # each list holds the same items, so HR@K cannot move
        assert report["metrics"][f"HR@{k}"] == own[f"HR@{k}"]
    assert report["metrics"] != own  # the order inside the lists did
    assert "re-ranked by" in _invoke("evaluate", first, "--rerank-with", second)


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


# ----------------------------------------------------------------------------- a method over a real backbone


def test_titles_source_end_to_end_with_the_real_encoder(tmp_path):
    """``train --method llm4sbr`` over SR-GNN with the titles source, then ``evaluate`` and ``recommend``."""
    pytest.importorskip("sentence_transformers")
    tiny = write_tiny_prepared_dataset(tmp_path / "tiny")
    args = [
        "train",
        str(tiny.path),
        "--model",
        "srgnn",
        "--method",
        "llm4sbr",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "train.epochs=2",
        "--set",
        "model.embedding_dim=16",
        "--set",
        "method.k=2",
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text source: titles" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    semantic = metrics["semantic"]
    assert semantic["source"] == "titles" and semantic["views"] == ["long", "short"]
    assert semantic["examples_used"] == semantic["examples_total"]
    files = sorted(p.name for p in (tiny.path / "semantic").glob("views.titles-*.safetensors"))
    assert len(files) == 2 and all(".k2." in f for f in files)
    # evaluate re-attaches the features from the cached files and reproduces the final test metrics
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"]["HR@20"] == pytest.approx(metrics["test"]["HR@20"])
    # a changed method setting refuses to resume into the same folder
    changed = runner.invoke(app, [*args[:-1], "--set", "method.lambda_au=0", "--no-progress"])
    assert isinstance(changed.exception, IntentrecError) and "method.lambda_au: 0.1 → 0.0" in str(changed.exception)
    # the titles source serves new sessions: their views are computed by the stored rule, so a
    # dataset example's prefix gets exactly its stored features and its evaluation-time scores
    rec = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--items", "item1,item2", "--k", "3", "--json"])
    assert rec.exit_code == 0, rec.output
    assert [r["rank"] for r in json.loads(rec.output)["recommendations"]] == [1, 2, 3]
    from intentrec.training import load_run

    trained = load_run(tmp_path / "run")
    examples = trained.dataset.examples("test")
    batch = next(examples.batches(8))
    online = trained.model.session_features(batch)
    for name in ("long", "short"):
        torch.testing.assert_close(online[name], trained.model.feature(name, batch.example_ids), atol=2e-3, rtol=0)
    with torch.no_grad(), trained.model.features_for(online):
        served = trained.model(batch)
    with torch.no_grad():
        stored = trained.model(batch)
    torch.testing.assert_close(served, stored, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------- the installed command, real data

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


@pytest.mark.slow
def test_prepare_train_evaluate_recommend_on_ml_latest_small(tmp_path):
    """End to end through the installed command on real data: prepare → train → evaluate → recommend."""
    source = require_data("movielens/ml-latest-small/ratings.csv").parent
    data, run = tmp_path / "data", tmp_path / "run"
    _intentrec("prepare", "movielens", source, "--max-sessions", "200", "--out", data)
    model = _fast_backbone()

    out = _intentrec(
        "train",
        data,
        "--model",
        model,
        "--out",
        run,
        "--set",
        "embedding_dim=16",
        "--set",
        "epochs=2",
        "--set",
        "max_length=20",
        "--set",
        "num_threads=1",
        "--set",
        "patience=null",
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
