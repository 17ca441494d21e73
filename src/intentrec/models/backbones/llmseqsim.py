"""LLMSeqSim (Harte et al., RecSys 2023): recommend by the similarity of LLM item embeddings, no training.

Every item is its frozen text vector (:mod:`intentrec.semantic.item_texts`, encoded once and cached, as
for SemSR). A session's vector is the mean of its items' vectors (``pooling: mean``), a recency-weighted
mean (``recency``: click ``j`` of ``|s|`` weighs ``recency_decay ** (|s| − j)`` — our parameterisation of
the paper's recency weighting) or the last item's (``last``); items are ranked by cosine similarity to it.

The item table is the encoder's, so ``embedding_dim`` must equal the encoder's width (384 for MiniLM,
checked when the vectors are loaded). It is a non-persistent buffer rebuilt by ``prepare``, never
copied into checkpoints. A method over it trains its own layers; the backbone alone has nothing to
train, so a run is one evaluation pass. SemSR's and LLM4SBR's papers use it as a baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError
from intentrec.models.base import Backbone, BackboneConfig, BackboneOutput, Needs, TextPlacement
from intentrec.models.registry import register_backbone
from intentrec.search_space import Choice, FloatRange, SearchSpace
from intentrec.semantic.item_texts import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset


class LLMSeqSimConfig(BackboneConfig):
    embedding_dim: int = Field(384, ge=1, description="the encoder's width (MiniLM: 384)")
    encoder: str = Field("minilm", description="frozen item-text encoder")
    template: str = DEFAULT_TEMPLATE
    pooling: Literal["mean", "recency", "last"] = "mean"
    recency_decay: float = Field(0.8, gt=0, le=1, description="pooling=recency: weight ratio of consecutive clicks")

    # nothing trains: the pooling is all there is to choose (embedding_dim is the encoder's width)
    search_space: ClassVar[SearchSpace] = {
        "pooling": Choice(choices=("mean", "recency", "last")),
        "recency_decay": FloatRange(low=0.5, high=0.95),
    }


@register_backbone("llmseqsim")
class LLMSeqSim(Backbone):
    """``session`` = ``global`` = the pooled item vector; ``local`` = the last click's vector."""

    Config: ClassVar[type[BackboneConfig]] = LLMSeqSimConfig
    vector_names: ClassVar[tuple[str, ...]] = ("local", "global")
    # nothing trains here (one evaluation pass); a method over it trains with these
    default_train: ClassVar[dict] = {"lr": 1e-3, "batch_size": 100}

    def __init__(self, num_items: int, config: LLMSeqSimConfig):
        super().__init__(num_items, config)
        self.register_buffer("id_table", torch.zeros(num_items, config.embedding_dim), persistent=False)
        self._loaded = False

    def needs(self) -> Needs:
        why = "" if self._loaded else "the item text vectors are not loaded (call prepare(dataset))"
        return Needs(trains=False, serves_new_sessions=self._loaded, why_not_serving=why)

    def prepare(self, dataset: PreparedDataset) -> None:
        from intentrec.semantic.encoders import get_encoder
        from intentrec.semantic.intents import embed_catalogue

        cfg: LLMSeqSimConfig = self.config
        catalogue = embed_catalogue(dataset.path, get_encoder(cfg.encoder), normalize=True, template=cfg.template)
        vectors = np.asarray(catalogue.vectors, dtype=np.float32)
        if vectors.shape[0] != self.num_items:
            raise DataError(
                f"llmseqsim: {vectors.shape[0]} item vectors for {self.num_items} items", path=catalogue.path
            )
        if vectors.shape[1] != cfg.embedding_dim:
            raise ConfigError(
                f"llmseqsim: encoder '{cfg.encoder}' gives {vectors.shape[1]}-wide vectors; "
                f"set model.embedding_dim={vectors.shape[1]}"
            )
        self.load_table(torch.from_numpy(vectors))

    @torch.no_grad()
    def load_table(self, vectors: torch.Tensor) -> None:
        """Use ``vectors`` ``[num_items, d]`` as the (frozen) item table."""
        self.id_table.copy_(vectors.to(self.id_table.device))
        self._loaded = True

    def encode(self, batch: SessionBatch) -> BackboneOutput:
        cfg: LLMSeqSimConfig = self.config
        clicks = self.embed_items(batch.items)  # [B, L, d], padding rows are zero
        last = self.embed_items(batch.last_items())
        if cfg.pooling == "last":
            pooled = last
        else:
            positions = torch.arange(batch.items.shape[1], device=batch.items.device)
            age = (batch.lengths.unsqueeze(1) - 1 - positions).clamp(min=0).to(clicks.dtype)  # 0 = the last click
            weights = batch.mask.to(clicks.dtype)
            if cfg.pooling == "recency":
                weights = weights * cfg.recency_decay**age
            pooled = (weights.unsqueeze(-1) * clicks).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-12)
        return BackboneOutput(session=pooled, vectors={"local": last, "global": pooled})

    def scoring_table(self, vectors: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_table() if vectors is None else F.normalize(vectors, dim=1)

    def text_placement(self) -> TextPlacement:
        """An item is its own text vector: the identity map from the encoder's vectors."""
        cfg: LLMSeqSimConfig = self.config
        eye = torch.eye(cfg.embedding_dim, device=self.id_table.device)
        return TextPlacement(cfg.encoder, cfg.template, eye, torch.zeros(cfg.embedding_dim, device=eye.device))

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(output.session, dim=1), table)  # cosine
