"""Helpers shared by the benchmark scripts: dataset preparation, result records, tables."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from intentrec.experiments.records import machine
from intentrec.experiments.report import mean_std
from intentrec.io import atomic_open, write_json
from intentrec.paths import data_root

__all__ = [
    "REPO",
    "add_malloc_tuning_flag",
    "apply_malloc_tuning",
    "beauty_train_examples",
    "command_line",
    "fmt_pct",
    "load_records",
    "machine",
    "mean_std",
    "prepare_beauty",
    "save_record",
    "write_markdown",
]

REPO = Path(__file__).resolve().parent.parent


def command_line() -> str:
    """The command that is running, with the script path relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0]
    return "python " + shlex.join([shown, *sys.argv[1:]])


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_malloc_tuning_flag(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--malloc-tuning / --no-malloc-tuning`` (default on): measure ours as the trainer runs it."""
    parser.add_argument(
        "--malloc-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=help or "keep freed tensors in the heap, as the trainer does by default",
    )


def apply_malloc_tuning(enabled: bool) -> None:
    """The trainer's glibc tuning (``train.keep_freed_memory``) for this process, when ``enabled``."""
    if enabled:
        from intentrec.training.allocator import keep_freed_memory

        keep_freed_memory()


def beauty_train_examples(threads: int, malloc_tuning: bool):
    """Set torch's threads and the trainer's malloc tuning, then open Beauty and its train examples."""
    import torch

    from intentrec.data.dataset import PreparedDataset

    torch.set_num_threads(threads)
    apply_malloc_tuning(malloc_tuning)
    dataset = PreparedDataset(prepare_beauty(REPO / "runs" / "bench-backbones-beauty"))
    return dataset, dataset.examples("train")


def prepare_beauty(work: Path, max_sessions: int | None = None) -> Path:
    """Prepare Beauty with the llm4sbr-beauty protocol into ``work`` (reused when up to date)."""
    from intentrec.data.prepare import prepare_dataset

    out = work / ("beauty" if max_sessions is None else f"beauty-{max_sessions}")
    params: dict[str, Any] = {"protocol": "llm4sbr-beauty"}
    if max_sessions is not None:
        params["max_sessions"] = max_sessions
    prepare_dataset("generic", data_root() / "amazon/beauty-2014-5core", out, **params)
    return out


def save_record(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def load_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def fmt_pct(values: list[float]) -> str:
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}"


def write_markdown(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
