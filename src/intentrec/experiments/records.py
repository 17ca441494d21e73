"""Run records: one small JSON per finished run, the only input of the results tables.

A record is written (atomically) after its run finished; its presence means "done". It holds what is
needed to trust and reproduce a number without the run folder: the dataset's manifest hash and
protocol, the requested settings and the full resolved configs, the command, the selection mode, the
metrics, time and memory, the library version and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from intentrec import __version__
from intentrec.data.identity import DatasetIdentity
from intentrec.errors import IntentrecError
from intentrec.experiments.plan import RunSpec
from intentrec.io import write_json

#: Keys copied from the run folder's config.json: the full configs after defaults were applied.
_CONFIG_KEYS = ("model", "method", "trainer")
#: A run trained with ``train.cold_start``: its cold-start evaluation (:func:`cold_start_entry`).
COLD_START_KEY = "cold_start_test"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int | None = None) -> str:
    """CPU (and GPU when one is used), torch threads and versions, for the record.

    ``threads``: the torch threads the measured work ran with, when that was another process
    (default: this process's).
    """
    import torch

    text = f"{cpu_model()}, {os.cpu_count()} logical CPUs, {threads or torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return f"{text}, torch {torch.__version__}, intentrec {__version__}"


def display_path(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it (records are committed)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def build_record(
    run: RunSpec,
    result: Any,
    *,
    experiment: str,
    dataset_dir: Path,
    manifest: dict[str, Any],
    identity: DatasetIdentity,
    command: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """The record of a finished run from its ``TrainResult``."""
    metrics: dict[str, Any] = result.metrics
    run_config = _read_json(Path(result.run_dir) / "config.json")
    record: dict[str, Any] = {
        "run_id": run.run_id,
        "experiment": experiment,
        "dataset": {
            "name": run.dataset,
            "path": display_path(dataset_dir),
            "manifest_sha256": identity.manifest_sha256,
            "fingerprint": identity.fingerprint,
            "protocol": manifest.get("protocol"),
        },
        "backbone": run.backbone,
        "method": run.method,
        "variant": run.variant,
        "seed": run.seed,
        "settings": run.settings,
        "config": {k: run_config[k] for k in _CONFIG_KEYS if k in run_config},
        "command": command,
        # the command that actually trained the run folder (differs when an earlier run was reused)
        "trained_by": run_config.get("command"),
        "selection": result.selection,
        "paper_mode": bool(result.paper_mode),
    }
    if metrics.get("warning"):
        record["warning"] = metrics["warning"]
    record.update(
        valid=result.valid,
        test=result.test,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        seconds_per_epoch=metrics.get("seconds_per_epoch_mean"),
        train_seconds_per_epoch=metrics.get("train_seconds_per_epoch_mean"),
        seconds_total=metrics.get("seconds_total"),
        wall_seconds=round(wall_seconds, 3),
        peak_rss_mb=metrics.get("peak_rss_mb"),
        num_parameters=metrics.get("num_parameters"),
    )
    if metrics.get("valid_selected"):
        record["valid_selected"] = metrics["valid_selected"]
    if metrics.get("semantic") is not None:
        record["semantic"] = metrics["semantic"]
    if metrics.get("eval_sample") is not None:
        record["eval_sample"] = metrics["eval_sample"]
    record.update(
        run_dir=display_path(Path(result.run_dir)),
        library_version=__version__,
        machine=machine(),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return record


def save_record(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*.json`` below ``folder`` (records of nested run ids live in sub-folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [_read_json(p) for p in sorted(folder.rglob("*.json"))]


def _read_json(path: Path) -> dict[str, Any]:
    from intentrec.errors import DataError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read JSON: {exc}", path=path) from None


def test_ranks_entry(run_dir: Path, expected: dict[str, float], ks: list[int]) -> tuple[dict[str, Any], str | None]:
    """Each test example's target rank under a finished run's selected checkpoint, for the record.

    The ranks are recomputed from the run folder and checked against the record's test metrics; the
    second value says how they differ when more than two examples' worth (a bug, never expected).
    """
    from intentrec.evaluation import rank_examples
    from intentrec.evaluation.metrics import metrics_from_ranks
    from intentrec.experiments.significance import encode_ranks
    from intentrec.training.eval_sample import evaluated_examples
    from intentrec.training.run import load_run

    trained = load_run(run_dir)
    cfg = trained.trainer
    examples = evaluated_examples(trained, "test")
    ranked = rank_examples(
        trained.model, examples, batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=trained.device
    )
    again = metrics_from_ranks(ranked.ranks, ks)
    slack = 2.0 / max(len(ranked.ranks), 1)
    off = [f"{m} {again[m]:.6f} vs {v:.6f}" for m, v in expected.items() if m in again and abs(again[m] - v) > slack]
    problem = f"test ranks recomputed from {display_path(run_dir)} disagree with the record: {', '.join(off)}"
    return encode_ranks(ranked.example_ids, ranked.ranks, ks), (problem if off else None)


def cold_start_entry(run_dir: Path, fraction: float, evaluation: Any) -> dict[str, Any]:
    """The cold-start evaluation of a finished run trained with ``train.cold_start = fraction`` on its
    test split (``intentrec evaluate RUN --cold-start F``), as the record keeps it. ``evaluation``: the
    experiment's ``cold_start_eval`` (encoder, template, map and scoring settings)."""
    from intentrec.training.cold_start import evaluate_cold_start
    from intentrec.training.run import load_run

    report = evaluate_cold_start(
        load_run(run_dir),
        fraction,
        split="test",
        map_config=evaluation.map,
        encoder=evaluation.encoder,
        template=evaluation.template,
        scoring=evaluation.scoring,
    )
    return {k: report[k] for k in ("split", "checkpoint", "cold_start", "map", "scoring", "metrics")}


def build_rerank_record(
    run: RunSpec,
    first: dict[str, Any],
    second: dict[str, Any],
    run_dirs: Any,
    *,
    command: str,
    wall_seconds_started: float,
) -> dict[str, Any]:
    """The record of an evaluation-only ``+`` row: ``first``'s test top-K lists re-ordered by ``second``.

    Training figures (epochs, time, memory) are the re-ranked run's; the test metrics are recomputed
    from both checkpoints (:mod:`intentrec.evaluation.rerank`), HR@K unchanged by construction.
    """
    from intentrec.evaluation.rerank import reranked_metrics, reranked_ranks
    from intentrec.experiments.report import HEADLINE_K
    from intentrec.experiments.significance import RANKS_KEY, encode_ranks
    from intentrec.training.eval_sample import evaluated_examples
    from intentrec.training.run import load_run

    first_dir, second_dir = run_dirs
    trained, other = load_run(first_dir), load_run(second_dir)
    cfg = trained.trainer
    examples = evaluated_examples(trained, "test")
    if len(other.model.select_examples(examples)) != len(examples):
        raise IntentrecError(f"run {second['run_id']} cannot score every test example of run {first['run_id']}")
    ranks = reranked_ranks(
        trained.model, other.model, examples, cfg.ks,
        batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=trained.device,
    )  # fmt: skip
    # the cold-start evaluation is the re-ranked run's own, not this row's
    dropped = (RANKS_KEY, "test_ranks_warning", COLD_START_KEY, "cold_start_warning")
    record = {k: v for k, v in first.items() if k not in dropped}
    record.update(
        run_id=run.run_id,
        variant=run.variant,
        settings=run.settings,
        command=command,
        selection=f"{first['selection']}; its test top-K lists re-ranked by {second['run_id']}",
        test=reranked_metrics(ranks),
        reranks=first["run_id"],
        reranked_by=second["run_id"],
        wall_seconds=round(time.perf_counter() - wall_seconds_started, 3),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        library_version=__version__,
        machine=machine(),
    )
    # the paired tests use the headline cut-off's re-ordered list (each K has its own list)
    k = HEADLINE_K if HEADLINE_K in ranks else max(ranks)
    record[RANKS_KEY] = encode_ranks(examples.example_ids, ranks[k], [k])
    return record
