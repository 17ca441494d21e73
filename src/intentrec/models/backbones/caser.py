"""Caser: convolutional sequence embedding (Tang & Wang, WSDM 2018), as a session model.

The embeddings of the last L clicks form an ``L × d`` image E (left-padded with zero rows when the
session is shorter, so the most recent click is always row L). Horizontal filters of every height
h = 1..L (``num_horizontal`` each) slide over the rows, ReLU, and are max-pooled over positions
(union-level patterns); ``num_vertical`` vertical ``L × 1`` filters take weighted sums of the rows
(point-level patterns, no activation, as in the authors' code). Both are concatenated, dropped out
and mapped by a fully connected layer with ReLU to z ∈ R^d.

Sessions have no user, so Caser's user embedding P_u (concatenated with z in the paper) is left out,
and z is scored against the item table (tied input and output embeddings) instead of a separate
``2d``-wide output table W' with item biases b'.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.registry import register_backbone


class CaserConfig(BackboneConfig):
    # The authors' defaults (train_caser.py): L = 5, n_v = 4, n_h = 16, dropout 0.5, ReLU activations.
    window: int = Field(5, ge=1, description="L: how many of the most recent clicks are convolved")
    num_vertical: int = Field(4, ge=0, description="n_v: vertical filters (L × 1)")
    num_horizontal: int = Field(16, ge=0, description="n_h: horizontal filters per height 1..L")
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _has_filters(self) -> CaserConfig:
        if self.num_vertical + self.num_horizontal == 0:
            raise ValueError("Caser needs vertical or horizontal filters (num_vertical + num_horizontal > 0)")
        return self


def last_window(items: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """The ``window`` most recent items of each right-padded row, left-padded with 0: ``[B, window]``
    (column ``window - 1`` is the last click)."""
    positions = lengths.unsqueeze(1) - window + torch.arange(window, device=items.device).unsqueeze(0)
    taken = items.gather(1, positions.clamp(min=0, max=items.shape[1] - 1))
    return taken.masked_fill(positions < 0, 0)


@register_backbone("caser")
class Caser(Backbone):
    """``session`` = ``global`` = z (the convolutional summary of the last L clicks; Caser has no
    attention readout); ``local`` = the last click's item vector (row L of the image)."""

    Config: ClassVar[type[BackboneConfig]] = CaserConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The authors' code: Adam, lr 1e-3, L2 1e-6, mini-batch 512, no schedule.
    default_train: ClassVar[dict] = {
        "lr": 0.001,
        "batch_size": 512,
        "l2": 1e-6,
        "lr_decay_step": 0,
        "lr_decay_gamma": 1.0,
    }

    def __init__(self, num_items: int, config: CaserConfig):
        self.config: CaserConfig
        super().__init__(num_items, config)
        d, window = config.embedding_dim, config.window
        self.id_table = nn.Parameter(torch.empty(num_items, d))
        self.vertical = nn.Conv2d(1, config.num_vertical, (window, 1)) if config.num_vertical else None
        heights = range(1, window + 1) if config.num_horizontal else range(0)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, config.num_horizontal, (height, d)) for height in heights)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.num_vertical * d + config.num_horizontal * window, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' code: item embeddings N(0, (1/d)²); convolutions and the FC layer keep torch's defaults.
        nn.init.normal_(self.id_table, 0.0, 1.0 / self.dim)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Concatenated vertical and horizontal convolution features of ``image`` ``[B, L, d]``."""
        image = image.unsqueeze(1)  # [B, 1, L, d]
        parts = []
        if self.vertical is not None:
            parts.append(self.vertical(image).flatten(1))  # [B, n_v * d]
        for conv in self.horizontal:
            parts.append(F.relu(conv(image).squeeze(3)).amax(dim=2))  # [B, n_h]
        return torch.cat(parts, dim=1)

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        image = self.embed_items(last_window(batch.items, batch.lengths, self.config.window))
        z = F.relu(self.fc(self.dropout(self.features(image))))
        return BackboneOutput(session=z, vectors={"local": image[:, -1], "global": z})
