"""NARM: Neural Attentive Recommendation Machine (Li et al., CIKM 2017).

A GRU encodes the session; the "global encoder" output is the last hidden state h_t and the "local
encoder" output is an attention readout c_l = Σ_j α_tj h_j with α_tj ∝ vᵀσ(A1 h_t + A2 h_j). The
bilinear decoder scores item i as emb_iᵀ B [h_t; c_l]; we fold B into the session vector
(session = B [h_t; c_l]) so scoring is the shared dot product with the item table.

NARM's names are the opposite of ours: our ``local`` (last click) is NARM's global h_t, our
``global`` (attention readout) is NARM's local c_l.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.gru4rec import run_gru
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput, PaddedItemEmbedding
from intentrec.models.layers import AdditiveAttention, LengthGroups, PackedTokens
from intentrec.models.registry import register_backbone
from intentrec.search_space import FloatRange, SearchSpace


class NARMConfig(BackboneConfig):
    # Hidden size equals embedding_dim (100, the paper's hidden size) so both named vectors live in
    # the item space's dimension; the paper used 50-d embeddings.
    dropout_embedding: float = Field(0.25, ge=0.0, lt=1.0)
    dropout_encoder: float = Field(0.5, ge=0.0, lt=1.0)

    search_space: ClassVar[SearchSpace] = {
        "dropout_embedding": FloatRange(low=0.0, high=0.5),
        "dropout_encoder": FloatRange(low=0.0, high=0.7),
    }


@register_backbone("narm")
class NARM(PaddedItemEmbedding, Backbone):
    """``local`` = h_t, ``global`` = c_l, ``session`` = B [h_t; c_l]."""

    Config: ClassVar[type[BackboneConfig]] = NARMConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # Paper: Adam, lr 0.001, mini-batch 512, no weight decay or schedule (30 epochs, early stop).
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 512,
        "l2": 0.0,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
    }

    def __init__(self, num_items: int, config: NARMConfig):
        super().__init__(num_items, config)
        d = config.embedding_dim
        self.embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.dropout_embedding)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.attention = AdditiveAttention(d, [d], d, bias=False, activation="sigmoid")
        self.encoder_dropout = nn.Dropout(config.dropout_encoder)
        self.bilinear = nn.Linear(2 * d, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' code: N(0, 2/fan_in) for the embedding, attention and bilinear matrices and
        # the GRU input weights, orthogonal recurrent weights, zero biases.
        def he_normal(weight: torch.Tensor, fan_in: int) -> None:
            nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_in))

        d = self.dim
        he_normal(self.embedding.weight, self.num_items + 1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        he_normal(self.gru.weight_ih_l0, d)
        for gate in self.gru.weight_hh_l0.data.chunk(3, dim=0):
            nn.init.orthogonal_(gate)
        nn.init.zeros_(self.gru.bias_ih_l0)
        nn.init.zeros_(self.gru.bias_hh_l0)
        for linear in (self.attention.key_proj, *self.attention.query_projs, self.attention.score):
            he_normal(linear.weight, linear.in_features)
        he_normal(self.bilinear.weight, self.bilinear.in_features)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        # Every step runs on the real clicks only (packed tokens; see run_gru).
        packing = PackedTokens(batch.mask)
        inputs = self.embedding_dropout(self.embed_items(packing.pack(batch.items)))
        states = run_gru(self.gru, inputs, LengthGroups(packing))  # [T, d]
        last = states.index_select(0, packing.last)
        # The authors normalise the attention scores with a masked softmax (the paper leaves α raw).
        alpha = packing.softmax_per_row(self.attention.packed(states, [last], packing.rows))
        readout = packing.sum_per_row(alpha.unsqueeze(1) * states)
        session = self.bilinear(self.encoder_dropout(torch.cat([last, readout], dim=-1)))
        return BackboneOutput(session=session, vectors={"local": last, "global": readout})
