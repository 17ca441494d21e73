"""Evaluation loop: score one batch at a time, keep only each example's target rank.

Memory is O(eval batch × num_items); the ``[N, num_items]`` matrix of a whole split never exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import ExampleSet
from intentrec.evaluation.metrics import DEFAULT_KS, metrics_from_ranks, target_ranks
from intentrec.evaluation.slices import sliced_metrics
from intentrec.models.base import SessionModel


@dataclass
class RankedExamples:
    """Per-example outcome of one evaluation pass (aligned arrays, file order)."""

    example_ids: np.ndarray  # int64 [N]
    target_columns: np.ndarray  # int64 [N]
    ranks: np.ndarray  # int64 [N], 1-based

    def metrics(self, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
        return metrics_from_ranks(self.ranks, ks)

    def sliced(self, train_counts: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict:
        return sliced_metrics(self.ranks, self.target_columns, train_counts, ks)


@torch.no_grad()
def rank_examples(
    model: SessionModel,
    examples: ExampleSet,
    *,
    batch_size: int = 500,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
    scores: Callable[[SessionBatch], torch.Tensor] | None = None,
) -> RankedExamples:
    """Rank every example's target among all items with ``model`` in eval mode (``scores``: how a
    batch is scored instead of ``model(batch)``, e.g. against a table with rows placed from text)."""
    was_training = model.training
    model.eval()
    ranks, ids, targets = [], [], []
    try:
        for batch in examples.batches(batch_size, max_length=max_length):
            batch = batch.to(device)
            ranks.append(target_ranks(model(batch) if scores is None else scores(batch), batch.targets))
            ids.append(batch.example_ids)
            targets.append(batch.targets)
    finally:
        model.train(was_training)

    def cat(parts: list[torch.Tensor]) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return torch.cat(parts).cpu().numpy().astype(np.int64)

    return RankedExamples(example_ids=cat(ids), target_columns=cat(targets), ranks=cat(ranks))


def evaluate_model(
    model: SessionModel,
    examples: ExampleSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 500,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    ranked = rank_examples(model, examples, batch_size=batch_size, max_length=max_length, device=device)
    return ranked.metrics(ks)


@torch.no_grad()
def top_items(
    model: SessionModel,
    examples: ExampleSet,
    top: int,
    *,
    batch_size: int = 500,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Item indices ``[N, top]`` (int32, best first) of ``model``'s highest scores for each example."""
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    try:
        for batch in examples.batches(batch_size, max_length=max_length):
            scores = model(batch.to(device))
            k = min(top, scores.shape[1])
            parts.append((torch.topk(scores, k, dim=1).indices + 1).to(torch.int32).cpu().numpy())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, top), dtype=np.int32)
    return np.concatenate(parts)
