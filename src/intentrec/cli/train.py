"""``intentrec train``, ``intentrec evaluate`` and ``intentrec recommend``."""

from __future__ import annotations

import json
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from intentrec.config import deep_merge, load_config_file, parse_overrides
from intentrec.errors import ConfigError

TRAIN_HELP = """Train a backbone (optionally wrapped by an LLM method) on a prepared dataset into a run folder.

Settings, from lowest to highest priority: the backbone's paper defaults, --config FILE (YAML/JSON
with optional 'model:', 'train:' and 'method:' sections), then --set. Keys are 'model.<field>'
(backbone), 'train.<field>' (trainer), 'method.<field>' (the --method), or unprefixed: resolved
against the trainer first, then the backbone.

Running the same command again resumes an interrupted run (only train.epochs may change);
--no-resume replaces the run instead.

[bold]Examples[/bold]

  intentrec train data/beauty --model srgnn --out runs/srgnn-s0

  intentrec train data/beauty --model stamp --set embedding_dim=64 --set train.epochs=10 --out runs/x

  intentrec train data/beauty --model srgnn --select-on test --out runs/paper   [dim](paper mode)[/dim]

  intentrec train data/beauty --model srgnn --method llm4sbr --set method.source=titles --out runs/llm4sbr

  intentrec train data/mini --model srgnn --method llm4sbr --set method.source=llm --set method.llm=qwen0.5b --out runs/m

  intentrec train data/beauty --model gcsan --method llmgr --set method.id_run=runs/gcsan --out runs/llmgr

  intentrec train data/beauty --method llmgr --id-model runs/gcsan --out runs/llmgr   [dim](the same; --model from the run)[/dim]

  intentrec train data/beauty --model gcsan --set train.eval_sample=2000 --out runs/gcsan   [dim](valid/test: evaluate --sample 2000's rows)[/dim]

  intentrec train data/beauty --model niser --cold-start 0.1 --out runs/niser-cold   [dim](10% of the items hidden; docs/cold-start.md)[/dim]

  intentrec train data/beauty --model srgnn --ddp --nproc 2 --out runs/srgnn-ddp   [dim](2 CPU processes, gloo; batch_size is the global batch)[/dim]

  torchrun --nproc-per-node 8 -m intentrec.cli.main train data/beauty --model srgnn --set device=cuda --out runs/r8   [dim](NCCL, a GPU each)[/dim]

Several processes (--ddp, or any launch by torchrun): each trains on its share of every global
batch, rank 0 alone writes the run folder; a killed run resumes with the same command (docs/training.md).
"""

EVALUATE_HELP = """Evaluate a run's best checkpoint with exact full ranking over all items.

[bold]Examples[/bold]

  intentrec evaluate runs/srgnn-s0

  intentrec evaluate runs/srgnn-s0 --split valid --slices --json

  intentrec evaluate runs/semsr-f --rerank-with runs/niser   [dim](the "+" of SemSR: NISER re-orders each top-K)[/dim]

  intentrec evaluate runs/niser --sample 500 --seed 0   [dim](the examples of intentrec llm-rank --sample 500 --seed 0)[/dim]

  intentrec evaluate runs/niser-cold --cold-start 0.1   [dim](cold items ranked from their text; the run was trained with --cold-start 0.1)[/dim]

  intentrec evaluate runs/niser-cold --cold-start 0.1 --map mlp --save-map runs/niser-cold/map.safetensors --json
"""

RECOMMEND_HELP = """Recommend next items for a session given as original item ids (oldest first).

[bold]Examples[/bold]

  intentrec recommend runs/srgnn-s0 --items B0001,B0002 --k 5

  intentrec recommend runs/srgnn-s0 --items 1,32,50 --json
"""

PAPER_BANNER = (
    "PAPER MODE — model selection on TEST. Test numbers are the per-metric MAXIMUM over epochs "
    "on the test split and are optimistically biased."
)


class SelectOn(StrEnum):
    valid = "valid"
    test = "test"


class Split(StrEnum):
    valid = "valid"
    test = "test"


def _console() -> Console:
    return Console(soft_wrap=False)


def resolve_settings(
    model_name: str, config_file: Path | None, overrides: list[str] | None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model, trainer, method) dicts from a config file and ``--set`` pairs; ``--set`` wins."""
    from intentrec.models.registry import backbone_class
    from intentrec.training.run import pop_method_settings, split_settings

    cls = backbone_class(model_name)
    file_rest, file_method = pop_method_settings(load_config_file(config_file) if config_file else {})
    set_rest, set_method = pop_method_settings(parse_overrides(overrides))
    file_model, file_train = split_settings(file_rest, cls)
    set_model, set_train = split_settings(set_rest, cls)
    return (
        deep_merge(file_model, set_model),
        deep_merge(file_train, set_train),
        deep_merge(file_method, set_method),
    )


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """One row per metric (HR@5, ...), one column per entry of ``columns``."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = next(iter(columns.values())).keys() if columns else []
    for key in keys:
        table.add_row(key, *(f"{values[key]:.4f}" if key in values else "-" for values in columns.values()))
    return table


def slices_table(sliced: dict[str, dict[str, Any]], keys: list[str]) -> Table:
    """Buckets as columns (fits a narrow terminal); the bucket rules go in the caption."""
    table = Table(
        title="by target popularity (train clicks)",
        caption="; ".join(f"{name}: {row['rule']}" for name, row in sliced.items()),
    )
    table.add_column("")
    for name in sliced:
        table.add_column(name, justify="right")
    table.add_row("items", *(str(row["items"]) for row in sliced.values()))
    table.add_row("examples", *(str(row["count"]) for row in sliced.values()), end_section=True)
    for key in keys:
        table.add_row(key, *(f"{row[key]:.4f}" if key in row else "-" for row in sliced.values()))
    return table


def train_command(
    dataset_dir: Path = typer.Argument(..., help="A prepared dataset folder (intentrec prepare)."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Backbone name, e.g. srgnn, stamp (default with --id-model: that run's, with its model.*).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (created if missing)."),
    method: str | None = typer.Option(
        None,
        "--method",
        help="Wrap the backbone in an LLM method: llm4sbr, dmsrec, semsr or llmgr (options: --set method.X=...).",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON settings file."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="key=value override, repeatable (model.X, train.X or unprefixed)."
    ),
    select_on: SelectOn | None = typer.Option(
        None, "--select-on", help="valid (default) or test = PAPER MODE (per-metric max over epochs on test)."
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per epoch."),
    cold_start: float | None = typer.Option(
        None, "--cold-start", help="Hide this seeded fraction of the items from training (= --set train.cold_start=F)."
    ),
    cold_start_seed: int | None = typer.Option(
        None, "--cold-start-seed", help="Seed of the cold item set (default 0: the same set for every model)."
    ),
    id_model: Path | None = typer.Option(
        None, "--id-model", help="A trained backbone run as the method's ID side (= --set method.id_run=RUN)."
    ),
    ddp: bool = typer.Option(
        False,
        "--ddp",
        help="Train in several processes with PyTorch DDP (gloo on CPU, NCCL on CUDA); outside torchrun, "
        "starts --nproc local processes itself. A torchrun launch uses DDP without this flag.",
    ),
    nproc: int | None = typer.Option(
        None, "--nproc", help="With --ddp outside torchrun: number of processes (default on CUDA: one per GPU)."
    ),
) -> None:
    from intentrec.training import distributed, train
    from intentrec.training.trainer import epoch_line

    id_model_values: dict[str, Any] = {}
    if id_model is not None:
        if method is None:
            raise ConfigError("--id-model RUN sets method.id_run; give the method that reads it (--method llmgr)")
        if model is None:  # the ID run's backbone and its model.* settings, under the user's
            model, id_model_values = id_run_backbone(id_model)
    if model is None:
        raise ConfigError("--model is required (or --id-model RUN, which takes the backbone from that run)")
    model_values, train_values, method_values = resolve_settings(model, config, set_)
    model_values = deep_merge(id_model_values, model_values)
    if id_model is not None:
        if method_values.get("id_run") not in (None, str(id_model)):
            raise ConfigError("--id-model and --set method.id_run name different runs; give one")
        method_values["id_run"] = str(id_model)
    if method_values and method is None:
        raise ConfigError("method.* settings were given but no --method")
    if select_on is not None:
        train_values["select_on"] = select_on.value
    if cold_start is not None:
        train_values["cold_start"] = cold_start
    if cold_start_seed is not None:
        train_values["cold_start_seed"] = cold_start_seed
    paper_mode = train_values.get("select_on") == "test"
    console = _console()
    if nproc is not None and not ddp:
        raise ConfigError("--nproc goes with --ddp")
    if ddp and not distributed.torchrun_env():
        from intentrec.training.run import build_configs

        trainer_cfg = build_configs(model, model_values, train_values, method)[2]
        count = distributed.local_world_size(nproc, trainer_cfg.device)
        distributed.check_world(trainer_cfg.batch_size, count)
        # the same command once per rank; each finds torchrun's variables and joins the job
        code = distributed.launch([sys.executable, "-m", "intentrec.cli.main", *sys.argv[1:]], count)
        if code != 0:
            raise typer.Exit(code if code > 0 else 128 - code)
        return
    main = distributed.process_rank() == 0  # under torchrun only rank 0 prints
    if paper_mode and main:
        console.print(Panel(PAPER_BANNER, style="bold red"))
    from intentrec.training.run import build_configs

    _, _, trainer_cfg = build_configs(model, model_values, train_values, method)
    try:
        result = train(
            dataset_dir,
            model,
            model_values,
            trainer_cfg,
            out=out,
            resume=resume,
            progress=progress and sys.stderr.isatty(),
            on_epoch=lambda record: console.print(
                epoch_line(record, (trainer_cfg.select_metric,), trainer_cfg.paper_mode), markup=False
            ),
            command="intentrec " + shlex.join(sys.argv[1:]),
            method=method,
            method_config=method_values if method else None,
        )
    except distributed.RankZeroFailed:
        raise typer.Exit(2) from None  # rank 0 prints the error
    if not main:
        return
    metrics = result.metrics
    columns = {"test": result.test} if result.paper_mode else {"valid": result.valid, "test": result.test}
    caption = f"{metrics['selection']}; best epoch {result.best_epoch} of {result.epochs_run}" + (
        " (stopped early)" if result.stopped_early else ""
    )
    name = f"{method}({model})" if method else model
    console.print(metrics_table(f"{name} → {out}", columns))
    console.print(caption)
    semantic = metrics.get("semantic")
    if semantic:
        used = semantic.get("examples_used", {})
        total = semantic.get("examples_total", {})
        console.print(
            f"text source: {semantic.get('source')} (views {', '.join(semantic.get('views', []))}); examples used: "
            + ", ".join(f"{s} {used.get(s)}/{total.get(s)}" for s in used)
        )
    if result.paper_mode:
        console.print(Panel(PAPER_BANNER, style="bold red"))
        honest = metrics.get("valid_selected")
        if honest:
            console.print(
                f"For comparison, valid-selected (epoch {honest['epoch']}): "
                f"test {trainer_cfg.select_metric} {honest['test'][trainer_cfg.select_metric]:.4f}"
            )


def id_run_backbone(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """The backbone a run folder trained and its settings (for ``--id-model`` without ``--model``)."""
    from intentrec.training.run import CONFIG, RunDir

    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"--id-model: {run_dir} is not a trained run folder (no {CONFIG})")
    record = RunDir(run_dir).read_json(CONFIG)
    if record.get("method"):
        raise ConfigError(f"--id-model: {run_dir} is a '{record['method']['name']}' run; give a backbone run")
    try:
        return str(record["model"]["name"]), dict(record["model"]["config"])
    except (KeyError, TypeError):
        raise ConfigError(f"--id-model: {run_dir}/{CONFIG} names no model") from None


def evaluate_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by intentrec train."),
    split: Split = typer.Option(Split.test, "--split", help="Which split to evaluate."),
    slices: bool = typer.Option(False, "--slices", help="Also report metrics per target-popularity bucket."),
    rerank_with: Path | None = typer.Option(
        None, "--rerank-with", help="Re-order each top-K list with another run's model (same dataset); HR@K stays."
    ),
    sample: int | None = typer.Option(
        None, "--sample", help="Only a seeded random sample of N examples (the rows of infer/llm-rank --sample)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder, if it moved since training."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    cold_start: float | None = typer.Option(
        None, "--cold-start", help="Rank the items the run was trained without (its --cold-start F) from their text."
    ),
    cold_map: str = typer.Option(
        "auto",
        "--map",
        help="--cold-start: auto (the model's own text branch, else ridge), ridge, mlp, or a saved map.",
    ),
    encoder: str | None = typer.Option(None, "--encoder", help="--cold-start: text encoder of a fitted map (minilm)."),
    template: str | None = typer.Option(None, "--template", help="--cold-start: item text template (title/1)."),
    save_map: Path | None = typer.Option(None, "--save-map", help="--cold-start: write the map (NAME.safetensors)."),
    calibration: str | None = typer.Option(
        None, "--calibration", help="--cold-start: moments (default), quantiles or none: cold scores vs warm ones."
    ),
    text_weight: float | None = typer.Option(
        None, "--text-weight", help="--cold-start: weight of text similarity in cold items' scores (default 1)."
    ),
) -> None:
    from intentrec.training import evaluate_run, load_run

    scoring = {k: v for k, v in (("calibration", calibration), ("text_weight", text_weight)) if v is not None}
    if cold_start is None and (cold_map != "auto" or encoder or template or save_map or scoring):
        raise ConfigError(
            "--map, --encoder, --template, --save-map, --calibration and --text-weight go with --cold-start F"
        )
    if cold_start is not None and (rerank_with or sample is not None or slices):
        raise ConfigError("--cold-start is not combined with --rerank-with, --sample or --slices")
    trained = load_run(run_dir, dataset_dir=data, device=device)
    if cold_start is not None:
        _evaluate_cold_start(trained, split.value, cold_start, cold_map, encoder, template, save_map, scoring, as_json)
        return
    second = None if rerank_with is None else load_run(rerank_with, dataset_dir=trained.dataset.path, device=device)
    report = evaluate_run(trained, split.value, slices=slices, rerank_with=second, sample=sample, seed=seed)
    selection = report["checkpoint"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = _console()
    if trained.paper_mode:
        console.print(Panel("PAPER MODE run: " + selection, style="bold red"))
    title = f"{trained.record['model']['name']} on {split.value} ({report['examples']} examples)"
    if "reranked_by" in report:
        columns = {
            split.value: report["metrics_before_rerank"],
            f"re-ranked by {report['reranked_by']}": report["metrics"],
        }
        console.print(metrics_table(title, columns))
    else:
        console.print(metrics_table(title, {split.value: report["metrics"]}))
    console.print(selection)
    if slices:
        console.print(slices_table(report["slices"], list(report["metrics"])))


def _evaluate_cold_start(
    trained: Any,
    split: str,
    fraction: float,
    cold_map: str,
    encoder: str | None,
    template: str | None,
    save_map: Path | None,
    scoring: dict[str, Any],
    as_json: bool,
) -> None:
    from intentrec.models.cold_start import ColdStartMap
    from intentrec.training.cold_start import check_cold_start_run, evaluate_cold_start

    check_cold_start_run(trained, fraction)  # before loading an encoder
    loaded = None
    if cold_map.endswith(".safetensors"):
        if encoder or template:
            raise ConfigError("a saved map (--map FILE) has its own encoder and template; drop --encoder/--template")
        loaded = ColdStartMap.load(cold_map)
    elif cold_map not in ("auto", "ridge", "mlp"):
        raise ConfigError(f"--map must be auto, ridge, mlp or a saved NAME.safetensors, got {cold_map!r}")
    report = evaluate_cold_start(
        trained,
        fraction,
        split=split,
        map_config=None if loaded else {"kind": cold_map},
        encoder=encoder,
        template=template,
        cold_map=loaded,
        save_map=save_map,
        scoring=scoring,
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    info, results = report["cold_start"], report["metrics"]
    k = 20 if 20 in trained.trainer.ks else max(trained.trainer.ks)
    table = Table(
        title=f"{trained.record['model']['name']} on {split}: {info['cold_targets']} cold targets of "
        f"{info['examples']} examples ({info['cold_items']} cold items)"
    )
    table.add_column("")
    for targets in ("cold", "all"):
        for metric in ("HR", "MRR"):
            table.add_column(f"{metric}@{k} {targets}", justify="right")
    labels = {"model": "model, rows from text", "id_rows": "model, own rows", "popularity": "popularity",
              "text_similarity": "text similarity"}  # fmt: skip
    for name, label in labels.items():
        by_target = results.get(name)
        if by_target is None:
            continue
        cells = [
            "-" if by_target[t] is None else f"{by_target[t][f'{m}@{k}']:.4f}"
            for t in ("cold", "all")
            for m in ("HR", "MRR")
        ]
        table.add_row(label, *cells)
    console = _console()
    console.print(table)
    used = report["map"]
    how = report["scoring"]
    console.print(
        f"cold rows from text: {used['kind']} map, encoder {used['encoder']}, template {used['template']}; "
        f"their scores: calibration {how['calibration']}, text weight {how['text_weight']}"
    )
    console.print(report["checkpoint"])


def recommend_command(
    run_dir: Path = typer.Argument(..., help="A run folder written by intentrec train."),
    items: str = typer.Option(..., "--items", help="Comma-separated original item ids, oldest first."),
    k: int = typer.Option(10, "--k", min=1, help="How many items to recommend."),
    exclude_seen: bool = typer.Option(False, "--exclude-seen", help="Do not recommend the given items."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder, if it moved since training."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    from intentrec.serving.recommend import recommend
    from intentrec.training import load_run

    item_ids = [i.strip() for i in items.split(",") if i.strip()]
    if not item_ids:
        raise ConfigError("--items needs at least one item id, e.g. --items 1,32,50")
    trained = load_run(run_dir, dataset_dir=data, device=device)
    recs = recommend(
        trained.model,
        trained.dataset,
        item_ids,
        k,
        max_length=trained.trainer.max_length,
        exclude_seen=exclude_seen,
        device=trained.device,
    )
    if as_json:
        typer.echo(json.dumps(recs.to_dict(), indent=2))
        return
    console = _console()
    given = Table(title="session (given items, oldest first)")
    given.add_column("#", justify="right")
    given.add_column("item id")
    given.add_column("title")
    for pos, entry in enumerate(recs.session, start=1):
        given.add_row(str(pos), entry["item_id"], entry["title"] or "")
    console.print(given)
    ranked = Table(title=f"top {k} next items ({trained.record['model']['name']})")
    ranked.add_column("rank", justify="right")
    ranked.add_column("item id")
    ranked.add_column("title")
    ranked.add_column("score", justify="right")
    for rec in recs.items:
        ranked.add_row(str(rec.rank), rec.item_id, rec.title or "", f"{rec.score:.4f}")
    console.print(ranked)


def register(app: typer.Typer) -> None:
    app.command("train", help=TRAIN_HELP)(train_command)
    app.command("evaluate", help=EVALUATE_HELP)(evaluate_command)
    app.command("recommend", help=RECOMMEND_HELP)(recommend_command)
