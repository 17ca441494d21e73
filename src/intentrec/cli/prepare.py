"""``intentrec prepare SOURCE PATH --out DIR``: upstream files → a prepared dataset folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from intentrec.data.presets import PRESETS

EPILOG = """
[bold]Examples[/bold]

  intentrec prepare generic ../shared/data/amazon/beauty-2014-5core --protocol llm4sbr-beauty --out runs/data/beauty

  intentrec prepare movielens ../shared/data/movielens/ml-latest-small --out runs/data/ml-small --json

  intentrec prepare movielens ../shared/data/movielens/ml-1m --protocol llm4sbr-ml1m --out runs/data/ml1m

  intentrec prepare movielens movielens/ml-1m --session gap --gap-seconds 3600 --split time --out runs/data/ml1m-gap

  intentrec prepare diginetica ../shared/data/diginetica --protocol srgnn-diginetica --max-sessions 500 --out runs/data/dn

  intentrec prepare generic ../shared/data/amazon/beauty-2014-5core --protocol llmgr-beauty --out runs/data/llmgr-beauty

SOURCES: generic (interactions.csv|.parquet + items.csv|.parquet), movielens (ml-1m, ml-100k,
ml-latest), amazon (2014 and 2018 dumps), diginetica, yoochoose, amazon-m2 (KDD Cup 2023 Task 1
files; --locale UK etc.). PATH may also be relative to the
data root ($INTENTREC_DATA or ../shared/data). See docs/data.md for every option and the presets.
"""


def register(app: typer.Typer) -> None:
    app.command("prepare", epilog=EPILOG, no_args_is_help=True)(prepare)


def prepare(
    source: str = typer.Argument(..., help="generic, movielens, amazon, diginetica, yoochoose or amazon-m2."),
    path: Path = typer.Argument(..., help="Folder holding the upstream files (or the main file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the prepared dataset to."),
    protocol: str | None = typer.Option(None, help="Preset: " + ", ".join(PRESETS) + "."),
    session: str | None = typer.Option(
        None, help="given|user|gap|clock-bin|day-window (default: given session ids, else user)."
    ),
    gap_seconds: float | None = typer.Option(None, help="Inactivity gap for --session gap [1800]."),
    bin_seconds: float | None = typer.Option(None, help="Clock bin for --session clock-bin [600]."),
    window_seconds: float | None = typer.Option(None, help="Window for --session day-window [300]."),
    min_item_support: int | None = typer.Option(None, help="Drop items with fewer clicks [5]."),
    min_session_length: int | None = typer.Option(None, help="Drop shorter sessions [2]."),
    min_raw_session_length: int | None = typer.Option(
        None, help="Drop sessions shorter than this once, before the other filters (SemSR: users with > 5 reviews)."
    ),
    locale: str | None = typer.Option(None, help="amazon-m2: the one locale to read (DE, JP, UK, ES, FR, IT)."),
    filter_passes: str | None = typer.Option(None, help="1 or fixpoint [1]."),
    rare_items: str | None = typer.Option(
        None,
        help="drop-items (remove rare clicks) or drop-sessions (remove whole sessions) [drop-items].",
    ),
    drop_short_sessions_first: bool | None = typer.Option(
        None,
        "--drop-short-sessions-first/--no-drop-short-sessions-first",
        help="Drop short sessions before counting item support too (SR-GNN).",
    ),
    split: str | None = typer.Option(
        None, help="order, time, random or leave-one-out (per session: last item test, second-to-last valid) [order]."
    ),
    leave_one_out: str | None = typer.Option(
        None,
        help="Options of --split leave-one-out: valid=true|false, short_sessions=drop|train (sessions with "
        "< 3 items, < 2 without valid); default valid=true,short_sessions=drop, and --augment train=prefix,test=last.",
    ),
    test_fraction: float | None = typer.Option(None, help="Share of sessions in test [0.1]."),
    valid_fraction: float | None = typer.Option(None, help="Share of train sessions carved out as valid [0.1]."),
    test_days: float | None = typer.Option(None, help="With --split time: test = sessions ending in the last N days."),
    augment: str | None = typer.Option(
        None, help="prefix or last, for every split, or per split: train=prefix,test=last [prefix]."
    ),
    max_sessions: int | None = typer.Option(
        None,
        help="Keep only the first N sessions in split order (after filtering), then split them.",
    ),
    seed: int | None = typer.Option(None, help="Seed for --split random [0]."),
    on_bad_line: str | None = typer.Option(None, help="error or skip (skip and count bad lines) [error]."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the output is up to date."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the statistics."),
) -> None:
    """Parse upstream files, build sessions, filter, split and write a prepared dataset."""
    from rich.console import Console

    from intentrec.data.prepare import run_prepare

    params: dict[str, Any] = {
        "session": session,
        "gap_seconds": gap_seconds,
        "bin_seconds": bin_seconds,
        "window_seconds": window_seconds,
        "min_item_support": min_item_support,
        "min_session_length": min_session_length,
        "min_raw_session_length": min_raw_session_length,
        "locale": locale,
        "filter_passes": filter_passes,
        "rare_items": rare_items,
        "drop_short_sessions_first": drop_short_sessions_first,
        "split": split,
        "leave_one_out": leave_one_out,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "test_days": test_days,
        "augment": augment,
        "max_sessions": max_sessions,
        "seed": seed,
        "on_bad_line": on_bad_line,
    }
    console = Console(stderr=True)
    log = (lambda m: None) if as_json else (lambda m: console.print(m, highlight=False))
    outcome = run_prepare(source, path, out, protocol=protocol, force=force, log=log, **params)
    stats = outcome.statistics
    if as_json:
        typer.echo(json.dumps({"out": str(out), "up_to_date": outcome.reused, **stats}))
        return
    if outcome.reused:
        console.print(f"{out}: up to date (same inputs and parameters); use --force to rebuild")
    _print_table(Console(), out, stats, outcome.dataset.manifest.get("notes", []))


def _print_table(console: Any, out: Path, stats: dict[str, Any], notes: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"prepared dataset: {out}", show_header=True)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(key, str(value))
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")
