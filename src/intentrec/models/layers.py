"""Small building blocks shared by the backbones: masked readouts and attention scorers.

Every function takes right-padded ``[B, L, ...]`` tensors plus a boolean ``mask`` ``[B, L]`` (True
on real positions) and is written so that padding never changes a real position's result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intentrec.models.graph import segment_softmax


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where ``mask`` is True; rows without any are all zeros."""
    filled = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(filled, dim=dim)
    # A fully masked row is NaN after softmax(-inf, ..., -inf); make it an empty readout instead.
    return torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))


class PackedTokens:
    """Where the real clicks of a right-padded ``[B, W]`` batch sit: ``flat`` indexes ``B * W``.

    Per-position layers run on the ``T`` real tokens only
    (on Beauty T ≈ B · 8.6 while W is often 50-150).
    """

    def __init__(self, mask: torch.Tensor):
        self.batch, self.width = mask.shape
        self.flat = mask.reshape(-1).nonzero().squeeze(1)
        self.rows = self.flat // self.width  # the batch row of each real token
        # Right padding keeps each row's tokens contiguous and in order: row b is
        # ``[starts[b], starts[b] + lengths[b])`` of the packed tensor.
        self.lengths = mask.sum(dim=1)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths

    @property
    def num_tokens(self) -> int:
        return self.flat.shape[0]

    @property
    def last(self) -> torch.Tensor:
        """Packed index of each row's last token ``[B]`` (rows must not be empty)."""
        return self.starts + self.lengths - 1

    def sum_per_row(self, values: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, ...]``: the sum of each row's tokens."""
        return values.new_zeros(self.batch, *values.shape[1:]).index_add_(0, self.rows, values)

    def softmax_per_row(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax of token scores ``[T]`` within each row (what ``masked_softmax`` gives padded)."""
        return segment_softmax(scores, self.rows, self.batch)

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, W, ...]`` -> ``[T, ...]``."""
        return values.reshape(self.batch * self.width, *values.shape[2:]).index_select(0, self.flat)

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, W, ...]`` with zeros at padding."""
        out = values.new_zeros(self.batch * self.width, *values.shape[1:])
        return out.index_copy(0, self.flat, values).view(self.batch, self.width, *values.shape[1:])


class LengthGroups:
    """The rows of a packed batch in groups of similar length (≤ 8, ≤ 16, ≤ 32, … clicks), each
    padded only to its own longest row: ``pad`` gives one ``[rows, longest, ...]`` block per group and
    ``pack`` takes such blocks back to packed ``[T, ...]`` order.

    Padding slots hold copies of their row's last token, so the blocks suit *causal* layers only
    (a GRU, causal self-attention): a real position never sees what follows it. Rows are sorted by
    length once, so each group is a contiguous block and both directions are a single gather.
    """

    def __init__(self, packing: PackedTokens, first_limit: int = 8):
        lengths = packing.lengths
        if bool((lengths < 1).any()):
            raise ValueError("every session needs at least one click")
        device = lengths.device
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths.index_select(0, order)
        limits = [first_limit]
        while limits[-1] < packing.width:
            limits.append(2 * limits[-1])
        bounds = torch.bucketize(sorted_lengths, torch.tensor(limits, device=device))
        self.groups: list[tuple[int, int]] = []  # (rows, longest) per non-empty group
        gathers, base, begin, offset = [], torch.empty_like(lengths), 0, 0
        for size in torch.bincount(bounds, minlength=len(limits)).tolist():
            if not size:
                continue
            rows = order[begin : begin + size]
            longest = int(sorted_lengths[begin + size - 1])
            steps = torch.arange(longest, device=device).unsqueeze(0)
            last = lengths.index_select(0, rows).unsqueeze(1) - 1
            gathers.append((packing.starts.index_select(0, rows).unsqueeze(1) + torch.minimum(steps, last)).reshape(-1))
            base[rows] = offset + torch.arange(size, device=device) * longest
            self.groups.append((size, longest))
            begin, offset = begin + size, offset + size * longest
        self.gather = torch.cat(gathers)
        # Token t of row b sits at position t - starts[b] of its row, i.e. at base[b] + that.
        positions = torch.arange(packing.num_tokens, device=device) - packing.starts.index_select(0, packing.rows)
        self.scatter = base.index_select(0, packing.rows) + positions

    def pad(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Packed ``[T, ...]`` -> one ``[rows, longest, ...]`` block per group."""
        blocks = values.index_select(0, self.gather).split([size * longest for size, longest in self.groups])
        return [
            block.view(size, longest, *values.shape[1:])
            for block, (size, longest) in zip(blocks, self.groups, strict=True)
        ]

    def pack(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The blocks of :meth:`pad` (any trailing shape) -> packed ``[T, ...]``."""
        flat = torch.cat([block.reshape(-1, *block.shape[2:]) for block in blocks])
        return flat.index_select(0, self.scatter)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[B, L, d]`` over real positions -> ``[B, d]``."""
    weights = mask.to(values.dtype)
    counts = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.einsum("bl,bld->bd", weights, values) / counts


def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ_j weights[b, j] * values[b, j]`` -> ``[B, d]``."""
    return torch.einsum("bl,bld->bd", weights, values)


def gather_last(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``values[b, lengths[b] - 1]``: the value at each row's last real position, ``[B, d]``."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, values.shape[-1])
    return values.gather(1, index).squeeze(1)


def keep_most_recent(items: torch.Tensor, lengths: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each right-padded session's ``max_length`` most recent items (still right-padded)."""
    if items.shape[1] <= max_length:
        return items, lengths
    new_lengths = lengths.clamp(max=max_length)
    start = (lengths - max_length).clamp(min=0)
    index = start.unsqueeze(1) + torch.arange(max_length, device=items.device).unsqueeze(0)
    kept = items.gather(1, index.clamp(max=items.shape[1] - 1))
    valid = torch.arange(max_length, device=items.device).unsqueeze(0) < new_lengths.unsqueeze(1)
    return kept.masked_fill(~valid, 0), new_lengths


class AdditiveAttention(nn.Module):
    """Additive ("concat") attention scores ``e_j = vᵀ σ(W_k k_j + Σ_q W_q q + b)``.

    ``query_dims`` lists one or more per-session query vectors (NARM: the last hidden state;
    STAMP: the last item and the session mean; SR-GNN: the last node). Returns raw scores
    ``[B, L]``; whether to normalise them is the caller's (i.e. the paper's) choice.
    """

    def __init__(
        self,
        key_dim: int,
        query_dims: Sequence[int],
        hidden_dim: int,
        *,
        bias: bool = False,
        activation: str = "sigmoid",
    ):
        super().__init__()
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=bias)
        self.query_projs = nn.ModuleList(nn.Linear(q, hidden_dim, bias=False) for q in query_dims)
        self.score = nn.Linear(hidden_dim, 1, bias=False)
        if activation not in ("sigmoid", "tanh"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = torch.sigmoid if activation == "sigmoid" else torch.tanh

    def forward(
        self, keys: torch.Tensor, queries: Sequence[torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``[B, L]`` for keys ``[B, L, d]``; with ``mask`` only real positions are computed
        (padding scores are 0; mask them), which on long-tailed batches skips most of the work."""
        if len(queries) != len(self.query_projs):
            raise ValueError(f"expected {len(self.query_projs)} queries, got {len(queries)}")
        if mask is None:
            hidden = self.key_proj(keys)
            for proj, query in zip(self.query_projs, queries, strict=True):
                hidden = hidden + proj(query).unsqueeze(1)
            return self.score(self.activation(hidden)).squeeze(-1)
        packing = PackedTokens(mask)
        return packing.unpack(self.packed(packing.pack(keys), queries, packing.rows))

    def packed(self, keys: torch.Tensor, queries: Sequence[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Scores ``[T]`` for packed keys ``[T, d]``; ``rows`` ``[T]`` names each key's session."""
        if len(queries) != len(self.query_projs):
            raise ValueError(f"expected {len(self.query_projs)} queries, got {len(queries)}")
        hidden = self.key_proj(keys)
        for proj, query in zip(self.query_projs, queries, strict=True):
            hidden = hidden + proj(query).index_select(0, rows)
        return self.score(self.activation(hidden)).squeeze(-1)
