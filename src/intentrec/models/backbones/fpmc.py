"""FPMC: factorising personalised Markov chains (Rendle, Freudenthaler, Schmidt-Thieme, WWW 2010).

FPMC scores item i for user u after basket B_{t-1} as an MF term plus a factorised first-order
Markov chain (FMC) term::

    x(u, l, i) = <v_u^{U,I}, v_i^{I,U}> + 1/|B_{t-1}| Σ_{l ∈ B_{t-1}} <v_l^{L,I}, v_i^{I,L}>

As a session model (RecBole and RecStudio use baskets of one item, the last click) the FMC term is
the transition from the last click. Sessions have no user, so the user factor of the MF term is
the session's own: the mean of a per-item factor v_j^{S} over the session's clicks (a session is
described by the items it contains, as FISM describes a user). ``session_factor=False`` keeps only
the FMC term, the adaptation of the NARM / STAMP / SR-GNN benchmarks.

FPMC's four factor matrices are blocks of one item table of width ``embedding_dim`` (k = d / 4 each),
so that looking items up and scoring go through ``embed_items`` / ``item_table`` like every
backbone (and a method's item transform reaches all four)::

    item row   e_i = [ v_i^{I,U} | v_i^{I,L} | v_i^{L,I} | v_i^{S} ]
    session      s = [ mean_j v_j^{S} | v_last^{L,I} | 0 | 0 ]

so ``s · e_i`` is exactly the MF term plus the FMC term (RecStudio stores the two candidate
factors side by side the same way).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.backbones.srgnn import SRGNN_TRAIN
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput
from intentrec.models.layers import PackedTokens
from intentrec.models.registry import register_backbone

#: blocks of an item row, in order: MF candidate, FMC candidate, FMC last-click, session factor
BLOCKS = 4


class FPMCConfig(BackboneConfig):
    session_factor: bool = Field(
        True, description="MF term with the session's mean item factor (False: the FMC term only)"
    )

    @model_validator(mode="after")
    def _blocks_divide_width(self) -> FPMCConfig:
        if self.embedding_dim % BLOCKS:
            raise ValueError(f"embedding_dim must be a multiple of {BLOCKS} (four factor blocks)")
        return self


@register_backbone("fpmc")
class FPMC(Backbone):
    """``global`` = the MF query [mean v^S | 0 | 0 | 0], ``local`` = the FMC query [0 | v_last^{L,I} | 0 | 0],
    ``session`` = their sum, scored by dot product: MF term + FMC term."""

    Config: ClassVar[type[BackboneConfig]] = FPMCConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # The paper trains S-BPR with SGD, so it has no setting for this loss; like GRU4Rec's, these are
    # the SR-GNN benchmark's trainer values, the SBR papers' set-up for their FPMC baseline (RecBole's
    # generic defaults, lr 0.001 / batch 2048 / no L2, barely move FPMC's loss in one Beauty epoch).
    default_train: ClassVar[dict] = dict(SRGNN_TRAIN)

    def __init__(self, num_items: int, config: FPMCConfig):
        self.config: FPMCConfig
        super().__init__(num_items, config)
        self.id_table = nn.Parameter(torch.empty(num_items, config.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.id_table)  # RecBole's initialisation of the factor tables

    @property
    def factor_dim(self) -> int:
        return self.dim // BLOCKS

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        k = self.factor_dim
        last = self.embed_items(batch.last_items())
        local = F.pad(last[:, 2 * k : 3 * k], (k, 2 * k))
        if self.config.session_factor:
            packing = PackedTokens(batch.mask)
            clicks = self.embed_items(packing.pack(batch.items))[:, 3 * k :]
            mean = packing.sum_per_row(clicks) / packing.lengths.unsqueeze(1).to(clicks.dtype)
            global_ = F.pad(mean, (0, 3 * k))
        else:
            global_ = torch.zeros_like(local)
        return BackboneOutput(session=global_ + local, vectors={"local": local, "global": global_})
