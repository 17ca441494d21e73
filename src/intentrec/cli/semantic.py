"""``intentrec embed``, ``intentrec intents`` and ``intentrec cache stats``."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path

import typer

from intentrec.errors import IntentrecError

EMBED_HELP = """Embed every item's title with a text encoder (catalogue embeddings).

Writes DATASET_DIR/semantic/items.<encoder-id>.npy (float32, row c = item index c+1) and a .json
with the encoder identity. Texts already encoded by the same encoder are taken from the cache in
$INTENTREC_HOME/embeddings, so re-running is cheap.

[bold]Examples[/bold]

  intentrec embed data/beauty

  intentrec embed data/beauty --encoder hf:/models/bert-base-uncased --pooling mean --json
"""

INTENTS_HELP = """Turn the stored LLM answers of a dataset's examples into intent vectors.

Each answer is parsed with the prompt template, embedded, and localized onto the catalogue: the k
most similar items weighted by their similarity (k = 0 keeps the raw answer embedding). Run
'intentrec infer' first; examples without an answer get a zero vector and are listed in the coverage
report.

[bold]Examples[/bold]

  intentrec intents data/beauty --prompt llm4sbr-long --llm qwen0.5b --k 3

  intentrec intents data/beauty --prompt dmsrec --llm model.gguf --split test --json
"""


class SplitChoice(StrEnum):
    train = "train"
    valid = "valid"
    test = "test"
    all = "all"


class SearchChoice(StrEnum):
    auto = "auto"
    exact = "exact"
    faiss = "faiss"


class PoolingChoice(StrEnum):
    mean = "mean"
    cls = "cls"


def _encoder(spec: str, pooling: PoolingChoice | None, max_length: int | None):
    from intentrec.semantic.encoders import get_encoder

    options: dict = {}
    if pooling is not None:
        options["pooling"] = pooling.value
    if max_length is not None:
        options["max_length"] = max_length
    return get_encoder(spec, **options)


def resolve_llm_identity(spec: str) -> dict[str, str]:
    """The LLM's identity (sha256 of its weights) without loading it."""
    from intentrec.semantic.llm import resolve_llm_identity as resolve

    return resolve(spec)


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def embed(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder."),
    encoder: str = typer.Option("minilm", "--encoder", help="minilm, st:PATH, hf:PATH or a model folder."),
    pooling: PoolingChoice = typer.Option(None, "--pooling", help="hf encoders only: mean (masked) or cls."),
    max_length: int = typer.Option(None, "--max-length", help="Token limit per text (default: the model's)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Unit-length vectors."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    force: bool = typer.Option(False, "--force", help="Rewrite the file even if it is up to date."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    from intentrec.semantic.intents import embed_catalogue

    enc = _encoder(encoder, pooling, max_length)
    start = time.perf_counter()
    result = embed_catalogue(dataset_dir, enc, normalize=normalize, batch_size=batch_size, force=force)
    seconds = time.perf_counter() - start
    summary = {
        "path": str(result.path),
        "items": int(result.vectors.shape[0]),
        "dim": int(result.vectors.shape[1]),
        "encoder_key": result.info["encoder_key"],
        "normalize": normalize,
        "reused_file": result.reused_file,
        "encoded_texts": result.cache.encoded if result.cache else 0,
        "cached_texts": result.cache.reused if result.cache else 0,
        "untitled_items": result.info.get("untitled_items"),
        "seconds": round(seconds, 3),
    }
    if as_json:
        _echo_json(summary)
        return
    if result.reused_file:
        typer.echo(f"up to date: {result.path} ({summary['items']} items × {summary['dim']})")
        return
    typer.echo(
        f"wrote {result.path}: {summary['items']} items × {summary['dim']} "
        f"({summary['encoded_texts']} encoded, {summary['cached_texts']} from cache, {seconds:.1f}s)"
    )
    if summary["untitled_items"]:
        typer.echo(f"note: {summary['untitled_items']} items have no title and were embedded as 'item <id>'")


def intents(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt template the answers were made with."),
    llm: str = typer.Option(..., "--llm", help="The LLM that answered: short name, .gguf path, hf:PATH or URL#MODEL."),
    k: int = typer.Option(3, "--k", min=0, help="Catalogue items per intent (0: raw answer embedding)."),
    encoder: str = typer.Option("minilm", "--encoder", help="minilm, st:PATH, hf:PATH or a model folder."),
    pooling: PoolingChoice = typer.Option(None, "--pooling", help="hf encoders only: mean (masked) or cls."),
    split: SplitChoice = typer.Option(SplitChoice.all, "--split"),
    search: SearchChoice = typer.Option(SearchChoice.auto, "--search", help="Nearest-item search."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Unit-length text vectors."),
    store_path: Path = typer.Option(None, "--store", help="Answer store (default $INTENTREC_HOME/answers.sqlite)."),
    out: Path = typer.Option(None, "--out", help="Output .safetensors (default: in DATASET_DIR/semantic/)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    from intentrec.semantic.intents import compute_intents
    from intentrec.semantic.prompts import get_template
    from intentrec.semantic.store import AnswerStore

    get_template(prompt)  # fail on an unknown template before hashing anything
    identity = resolve_llm_identity(llm)
    enc = _encoder(encoder, pooling, None)
    with AnswerStore(store_path) as store:
        result = compute_intents(
            dataset_dir,
            template=prompt,
            llm_identity=identity,
            encoder=enc,
            k=k,
            split=split.value,
            store=store,
            method=search.value,
            normalize=normalize,
            out=out,
        )
    cov = result.coverage
    if as_json:
        _echo_json(
            {
                "path": str(result.path),
                "report": str(result.report_path),
                "examples": cov.examples,
                "with_intent": cov.with_intent,
                "coverage": round(cov.fraction, 6),
                "missing": cov.missing,
                "stale": cov.stale,
                "empty": cov.empty,
                "garbage": cov.garbage,
                "by_split": cov.by_split,
                "missing_example_ids": cov.missing_example_ids,
            }
        )
        return
    typer.echo(f"wrote {result.path} ({cov.examples} examples × {result.vectors.shape[1]})")
    typer.echo(
        f"coverage: {cov.with_intent}/{cov.examples} ({cov.fraction:.1%}) with an intent; "
        f"{cov.missing} without an answer, {cov.stale} answered with another template version, "
        f"{cov.empty} empty and {cov.garbage} unusable answers"
    )
    for name, counts in cov.by_split.items():
        typer.echo(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if cov.missing:
        typer.echo(
            f"run 'intentrec infer {dataset_dir} --prompt {prompt} --llm {llm}' to answer the rest "
            f"(first missing example ids: {cov.missing_example_ids[:10]})"
        )


def cache_stats(
    store_path: Path = typer.Option(None, "--store", help="Answer store (default $INTENTREC_HOME/answers.sqlite)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Answers in the store, per model and template."""
    from intentrec.semantic.store import AnswerStore, default_store_path

    path = store_path or default_store_path()
    if store_path is not None and not path.is_file():
        raise IntentrecError(f"answer store not found: {path}")
    with AnswerStore(path) as store:
        stats = store.stats()
    if as_json:
        _echo_json(stats)
        return
    typer.echo(
        f"{stats['path']}: {stats['answers']} answers, {stats['distinct_prompts']} distinct prompts, "
        f"{stats['example_links']} example links"
    )
    for g in stats["by_model_template"]:
        typer.echo(
            f"  {g['model']} [{g['backend']}, {g['model_sha256'][:12]}] {g['template']}@{g['template_version']}: "
            f"{g['answers']} answers, {g['completion_tokens']} completion tokens, {g['generation_seconds']:.1f}s"
        )


def register(app: typer.Typer) -> None:
    app.command("embed", help=EMBED_HELP)(embed)
    app.command("intents", help=INTENTS_HELP)(intents)
    cache_app = typer.Typer(help="The LLM answer store.", no_args_is_help=True)
    cache_app.command("stats")(cache_stats)
    app.add_typer(cache_app, name="cache")
