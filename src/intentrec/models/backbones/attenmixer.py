"""Atten-Mixer: multi-level attention mixture readout (Zhang et al., WSDM 2023).

"Efficiently Leveraging Multi-level User Intent for Session-based Recommendation via Atten-Mixer
Network": the GNN propagation of SR-GNN-style models is dropped and a richer readout does the
reasoning. With the session's (L2-normalised, dropped-out) item vectors x_1..x_n:

* multi-level queries (the paper's local invariance and inherent priority: only groups of the most
  recent consecutive clicks): level l = 1..K is q_l = W_l [x_n; x_{n-1}; …; x_{n-l+1}] + b_l, with
  zero vectors for clicks before the session start; the K queries are normalised across levels
  (the authors' code divides by their norm along the level axis);
* multi-head attention of every level over all clicks, α_{l,j} = softmax_j(2 σ(⟨W_0 q_l, W_1 x_j⟩))
  per head, then the mixture: an L_p pool of α over the K levels (p = 4) and a second
  softmax_j(2 · pooled), attention dropout, and the readout a = LayerNorm(Σ_j α_j W_2 x_j);
* session s = W_3 [a; x_n] + b_3, scored as σ · cos(s, v_i) (σ = 16) with dropout on the normalised
  item table during training (all as in the authors' code).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import SRGNN_TRAIN, uniform_init_
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import register_backbone
from intentrec.models.scoring import linear_cross_entropy


class AttenMixerConfig(BackboneConfig):
    levels: int = Field(7, ge=1, description="K: query levels, level l built from the last l clicks")
    # The authors use 8 heads at width 256; 100 is not a multiple of 8, and 4 heads of 25 come
    # closest to their 32 coordinates per head.
    heads: int = Field(4, ge=1, description="attention heads (must divide embedding_dim)")
    pool_norm: float = Field(4.0, ge=1.0, description="p of the L_p pool over the levels' attention")
    normalize: bool = Field(True, description="L2-normalise item and session vectors (NISER)")
    scale: float = Field(16.0, gt=0.0, description="σ: scores are σ times ⟨session, item⟩")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="on the input item vectors and the scored table")
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AttenMixerConfig:
        if self.embedding_dim % self.heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} is not a multiple of heads {self.heads}")
        return self


class MultiLevelQueries(nn.Module):
    """Level l = 1..K: a linear map of the concatenated l most recent click vectors."""

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.levels = nn.ModuleList(nn.Linear(level * dim, dim) for level in range(1, levels + 1))

    def raw(self, recent: torch.Tensor) -> torch.Tensor:
        """``recent`` ``[B, K, d]`` (most recent first, zeros before the session start) → ``[B, K, d]``."""
        return torch.stack([linear(recent[:, : i + 1].flatten(1)) for i, linear in enumerate(self.levels)], 1)

    def forward(self, recent: torch.Tensor) -> torch.Tensor:
        """The level queries, each coordinate normalised across the levels (the authors' code)."""
        queries = self.raw(recent)
        return queries / (queries.norm(dim=1, keepdim=True) + 1e-12)


class AttentionMixture(nn.Module):
    """Every level's multi-head attention over the clicks, mixed by an L_p pool over the levels."""

    def __init__(self, dim: int, heads: int, pool_norm: float, dropout: float):
        super().__init__()
        self.heads = heads
        self.pool_norm = pool_norm
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-8)

    def weights(self, queries: torch.Tensor, clicks: torch.Tensor, packing: PackedTokens) -> torch.Tensor:
        """Mixed attention weights ``[T, heads]`` of the packed clicks (each head sums to 1 per session)."""
        b, levels, d = queries.shape
        q = self.query(queries).view(b, levels, self.heads, d // self.heads).index_select(0, packing.rows)
        k = self.key(clicks).view(-1, self.heads, d // self.heads)
        alpha = packing.softmax_per_row(2 * torch.sigmoid(torch.einsum("tlhc,thc->tlh", q, k)))  # [T, K, heads]
        pooled = alpha.pow(self.pool_norm).sum(1).pow(1.0 / self.pool_norm)
        return packing.softmax_per_row(2 * pooled)

    def forward(self, queries: torch.Tensor, clicks: torch.Tensor, packing: PackedTokens) -> torch.Tensor:
        """Readout ``[B, d]`` of packed clicks ``[T, d]`` for the level queries ``[B, K, d]``."""
        weights = self.dropout(self.weights(queries, clicks, packing))
        values = self.value(clicks).view(-1, self.heads, clicks.shape[1] // self.heads)
        return self.norm(packing.sum_per_row((weights.unsqueeze(-1) * values).flatten(1)))


@register_backbone("attenmixer")
class AttenMixer(Backbone):
    """``local`` = the last click's vector x_n, ``global`` = the mixture readout a,
    ``session`` = W_3 [a; x_n] (unit norm with ``normalize``)."""

    Config: ClassVar[type[BackboneConfig]] = AttenMixerConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The authors' main_area_semantic.py: Adam, lr 0.001, batch 100, L2 1e-5, × 0.1 every 3 epochs.
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: AttenMixerConfig):
        self.config: AttenMixerConfig
        super().__init__(num_items, config)
        d = config.embedding_dim
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.table_dropout = nn.Dropout(config.dropout)
        self.queries = MultiLevelQueries(d, config.levels)
        self.mixture = AttentionMixture(d, config.heads, config.pool_norm, config.attention_dropout)
        self.transform = nn.Linear(2 * d, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' code: every parameter (the layer norm's too) ~ U(-1/√d, 1/√d).
        uniform_init_(self, self.dim)

    def _normalized(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if self.config.normalize else vectors

    def recent_clicks(self, clicks: torch.Tensor, packing: PackedTokens) -> torch.Tensor:
        """The ``levels`` most recent packed clicks per session, most recent first: ``[B, K, d]``,
        zero rows where the session is shorter."""
        back = torch.arange(self.config.levels, device=clicks.device)
        index = (packing.last.unsqueeze(1) - back).clamp(min=0)
        recent = clicks.index_select(0, index.reshape(-1)).view(packing.batch, self.config.levels, -1)
        return recent * (back < packing.lengths.unsqueeze(1)).unsqueeze(-1).to(recent.dtype)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        packing = PackedTokens(batch.mask)
        # normalise(dropout(v)): the authors normalise, drop out and normalise again, which is the same
        clicks = self._normalized(self.embedding_dropout(self.embed_items(packing.pack(batch.items))))
        recent = self.recent_clicks(clicks, packing)
        last = recent[:, 0]
        readout = self.mixture(self.queries(recent), clicks, packing)
        session = self._normalized(self.transform(torch.cat([readout, last], dim=1)))
        return BackboneOutput(session=session, vectors={"local": last, "global": readout})

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_table() if vectors is None else self._normalized(vectors)

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        # Normalise again so that a session vector replaced by a method is scored the same way.
        session = self.config.scale * self._normalized(output.session)
        return F.linear(session, self.table_dropout(table))

    def score_loss_with(self, output: BackboneOutput, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        session = self.config.scale * self._normalized(output.session)
        return linear_cross_entropy(session, self.table_dropout(table), targets)
