"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Item embeddings (scaled by √d) plus learned positional embeddings feed causal self-attention blocks
with pre-layer-norm residuals (x + Dropout(sublayer(LayerNorm(x)))), a point-wise ReLU feed-forward
network and a final layer norm. We train it like every other backbone here, with cross-entropy over
all items from the last position (the SBR-benchmark setting), not the paper's per-position binary
cross-entropy against one sampled negative.

Every per-token layer runs on the real clicks only (:class:`PackedTokens`); padding exists only
inside the attention, which runs per group of similar-length sessions (:class:`LengthGroups`, each
padded to its own longest row) and whose causal mask hides it. Positions follow the authors'
left-padded window of ``max_length``: the most recent item always has position ``max_length - 1``,
the one before ``max_length - 2``, and so on, whatever the batch width.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput, PaddedItemEmbedding
from intentrec.models.layers import LengthGroups, PackedTokens, keep_most_recent
from intentrec.models.registry import register_backbone
from intentrec.search_space import Choice, FloatRange, IntRange, SearchSpace


class SASRecConfig(BackboneConfig):
    num_blocks: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    # The paper's value for the sparse Amazon datasets (0.2 for MovieLens-1M).
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    max_length: int = Field(50, ge=1)

    search_space: ClassVar[SearchSpace] = {
        "num_blocks": IntRange(low=1, high=3),
        "num_heads": Choice(choices=(1, 2)),  # both divide the default width 100
        "dropout": FloatRange(low=0.1, high=0.6),
    }


def window_positions(lengths: torch.Tensor, width: int, max_length: int) -> torch.Tensor:
    """Position ids ``[B, width]`` of right-padded rows as if left-padded to ``max_length``.

    The last real item gets ``max_length - 1``; padding slots get ``max_length - 1`` too (masked).
    """
    steps = torch.arange(width, device=lengths.device).unsqueeze(0)
    return (steps - lengths.unsqueeze(1) + max_length).clamp(0, max_length - 1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, tokens: torch.Tensor, groups: LengthGroups) -> torch.Tensor:
        """Packed ``[T, d]`` -> packed ``[T, d]``."""
        d = tokens.shape[1]
        outputs = []
        for block in groups.pad(self.qkv(tokens)):  # [rows, longest, 3d] per length group
            rows, longest = block.shape[:2]
            q, k, v = block.view(rows, longest, 3, self.num_heads, d // self.num_heads).unbind(2)
            # Causal: a real query never sees the padding after it (copies of the last click).
            attended = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=True,
            )
            outputs.append(attended.transpose(1, 2).reshape(rows, longest, d))
        return self.out(groups.pack(outputs))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(dim, eps=1e-8)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, groups: LengthGroups) -> torch.Tensor:
        tokens = tokens + self.dropout(self.attention(self.attention_norm(tokens), groups))
        return tokens + self.dropout(self.feed_forward(self.feed_forward_norm(tokens)))


@register_backbone("sasrec")
class SASRec(PaddedItemEmbedding, Backbone):
    """``local`` = ``session`` = output at the last real position; ``global`` = dot-product
    attention readout over all outputs with ``local`` as the query (parameter-free)."""

    Config: ClassVar[type[BackboneConfig]] = SASRecConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # Paper: Adam (β2 = 0.98), lr 0.001, mini-batch 128, no weight decay or schedule.
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 128,
        "l2": 0.0,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
    }

    def __init__(self, num_items: int, config: SASRecConfig):
        super().__init__(num_items, config)
        d = config.embedding_dim
        self.embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(config.max_length, d)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.num_heads, config.dropout) for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' code: Glorot (Xavier) initialisation of all matrices, zero biases.
        for name, param in self.named_parameters():
            if "norm" in name:
                continue
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
            else:
                nn.init.zeros_(param)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        max_length = self.config.max_length  # type: ignore[attr-defined]
        items, lengths = keep_most_recent(batch.items, batch.lengths, max_length)
        mask = items > 0
        packing = PackedTokens(mask)
        positions = window_positions(lengths, items.shape[1], max_length)
        tokens = self.embed_items(packing.pack(items)) * math.sqrt(self.dim)
        tokens = self.input_dropout(tokens + self.positions(packing.pack(positions)))
        groups = LengthGroups(packing)
        for block in self.blocks:
            tokens = block(tokens, groups)
        outputs = self.final_norm(tokens)  # [T, d]
        last = outputs.index_select(0, packing.last)
        # Parameter-free readout: softmax over each session's clicks of <output, last> / sqrt(d).
        scores = (outputs * last.index_select(0, packing.rows)).sum(1) / math.sqrt(self.dim)
        readout = packing.sum_per_row(packing.softmax_per_row(scores).unsqueeze(1) * outputs)
        return BackboneOutput(session=last, vectors={"local": last, "global": readout})
