"""Cross-fitting folds over train sessions, and the derived datasets that leave one fold out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data import schema
from intentrec.data.dataset import PreparedDataset
from intentrec.errors import DataError


def ids_sha256(values: np.ndarray) -> str:
    """sha256 of the sorted int64 ids (a set's fingerprint)."""
    data = np.ascontiguousarray(np.sort(np.asarray(values, dtype=np.int64)))
    return hashlib.sha256(data.tobytes()).hexdigest()


def assign_folds(train_sessions: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each train session (same order as ``train_sessions``): seeded permutation, position mod k."""
    n = len(train_sessions)
    fold = np.empty(n, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    fold[order] = np.arange(n) % folds
    return fold


def column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    if name not in table.column_names:
        raise DataError(f"missing column '{name}'", path=path)
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False))


def write_fold_dataset(source: PreparedDataset, target: Path, held_out: np.ndarray, info: dict[str, Any]) -> Path:
    """A copy of ``source`` without the train sessions ``held_out`` (and their examples).

    Session indices and example ids keep their values, item indices are unchanged, ``train_count`` is
    recounted over the remaining train sessions, and the manifest gains a ``derived_from`` block. The
    folder is written next to ``target`` and renamed into place, so it is complete or absent. An
    existing folder with the same manifest is reused.
    """
    held = np.asarray(held_out, dtype=np.int64)
    sessions = pq.read_table(source.path / schema.SESSIONS)
    examples = pq.read_table(source.path / schema.EXAMPLES)
    keep_sessions = ~np.isin(column(sessions, "session_index", source.path / schema.SESSIONS), held)
    keep_examples = ~np.isin(column(examples, "session_index", source.path / schema.EXAMPLES), held)
    sessions = sessions.filter(pa.array(keep_sessions))
    examples = examples.filter(pa.array(keep_examples))

    items = pq.read_table(source.path / schema.ITEMS)
    split = column(sessions, "split", source.path / schema.SESSIONS)
    clicks = sessions.column("items").combine_chunks()
    lengths = np.diff(np.asarray(clicks.offsets.to_numpy(), dtype=np.int64))
    flat = np.asarray(clicks.flatten().to_numpy(), dtype=np.int64)
    in_train = np.repeat(split == "train", lengths)
    counts = np.bincount(flat[in_train], minlength=source.num_items + 1)[1:]
    item_index = column(items, "item_index", source.path / schema.ITEMS).astype(np.int64)
    position = items.column_names.index("train_count") if "train_count" in items.column_names else None
    train_count = pa.array(counts[item_index - 1], pa.int64())
    items = (
        items.set_column(position, "train_count", train_count)
        if position is not None
        else items.append_column("train_count", train_count)
    )

    manifest = json.loads(json.dumps(source.manifest))
    manifest["derived_from"] = info
    stats = manifest.setdefault("statistics", {})
    example_split = column(examples, "split", source.path / schema.EXAMPLES)
    updates = {
        "sessions": int(len(split)),
        "train_sessions": int((split == "train").sum()),
        "examples": int(len(example_split)),
        "train_examples": int((example_split == "train").sum()),
        "interactions": int(lengths.sum()),
    }
    stats.update({k: v for k, v in updates.items() if k in stats or k in ("sessions", "examples")})
    text = json.dumps(manifest, indent=2, sort_keys=True)
    complete = all((target / n).is_file() for n in (schema.ITEMS, schema.SESSIONS, schema.EXAMPLES, schema.MANIFEST))
    if complete and (target / schema.MANIFEST).read_text(encoding="utf-8") == text:
        return target  # written before with the same content (a resumed cross-fit)
    if target.exists():
        shutil.rmtree(target)  # our own derived folder, from other settings or incomplete

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pq.write_table(items, tmp / schema.ITEMS)
        pq.write_table(sessions, tmp / schema.SESSIONS)
        pq.write_table(examples, tmp / schema.EXAMPLES)
        (tmp / schema.MANIFEST).write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
