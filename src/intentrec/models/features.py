"""Feature tables a model reads: per example (by example id) or per item (by item column).

Both are precomputed by ``prepare`` and never built in the hot loop. Tables keep their dtype: a
float table may be stored in float16 by the model that reads it, an integer table (candidate ids,
token ids) stays integer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from intentrec.errors import DataError


@dataclass
class FeatureTable:
    """Vectors for a set of examples, looked up by example id.

    ``vectors`` is ``[N, D]`` (one vector per example) or ``[N, J, D]`` (up to J vectors per example,
    e.g. several intents; ``counts`` says how many rows are real). ``present[i]`` is False where the
    example has no usable feature (no LLM answer); such rows are zero.
    """

    example_ids: np.ndarray
    vectors: np.ndarray
    present: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.example_ids = np.asarray(self.example_ids, dtype=np.int64)
        self.present = np.asarray(self.present, dtype=bool)
        n = len(self.example_ids)
        if self.vectors.shape[0] != n or self.present.shape != (n,):
            raise DataError(
                f"feature table '{self.info.get('name', '?')}': {n} example ids but vectors "
                f"{self.vectors.shape} and present {self.present.shape}"
            )
        if n and len(np.unique(self.example_ids)) != n:
            raise DataError(f"feature table '{self.info.get('name', '?')}' repeats example ids")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    def coverage(self, example_ids: np.ndarray) -> np.ndarray:
        """Bool per requested example id: the table has a usable feature for it."""
        pos = self.positions(example_ids)
        out = pos >= 0
        out[out] = self.present[pos[out]]
        return out

    def positions(self, example_ids: np.ndarray) -> np.ndarray:
        """Row of each requested id in this table, −1 where absent."""
        ids = np.asarray(example_ids, dtype=np.int64)
        if len(self.example_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        order = np.argsort(self.example_ids, kind="stable")
        sorted_ids = self.example_ids[order]
        idx = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[idx] == ids, order[idx], -1)


@dataclass
class ItemFeatureTable:
    """One row per item column (row ``c`` = item index ``c + 1``): ``[num_items, ...]`` of any dtype.

    ``present[c]`` is False where the item has no usable feature (e.g. no text); such rows are zero.
    """

    values: np.ndarray
    present: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.values.shape[0])
        self.present = np.ones(n, dtype=bool) if self.present is None else np.asarray(self.present, dtype=bool)
        if self.present.shape != (n,):
            raise DataError(
                f"item feature table '{self.info.get('name', '?')}': {n} rows but present {self.present.shape}"
            )

    @property
    def num_items(self) -> int:
        return int(self.values.shape[0])

    @property
    def is_float(self) -> bool:
        return bool(np.issubdtype(self.values.dtype, np.floating))
