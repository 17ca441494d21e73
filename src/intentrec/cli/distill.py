"""``intentrec distill``: LLM4SBR intent views from a student, no LLM at run time."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from intentrec.config import parse_overrides

HELP = """Distil the LLM's LLM4SBR intent views into a small student that needs only item titles.

[bold]Teacher[/bold]: the LLM answers both views (llm4sbr-long, llm4sbr-short) for a seeded sample of
train examples, through the resumable answer store (stored answers are never asked again; an
interrupted run resumes). The answers are parsed, encoded and localized exactly as for
method.source=llm. [bold]Student[/bold]: by default an MLP head over the frozen title vectors of
the session (attention + mean + last click, per view), trained to the teacher's localized vectors
and selected by the mean cosine to the teacher on held-out sessions (kind=finetune: fine-tunes the
sentence encoder instead). The folder (safetensors + student.json identity) is written under a
temporary name and renamed into place.

Then every example of every split gets its views from the student:

  intentrec train DATA --model srgnn --method llm4sbr --set method.source=distilled --set method.student=DIR

[bold]Examples[/bold]

  intentrec distill data/beauty --llm qwen0.5b --sample 1000 --seed 0 --out runs/students/beauty-qwen0.5b

  intentrec distill data/beauty --llm qwen0.5b --sample 1000 --teacher-only     (answers only)

  intentrec distill data/beauty --llm qwen0.5b --sample 1000 --no-generate --out DIR --student-set hidden=256
"""


def distill(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder."),
    llm: str = typer.Option(
        ..., "--llm", help="The teacher: short name (qwen0.5b, qwen1.5b), .gguf, hf:PATH or URL#MODEL."
    ),
    sample: int = typer.Option(
        ..., "--sample", help="Train examples the teacher answers (each view: one prompt each)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    out: Path = typer.Option(None, "--out", help="Student folder to write (required unless --teacher-only)."),
    encoder: str = typer.Option("minilm", "--encoder", help="Text encoder of titles and answers (as method.encoder)."),
    student_set: list[str] = typer.Option(
        [],
        "--student-set",
        help="Student option key=value (kind=head|finetune, views, k, hidden, epochs, holdout, ...).",
    ),
    decoding_set: list[str] = typer.Option([], "--set", help="Decoding option key=value (e.g. max_tokens=32)."),
    llm_set: list[str] = typer.Option([], "--llm-set", help="Backend option key=value (e.g. n_parallel=8)."),
    store_path: Path | None = typer.Option(
        None, "--store", help="Answer store (default $INTENTREC_HOME/answers.sqlite)."
    ),
    chunk_size: int = typer.Option(64, "--chunk-size", help="Prompts generated between two store commits."),
    generate: bool = typer.Option(
        True, "--generate/--no-generate", help="--no-generate: train on the answers already stored, ask nothing."
    ),
    teacher_only: bool = typer.Option(False, "--teacher-only", help="Only generate the teacher's answers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    from intentrec.errors import ConfigError
    from intentrec.models.methods.llm4sbr_distill import StudentConfig, TeacherResult, cosine_report
    from intentrec.models.methods.llm4sbr_distill import distill as run_distill
    from intentrec.semantic.llm.base import DecodingConfig

    if out is None and not teacher_only:
        raise ConfigError("--out DIR is required (or pass --teacher-only to generate the answers only)")
    config = StudentConfig.build(parse_overrides(student_set), where="--student-set")
    decoding = DecodingConfig.build(parse_overrides(decoding_set), where="--set (decoding)")
    result = run_distill(
        dataset_dir,
        llm=llm,
        sample=sample,
        seed=seed,
        out=out or Path("unused"),
        encoder=encoder,
        config=config,
        store_path=store_path,
        decoding=decoding,
        llm_options=parse_overrides(llm_set),
        chunk_size=chunk_size,
        generate=generate,
        teacher_only=teacher_only,
        progress=progress and not as_json,
    )
    if isinstance(result, TeacherResult):
        summary = {"teacher": result.identity, "generated": result.generated, "seconds": round(result.seconds, 3)}
        summary["views"] = {
            v: {k: r[k] for k in ("examples", "unique_prompts", "already_stored", "generated", "covered")}
            for v, r in result.reports.items()
        }
        if as_json:
            typer.echo(json.dumps(summary, sort_keys=True))
            return
        for v, r in summary["views"].items():
            typer.echo(
                f"{v}: {r['examples']} sampled train examples, {r['unique_prompts']} distinct prompts, "
                f"{r['already_stored']} already stored, {r['generated']} generated, {r['covered']} covered"
            )
        return
    ident = result.identity
    if as_json:
        keys = ("kind", "views", "k", "window", "teacher", "examples", "held_out_cosine", "best_epoch", "seconds")
        typer.echo(json.dumps({"folder": str(result.folder), **{k: ident[k] for k in keys}}, sort_keys=True))
        return
    ex = ident["examples"]
    typer.echo(
        f"wrote {result.folder}: {ident['kind']} student for views {', '.join(ident['views'])} "
        f"({ex['fit']} fit, {ex['held_out']} held-out examples of {ex['sampled']} sampled; "
        f"best epoch {ident['best_epoch']} of {ident['epochs_run']}, {ident['seconds']['training']:.1f} s)"
    )
    typer.echo(cosine_report(ident))
    typer.echo(f"use it: --method llm4sbr --set method.source=distilled --set method.student={result.folder}")


def register(app: typer.Typer) -> None:
    app.command("distill", help=HELP)(distill)
