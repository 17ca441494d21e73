"""``intentrec candidates``: cross-fitted top-K candidate lists for LLM-DMsRec."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from intentrec.errors import ConfigError

CANDIDATES_HELP = """Rank each example's top-K candidate items with a trained backbone (for LLM-DMsRec).

Train examples are cross-fitted: the train sessions are split into --folds groups and each group's
examples are scored by a model trained on the other groups (a session never straddles two groups);
valid/test examples are scored by a model trained on all train examples. --leaky scores the train
examples with that model too, as the LLM-DMsRec authors did (their training candidates come from a
model that has seen the targets); the file name says '.leaky'.

Writes DATASET_DIR/semantic/candidates.<model>.f<folds>[.leaky].parquet (example_id, candidates =
item indices best first, fold, scored_by) and a .json provenance next to it. The runs go to
--work-dir (default runs/candidates/...); an interrupted call resumes, and a finished file with the
same settings is reused. --set takes 'model.<field>' and 'train.<field>' like 'intentrec train'.

[bold]Examples[/bold]

  intentrec candidates data/beauty --model gcegnn --folds 2 --set train.epochs=10

  intentrec candidates data/mini --model srgnn --folds 3 --set train.epochs=2 --set model.embedding_dim=32 --json

  intentrec candidates data/beauty --leaky   [dim](the authors' way, for comparison only)[/dim]

  intentrec infer data/beauty --prompt dmsrec --llm qwen1.5b --candidates data/beauty/semantic/candidates.gcegnn.f2.parquet
"""


def candidates_command(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder."),
    model: str = typer.Option("gcegnn", "--model", "-m", help="Backbone that ranks the candidates."),
    folds: int = typer.Option(
        2, "--folds", min=1, help="Cross-fitting folds over train sessions (>= 2 unless --leaky)."
    ),
    top: int = typer.Option(50, "--top", min=1, help="Candidates per example."),
    leaky: bool = typer.Option(
        False, "--leaky", help="Score train examples with a model trained on them (the authors' way)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment."),
    set_: list[str] | None = typer.Option(None, "--set", help="key=value: model.X or train.X (repeatable)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON with 'model:' and 'train:' sections."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Folder for the candidate runs."),
    out: Path | None = typer.Option(None, "--out", help="Write the parquet here instead of DATASET_DIR/semantic/."),
    force: bool = typer.Option(False, "--force", help="Recompute the file even if it is up to date (runs are reused)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress on stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    from intentrec.cli.train import resolve_settings
    from intentrec.training.candidates import cross_fit_candidates

    model_values, train_values, method_values = resolve_settings(model, config, set_)
    if method_values:
        raise ConfigError("candidates: method.* settings do not apply here (only model.* and train.*)")
    result = cross_fit_candidates(
        dataset_dir,
        model=model,
        folds=folds,
        top=top,
        seed=seed,
        model_config=model_values,
        trainer_config=train_values,
        work_dir=work_dir,
        leaky=leaky,
        force=force,
        out=out,
        progress=progress and sys.stderr.isatty(),
    )
    prov = result.provenance
    summary = {
        "path": str(result.path),
        "provenance": str(result.provenance_path),
        "reused": result.reused,
        "leaky": prov.get("leaky"),
        "examples": prov.get("examples"),
        "candidates_per_example": prov.get("candidates_per_example"),
        "runs": {
            run: {
                "scored": info.get("scored"),
                "best_epoch": info.get("best_epoch"),
                "trained_on": info.get("trained_on"),
            }
            for run, info in (prov.get("runs") or {}).items()
        },
        "seconds": prov.get("seconds"),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    state = "up to date" if result.reused else "wrote"
    typer.echo(
        f"{state}: {result.path} ({'LEAKY' if summary['leaky'] else 'cross-fitted'}, "
        f"{summary['candidates_per_example']} candidates per example)"
    )
    for run, info in summary["runs"].items():
        scored = ", ".join(f"{s} {n}" for s, n in (info["scored"] or {}).items())
        trained = info["trained_on"] or {}
        typer.echo(f"  {run}: trained on {trained.get('train_sessions')} train sessions, scored {scored}")


def register(app: typer.Typer) -> None:
    app.command("candidates", help=CANDIDATES_HELP)(candidates_command)
