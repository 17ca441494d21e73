"""The padded batch every backbone consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class SessionBatch:
    """A right-padded batch of session prefixes.

    ``items[b, :lengths[b]]`` are the item indices (1..n) of session ``b`` in click order; the rest is 0.
    ``targets`` are *column* indices (item index − 1) into the ``[B, num_items]`` score matrix.
    """

    items: torch.Tensor  # long [B, L]
    lengths: torch.Tensor  # long [B]
    example_ids: torch.Tensor  # long [B]
    targets: torch.Tensor | None = None  # long [B]

    @property
    def mask(self) -> torch.Tensor:
        return self.items > 0

    @property
    def size(self) -> int:
        return int(self.items.shape[0])

    def last_items(self) -> torch.Tensor:
        """Item index of the last click of each session, long [B]."""
        return self.items.gather(1, (self.lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)

    def to(self, device: torch.device | str) -> SessionBatch:
        moved = {
            f.name: (getattr(self, f.name).to(device) if getattr(self, f.name) is not None else None)
            for f in fields(self)
        }
        return SessionBatch(**moved)

    @classmethod
    def from_lists(
        cls,
        sessions: list[list[int]],
        targets: list[int] | None = None,
        example_ids: list[int] | None = None,
    ) -> SessionBatch:
        """Convenience constructor from Python lists of item indices (targets as item indices)."""
        lengths = np.array([len(s) for s in sessions], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.array([i for s in sessions for i in s], dtype=np.int32)
        ids = np.arange(len(sessions)) if example_ids is None else np.asarray(example_ids)
        tgt = None if targets is None else np.asarray(targets, dtype=np.int64)
        return pad_csr(values, offsets, np.arange(len(sessions)), ids, tgt)


def pad_csr(
    values: np.ndarray,
    offsets: np.ndarray,
    rows: np.ndarray,
    example_ids: np.ndarray,
    targets: np.ndarray | None,
    max_length: int | None = None,
) -> SessionBatch:
    """Gather ``rows`` of a CSR list-of-sequences into a right-padded batch, vectorised.

    With ``max_length`` only the most recent ``max_length`` items of each sequence are kept.
    ``targets`` are item indices for all rows of the CSR (not only ``rows``); they are converted to
    column indices here.
    """
    starts = offsets[rows]
    ends = offsets[rows + 1]
    if max_length is not None:
        starts = np.maximum(starts, ends - max_length)
    lengths = ends - starts
    width = max(int(lengths.max(initial=0)), 1)
    pos = np.arange(width)
    take = starts[:, None] + pos[None, :]
    valid = pos[None, :] < lengths[:, None]
    take = np.where(valid, take, 0)
    padded = np.where(valid, values[take] if len(values) else 0, 0).astype(np.int64)
    return SessionBatch(
        items=torch.from_numpy(padded),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        example_ids=torch.from_numpy(np.asarray(example_ids)[rows].astype(np.int64)),
        targets=None if targets is None else torch.from_numpy(targets[rows].astype(np.int64) - 1),
    )
