"""``intentrec infer``: generate LLM answers for a prepared dataset into the answer store."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from intentrec.config import parse_overrides


def register(app: typer.Typer) -> None:
    @app.command("infer")
    def infer(
        dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder (from 'intentrec prepare')."),
        prompt: str = typer.Option(..., "--prompt", help="Prompt template name, e.g. llm4sbr-short."),
        llm: str = typer.Option(
            "qwen0.5b",
            "--llm",
            help="smollm2 | qwen0.5b | qwen1.5b | PATH.gguf | hf:PATH | http(s)://HOST/v1#MODEL.",
        ),
        split: str = typer.Option("test", "--split", help="train | valid | test."),
        limit: int | None = typer.Option(None, "--limit", help="Only the first N examples of the split."),
        sample: int | None = typer.Option(None, "--sample", help="A random sample of N examples (see --seed)."),
        seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
        decoding_set: list[str] = typer.Option(
            [],
            "--set",
            help="Decoding override key=value (max_tokens, temperature, top_p, repeat_penalty, stop, seed).",
        ),
        llm_set: list[str] = typer.Option(
            [], "--llm-set", help="Backend option key=value (e.g. n_parallel=8, model=NAME, concurrency=16)."
        ),
        prompt_set: list[str] = typer.Option(
            [], "--prompt-set", help="Template option key=value (e.g. max_session_items=10)."
        ),
        candidates: Path | None = typer.Option(
            None, "--candidates", help="Parquet with example_id, candidates (item indices) for 'dmsrec'."
        ),
        store_path: Path | None = typer.Option(
            None, "--store", help="Answer store file (default: $INTENTREC_HOME/answers.sqlite)."
        ),
        chunk_size: int = typer.Option(64, "--chunk-size", help="Prompts generated between two store commits."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count prompts and stored answers; generate nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    ) -> None:
        """Ask an LLM about every example of a split; answers go to the resumable answer store.

        Identical prompts are asked once, answers already stored are reused, and answers are committed
        after every chunk, so an interrupted run resumes where it stopped.
        """
        from intentrec.semantic.infer import load_candidates, run_inference
        from intentrec.semantic.llm.base import DecodingConfig
        from intentrec.semantic.store import AnswerStore

        decoding = DecodingConfig.build(parse_overrides(decoding_set), where="--set (decoding)")
        store = AnswerStore(store_path) if store_path else None
        try:
            report = run_inference(
                dataset_dir,
                template=prompt,
                llm=llm,
                split=split,
                limit=limit,
                sample=sample,
                seed=seed,
                decoding=decoding,
                llm_options=parse_overrides(llm_set),
                template_options=parse_overrides(prompt_set),
                candidates=load_candidates(candidates) if candidates else None,
                store=store,
                chunk_size=chunk_size,
                progress=progress and not as_json,
                dry_run=dry_run,
            )
        finally:
            if store is not None:
                store.close()
        if as_json:
            typer.echo(json.dumps(report.to_dict(), sort_keys=True))
            return
        r = report
        typer.echo(
            f"{r.template} on {r.split} with {r.model} ({r.backend}): {r.examples} examples, "
            f"{r.unique_prompts} distinct prompts, {r.already_stored} already stored, {r.generated} generated"
            + (f" in {r.seconds:.1f} s ({r.prompts_per_second:.2f} prompts/s)" if r.generated else "")
        )
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.status_counts.items())) or "none"
        typer.echo(
            f"coverage: {r.covered}/{r.examples} examples ({100 * r.coverage:.1f}%); answers: {statuses}; "
            f"echoing a session title: {r.echoes}"
        )
        if r.missing_example_ids:
            shown = ", ".join(map(str, r.missing_example_ids[:10]))
            more = " …" if len(r.missing_example_ids) > 10 else ""
            typer.echo(f"examples without an answer: {shown}{more}")
