"""Reading a prepared dataset (see :mod:`intentrec.data.schema`) and iterating over its examples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from intentrec.data import schema
from intentrec.data.batch import SessionBatch, pad_csr
from intentrec.errors import DataError


@dataclass
class ExampleSet:
    """Examples of one split as flat arrays: prefix ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    split: str
    example_ids: np.ndarray  # int64 [N]
    values: np.ndarray  # int32 [sum of prefix lengths], item indices 1..n
    offsets: np.ndarray  # int64 [N + 1]
    targets: np.ndarray  # int32 [N], item indices 1..n

    def __len__(self) -> int:
        return len(self.example_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def prefix(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, rows: np.ndarray) -> ExampleSet:
        """A new ExampleSet holding only ``rows`` (positions, not example ids)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        starts = self.offsets[rows]
        idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return ExampleSet(self.split, self.example_ids[rows], self.values[idx], offsets, self.targets[rows])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        max_length: int | None = None,
    ) -> Iterator[SessionBatch]:
        """Padded batches in file order, or shuffled with a seeded permutation."""
        for rows in self.batch_rows(batch_size, shuffle=shuffle, seed=seed):
            yield self.batch(rows, max_length)

    def batch_rows(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None) -> Iterator[np.ndarray]:
        """The row positions of each batch of :meth:`batches` (several processes shard them, training/distributed.py)."""
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    def batch(self, rows: np.ndarray, max_length: int | None = None) -> SessionBatch:
        """The padded batch of ``rows`` (positions)."""
        return pad_csr(self.values, self.offsets, rows, self.example_ids, self.targets, max_length)

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


class PreparedDataset:
    """A prepared dataset folder. Cheap to open; tables are read on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / schema.MANIFEST
        if not manifest_path.is_file():
            raise DataError(
                "not a prepared dataset (no manifest.json); create one with 'intentrec prepare'",
                path=self.path,
            )
        try:
            self.manifest: dict = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest is not valid JSON: {exc}", path=manifest_path) from None
        for name in (schema.ITEMS, schema.SESSIONS, schema.EXAMPLES):
            if not (self.path / name).is_file():
                raise DataError(f"prepared dataset is incomplete: {name} is missing", path=self.path)

    @classmethod
    def load(cls, path: str | Path) -> PreparedDataset:
        return cls(path)

    @cached_property
    def items(self) -> pd.DataFrame:
        """One row per item, indexed by ``item_index`` (1..n)."""
        return pd.read_parquet(self.path / schema.ITEMS).set_index("item_index").sort_index()

    @property
    def num_items(self) -> int:
        return int(self.manifest["statistics"]["items"])

    @cached_property
    def _examples_table(self):
        return pq.read_table(self.path / schema.EXAMPLES)

    @cached_property
    def _sessions_table(self):
        return pq.read_table(self.path / schema.SESSIONS)

    def examples(self, split: str) -> ExampleSet:
        if split not in schema.SPLITS:
            raise DataError(f"unknown split '{split}' (known: {', '.join(schema.SPLITS)})")
        return _examples_of(self._examples_table, split)

    def sessions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Whole sessions of a split as CSR ``(values, offsets)`` of item indices."""
        table = self._sessions_table
        mask = np.asarray(table.column("split").to_numpy(zero_copy_only=False)) == split
        col = table.filter(mask).column("items").combine_chunks()
        offsets = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
        return np.asarray(col.flatten().to_numpy(), dtype=np.int32), offsets - offsets[0]

    def titles(self) -> list[str | None]:
        """Titles by column index (item index − 1)."""
        col = self.items["title"] if "title" in self.items else pd.Series([None] * self.num_items)
        return [None if (t is None or (isinstance(t, float) and np.isnan(t))) else str(t) for t in col]

    def item_ids(self) -> list[str]:
        """Original item ids by column index (item index − 1)."""
        return [str(x) for x in self.items["item_id"]]

    def train_counts(self) -> np.ndarray:
        """Clicks of each item in the train split, by column index."""
        return self.items["train_count"].to_numpy(dtype=np.int64)


def _examples_of(table, split: str) -> ExampleSet:
    mask = np.asarray(table.column("split").to_numpy(zero_copy_only=False)) == split
    sub = table.filter(mask)
    prefix = sub.column("prefix").combine_chunks()
    offsets = np.asarray(prefix.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    values = np.asarray(prefix.flatten().to_numpy(), dtype=np.int32)
    return ExampleSet(
        split=split,
        example_ids=np.asarray(sub.column("example_id").to_numpy(), dtype=np.int64),
        values=values,
        offsets=offsets if len(offsets) else np.zeros(1, np.int64),
        targets=np.asarray(sub.column("target").to_numpy(), dtype=np.int32),
    )


def all_examples(dataset: PreparedDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """example ids, CSR values and offsets of every example of every split."""
    ids, values, lengths = [], [], []
    for split in schema.SPLITS:
        ex = dataset.examples(split)
        ids.append(ex.example_ids)
        values.append(ex.values)
        lengths.append(ex.lengths)
    lengths_all = np.concatenate(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths_all)]).astype(np.int64)
    return np.concatenate(ids).astype(np.int64), np.concatenate(values).astype(np.int64), offsets
