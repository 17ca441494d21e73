"""NISER / NISER+: normalised item and session representations (Gupta et al., 2019).

SR-GNN with three changes against popularity bias and for order:

* item embeddings are L2-normalised before they enter the GNN and when items are scored;
* the session vector is L2-normalised and scores are scaled: ``score(v) = σ ŝᵀ v̂`` (σ = 16);
* NISER+ (our default): learned position embeddings are added to the clicks' node states before
  the attention readout, and dropout is applied to the normalised item embeddings entering the GNN.

Choices the paper leaves open (documented in docs/backbones-graph.md): positions count back from
the last click (0 = last click), so the last click always has the same position whatever the session
length; positions beyond ``max_positions`` share the last row; dropout 0.1 (RecBole-GNN's default).
``local`` / ``global`` are SR-GNN's s_l / s_g (with position embeddings under NISER+, before
normalisation); ``session`` is the normalised ŝ = W3[s_l; s_g] / ‖·‖.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import SRGNN, SRGNN_TRAIN, SRGNNConfig
from intentrec.models.base import BackboneConfig, BackboneOutput
from intentrec.models.graph import reversed_positions, session_graph
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import register_backbone
from intentrec.models.scoring import linear_cross_entropy
from intentrec.search_space import FloatRange, SearchSpace


class NISERConfig(SRGNNConfig):
    scale: float = Field(16.0, gt=0.0, description="σ: scores are σ times a cosine similarity")
    positions: bool = Field(True, description="NISER+ position embeddings in the readout")
    max_positions: int = Field(200, ge=1, description="rows of the position table")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="NISER+ dropout on item embeddings")

    search_space: ClassVar[SearchSpace] = {
        **SRGNNConfig.search_space,
        "dropout": FloatRange(low=0.0, high=0.5),
        "scale": FloatRange(low=4.0, high=32.0, log=True),
    }


@register_backbone("niser")
class NISER(SRGNN):
    """SR-GNN readout on normalised embeddings; ``session`` is unit-norm, scores are σ·cosine."""

    Config: ClassVar[type[BackboneConfig]] = NISERConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The NISER paper trains like SR-GNN (Adam, lr 0.001, batch 100, l2 1e-5, decay 0.1 every 3).
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: NISERConfig):
        self.config: NISERConfig
        super().__init__(num_items, config)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.position = nn.Embedding(config.max_positions, config.embedding_dim) if config.positions else None
        self.reset_parameters()  # again, now that the position table exists

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_table() if vectors is None else F.normalize(vectors, dim=1)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        graph = session_graph(batch)
        embedded = F.normalize(self.embed_items(graph.node_items), dim=1)
        states = self.gnn(graph, self.embedding_dropout(embedded))
        if self.position is None:
            local, global_ = self.attention_readout(graph, states)
        else:
            # Per click (a node clicked twice gets two position embeddings), packed: [T, d] over
            # the real clicks in row-major order.
            mask = graph.position_mask
            packing = PackedTokens(mask)
            positions = reversed_positions(batch.lengths, mask.shape[1], self.config.max_positions)
            clicks = states.index_select(0, packing.pack(graph.flat_alias))
            clicks = clicks + self.position(packing.pack(positions))
            local = clicks.index_select(0, packing.last)
            alpha = self.attention(clicks, local, packing.rows)
            global_ = packing.sum_per_row(alpha.unsqueeze(1) * clicks)
        session = F.normalize(self.session_vector(local, global_), dim=1)
        return BackboneOutput(session=session, vectors={"local": local, "global": global_})

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        # Normalise again so that a session vector replaced by a method is scored the same way.
        session = F.normalize(output.session, dim=1)
        return self.config.scale * F.linear(session, table)

    def score_loss_with(self, output: BackboneOutput, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        session = self.config.scale * F.normalize(output.session, dim=1)
        return linear_cross_entropy(session, table, targets)
