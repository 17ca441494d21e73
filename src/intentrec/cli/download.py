"""``intentrec download SOURCE [--dest DIR]``: fetch a source's official files (needs internet)."""

from __future__ import annotations

from pathlib import Path

import typer

EPILOG = """
[bold]Examples[/bold]

  intentrec download movielens                      # ml-1m into <data root>/movielens/ml-1m

  intentrec download movielens --variant ml-100k --dest data/ml-100k

  intentrec download movielens --variant ml-latest-small --mirror https://mirror.example.org/movielens/

  intentrec download diginetica                     # prints the official page: fetch it in a browser

MovieLens zips are fetched from files.grouplens.org, checked against their sha256 where one is known,
kept and extracted into DEST, so that [bold]intentrec prepare movielens DEST[/bold] reads them. An
interrupted download leaves NAME.part, which the next call resumes. Amazon, Diginetica and YOOCHOOSE
are only offered on web pages (a login, a form or a list of links): the command prints the page, the
files to fetch there and the folder to put them in, and exits with status 2. The data root is
$INTENTREC_DATA or ../shared/data. See docs/data.md.
"""


def register(app: typer.Typer) -> None:
    app.command("download", epilog=EPILOG, no_args_is_help=True)(download)


def download(
    source: str = typer.Argument(..., help="movielens, amazon, diginetica or yoochoose."),
    variant: str | None = typer.Option(
        None, help="Which published variant (movielens: ml-1m, ml-100k, ml-latest-small) [first]."
    ),
    dest: Path | None = typer.Option(
        None,
        "--dest",
        "-d",
        help="Folder to put the files in [the data root's folder for the source, e.g. movielens/ml-1m].",
    ),
    mirror: str | None = typer.Option(
        None,
        help="Fetch every file from MIRROR/NAME instead of the official host (same files; sha256 still checked).",
    ),
    timeout: float = typer.Option(60.0, help="Seconds without data before giving up."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar [on a terminal only]."),
) -> None:
    """Download a source's official files (where they can be fetched directly) and unpack them."""
    from intentrec.data.download import download as fetch

    outcome = fetch(
        source,
        dest,
        variant=variant,
        base_url=mirror,
        progress=progress,
        timeout=timeout,
        log=lambda message: typer.echo(message, err=True),
    )
    for path in outcome.files:
        typer.echo(str(path))
    typer.echo(
        f"{outcome.variant} is in {outcome.dest}; next: intentrec prepare {outcome.source} {outcome.dest} --out DIR",
        err=True,
    )
