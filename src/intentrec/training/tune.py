"""Hyper-parameter search on the VALIDATION split with Optuna (``intentrec tune``).

Each trial samples a point of the search space (the ranges declared on the trainer's, the backbone's
and the method's config classes, see :mod:`intentrec.search_space`, optionally limited by a space
file), trains an ordinary resumable run into ``OUT/trials/trial-NNNN`` with selection on VALID, and
reports the validation metric after every epoch so the pruner can stop bad trials. TEST is never
evaluated (``train(..., evaluate_test=False)``).

The study lives in SQLite (default ``OUT/study.sqlite3``), so a rerun continues it and several
processes can share it. ``--trials N`` is the study's total of finished (complete or pruned) and
running trials, not a number of new ones. A process holds a lock on its trial's folder while the
trial runs; a RUNNING trial whose lock is free belongs to a process that died (``kill -9``): it is
marked FAIL and its parameters are queued again with the same folder, so the retry resumes the dead
trial's run from its last completed epoch. Asking for a trial and taking its lock happen under one
study-wide lock, so no process mistakes a just-started trial for a dead one. (Locks are advisory
``flock`` locks: the processes must share one machine or a file system that supports them.)

Outputs, each written to a temporary file and renamed: ``best.yaml`` (accepted by
``intentrec train --config``), ``report.md`` (trials, importances, space) and ``history.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field

from intentrec.config import Config, load_config_file
from intentrec.data.identity import DatasetIdentity
from intentrec.errors import ConfigError, IntentrecError, InUseError
from intentrec.io import atomic_open, atomic_path, exclusive_lock
from intentrec.models.methods.registry import method_class
from intentrec.models.registry import backbone_class
from intentrec.search_space import Choice, FloatRange, IntRange, check_space, describe_param, dump_param, parse_param
from intentrec.training.config import RESUMABLE_FIELDS, TrainerConfig
from intentrec.training.run import RunDir, build_configs

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.sqlite3"
TRIALS_DIR = "trials"
TRIAL_LOCK = ".tune.lock"  # held by the process running the trial (train() holds .lock itself)
BEST_FILE = "best.yaml"
REPORT_FILE = "report.md"
HISTORY_FILE = "history.png"
SETTINGS_ATTR = "intentrec"
SECTIONS = ("model", "train", "method")
#: trainer fields that may differ between the processes/reruns of one study (they change no result)
VOLATILE_TRAIN = RESUMABLE_FIELDS - {"epochs"}


class TuneConfig(Config):
    trials: int = Field(20, ge=0, description="total trials of the study (complete + pruned + running)")
    metric: str | None = Field(None, description="validation metric to maximise; None: train.select_metric")
    seed: int = Field(0, description="TPE sampler seed (trial n samples with seed + n)")
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(5, ge=0, description="complete trials before the pruner acts")
    warmup_epochs: int = Field(1, ge=0, description="epochs of each trial that are never pruned")
    study_name: str | None = Field(None, description="default: <dataset folder>-[<method>-]<model>")
    storage: str | None = Field(None, description="SQLite file or database URL; default OUT/study.sqlite3")


class SpaceFile(Config):
    """A user's space file: ``params`` adds or replaces ranges (null drops one), ``only`` keeps a subset."""

    params: dict[str, Any] = Field(default_factory=dict)
    only: list[str] | None = None


Range = FloatRange | IntRange | Choice


@dataclass
class TuneResult:
    out: Path
    study_name: str
    storage: str
    trials_run: int  # by this call
    counts: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    report: Path
    history_png: Path | None
    space: dict[str, Range] = field(repr=False)


# --------------------------------------------------------------------------- the search space


def _section_classes(model: str, method: str | None) -> dict[str, type[Config]]:
    classes: dict[str, type[Config]] = {"train": TrainerConfig, "model": backbone_class(model).Config}
    if method is not None:
        classes["method"] = method_class(method).Config
    return classes


def declared_space(model: str, method: str | None = None) -> dict[str, Range]:
    """The ranges declared on the trainer's, the backbone's and the method's config, named like --set keys."""
    space: dict[str, Range] = {}
    for section, cls in _section_classes(model, method).items():
        for name, param in getattr(cls, "search_space", {}).items():
            space[f"{section}.{name}"] = param
    return space


def _split_name(name: str, classes: Mapping[str, type[Config]], where: str) -> tuple[str, str]:
    section, _, field_name = name.partition(".")
    if section not in classes or not field_name:
        raise ConfigError(f"{where}: '{name}' must be named <section>.<field> with section one of {', '.join(classes)}")
    return section, field_name


def load_space_file(path: str | Path, model: str, method: str | None = None) -> SpaceFile:
    """Read and check a space file against the configs of ``model`` (and ``method``)."""
    spec = SpaceFile.build(load_config_file(path), where=f"space file {path}")
    classes = _section_classes(model, method)
    for name, value in spec.params.items():
        section, field_name = _split_name(name, classes, f"{path}: params")
        if value is not None:
            param = parse_param(value, where=f"{path}: params.{name}")
            check_space(classes[section], {field_name: param}, where=f"{path}: params.{name}")
            spec.params[name] = param
    for name in spec.only or []:
        _split_name(name, classes, f"{path}: only")
    return spec


def search_space(
    model: str,
    method: str | None = None,
    space_file: str | Path | SpaceFile | None = None,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Range], list[str]]:
    """(space, names left out because ``fixed`` sets them): declared ranges, then the space file's.

    ``fixed`` holds the settings given explicitly (``{"train": {"lr": ...}, "model": {...}}``): a value
    the user set is not searched.
    """
    space = declared_space(model, method)
    where = "space file"
    if space_file is not None:
        where = f"space file {space_file}" if not isinstance(space_file, SpaceFile) else where
        spec = space_file if isinstance(space_file, SpaceFile) else load_space_file(space_file, model, method)
        for name, param in spec.params.items():
            if param is None:
                if name not in space:
                    raise ConfigError(f"{where}: params.{name} is null, but '{name}' is not in the space")
                del space[name]
            else:
                space[name] = param
        if spec.only is not None:
            missing = [n for n in spec.only if n not in space]
            if missing:
                raise ConfigError(f"{where}: only names {missing}, not in the space ({', '.join(space)})")
            space = {n: space[n] for n in spec.only}
    left_out = []
    for name in list(space):
        section, field_name = name.split(".", 1)
        if fixed and field_name in (fixed.get(section) or {}):
            left_out.append(name)
            del space[name]
    return space, left_out


def _suggest(trial: optuna.Trial, space: Mapping[str, Range]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, FloatRange):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntRange):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


def _with_params(base: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    merged = {section: dict(base.get(section) or {}) for section in SECTIONS}
    for name, value in params.items():
        section, field_name = name.split(".", 1)
        merged[section][field_name] = value
    return merged


# --------------------------------------------------------------------------- study and locks


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise IntentrecError("intentrec tune needs Optuna: pip install 'intentrec[tune]'") from None
    return optuna


def _storage_url(storage: str | None, out: Path) -> tuple[str, Path]:
    """(database URL, study lock file)."""
    if storage is None:
        storage = str(out / STUDY_FILE)
    if "://" in storage:
        if storage.startswith("sqlite:///"):
            db = Path(storage.removeprefix("sqlite:///"))
            return storage, db.with_name(db.name + ".lock")
        return storage, out / ".study.lock"
    db = Path(storage).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}", db.with_name(db.name + ".lock")


def _lock_is_held(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with exclusive_lock(path, what=f"trial folder {path.parent}"):
            return False
    except InUseError:
        return True


def _fail_dead_trials(study: optuna.Study, space: Mapping[str, Range]) -> list[int]:
    """RUNNING trials whose process is gone → FAIL, their parameters queued again (same run folder)."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir is not None and _lock_is_held(Path(run_dir) / TRIAL_LOCK):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        failed.append(trial.number)
        if run_dir is not None and set(trial.params) == set(space):
            original = trial.user_attrs.get("retry_of", trial.number)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": original, "run_dir": run_dir})
    return failed


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- tune


def tune(
    dataset_dir: str | Path,
    model: str,
    model_config: dict[str, Any] | None = None,
    trainer_config: dict[str, Any] | None = None,
    *,
    out: str | Path,
    method: str | None = None,
    method_config: dict[str, Any] | None = None,
    config: TuneConfig | dict[str, Any] | None = None,
    space_file: str | Path | SpaceFile | None = None,
    command: str | None = None,
    on_trial_start: Callable[[int, dict[str, Any]], None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    on_trial_end: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run (or continue) a study until it holds ``config.trials`` trials, then write its outputs.

    ``model_config``/``trainer_config``/``method_config`` are the fixed settings (as ``train()``
    takes them, before the backbone's paper defaults); what they set is not searched.
    """
    optuna = import_optuna()
    from optuna.trial import TrialState

    from intentrec.training.trainer import train

    cfg = config if isinstance(config, TuneConfig) else TuneConfig.build(config, where="tune config")
    out = Path(out)
    dataset_dir = Path(dataset_dir)
    base = {
        "model": dict(model_config or {}),
        "train": dict(trainer_config or {}),
        "method": dict(method_config or {}),
    }
    if base["method"] and method is None:
        raise ConfigError("method.* settings were given but no --method")
    if cfg.metric is not None:
        base["train"]["select_metric"] = cfg.metric
    _, _, trainer_cfg = build_configs(model, base["model"], base["train"])
    if trainer_cfg.paper_mode or trainer_cfg.track_test:
        raise ConfigError("tuning selects on VALID only: drop train.select_on=test and train.track_test")
    metric = trainer_cfg.select_metric
    space, fixed = search_space(model, method, space_file, base)
    if not space:
        raise ConfigError("the search space is empty (every declared range is fixed by a setting or the space file)")

    url, study_lock = _storage_url(cfg.storage, out)
    study_name = cfg.study_name or "-".join(filter(None, (dataset_dir.resolve().name, method, model)))
    settings = _json_ready(
        {
            "dataset": DatasetIdentity.of(dataset_dir).fingerprint,
            "model": model,
            "method": method,
            "fixed": {
                **base,
                "train": {k: v for k, v in base["train"].items() if k not in VOLATILE_TRAIN},
            },
            "space": {name: dump_param(p) for name, p in space.items()},
            "metric": metric,
            "seed": cfg.seed,
            "pruner": {"name": cfg.pruner, "startup_trials": cfg.startup_trials, "warmup_epochs": cfg.warmup_epochs},
        }
    )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs)
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    lock = _study_lock(study_lock, study_name)
    with lock():
        study = optuna.create_study(
            study_name=study_name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
        )
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        elif stored != settings:
            raise IntentrecError(
                f"study '{study_name}' in {url} was started with other settings; use another --out or "
                "--study-name:\n  " + "\n  ".join(_differences(stored, settings))
            )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise IntentrecError(f"study '{study_name}' in {url} is not a maximisation study")

    command = command if command is not None else shlex.join(sys.argv)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials_run = 0
    written: TuneResult | None = None
    while True:
        with lock():
            if _fail_dead_trials(study, space):
                written = None
            if len(study.get_trials(deepcopy=False, states=counted)) >= cfg.trials:
                break
            # seeded by the trial's number: the same trials whatever process or rerun asks for them
            study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.get_trials(deepcopy=False)))
            trial = study.ask()
            params = _suggest(trial, space)
            run_dir = Path(trial.user_attrs.get("run_dir") or out / TRIALS_DIR / f"trial-{trial.number:04d}")
            trial.set_user_attr("run_dir", str(run_dir.resolve()))
            trial_lock = contextlib.ExitStack()
            trial_lock.enter_context(exclusive_lock(run_dir / TRIAL_LOCK, what=f"trial folder {run_dir}"))
        with trial_lock:
            if on_trial_start is not None:
                on_trial_start(trial.number, params)
            _run_trial(
                optuna, train, study, trial, params, run_dir, dataset_dir, model, method, base, metric, command,
                on_epoch,
            )  # fmt: skip
            trials_run += 1
        if on_trial_end is not None:
            row = _trial_row(study.get_trials(deepcopy=False)[trial.number], metric)
            row["study_finished"] = len(study.get_trials(deepcopy=False, states=counted[:2]))
            on_trial_end(row)
        # after every trial, so a long study's report is current while it runs
        written = write_outputs(study, out, dataset_dir=dataset_dir, space=space, fixed=fixed, storage_url=url)
    if written is None:
        written = write_outputs(study, out, dataset_dir=dataset_dir, space=space, fixed=fixed, storage_url=url)
    written.trials_run = trials_run
    return written


def _study_lock(path: Path, study_name: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
    def hold() -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(path, what=f"study {study_name}", wait=True)

    return hold


def _run_trial(
    optuna: Any,
    train: Callable[..., Any],
    study: optuna.Study,
    trial: optuna.Trial,
    params: dict[str, Any],
    run_dir: Path,
    dataset_dir: Path,
    model: str,
    method: str | None,
    base: Mapping[str, Mapping[str, Any]],
    metric: str,
    command: str,
    on_epoch: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    from optuna.trial import TrialState

    settings = _with_params(base, params)

    def report(record: dict[str, Any], *, replayed: bool = False) -> None:
        trial.report(record["valid"][metric], step=record["epoch"])
        if on_epoch is not None and not replayed:
            on_epoch(trial.number, record)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    try:
        # a retried trial resumes its folder: the epochs done before the crash are reported first
        for record in RunDir(run_dir).read_log():
            report(record, replayed=True)
        result = train(
            dataset_dir,
            model,
            settings["model"],
            settings["train"],
            out=run_dir,
            progress=False,
            on_epoch=report,
            command=f"{command}  # trial {trial.number}",
            method=method,
            method_config=settings["method"] if method else None,
            evaluate_test=False,
        )
    except optuna.TrialPruned as exc:
        _finish_attrs(trial, run_dir, str(exc))
        study.tell(trial, state=TrialState.PRUNED)
    except IntentrecError as exc:
        if not str(exc).startswith("training diverged"):
            _finish_attrs(trial, run_dir, f"error: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise
        # a non-finite loss is an outcome of the sampled values (a too large lr): a bad trial, not a crash
        _finish_attrs(trial, run_dir, str(exc))
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException as exc:
        # Ctrl-C or a bug: like a killed process, the next run retries these parameters in this folder
        trial.set_user_attr("note", f"interrupted ({type(exc).__name__})")
        study.tell(trial, state=TrialState.FAIL)
        original = trial.user_attrs.get("retry_of", trial.number)
        study.enqueue_trial(params, user_attrs={"retry_of": original, "run_dir": str(run_dir.resolve())})
        raise
    else:
        _finish_attrs(trial, run_dir, None, best_epoch=result.best_epoch)
        study.tell(trial, result.valid[metric])


def _finish_attrs(trial: optuna.Trial, run_dir: Path, note: str | None, best_epoch: int | None = None) -> None:
    trial.set_user_attr("epochs", len(RunDir(run_dir).read_log()))
    if best_epoch is not None:
        trial.set_user_attr("best_epoch", best_epoch)
    if note:
        trial.set_user_attr("note", note)


# --------------------------------------------------------------------------- outputs


def _trial_row(trial: optuna.trial.FrozenTrial, metric: str) -> dict[str, Any]:
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        "value": trial.value,
        "last_value": trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None,
        "metric": metric,
        "epochs": trial.user_attrs.get("epochs"),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "seconds": seconds,
        "note": trial.user_attrs.get("note"),
        "retry_of": trial.user_attrs.get("retry_of"),
        "run_dir": trial.user_attrs.get("run_dir"),
    }


def write_outputs(
    study: optuna.Study,
    out: Path,
    *,
    dataset_dir: Path,
    space: Mapping[str, Range],
    fixed: list[str],
    storage_url: str | None = None,
) -> TuneResult:
    """``best.yaml`` (when a trial is complete), ``report.md`` and ``history.png`` from the study."""
    from optuna.trial import TrialState

    settings = study.user_attrs[SETTINGS_ATTR]
    metric, model, method = settings["metric"], settings["model"], settings["method"]
    trials = study.get_trials(deepcopy=False)
    rows = [_trial_row(t, metric) for t in trials if t.state != TrialState.WAITING]
    for row in rows:
        if row["state"] == "FAIL":
            origin = row["number"] if row["retry_of"] is None else row["retry_of"]
            later = [r["number"] for r in rows if r["retry_of"] == origin and r["number"] > row["number"]]
            cause = row["note"] or "process died"
            row["note"] = f"{cause}; retried as trial {later[0]}" if later else cause
        if row["retry_of"] is not None:
            row["note"] = "; ".join(filter(None, [f"retry of trial {row['retry_of']}", row["note"]]))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    out.mkdir(parents=True, exist_ok=True)
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None

    best_path = out / BEST_FILE
    if best is not None:
        _write_best(best_path, best, settings, metric, study.study_name, model, method)
    else:
        best_path.unlink(missing_ok=True)
    history = out / HISTORY_FILE
    if not _write_history(history, rows, metric, study.study_name):
        history.unlink(missing_ok=True)
    importance, importance_note = _importances(study, complete, settings["seed"])
    report = out / REPORT_FILE
    text = _report_text(
        study, settings, rows, counts, best, importance, importance_note, space, fixed, dataset_dir, storage_url
    )
    with atomic_open(report, "w", encoding="utf-8") as fh:
        fh.write(text)
    return TuneResult(
        out=out,
        study_name=study.study_name,
        storage=storage_url or "",
        trials_run=0,
        counts={k: v for k, v in counts.items() if v},
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_config=best_path if best else None,
        report=report,
        history_png=history if history.is_file() else None,
        space=dict(space),
    )


def best_settings(params: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The fixed settings of the study with the trial's ``params``: sections for ``train --config``."""
    merged = _with_params(settings["fixed"], params)
    return {section: dict(sorted(values.items())) for section, values in merged.items() if values}


def _write_best(
    path: Path,
    best: optuna.trial.FrozenTrial,
    settings: Mapping[str, Any],
    metric: str,
    study_name: str,
    model: str,
    method: str | None,
) -> None:
    values = best_settings(best.params, settings)
    method_flag = f" --method {method}" if method else ""
    epochs = best.user_attrs.get("epochs")
    header = (
        f"# intentrec tune, study '{study_name}': best trial {best.number}, valid {metric} = {best.value:.5f}"
        + (f" (best epoch {best.user_attrs.get('best_epoch')} of {epochs})" if epochs else "")
        + "\n"
        + f"# intentrec train DATASET_DIR --model {model}{method_flag} --config {BEST_FILE} --out RUN_DIR\n"
    )
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(header)
        yaml.safe_dump(values, fh, sort_keys=False, default_flow_style=False)


def _write_history(target: Path, rows: list[dict[str, Any]], metric: str, study_name: str) -> bool:
    done = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["last_value"] is not None]
    if not done and not pruned:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if done:
        ax.scatter([r["number"] for r in done], [r["value"] for r in done], label="complete", zorder=3)
        best_x, best_y, running = [], [], -math.inf
        for r in sorted(done, key=lambda r: r["number"]):
            running = max(running, r["value"])
            best_x.append(r["number"])
            best_y.append(running)
        ax.step(best_x, best_y, where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter(
            [r["number"] for r in pruned], [r["last_value"] for r in pruned], marker="x", color="C7",
            label="pruned (last reported)",
        )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title(f"{study_name}: optimisation history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return True


def _importances(
    study: optuna.Study, complete: list[optuna.trial.FrozenTrial], seed: int
) -> tuple[dict[str, float], str]:
    if len(complete) < 2:
        return {}, "needs at least 2 complete trials"
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except ImportError:
        return {}, "fANOVA needs scikit-learn (pip install 'intentrec[tune]')"
    except (RuntimeError, ValueError) as exc:
        return {}, f"not computable: {exc}"
    few = " (few trials: indicative only)" if len(complete) < 10 else ""
    return dict(values), (
        f"fANOVA (Optuna's FanovaImportanceEvaluator, seed {seed}) over {len(complete)} complete trials{few}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "null" if value is None else str(value)


def _report_text(
    study: optuna.Study,
    settings: Mapping[str, Any],
    rows: list[dict[str, Any]],
    counts: dict[str, int],
    best: optuna.trial.FrozenTrial | None,
    importance: dict[str, float],
    importance_note: str,
    space: Mapping[str, Range],
    fixed: list[str],
    dataset_dir: Path,
    storage_url: str | None,
) -> str:
    metric = settings["metric"]
    name = f"{settings['method']}({settings['model']})" if settings["method"] else settings["model"]
    pruner = settings["pruner"]
    pruner_text = (
        f"median (from {pruner['startup_trials']} complete trials on, never in the first "
        f"{pruner['warmup_epochs']} epoch(s) of a trial)"
        if pruner["name"] == "median"
        else "none"
    )
    given = {f"{s}.{k}": v for s, values in settings["fixed"].items() for k, v in values.items()}
    lines = [
        f"# Tuning {name} on {dataset_dir.name}: valid {metric}",
        "",
        f"- dataset: `{dataset_dir}` (fingerprint `{settings['dataset'][:16]}`)",
        f"- study: `{study.study_name}`" + (f" in `{storage_url}`" if storage_url else ""),
        f"- objective: maximise valid {metric} of the checkpoint selected on VALID; TEST is never evaluated",
        f"- sampler: TPE, trial n seeded with {settings['seed']} + n; pruner: {pruner_text}",
        "- trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v),
        "- fixed settings: " + (", ".join(f"`{k}={_fmt(v)}`" for k, v in given.items()) or "none"),
    ]
    if fixed:
        lines.append("- left out of the space (set explicitly): " + ", ".join(f"`{n}`" for n in fixed))
    lines += ["", "## Best", ""]
    if best is None:
        lines.append("No complete trial yet.")
    else:
        params = ", ".join(f"`{k}={_fmt(v)}`" for k, v in best.params.items())
        lines.append(f"Trial {best.number}: valid {metric} = {best.value:.5f}; {params} → `{BEST_FILE}`.")
    param_names = list(space)
    lines += ["", "## Trials", ""]
    header = ["#", "state", *param_names, f"valid {metric}", "epochs", "seconds", "note"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if h not in ("state", "note") else "---" for h in header) + "|")
    for row in rows:
        value = row["value"] if row["value"] is not None else row["last_value"]
        shown = "" if value is None else (f"{value:.5f}" if row["value"] is not None else f"({value:.5f})")
        cells = [
            str(row["number"]),
            row["state"].lower(),
            *(_fmt(row["params"][p]) if p in row["params"] else "" for p in param_names),
            shown,
            "" if row["epochs"] is None else str(row["epochs"]),
            "" if row["seconds"] is None else f"{row['seconds']:.0f}",
            (row["note"] or "").replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A value in parentheses is a pruned trial's last reported epoch.", ""]
    lines += ["## Parameter importance", ""]
    if importance:
        lines += [importance_note + ".", "", "| parameter | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importance.items()]
    else:
        lines.append(f"Not computed: {importance_note}.")
    lines += ["", "## Search space", "", "| parameter | range |", "|---|---|"]
    lines += [f"| {k} | {describe_param(p)} |" for k, p in space.items()]
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    return "\n".join(lines)
