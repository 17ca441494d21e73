"""Exact full-ranking metrics: HR@k, MRR@k and NDCG@k over all items.

The rank of a target is the number of items whose score is greater than *or equal to* the target's
score, so the target itself counts once and every tie counts against it (a constant model gets the
worst rank, never a lucky one). NaN must never make a target look good: a NaN competitor counts as
scoring above the target, and a NaN target gets the worst rank (``num_items``).

With ``rank`` starting at 1, over *all* examples (misses contribute 0):

* ``HR@k   = mean(rank <= k)``
* ``MRR@k  = mean(1 / rank          if rank <= k else 0)``
* ``NDCG@k = mean(1 / log2(rank + 1) if rank <= k else 0)`` (one relevant item, so IDCG = 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
METRIC_NAMES: tuple[str, ...] = ("HR", "MRR", "NDCG")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among all items, long ``[B]``; ties and NaNs count against it."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, num_items], got shape {tuple(scores.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.long)
    target_scores = scores.gather(1, targets.unsqueeze(1))
    at_or_above = (scores >= target_scores) | torch.isnan(scores)
    ranks = at_or_above.sum(dim=1)
    worst = torch.full_like(ranks, scores.shape[1])
    return torch.where(torch.isnan(target_scores.squeeze(1)), worst, ranks)


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    return [f"{name}@{k}" for name in METRIC_NAMES for k in ks]


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR/MRR/NDCG at each ``k`` from 1-based ranks; keys like ``"MRR@20"``, values in [0, 1]."""
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    r = r.astype(np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("cannot compute ranking metrics over zero examples")
    if (r < 1).any():
        raise ValueError("ranks are 1-based; got a rank below 1")
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        for k in ks:
            hit = r <= k
            if name == "HR":
                gain = hit.astype(np.float64)
            elif name == "MRR":
                gain = np.where(hit, 1.0 / r, 0.0)
            else:
                gain = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
            out[f"{name}@{k}"] = float(gain.mean())
    return out


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Metrics of a ``[N, num_items]`` score matrix against column-index ``targets`` ``[N]``."""
    return metrics_from_ranks(target_ranks(scores, targets), ks)
