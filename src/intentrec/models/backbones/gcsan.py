"""GC-SAN: graph contextualised self-attention network (Xu et al., IJCAI 2019).

SR-GNN's gated GNN gives every click a graph-contextualised state h_i; ``k`` self-attention blocks
then model long-range dependencies between the clicks::

    F = softmax(Q Kᵀ / √d) V                    (Q, K, V = H W_Q, H W_K, H W_V; padding keys masked)
    E = ReLU(F W1 + b1) W2 + b2 + F             (point-wise feed-forward with a residual)

and the session is ``S = ω E_n + (1 − ω) h_n``: ω weighs the last click's self-attention output
against its GNN state (ω = 0.6; the paper finds 0.4-0.8 best). Attention is bidirectional over the
session's clicks, as in the paper. Dropout (on the attention weights and the two sub-layer outputs)
is not specified by the paper; we use 0.2, RecBole's default.

``local`` = h_n (last click's GNN state), ``global`` = E_n (last click after self-attention),
``session`` = S.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import (
    SRGNN_TRAIN,
    GatedGraphNetwork,
    uniform_init_,
)
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.graph import session_graph
from intentrec.models.layers import gather_last
from intentrec.models.registry import register_backbone
from intentrec.search_space import FloatRange, IntRange, SearchSpace


class SelfAttentionBlock(nn.Module):
    """One GC-SAN block: multi-head scaled dot-product self-attention, then the residual FFN."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding_dim {dim} is not divisible by attention_heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, width, dim = x.shape
        return x.view(batch, width, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, d]`` -> ``[B, L, d]``; or, given query rows ``queries`` ``[B, Q, d]``, the block's
        output at those queries only, ``[B, Q, d]`` (keys and values are still all of ``hidden``)."""
        batch, width, dim = hidden.shape
        query = self._split(self.query(hidden if queries is None else queries))
        key, value = (self._split(f(hidden)) for f in (self.key, self.value))
        logits = query @ key.transpose(2, 3) / math.sqrt(dim // self.heads)
        # Every real session has at least one real key, so no row is fully masked.
        logits = logits.masked_fill(~mask.view(batch, 1, 1, width), float("-inf"))
        weights = self.dropout(torch.softmax(logits, dim=-1))
        attended = (weights @ value).transpose(1, 2).reshape(batch, query.shape[2], dim)
        attended = self.dropout(attended)
        return self.dropout(self.feed_forward(attended)) + attended


class GCSANConfig(BackboneConfig):
    steps: int = Field(1, ge=1, description="GNN propagation steps")
    blocks: int = Field(1, ge=1, description="k: self-attention blocks (paper default 1)")
    attention_heads: int = Field(1, ge=1, description="the paper uses single-head attention")
    weight: float = Field(0.6, ge=0.0, le=1.0, description="ω: weight of the self-attention output")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)

    search_space: ClassVar[SearchSpace] = {
        "steps": IntRange(low=1, high=3),
        "blocks": IntRange(low=1, high=3),
        "weight": FloatRange(low=0.2, high=1.0),
        "dropout": FloatRange(low=0.0, high=0.5),
    }


@register_backbone("gcsan")
class GCSAN(Backbone):
    """``local`` = h_n, ``global`` = E_n, ``session`` = ω E_n + (1 − ω) h_n."""

    Config: ClassVar[type[BackboneConfig]] = GCSANConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The paper follows SR-GNN's training set-up (Adam, lr 0.001 decayed by 0.1 every 3 epochs,
    # batch 100, L2 1e-5).
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: GCSANConfig):
        super().__init__(num_items, config)
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.gnn = GatedGraphNetwork(d, config.steps)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d, config.attention_heads, config.dropout) for _ in range(config.blocks)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_init_(self, self.dim)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = session_graph(batch)
        states = self.gnn(graph, self.embed_items(graph.node_items))
        clicks = graph.gather_positions(states)  # [B, L, d]
        attended = clicks
        for block in self.blocks[:-1]:
            attended = block(attended, graph.position_mask)
        # Only the last click's output is used, so the last block runs its query alone (same
        # numbers, without the [B, L, L] attention of the long sessions of a batch).
        last = gather_last(attended, batch.lengths).unsqueeze(1)
        global_ = self.blocks[-1](attended, graph.position_mask, queries=last).squeeze(1)
        local = gather_last(clicks, batch.lengths)
        weight = self.config.weight
        session = weight * global_ + (1.0 - weight) * local
        return BackboneOutput(session=session, vectors={"local": local, "global": global_})
