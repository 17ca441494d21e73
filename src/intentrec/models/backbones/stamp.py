"""STAMP: Short-Term Attention/Memory Priority model (Liu et al., KDD 2018).

With item embeddings x_1..x_t: m_s = mean(x), m_t = x_t, attention α_i = w0ᵀσ(W1 x_i + W2 x_t +
W3 m_s + b_a) (left unnormalised, as in the paper), m_a = Σ α_i x_i, h_s = tanh(W_s m_a + b_s),
h_t = tanh(W_t m_t + b_t), and the trilinear score ⟨h_s, h_t, x_i⟩ = (h_s ⊙ h_t) · x_i.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput, PaddedItemEmbedding
from intentrec.models.layers import AdditiveAttention, masked_mean, weighted_sum
from intentrec.models.registry import register_backbone
from intentrec.search_space import FloatRange, SearchSpace


class STAMPConfig(BackboneConfig):
    # The paper's initialisation: N(0, 0.002²) item embeddings, N(0, 0.05²) weights, zero biases.
    embedding_std: float = Field(0.002, gt=0.0)
    weight_std: float = Field(0.05, gt=0.0)

    # no dropout; the initialisation scales are its only knobs besides the trainer's
    search_space: ClassVar[SearchSpace] = {
        "embedding_std": FloatRange(low=1e-3, high=0.05, log=True),
        "weight_std": FloatRange(low=0.01, high=0.2, log=True),
    }


@register_backbone("stamp")
class STAMP(PaddedItemEmbedding, Backbone):
    """``local`` = h_t, ``global`` = h_s, ``session`` = h_s ⊙ h_t."""

    Config: ClassVar[type[BackboneConfig]] = STAMPConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # Paper: Adam, lr 0.005, mini-batch 512, no weight decay or schedule.
    default_train: ClassVar[dict] = {
        "lr": 0.005,
        "batch_size": 512,
        "l2": 0.0,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
    }

    def __init__(self, num_items: int, config: STAMPConfig):
        super().__init__(num_items, config)
        d = config.embedding_dim
        self.embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        # Keys x_i; queries x_t (last item) and m_s (session mean); b_a on the key projection.
        self.attention = AdditiveAttention(d, [d, d], d, bias=True, activation="sigmoid")
        self.mlp_general = nn.Linear(d, d)  # MLP cell A: m_a -> h_s
        self.mlp_current = nn.Linear(d, d)  # MLP cell B: m_t -> h_t
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg: STAMPConfig = self.config  # type: ignore[assignment]
        nn.init.normal_(self.embedding.weight, 0.0, cfg.embedding_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, cfg.weight_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        mask = batch.mask
        x = self.embed_items(batch.items)
        m_s = masked_mean(x, mask)
        m_t = self.embed_items(batch.last_items())
        alpha = self.attention(x, [m_t, m_s], mask)  # 0 at padding
        m_a = weighted_sum(alpha, x)
        h_s = torch.tanh(self.mlp_general(m_a))
        h_t = torch.tanh(self.mlp_current(m_t))
        return BackboneOutput(session=h_s * h_t, vectors={"local": h_t, "global": h_s})
