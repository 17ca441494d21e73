"""A re-rank stage any two models can use: the top-K list of one, re-ordered by another.

For every K reported, the *first* model's top-K items are re-scored by the *second* model
(``SessionModel.rerank``) and sorted by those scores. The list holds the target exactly when the first
model ranks it within K (its exact rank, ties counting against it), so HR@K is the first model's by
construction and only the order — MRR@K, NDCG@K — moves. Inside the list the target's new rank counts
every candidate the second model scores at or above it (ties and NaNs against it, as everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from intentrec.data.dataset import ExampleSet
from intentrec.evaluation.metrics import metric_keys, metrics_from_ranks, target_ranks
from intentrec.models.base import SessionModel


@torch.no_grad()
def reranked_ranks(
    first: SessionModel,
    second: SessionModel,
    examples: ExampleSet,
    ks: Sequence[int],
    *,
    batch_size: int = 500,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, np.ndarray]:
    """Per K, the target's 1-based rank in the re-ordered top-K list (``K + 1`` where it is not in it)."""
    states = first.training, second.training
    first.eval(), second.eval()
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    try:
        for batch in examples.batches(batch_size, max_length=max_length):
            batch = batch.to(device)
            scores = first(batch)
            exact = target_ranks(scores, batch.targets)
            top = torch.topk(scores, min(max(ks), scores.shape[1]), dim=1).indices
            target_score = second.rerank(batch, batch.targets.unsqueeze(1))  # [B, 1]
            for k in ks:
                candidates = second.rerank(batch, top[:, :k])
                above = (candidates >= target_score) | torch.isnan(candidates)
                rank = above.sum(dim=1).clamp(min=1)
                out[k].append(torch.where(exact <= k, rank, torch.full_like(rank, k + 1)).cpu().numpy())
    finally:
        first.train(states[0]), second.train(states[1])
    return {k: np.concatenate(parts) if parts else np.zeros(0, np.int64) for k, parts in out.items()}


def reranked_metrics(ranks: dict[int, np.ndarray]) -> dict[str, float]:
    """HR/MRR/NDCG@K, each K from its own re-ordered list (keys in the usual order)."""
    merged: dict[str, float] = {}
    for k, r in ranks.items():
        merged.update(metrics_from_ranks(r, [k]))
    return {key: merged[key] for key in metric_keys(sorted(ranks))}
