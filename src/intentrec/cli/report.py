"""``intentrec report``: one table comparing finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        help=(
            "Compare finished runs in one table of test metrics (percent).\n\n"
            "Example:\n\n  intentrec report runs/demo/srgnn runs/demo/stamp runs/demo/gru4rec"
        ),
    )(report)


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders written by 'intentrec train'."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table."),
) -> None:
    from intentrec.evaluation.report import metric_columns, read_run_summary

    summaries = [read_run_summary(d) for d in run_dirs]
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        return
    columns = metric_columns(summaries)
    table = Table(title="Test metrics (%), full ranking over all items")
    for name in ["model", "selection", "best/epochs", *columns, "s/epoch"]:
        table.add_column(name, justify="left" if name in ("model", "selection") else "right")
    for s in summaries:
        selection = "PAPER MODE (test max)" if s["paper_mode"] else "valid"
        table.add_row(
            s["model"],
            selection,
            f"{s['best_epoch']}/{s['epochs_run']}",
            *[f"{100 * s['test'][c]:.2f}" for c in columns],
            f"{s['seconds_per_epoch']:.1f}" if s["seconds_per_epoch"] is not None else "-",
        )
    # Twelve columns do not fit 80: never let rich squeeze the numbers into ellipses.
    console = Console(width=max(Console().width, 170))
    console.print(table)
    if any(s["paper_mode"] for s in summaries):
        console.print("[bold red]Rows in PAPER MODE select per-metric maxima over epochs on TEST: optimistic.[/]")
