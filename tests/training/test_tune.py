"""``intentrec.training.tune``: search spaces, studies on the tiny dataset (2–3 trials of 2 epochs),
resume after kill -9, shared studies, outputs, and that TEST is never evaluated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import ClassVar

import pytest

optuna = pytest.importorskip("optuna")

from intentrec.config import load_config_file  # noqa: E402
from intentrec.errors import ConfigError, IntentrecError  # noqa: E402
from intentrec.io import exclusive_lock  # noqa: E402
from intentrec.models.base import BackboneConfig  # noqa: E402
from intentrec.models.registry import _BACKBONE_MODULES  # noqa: E402
from intentrec.search_space import Choice, FloatRange, IntRange, SearchSpace, check_space  # noqa: E402
from intentrec.training import trainer as trainer_module  # noqa: E402
from intentrec.training.config import TrainerConfig  # noqa: E402
from intentrec.training.tune import (  # noqa: E402
    TRIAL_LOCK,
    declared_space,
    load_space_file,
    search_space,
    tune,
)
from tests.helpers import child_env  # noqa: E402
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset  # noqa: E402

FIXED = {"epochs": 2, "num_threads": 1, "patience": None, "seed": 3}
TUNE = {"trials": 2, "seed": 11}
DECLARED = ("gru4rec", "narm", "stamp", "sasrec", "srgnn", "gcsan", "niser", "tagnn", "gcegnn", "msgat", "llmseqsim")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tune") / "data")


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory):
    """One uninterrupted 2-trial study; records which splits the trainer evaluated."""
    evaluated: list[str] = []
    original = trainer_module.evaluate_model

    def spy(model, examples, **kwargs):
        evaluated.append(examples.split)
        return original(model, examples, **kwargs)

    trainer_module.evaluate_model = spy
    try:
        out = tmp_path_factory.mktemp("study")
        result = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=out, config=TUNE)
    finally:
        trainer_module.evaluate_model = original
    return result, evaluated


def _values(out):
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.sqlite3'}")
    trials = optuna.load_study(study_name=None, storage=storage).get_trials()
    return trials


# --------------------------------------------------------------------------- search spaces


def test_every_backbone_and_method_declares_a_checked_space():
    for name in _BACKBONE_MODULES:  # every registered one, so a range that no longer fits fails here
        assert {"train.lr", "train.l2", "train.batch_size"} <= set(declared_space(name)), name
    for name in DECLARED:
        assert any(key.startswith("model.") for key in declared_space(name)), f"{name} declares no model range"
    for name in ("llm4sbr", "dmsrec", "semsr"):
        assert any(key.startswith("method.") for key in declared_space("srgnn", name)), name
    assert {"model.dropout", "model.scale", "model.steps"} <= set(declared_space("niser"))


def test_a_typo_in_a_declared_space_fails_when_the_class_is_defined():
    with pytest.raises(ConfigError, match="'dropuot' is not a field of BadConfig"):

        class BadConfig(BackboneConfig):
            dropout: float = 0.1
            search_space: ClassVar[SearchSpace] = {"dropuot": FloatRange(low=0.0, high=0.5)}


def test_ranges_are_checked_against_the_field():
    with pytest.raises(ConfigError, match=r"'lr': 0.0 is not a valid value"):
        check_space(TrainerConfig, {"lr": FloatRange(low=0.0, high=0.1)})  # lr > 0
    with pytest.raises(ConfigError, match="'batch_size': 1.0 is not a valid value"):
        check_space(TrainerConfig, {"batch_size": FloatRange(low=1.0, high=64.0)})  # a float range on an int
    with pytest.raises(ConfigError, match="'select_on': 'train'"):
        check_space(TrainerConfig, {"select_on": Choice(choices=("valid", "train"))})
    with pytest.raises(ValueError, match="log range needs low > 0"):
        IntRange(low=0, high=4, log=True)


def test_space_file_adds_drops_and_limits(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n"
        "  model.embedding_dim: {type: categorical, choices: [8, 16]}\n"
        "  train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "  train.l2: null\n"
    )
    space, left_out = search_space(TEST_BACKBONE, None, path, {"train": {"batch_size": 16}})
    assert set(space) == {"model.embedding_dim", "train.lr"}
    assert space["train.lr"] == FloatRange(low=1e-3, high=1e-2, log=True)
    assert left_out == ["train.batch_size"]  # set explicitly, so not searched

    path.write_text("only: [train.lr]\n")
    assert list(search_space(TEST_BACKBONE, None, path)[0]) == ["train.lr"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params:\n  model.dropuot: {type: float, low: 0, high: 0.5}\n", "'dropuot' is not a field of MeanConfig"),
        ("params:\n  dropout: {type: float, low: 0, high: 0.5}\n", "must be named <section>.<field>"),
        ("params:\n  model.dropout: {type: float, low: 0.5}\n", r"params.model.dropout: invalid range \(high"),
        ("params:\n  train.lr: {type: int, low: 0, high: 2}\n", "'lr': 0 is not a valid value"),
        ("paramz: {}\n", "unknown key 'paramz'"),
    ],
)
def test_space_file_errors_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space_file(path, TEST_BACKBONE)
    assert "space.yaml" in str(info.value)


def test_only_must_name_params_of_the_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("only: [model.embedding_dim]\n")
    with pytest.raises(ConfigError, match="only names"):
        search_space(TEST_BACKBONE, None, path)


# --------------------------------------------------------------------------- studies


def test_study_never_evaluates_test_and_writes_its_outputs(study):
    result, evaluated = study
    assert evaluated and set(evaluated) == {"valid"}
    assert result.counts == {"COMPLETE": 2} and result.trials_run == 2
    assert set(result.best_params) == {"train.lr", "train.l2", "train.batch_size"}
    for trial_dir in (result.out / "trials").iterdir():
        metrics = json.loads((trial_dir / "metrics.json").read_text())
        assert "test" not in metrics and "TEST not evaluated" in metrics["selection"]
    best = load_config_file(result.best_config)
    assert best["train"]["lr"] == result.best_params["train.lr"]
    assert best["train"]["epochs"] == 2 and "num_threads" not in best["train"]  # fixed, minus machine settings
    report = result.report.read_text()
    assert "| 0 | complete |" in report and "| 1 | complete |" in report
    assert "fANOVA (Optuna's FanovaImportanceEvaluator" in report
    assert result.history_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_trials(study, tiny_dataset, tmp_path):
    result, _ = study
    again = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=tmp_path, config=TUNE)
    first, second = _values(result.out), _values(tmp_path)
    assert [(t.params, t.value) for t in first] == [(t.params, t.value) for t in second]
    assert again.best_value == result.best_value


def test_rerun_with_the_same_count_runs_nothing(study, tiny_dataset):
    result, _ = study
    again = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=result.out, config=TUNE)
    assert again.trials_run == 0 and again.counts == {"COMPLETE": 2}


def test_other_settings_are_refused(study, tiny_dataset):
    result, _ = study
    with pytest.raises(IntentrecError, match=r"other settings.*\n.*fixed.train.epochs: 2 → 3"):
        tune(tiny_dataset, TEST_BACKBONE, None, {**FIXED, "epochs": 3}, out=result.out, config=TUNE)


def test_kill_9_mid_trial_then_rerun_retries_it_in_its_folder(study, tiny_dataset, tmp_path):
    """Trial 1 is killed mid-epoch 2; the rerun fails it, retries its parameters in its folder from
    epoch 1, and ends with the same values as the uninterrupted study."""
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal
        from tests.helpers import tinyrun
        from intentrec.training.tune import tune

        armed = False
        original = tinyrun.MeanBackbone.loss

        def loss(self, batch):
            if armed:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)

        def on_epoch(number, record):
            global armed
            armed = number == 1 and record["epoch"] == 1

        tinyrun.MeanBackbone.loss = loss
        tune({str(tiny_dataset)!r}, "test-mean", None, {FIXED!r}, out={str(out)!r}, config={TUNE!r},
             on_epoch=on_epoch)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=child_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    trials = _values(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]
    killed_dir = out / "trials" / "trial-0001"
    first_epoch = (killed_dir / "log.jsonl").read_text().splitlines()
    assert len(first_epoch) == 1

    result = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=out, config=TUNE)
    trials = _values(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert trials[2].user_attrs["run_dir"] == str(killed_dir.resolve())
    log = (killed_dir / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and log[0] == first_epoch[0]  # resumed after epoch 1, not retrained
    assert [t.value for t in trials if t.value is not None] == [t.value for t in _values(study[0].out)]
    report = result.report.read_text()
    assert "process died; retried as trial 2" in report and "retry of trial 1" in report


def test_a_live_trial_of_another_process_is_left_alone(tiny_dataset, tmp_path):
    """A RUNNING trial whose folder lock is held counts toward --trials and is not failed."""
    tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=tmp_path, config={**TUNE, "trials": 1})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.sqlite3'}")
    other = optuna.load_study(study_name=None, storage=storage)
    live = other.ask()
    other_dir = tmp_path / "elsewhere"
    live.set_user_attr("run_dir", str(other_dir))
    with exclusive_lock(other_dir / TRIAL_LOCK, what="the other process's trial"):
        result = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=tmp_path, config={**TUNE, "trials": 3})
    states = [t.state.name for t in _values(tmp_path)]
    assert states == ["COMPLETE", "RUNNING", "COMPLETE"] and result.trials_run == 1


def test_pruned_trials_stop_and_count(tiny_dataset, tmp_path, monkeypatch):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def __init__(self, **kwargs):
            pass

        def prune(self, study, trial):
            return True

    monkeypatch.setattr(optuna.pruners, "MedianPruner", AlwaysPrune)
    result = tune(tiny_dataset, TEST_BACKBONE, None, FIXED, out=tmp_path, config={**TUNE, "trials": 1})
    (trial,) = _values(tmp_path)
    assert trial.state.name == "PRUNED" and trial.user_attrs["epochs"] == 1
    assert result.best_config is None and not (tmp_path / "best.yaml").exists()
    assert "pruned after epoch 1" in result.report.read_text()
    assert not (tmp_path / "trials" / "trial-0000" / "metrics.json").exists()


def test_test_selection_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="VALID only"):
        tune(tiny_dataset, TEST_BACKBONE, None, {**FIXED, "select_on": "test"}, out=tmp_path, config=TUNE)
    assert not os.listdir(tmp_path)
