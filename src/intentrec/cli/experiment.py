"""``intentrec experiment FILE.yaml``: run a grid of trainings, resumably, and tabulate the results."""

from __future__ import annotations

from pathlib import Path

import typer

from intentrec.errors import ConfigError

EXPERIMENT_HELP = """Run an experiment grid from a YAML file; write one record per run and a results table.

The file names datasets, seeds, settings and grid blocks (backbones × methods × variants); see
docs/training.md, "Experiments". Run ids look like beauty/srgnn+llm4sbr/wo-au/s0. A run with a
record is skipped; an interrupted one resumes from its last epoch, so running the same command
again continues the grid. Runs go seed by seed. After each run, <results_dir>/<name>.md, .csv and
.png are rebuilt from the records. Relative paths are relative to the current directory.
Several processes can work through one grid side by side: each skips the runs another one is
training (their run folders are locked) or has finished.

[bold]Examples[/bold]

  intentrec experiment experiments/llm4sbr-beauty.yaml --dry-run

  intentrec experiment experiments/llm4sbr-beauty.yaml --threads 2 --max-runs 4   [dim](a chunk)[/dim]

  intentrec experiment experiments/llm4sbr-beauty.yaml --only 'beauty/srgnn*' --device cuda

  intentrec experiment experiments/llm4sbr-beauty.yaml --threads 1 &
  intentrec experiment experiments/llm4sbr-beauty.yaml --threads 1   [dim](two lanes, one per core)[/dim]

  intentrec experiment experiments/llm4sbr-beauty.yaml --report-only

  intentrec experiment experiments/llm4sbr-beauty.yaml --reproduce --only 'beauty/srgnn*' --threads 1
  [dim](retrain finished runs whose records have no test ranks, or whose checkpoints a '+' row or an ID run
  needs and another machine had; checked against the record's test metrics)[/dim]
"""


def experiment_command(
    file: Path = typer.Argument(..., help="The experiment YAML file."),
    only: list[str] | None = typer.Option(
        None, "--only", help="Run only ids matching this glob (repeatable; '*' also matches '/')."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and which are done; train nothing."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rebuild md/csv/png from the records."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads per run."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto, for every run."),
    max_runs: int | None = typer.Option(
        None, "--max-runs", min=1, help="Stop after training this many new runs (chunk a long grid)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar per epoch on a terminal."),
    reproduce: bool = typer.Option(
        False,
        "--reproduce",
        help="Retrain finished runs whose run folder is gone and whose records lack per-example test ranks, "
        "or whose checkpoint a selected unfinished run reads (a '+' row, an ID run); if the test metrics "
        "agree with the record, add the ranks (for the paired tests), else note the difference in the "
        "record. Trains no new run.",
    ),
) -> None:
    from intentrec.experiments import Experiment, RunOptions, describe, reproduce_runs, run_experiment
    from intentrec.experiments import report_only as rebuild

    if sum((dry_run, report_only, reproduce)) > 1:
        raise ConfigError("--dry-run, --report-only and --reproduce exclude each other")
    experiment = Experiment.load(file)
    options = RunOptions(
        only=only or None,
        threads=threads,
        device=device,
        max_runs=max_runs,
        progress=None if progress else False,
        reproduce=reproduce,
    )
    if dry_run:
        describe(experiment, options, echo=_echo)
        return
    if report_only:
        report, written = rebuild(experiment)
        _echo(f"{len(report.records)} of {len(report.runs)} runs have records")
    elif reproduce:
        outcome = reproduce_runs(experiment, options, echo=_echo)
        written = outcome.written
        _echo(f"retrained {len(outcome.trained)} run(s); {outcome.remaining} finished run(s) still to reproduce")
    else:
        outcome = run_experiment(experiment, options, echo=_echo)
        written = outcome.written
        busy = f" ({len(outcome.busy)} being trained by another process)" if outcome.busy else ""
        _echo(
            f"trained {len(outcome.trained)} run(s) now; {outcome.remaining} selected run(s) still "
            f"without a record{busy}" + (" (run the same command again to continue)" if outcome.remaining else "")
        )
    for path in written:
        _echo(f"wrote {path}")


def _echo(line: str) -> None:
    typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("experiment", help=EXPERIMENT_HELP, no_args_is_help=True)(experiment_command)
