"""``intentrec llm-rank``: the LLM as the recommender (SemSR's FS-LLM, ZCoT-LLM, FSCoT-LLM), scored
with exact full ranking."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from intentrec.config import parse_overrides

LLM_RANK_HELP = (
    "Let an LLM name the next product's title and rank every item by its similarity to it."
    "\n\n"
    "The generated title is encoded with --encoder (the same encoder as the item texts) and all items are"
    " ranked by cosine; the target's exact rank gives HR/MRR/NDCG@K (ties count against it). Examples "
    "with no usable answer get the worst rank and are counted. Answers go to the resumable answer store: "
    "a rerun continues where it stopped and makes no new calls once everything is stored."
    "\n\n"
    "Baselines: fs (few-shot, one call), zcot (a rationale call, then a title call given the rationale), "
    "fscot (zcot with few-shot examples shown with their rationales)."
    "\n\n"
    "The sample is the one 'intentrec infer --sample N --seed S' uses; score a trained run on the same "
    "examples with 'intentrec evaluate RUN --sample N --seed S'."
    "\n\n"
    """[bold]Examples[/bold]

  intentrec llm-rank data/beauty --baseline fs --llm qwen1.5b --sample 500

  intentrec llm-rank data/beauty --baseline zcot --llm qwen0.5b --sample 500 --seed 0 --json

  intentrec llm-rank data/beauty --baseline fscot --llm 'http://127.0.0.1:8000/v1#Qwen/Qwen2.5-1.5B-Instruct' \\
      --llm-set concurrency=64 --chunk-size 256 --sample 500
"""
)


class Baseline(StrEnum):
    fs = "fs"
    zcot = "zcot"
    fscot = "fscot"


def _ks(text: str) -> list[int]:
    from intentrec.errors import ConfigError

    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--ks must be comma-separated integers, got '{text}'") from None
    return ks


def llm_rank_command(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder (from 'intentrec prepare')."),
    baseline: Baseline = typer.Option(Baseline.fs, "--baseline", help="fs | zcot | fscot."),
    llm: str = typer.Option(
        "qwen0.5b", "--llm", help="smollm2 | qwen0.5b | qwen1.5b | PATH.gguf | hf:PATH | http(s)://HOST/v1#MODEL."
    ),
    encoder: str = typer.Option("minilm", "--encoder", help="Text encoder of the titles and item texts."),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    sample: int | None = typer.Option(500, "--sample", help="A seeded random sample of N examples (0 = all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
    limit: int | None = typer.Option(None, "--limit", help="The first N examples instead of a sample."),
    ks: str = typer.Option("5,10,20,50,100", "--ks", help="Cutoffs K of HR/MRR/NDCG@K, comma-separated."),
    decoding_set: list[str] = typer.Option([], "--set", help="Decoding of the title calls, key=value."),
    rationale_set: list[str] = typer.Option(
        [], "--rationale-set", help="Decoding of the rationale calls, key=value (default max_tokens=96)."
    ),
    llm_set: list[str] = typer.Option([], "--llm-set", help="Backend option key=value (e.g. n_parallel=8)."),
    prompt_set: list[str] = typer.Option([], "--prompt-set", help="Template option key=value (e.g. max_examples=3)."),
    store_path: Path | None = typer.Option(
        None, "--store", help="Answer store file (default: $INTENTREC_HOME/answers.sqlite)."
    ),
    chunk_size: int = typer.Option(64, "--chunk-size", help="Prompts generated between two store commits."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
) -> None:
    from intentrec.evaluation.llm_ranker import RATIONALE_MAX_TOKENS, llm_ranking
    from intentrec.semantic.llm.base import DecodingConfig

    decoding = DecodingConfig.build(parse_overrides(decoding_set), where="--set (decoding)")
    rationale_decoding = DecodingConfig.build(
        {**decoding.key_dict(), "max_tokens": RATIONALE_MAX_TOKENS, **parse_overrides(rationale_set)},
        where="--rationale-set (decoding)",
    )
    report = llm_ranking(
        dataset_dir,
        baseline=baseline.value,
        llm=llm,
        encoder=encoder,
        split=split,
        sample=None if (sample == 0 or limit is not None) else sample,
        seed=seed,
        limit=limit,
        ks=_ks(ks),
        store=store_path,
        decoding=decoding,
        rationale_decoding=rationale_decoding,
        llm_options=parse_overrides(llm_set),
        template_options=parse_overrides(prompt_set),
        chunk_size=chunk_size,
        progress=progress and not as_json,
    )
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    c = report["counts"]
    typer.echo(
        f"{report['baseline']} ({' → '.join(report['templates'])}) with {report['llm']['model']} on "
        f"{report['split']}: {c['examples']} examples, {c['ranked']} ranked, {c['unranked']} at the worst rank "
        f"({report['worst_rank']})"
        + (
            " — " + ", ".join(f"{k} {c[k]}" for k in ("missing", "stale", "empty", "garbage", "no_rationale") if c[k])
            if c["unranked"]
            else ""
        )
    )
    typer.echo(
        f"calls: {report['generated']} generated, {report['already_stored']} already stored; "
        f"{report['seconds']:.1f} s ({report['prompts_per_second']:.2f} prompts/s)"
    )
    metrics = report["metrics"]
    typer.echo("      " + "".join(f"{'@' + str(k):>9}" for k in report["ks"]))
    for name in ("HR", "MRR", "NDCG"):
        typer.echo(f"{name:<6}" + "".join(f"{metrics[f'{name}@{k}']:>9.4f}" for k in report["ks"]))
    typer.echo(f"same examples for a trained run: {report['evaluate_same_sample']}")


def register(app: typer.Typer) -> None:
    app.command("llm-rank", help=LLM_RANK_HELP)(llm_rank_command)
