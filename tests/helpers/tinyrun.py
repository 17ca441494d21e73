"""Test helpers for training: a tiny prepared dataset (pyarrow, following data/schema.py) and a tiny backbone.

Test modules import it as ``tests.helpers.tinyrun``; importing it registers the test backbone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from intentrec.data import schema
from intentrec.data.batch import SessionBatch
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.registry import BACKBONES, register_backbone

TEST_BACKBONE = "test-mean"


class MeanConfig(BackboneConfig):
    embedding_dim: int = 16
    dropout: float = 0.2


class MeanBackbone(Backbone):
    """Mean of the prefix's embeddings plus the last click's, with dropout (so RNG state matters)."""

    Config = MeanConfig
    default_train: ClassVar[dict] = {"lr": 0.01, "batch_size": 16, "patience": 2}

    def __init__(self, num_items: int, config: MeanConfig):
        super().__init__(num_items, config)
        self.embedding = nn.Embedding(num_items + 1, config.embedding_dim, padding_idx=0)
        self.mix = nn.Linear(2 * config.embedding_dim, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        emb = self.dropout(self.embed_items(batch.items))
        mean = emb.sum(1) / batch.lengths.clamp(min=1).unsqueeze(1)
        last = self.embed_items(batch.last_items())
        session = self.mix(torch.cat([last, mean], dim=1))
        return BackboneOutput(session=session, vectors={"local": last, "global": mean})

    def id_item_table(self) -> torch.Tensor:
        return self.embedding.weight[1:]

    def embed_id_items(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)


if TEST_BACKBONE not in BACKBONES:
    register_backbone(TEST_BACKBONE)(MeanBackbone)


def write_tiny_dataset(
    folder: Path, *, num_items: int = 30, sessions: int = 120, seed: int = 0, valid: bool = True
) -> Path:
    """Sessions that mostly walk i → i+1, split 70/15/15 by session; every prefix is an example."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    session_rows, example_rows = [], []
    counts = np.zeros(num_items, dtype=np.int64)
    for s in range(sessions):
        split = "train" if s < 0.7 * sessions else ("valid" if s < 0.85 * sessions else "test")
        if split == "valid" and not valid:
            split = "train"
        length = int(rng.integers(3, 7))
        start = int(rng.integers(0, num_items))
        steps = np.where(rng.random(length) < 0.8, 1, rng.integers(2, 5, length))
        items = [int((start + steps[:j].sum()) % num_items) + 1 for j in range(length)]
        session_rows.append((s, f"s{s}", split, items))
        if split == "train":
            np.add.at(counts, np.asarray(items) - 1, 1)
        for j in range(1, length):
            example_rows.append((len(example_rows), split, s, items[:j], items[j]))
    pq.write_table(
        pa.table(
            {
                "item_index": pa.array(np.arange(1, num_items + 1), pa.int32()),
                "item_id": pa.array([f"it{i}" for i in range(1, num_items + 1)], pa.string()),
                "title": pa.array([f"Item number {i}" for i in range(1, num_items + 1)], pa.string()),
                "train_count": pa.array(counts, pa.int64()),
            }
        ),
        folder / schema.ITEMS,
    )
    pq.write_table(
        pa.table(
            {
                "session_index": pa.array([r[0] for r in session_rows], pa.int64()),
                "session_id": pa.array([r[1] for r in session_rows], pa.string()),
                "split": pa.array([r[2] for r in session_rows], pa.string()),
                "items": pa.array([r[3] for r in session_rows], pa.list_(pa.int32())),
            }
        ),
        folder / schema.SESSIONS,
    )
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array([r[0] for r in example_rows], pa.int64()),
                "split": pa.array([r[1] for r in example_rows], pa.string()),
                "session_index": pa.array([r[2] for r in example_rows], pa.int64()),
                "prefix": pa.array([r[3] for r in example_rows], pa.list_(pa.int32())),
                "target": pa.array([r[4] for r in example_rows], pa.int32()),
            }
        ),
        folder / schema.EXAMPLES,
    )
    manifest = {
        "format_version": schema.FORMAT_VERSION,
        "protocol": "test-tiny",
        "statistics": {"items": num_items, "sessions": sessions, "examples": len(example_rows)},
    }
    (folder / schema.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


#: Settings for quick, deterministic runs on the tiny dataset.
FAST_TRAINER: dict = {"epochs": 3, "seed": 7, "num_threads": 1, "patience": None}
