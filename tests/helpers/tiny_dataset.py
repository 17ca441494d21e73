"""A tiny prepared dataset written straight in the layout of :mod:`intentrec.data.schema`.

Model tests use it to call ``backbone.prepare(dataset)`` (e.g. GCE-GNN's global graph) without
depending on the data-preparation code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data import schema
from intentrec.data.dataset import PreparedDataset

NUM_ITEMS = 30


def tiny_sessions(num_items: int = NUM_ITEMS, seed: int = 0) -> dict[str, list[list[int]]]:
    """Random sessions of 2..9 clicks over items 1..num_items; every item occurs in train."""
    rng = np.random.default_rng(seed)
    train = [list(range(i, min(i + 4, num_items + 1))) for i in range(1, num_items + 1, 3)]
    train += [rng.integers(1, num_items + 1, size=rng.integers(2, 10)).tolist() for _ in range(40)]
    valid = [rng.integers(1, num_items + 1, size=rng.integers(2, 6)).tolist() for _ in range(5)]
    test = [rng.integers(1, num_items + 1, size=rng.integers(2, 6)).tolist() for _ in range(5)]
    return {"train": train, "valid": valid, "test": test}


def write_tiny_dataset(
    folder: Path, sessions: dict[str, list[list[int]]] | None = None, num_items: int = NUM_ITEMS
) -> PreparedDataset:
    """Write the four files for ``sessions`` (lists of item indices) and open the folder."""
    sessions = sessions or tiny_sessions(num_items)
    folder.mkdir(parents=True, exist_ok=True)

    session_rows: dict[str, list] = {
        "session_index": [],
        "session_id": [],
        "split": [],
        "items": [],
    }
    example_rows: dict[str, list] = {
        "example_id": [],
        "split": [],
        "session_index": [],
        "prefix": [],
        "target": [],
    }
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for split in schema.SPLITS:
        for clicks in sessions.get(split, []):
            index = len(session_rows["session_index"])
            session_rows["session_index"].append(index)
            session_rows["session_id"].append(f"s{index}")
            session_rows["split"].append(split)
            session_rows["items"].append(clicks)
            if split == "train":
                np.add.at(counts, clicks, 1)
            for cut in range(1, len(clicks)):
                example_rows["example_id"].append(len(example_rows["example_id"]))
                example_rows["split"].append(split)
                example_rows["session_index"].append(index)
                example_rows["prefix"].append(clicks[:cut])
                example_rows["target"].append(clicks[cut])

    items = pa.table(
        {
            "item_index": pa.array(np.arange(1, num_items + 1), pa.int32()),
            "item_id": pa.array([f"item{i}" for i in range(1, num_items + 1)]),
            "title": pa.array([f"Item number {i}" for i in range(1, num_items + 1)]),
            "train_count": pa.array(counts[1:], pa.int64()),
        }
    )
    pq.write_table(items, folder / schema.ITEMS)
    pq.write_table(
        pa.table(
            {
                "session_index": pa.array(session_rows["session_index"], pa.int64()),
                "session_id": pa.array(session_rows["session_id"]),
                "split": pa.array(session_rows["split"]),
                "items": pa.array(session_rows["items"], pa.list_(pa.int32())),
            }
        ),
        folder / schema.SESSIONS,
    )
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array(example_rows["example_id"], pa.int64()),
                "split": pa.array(example_rows["split"]),
                "session_index": pa.array(example_rows["session_index"], pa.int64()),
                "prefix": pa.array(example_rows["prefix"], pa.list_(pa.int32())),
                "target": pa.array(example_rows["target"], pa.int32()),
            }
        ),
        folder / schema.EXAMPLES,
    )
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "protocol": "tiny-test",
        "statistics": {
            "items": num_items,
            "sessions": len(session_rows["session_index"]),
            "examples": len(example_rows["example_id"]),
        },
    }
    (folder / schema.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return PreparedDataset(folder)
