import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.training import PAPER_MODE_SELECTION, RunDir, load_run, train
from tests.helpers import child_env
from tests.helpers.tinyrun import FAST_TRAINER, TEST_BACKBONE, write_tiny_dataset

TIMING = {"seconds", "train_seconds", "peak_rss_mb"}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _assert_same_run(a, b):
    for name in ("best.safetensors", "last.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), (name, key)
    assert _without_timing(_log(a)) == _without_timing(_log(b))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test"] == mb["test"] and ma["valid"] == mb["valid"]
    assert ma["best_epoch"] == mb["best_epoch"]


def test_train_writes_a_complete_run_folder(tiny_dataset, tmp_path):
    result = train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, FAST_TRAINER, out=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "log.jsonl", "best.safetensors", "last.safetensors", "metrics.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temp files
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": TEST_BACKBONE, "config": {"embedding_dim": 8, "dropout": 0.2}}
    assert config["trainer"]["lr"] == 0.01 and config["trainer"]["batch_size"] == 16  # default_train
    assert config["trainer"]["seed"] == 7  # the caller's values win over default_train
    assert len(config["dataset"]["manifest_sha256"]) == len(config["dataset"]["fingerprint"]) == 64
    log = _log(run)
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"loss", "lr", "valid", "seconds", "peak_rss_mb", "improved", "best_epoch"} <= set(log[0])
    assert log[0]["loss"] > log[-1]["loss"]  # it learns
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"].startswith("valid:")
    assert metrics["epochs_run"] == 3 and metrics["best_epoch"] == result.best_epoch
    assert metrics["valid"] == log[result.best_epoch - 1]["valid"]
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ("HR", "MRR", "NDCG") for k in (5, 10, 20)}
    assert metrics["seconds_per_epoch_mean"] > 0 and metrics["peak_rss_mb"] > 0
    # the tiny data mostly walks i -> i+1, so a trained model is far above random (MRR@20 ~ 0.12)
    assert result.test["MRR@20"] > 0.3


def test_best_checkpoint_reproduces_the_reported_test_metrics(tiny_dataset, tmp_path):
    from intentrec.evaluation import evaluate_model

    result = train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=tmp_path / "run")
    trained = load_run(tmp_path / "run")
    assert not trained.model.training
    assert evaluate_model(trained.model, trained.dataset.examples("test")) == result.test


def test_resume_equals_uninterrupted_training(tiny_dataset, tmp_path):
    full = tmp_path / "full"
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=full)
    split = tmp_path / "split"
    first = train(tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "epochs": 2}, out=split)
    assert first.epochs_run == 2
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=split)
    _assert_same_run(full, split)


def test_interrupted_run_resumes_without_duplicate_log_lines(tiny_dataset, tmp_path):
    full = tmp_path / "full"
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=full)

    def crash_after_epoch_2(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run, on_epoch=crash_after_epoch_2)
    assert not (run / "metrics.json").exists()
    # a crash between the state save and the log append could leave an extra or a missing line
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join(lines[:1] + [lines[0]] * 2) + "\n")
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run)
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3]
    _assert_same_run(full, run)


def test_resume_accepts_an_option_added_since_with_its_default(tiny_dataset, tmp_path):
    """A run started before a config option existed resumes when the option's default is in force."""
    run = tmp_path / "run"
    train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, {**FAST_TRAINER, "epochs": 2}, out=run)
    config = json.loads((run / "config.json").read_text())
    del config["model"]["config"]["dropout"]  # as written before `dropout` existed (default 0.2)
    (run / "config.json").write_text(json.dumps(config))
    resumed = train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8}, FAST_TRAINER, out=run)
    assert resumed.epochs_run == FAST_TRAINER["epochs"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntentrecError, match=r"model\.dropout: 0\.2 → 0\.5"):
        train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 8, "dropout": 0.5}, {**FAST_TRAINER, "epochs": 4}, out=run)


def test_resume_and_load_accept_the_same_dataset_prepared_again(tmp_path):
    """A fresh machine prepares the dataset anew (another time, another path): runs go on and load."""
    data = write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train(data, TEST_BACKBONE, None, {**FAST_TRAINER, "epochs": 2}, out=run)
    moved = tmp_path / "moved"
    data.rename(moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    (moved / "manifest.json").write_text(json.dumps({**manifest, "created": "2030-01-01T00:00:00Z"}))
    resumed = train(moved, TEST_BACKBONE, None, FAST_TRAINER, out=run)
    assert resumed.epochs_run == FAST_TRAINER["epochs"]
    assert load_run(run, dataset_dir=moved).dataset.path == moved
    (moved / "manifest.json").write_text(json.dumps({**manifest, "protocol": "another"}))
    with pytest.raises(DataError, match="fingerprint mismatch"):
        load_run(run, dataset_dir=moved)
    with pytest.raises(IntentrecError, match="dataset differs"):
        train(moved, TEST_BACKBONE, None, {**FAST_TRAINER, "epochs": 4}, out=run)


def test_finished_run_is_returned_without_training_again(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run)
    before = (run / "log.jsonl").read_bytes(), (run / "best.safetensors").stat().st_mtime_ns
    calls = []
    again = train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run, on_epoch=calls.append)
    assert calls == [] and again.test == first.test
    assert ((run / "log.jsonl").read_bytes(), (run / "best.safetensors").stat().st_mtime_ns) == before


def test_resume_with_different_settings_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "epochs": 1}, out=run)
    with pytest.raises(IntentrecError, match=r"train\.lr: 0\.01 → 0\.05"):
        train(tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "lr": 0.05}, out=run)
    with pytest.raises(IntentrecError, match=r"model\.embedding_dim"):
        train(tiny_dataset, TEST_BACKBONE, {"embedding_dim": 4}, FAST_TRAINER, out=run)
    # --no-resume replaces the run
    replaced = train(
        tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "lr": 0.05, "epochs": 1}, out=run, resume=False
    )
    assert replaced.epochs_run == 1
    assert json.loads((run / "config.json").read_text())["trainer"]["lr"] == 0.05
    assert len(_log(run)) == 1


def test_a_run_folder_in_use_by_another_process_is_refused_untouched(tiny_dataset, tmp_path):
    from intentrec.io import exclusive_lock

    run = tmp_path / "run"
    with exclusive_lock(run / ".lock", what="someone else's run"):
        with pytest.raises(IntentrecError, match=f"run folder {run} is in use by pid"):
            train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run)
    assert [p.name for p in run.iterdir()] == [".lock"]  # nothing written
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run)  # free again
    assert (run / "metrics.json").is_file()


def test_early_stopping_stops_after_patience_epochs(tiny_dataset, tmp_path):
    # lr far below float32 resolution: weights never change, so validation never improves
    cfg = {"epochs": 10, "patience": 2, "lr": 1e-12, "num_threads": 1}
    result = train(tiny_dataset, TEST_BACKBONE, None, cfg, out=tmp_path / "run")
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 3
    assert [r["improved"] for r in result.history] == [True, False, False]
    # a stopped run stays stopped, even when more epochs are allowed
    again = train(tiny_dataset, TEST_BACKBONE, None, {**cfg, "epochs": 20}, out=tmp_path / "run")
    assert again.epochs_run == 3


def test_lr_decays_by_step(tiny_dataset, tmp_path):
    cfg = {"epochs": 3, "patience": None, "lr": 0.01, "lr_decay_step": 2, "lr_decay_gamma": 0.5}
    result = train(tiny_dataset, TEST_BACKBONE, None, cfg, out=tmp_path / "run")
    assert [r["lr"] for r in result.history] == pytest.approx([0.01, 0.01, 0.005])


def test_paper_mode_reports_per_metric_max_over_test_epochs(tiny_dataset, tmp_path):
    result = train(tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "select_on": "test"}, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.paper_mode and metrics["selection"] == PAPER_MODE_SELECTION
    assert "PAPER MODE" in metrics["warning"]
    per_epoch = metrics["per_epoch"]
    assert [e["epoch"] for e in per_epoch] == [1, 2, 3]
    for key, value in metrics["test"].items():
        assert value == max(e["test"][key] for e in per_epoch)
        assert per_epoch[metrics["test_argmax_epoch"][key] - 1]["test"][key] == value
    honest = metrics["valid_selected"]
    best_valid = max(per_epoch, key=lambda e: e["valid"]["MRR@20"])
    assert honest["epoch"] == best_valid["epoch"] and honest["test"] == best_valid["test"]
    assert all("test" in r and "valid" in r for r in _log(tmp_path / "run"))


def test_track_test_exposes_the_test_curve_without_using_it(tiny_dataset, tmp_path):
    plain = train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=tmp_path / "plain")
    tracked = train(tiny_dataset, TEST_BACKBONE, None, {**FAST_TRAINER, "track_test": True}, out=tmp_path / "t")
    assert not tracked.paper_mode
    assert tracked.test == plain.test and tracked.best_epoch == plain.best_epoch  # selection unchanged
    per_epoch = tracked.metrics["per_epoch"]
    assert per_epoch[tracked.best_epoch - 1]["test"] == tracked.test  # same weights, same numbers
    inflated = tracked.metrics["test_max_over_epochs"]
    assert "analysis only" in inflated["note"]
    for key, value in inflated["test"].items():
        assert value == max(e["test"][key] for e in per_epoch) >= tracked.test[key]


def test_missing_valid_split_requires_paper_mode(tmp_path):
    data = write_tiny_dataset(tmp_path / "novalid", valid=False)
    with pytest.raises(DataError, match="valid split has no examples"):
        train(data, TEST_BACKBONE, None, FAST_TRAINER, out=tmp_path / "run")
    result = train(data, TEST_BACKBONE, None, {**FAST_TRAINER, "select_on": "test"}, out=tmp_path / "p")
    assert result.paper_mode and "valid_selected" not in result.metrics


def test_diverging_loss_stops_with_a_clear_error(tiny_dataset, tmp_path, monkeypatch):
    from tests.helpers import tinyrun

    original = tinyrun.MeanBackbone.loss
    monkeypatch.setattr(tinyrun.MeanBackbone, "loss", lambda self, batch: original(self, batch) * float("nan"))
    with pytest.raises(IntentrecError, match="diverged.*epoch 1"):
        train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_config_errors_name_the_field(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        train(tiny_dataset, TEST_BACKBONE, None, {"lrr": 1}, out=tmp_path / "run")
    with pytest.raises(ConfigError, match="select_metric"):
        train(tiny_dataset, TEST_BACKBONE, None, {"select_metric": "MRR@50"}, out=tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        train(tiny_dataset, "nope", None, None, out=tmp_path / "run")
    with pytest.raises(DataError, match="no manifest.json"):
        train(tmp_path, TEST_BACKBONE, None, None, out=tmp_path / "run")
    assert not RunDir(tmp_path / "run").has_run()


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(tiny_dataset, tmp_path):
    import subprocess
    import textwrap

    from intentrec.data.dataset import PreparedDataset

    run = tmp_path / "killed"
    batch_size = 16  # MeanBackbone.default_train
    steps_per_epoch = PreparedDataset(tiny_dataset).examples("train").num_batches(batch_size)
    script = textwrap.dedent(
        f"""
        import os, signal
        from tests.helpers import tinyrun
        from intentrec.training import train

        original = tinyrun.MeanBackbone.loss
        calls = 0

        def loss(self, batch):
            global calls
            calls += 1
            if calls == {steps_per_epoch + steps_per_epoch // 2}:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)

        tinyrun.MeanBackbone.loss = loss
        train({str(tiny_dataset)!r}, "test-mean", None, {FAST_TRAINER!r}, out={str(run)!r}, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == -9, proc.stderr
    assert [r["epoch"] for r in _log(run)] == [1]
    assert not (run / "metrics.json").exists()

    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=run)
    full = tmp_path / "full"
    train(tiny_dataset, TEST_BACKBONE, None, FAST_TRAINER, out=full)
    _assert_same_run(full, run)


def test_gradient_accumulation_equals_one_larger_batch(tiny_dataset, tmp_path, monkeypatch):
    """A model's training plan may accumulate gradients: 2 × 8 examples per step is one step over 16."""
    import numpy as np

    from intentrec.data.dataset import PreparedDataset
    from intentrec.models.base import TrainingPlan
    from intentrec.training.run import RunDir as Folder
    from intentrec.training.run import build_configs
    from intentrec.training.trainer import _Loop
    from tests.helpers import tinyrun

    def params_after_one_epoch(batch_size: int, accumulate: int, out) -> list[torch.Tensor]:
        def plan(self, cfg, device):
            return TrainingPlan(torch.optim.SGD(self.param_groups(cfg), lr=0.5), None, accumulate)

        monkeypatch.setattr(tinyrun.MeanBackbone, "training_plan", plan)
        _, model_cfg, cfg = build_configs(TEST_BACKBONE, {"dropout": 0.0}, {**FAST_TRAINER, "batch_size": batch_size})
        loop = _Loop(PreparedDataset(tiny_dataset), TEST_BACKBONE, model_cfg, cfg, Folder(out), False, None)
        loop.train_set = loop.train_set.subset(np.arange(32))  # 4 batches of 8 = 2 of 16
        loop._train_one_epoch(1)
        return [p.detach().clone() for p in loop.model.parameters()]

    accumulated = params_after_one_epoch(8, 2, tmp_path / "a")
    larger = params_after_one_epoch(16, 1, tmp_path / "b")
    plain = params_after_one_epoch(8, 1, tmp_path / "c")
    for a, b in zip(accumulated, larger):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, c) for a, c in zip(accumulated, plain))
