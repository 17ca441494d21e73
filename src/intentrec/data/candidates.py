"""Candidate files: each example's top-K item indices from a trained backbone (LLM-DMsRec's input).

Files (``DATASET/semantic/``, written atomically by :mod:`intentrec.training.candidates`)::

    candidates.<model>.f<folds>[.leaky].parquet
        example_id int64, candidates list<int32> (item indices, best first), fold int32 (the fold
        whose model scored it; -1 = the model trained on all train examples), scored_by string (run id)
    candidates.<model>.f<folds>[.leaky].parquet.json
        provenance: settings, which run scored which examples, the sessions each run trained on

A model that reads such a file declares it with a :class:`CandidateSpec` (``SessionModel.needs()``);
an explicit step builds it (``intentrec candidates``, or the experiment runner), never ``prepare``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from intentrec.errors import DataError

SEMANTIC_DIR = "semantic"
FORMAT = "intentrec-candidates/1"


def candidates_path(dataset_dir: str | Path, model: str, folds: int, leaky: bool = False) -> Path:
    name = f"candidates.{model}.f{folds}{'.leaky' if leaky else ''}.parquet"
    return Path(dataset_dir) / SEMANTIC_DIR / name


def provenance_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance next to a candidate file ({} when there is none or it is unreadable)."""
    prov = provenance_path(path)
    if not prov.is_file():
        return {}
    try:
        return json.loads(prov.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


@dataclass(frozen=True)
class CandidateSpec:
    """Which candidate file a model reads: a given file, or the one these settings build."""

    model: str = "gcegnn"
    folds: int = 2
    top: int = 50
    seed: int = 0
    leaky: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)
    trainer_config: dict[str, Any] = field(default_factory=dict)
    work_dir: str | None = None
    given: str | None = None  # a ready file (then nothing is built)

    def path(self, dataset_dir: str | Path) -> Path:
        return Path(self.given) if self.given else candidates_path(dataset_dir, self.model, self.folds, self.leaky)

    def missing(self, dataset_dir: str | Path) -> DataError:
        """The error for a missing file: which command builds it."""
        return DataError(
            f"the candidate file this run reads is missing; build it first with\n  {self.build_command(dataset_dir)}\n"
            "(the experiment runner builds it by itself), or give one with method.candidates_file",
            path=self.path(dataset_dir),
        )

    def build_command(self, dataset_dir: str | Path) -> str:
        """The command line that builds this file."""
        parts = [f"intentrec candidates {dataset_dir} --model {self.model} --folds {self.folds} --top {self.top}"]
        if self.seed:
            parts.append(f"--seed {self.seed}")
        if self.leaky:
            parts.append("--leaky")
        parts += [f"--set model.{k}={v}" for k, v in self.model_config.items()]
        parts += [f"--set train.{k}={v}" for k, v in self.trainer_config.items()]
        if self.work_dir:
            parts.append(f"--work-dir {self.work_dir}")
        return " ".join(parts)


def read_candidates(path: str | Path, example_ids: np.ndarray, *, top: int | None = None) -> np.ndarray:
    """Candidate matrix ``[len(example_ids), K]`` (int64 item indices, best first) in the given order.

    Every requested example must be in the file and have at least ``top`` (default: the file's
    width) candidates; shorter lists are an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("candidate file not found", path=path)
    try:
        table = pq.read_table(path, columns=["example_id", "candidates"])
    except Exception as exc:  # noqa: BLE001 - any parquet failure is the user's file
        raise DataError(f"cannot read candidates (need columns example_id, candidates): {exc}", path=path) from None
    ids = np.asarray(table.column("example_id").to_numpy(), dtype=np.int64)
    col = table.column("candidates").combine_chunks()
    offsets = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    values = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = np.diff(offsets)
    width = (int(lengths.min()) if len(lengths) else 0) if top is None else top
    if width < 1:
        raise DataError("field 'candidates': an example has an empty candidate list", path=path)
    order = np.argsort(ids, kind="stable")
    wanted = np.asarray(example_ids, dtype=np.int64)
    if len(ids):
        pos = np.clip(np.searchsorted(ids[order], wanted), 0, len(ids) - 1)
        found = ids[order][pos] == wanted
    else:
        pos, found = np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    if not np.all(found):
        missing = wanted[~found]
        raise DataError(
            f"no candidates for {len(missing)} of {len(wanted)} examples (e.g. example ids {missing[:5].tolist()}); "
            "recompute the file ('intentrec candidates DATASET')",
            path=path,
        )
    rows = order[pos]
    if np.any(lengths[rows] < width):
        short = wanted[lengths[rows] < width]
        raise DataError(
            f"field 'candidates': fewer than {width} candidates for example ids {short[:5].tolist()}", path=path
        )
    return values[offsets[rows][:, None] + np.arange(width)[None, :]]
