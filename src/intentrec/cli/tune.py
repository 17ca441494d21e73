"""``intentrec tune``: hyper-parameter search on the validation split (Optuna, study in SQLite)."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from intentrec.errors import ConfigError

TUNE_HELP = """Search hyper-parameters with Optuna on the VALIDATION split; TEST is never
evaluated.

Each trial trains an ordinary resumable run into OUT/trials/trial-NNNN that
selects its checkpoint on VALID and reports the validation metric after each
epoch, so bad trials are pruned (median rule). The search space is the ranges
declared on the trainer's, the backbone's and the method's configs (train.lr,
train.l2, train.batch_size, model.dropout, ...); --space FILE adds, replaces,
drops (null) or limits (only:) them. Settings given with --config/--set are
fixed and not searched.

The study is stored in SQLite (default OUT/study.sqlite3): the same command
again continues it (a trial killed with kill -9 is retried from its last
epoch), and processes running the same command at once share it, each taking
other trials. --trials is the study's total, not a number of new trials;
--trials 0 only rewrites the outputs.

Outputs in OUT: best.yaml (for intentrec train --config), report.md (trials,
parameter importance by fANOVA, search space) and history.png.

[bold]Examples[/bold]

  intentrec tune data/beauty --model srgnn --trials 30 --out runs/tune/srgnn

  intentrec tune data/beauty --model niser --trials 2 --set train.epochs=1 --out runs/tune/smoke

  intentrec tune data/beauty --model srgnn --space space.yaml --metric HR@20 --out runs/tune/hr

  intentrec train data/beauty --model srgnn --config runs/tune/srgnn/best.yaml --out runs/srgnn-tuned

A space file (--space):

  params:
    train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    model.embedding_dim: {type: categorical, choices: \\[64, 100, 128]}
    model.steps: {type: int, low: 1, high: 2}
    train.l2: null                [dim]# not searched[/dim]
  only: \\[train.lr, model.embedding_dim, model.steps]   [dim]# optional[/dim]
"""


class Pruner(StrEnum):
    median = "median"
    none = "none"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def tune_command(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder (intentrec prepare)."),
    model: str = typer.Option(..., "--model", "-m", help="Backbone name, e.g. srgnn, niser."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: study, trial runs, best.yaml, report."),
    trials: int = typer.Option(20, "--trials", "-n", min=0, help="Total trials of the study (complete + pruned)."),
    method: str | None = typer.Option(None, "--method", help="Wrap the backbone in a method: llm4sbr, dmsrec, semsr."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Fixed settings (YAML/JSON, as for train)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Fixed key=value setting, repeatable (as for train)."),
    space: Path | None = typer.Option(None, "--space", help="YAML file that changes or limits the search space."),
    metric: str | None = typer.Option(
        None, "--metric", help="Validation metric to maximise (sets train.select_metric, default MRR@20), e.g. HR@20."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampler seed: trial n samples with seed + n."),
    pruner: Pruner = typer.Option(Pruner.median, "--pruner", help="median or none."),
    startup_trials: int = typer.Option(5, "--startup-trials", min=0, help="Complete trials before pruning starts."),
    warmup_epochs: int = typer.Option(1, "--warmup-epochs", min=0, help="Epochs of a trial that are never pruned."),
    storage: str | None = typer.Option(
        None, "--storage", help="SQLite file or database URL (default OUT/study.sqlite3)."
    ),
    study_name: str | None = typer.Option(None, "--study-name", help="Default: <dataset>-[<method>-]<model>."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar over trials."),
) -> None:
    from intentrec.cli.train import resolve_settings
    from intentrec.training.run import build_configs
    from intentrec.training.tune import TuneConfig, import_optuna, tune

    optuna = import_optuna()

    model_values, train_values, method_values = resolve_settings(model, config, set_)
    if method_values and method is None:
        raise ConfigError("method.* settings were given but no --method")
    tune_cfg = TuneConfig.build(
        {
            "trials": trials,
            "metric": metric,
            "seed": seed,
            "pruner": pruner.value,
            "startup_trials": startup_trials,
            "warmup_epochs": warmup_epochs,
            "study_name": study_name,
            "storage": storage,
        },
        where="tune options",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shown_metric = build_configs(
        model, model_values, {**train_values, **({"select_metric": metric} if metric else {})}
    )[2].select_metric
    console = Console(soft_wrap=False)
    bar = Progress(
        TextColumn("[bold]trials[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not (progress and sys.stderr.isatty()),
        transient=True,
    )
    task = bar.add_task("", total=trials)
    best: list[float] = []

    def started(number: int, params: dict[str, Any]) -> None:
        bar.console.print(f"trial {number}: {_params_text(params)}", markup=False, soft_wrap=True)

    def epoch(number: int, record: dict[str, Any]) -> None:
        value = record["valid"].get(shown_metric)
        shown = f"{value:.5f}" if value is not None else "-"
        bar.console.print(
            f"  trial {number} epoch {record['epoch']:>3}  loss {record['loss']:.4f}  valid {shown}  "
            f"{record['seconds']:.1f}s",
            markup=False,
            soft_wrap=True,
        )

    def ended(row: dict[str, Any]) -> None:
        value = row["value"]
        if value is not None:
            best.append(value)
        text = f"{value:.5f}" if value is not None else (row["note"] or "")
        bar.console.print(f"trial {row['number']} {row['state'].lower()}: {text}", markup=False, soft_wrap=True)
        bar.update(task, completed=row["study_finished"], description=f"best this run {max(best):.5f}" if best else "")

    with bar:
        result = tune(
            dataset_dir,
            model,
            model_values,
            train_values,
            out=out,
            method=method,
            method_config=method_values if method else None,
            config=tune_cfg,
            space_file=space,
            command="intentrec " + shlex.join(sys.argv[1:]),
            on_trial_start=started,
            on_epoch=epoch,
            on_trial_end=ended,
        )
    table = Table(
        title=f"study {result.study_name}: " + ", ".join(f"{v} {k.lower()}" for k, v in result.counts.items())
    )
    table.add_column("")
    table.add_column("")
    if result.best_trial is not None:
        table.add_row("best trial", str(result.best_trial))
        table.add_row("valid", f"{result.best_value:.5f}")
        for name, value in result.best_params.items():
            table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"trials run now: {result.trials_run}; report: {result.report}")
    if result.best_config is not None:
        name = f" --method {method}" if method else ""
        console.print(
            f"best config: {result.best_config}  (intentrec train {dataset_dir} --model {model}{name} "
            f"--config {result.best_config} --out RUN_DIR)",
            markup=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("tune", help=TUNE_HELP)(tune_command)
