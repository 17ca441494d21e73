"""The ``intentrec`` command. Each sub-command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
import sys

import typer

from intentrec import __version__
from intentrec.errors import IntentrecError

app = typer.Typer(
    name="intentrec",
    help=(
        "LLM-enhanced session-based recommendation.\n\n"
        "Typical flow: intentrec prepare → intentrec train → intentrec evaluate → intentrec recommend.\n\n"
        "With an LLM method: intentrec train DATA --model srgnn --method llm4sbr (titles source), or\n"
        "intentrec infer → intentrec train --method llm4sbr --set method.source=llm. Item-level LLM\n"
        "embeddings: --method semsr (then intentrec evaluate RUN --rerank-with RUN2). Grids of runs:\n"
        "intentrec experiment FILE.yaml."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_COMMAND_MODULES = (
    "prepare",
    "download",
    "train",
    "report",
    "semantic",
    "infer",
    "experiment",
    "candidates",
    "llm_rank",
    "distill",
    "tune",
    "serve",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"intentrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """intentrec command line."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"intentrec.cli.{_name}").register(app)


def main() -> None:
    """Entry point: user errors become one clear message and exit status 2."""
    try:
        app(standalone_mode=False)
    except IntentrecError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _is_click_error(exc):  # usage errors: unknown option, missing argument, bad value
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _is_click_error(exc: Exception) -> bool:
    # typer ships its own copy of click (typer._click), so match the class by name, not identity.
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


if __name__ == "__main__":
    main()
