"""Alignment losses between a session space and a text space (batch-level, differentiable).

All functions take two ``[B, d]`` tensors ``x`` (session side) and ``y`` (text side) of the same width.

DirectAU (Wang et al., KDD 2022), as LLM4SBR uses it::

    x, y = l2_normalise(x), l2_normalise(y)
    align = mean_i ||x_i - y_i||^2
    unif(z) = log mean_{i<j} exp(-2 ||z_i - z_j||^2)       (pairs within the batch)
    AU = align + (unif(x) + unif(y)) / 2

KL as LLM-DMsRec uses it: both vectors become distributions over their *feature* dimensions with a
softmax, and the loss is KL(P_session || P_text) averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).pow(2).sum(dim=-1).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log mean over distinct in-batch pairs of exp(−t‖zᵢ − zⱼ‖²); 0 for a batch of one."""
    if z.shape[0] < 2:
        return z.sum() * 0.0
    z = F.normalize(z, dim=-1)
    sq = torch.pdist(z, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def directau(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return alignment(x, y) + (uniformity(x) + uniformity(y)) / 2


def kl_feature(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(P_x ‖ P_y) with P = softmax over the feature dimension, mean over the batch."""
    log_p = F.log_softmax(x, dim=-1)
    log_q = F.log_softmax(y, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def infonce(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th session and the i-th text are the positive pair."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = x @ y.t() / temperature
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def contrastive(x: torch.Tensor, y: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Pairwise margin loss on cosine similarity: positives towards 1, in-batch negatives below margin."""
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    sims = x @ y.t()
    b = sims.shape[0]
    positive = (1 - sims.diagonal()).mean()
    if b < 2:
        return positive
    off = ~torch.eye(b, dtype=torch.bool, device=sims.device)
    negative = F.relu(sims[off] - margin).mean()
    return positive + negative


ALIGNMENTS = {
    "kl": kl_feature,
    "infonce": infonce,
    "contrastive": contrastive,
    "directau": directau,
}
