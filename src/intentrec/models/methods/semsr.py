"""SemSR: LLM item embeddings as initialisation (-I) or fused end to end (-F), over any backbone.

Every catalogue item's text (:mod:`intentrec.semantic.item_texts`, template ``template``) is encoded
once by a frozen encoder into ``I_l`` ``[n, d2]`` (cached on disk by encoder identity, template and
the texts' sha256). The backbone keeps its trainable ID table ``I_m`` ``[n, d1]`` and computes its
session vector ``s_m`` from it.

``mode: fuse`` (SemSR-F)::

    α_j = qᵀ σ(W1 i_l,last + W2 i_l,j + c),  j = 1 .. |s|−1, softmax over j
    s'  = Σ_j α_j i_l,j                      (s' = 0 for a one-click session — our choice)
    s_l = W3 [s'; i_l,last]                   (d2)
    s   = W4 [s_m; s_l]                       (d)
    I   = W5 [I_m; I_l]                       (n × d, computed once per step, never per example)
    scores = the backbone's scoring of s against I  (NISER: σ · cos, as for its own vectors — our choice)

``mode: init`` (SemSR-I): the backbone's ID table starts from the text vectors and stays trainable;
nothing else changes. ``init_map`` says how d2-wide vectors meet a d1-wide table: ``pca`` (default:
the top-d1 principal components of ``I_l``, rescaled to the table's initial spread) or ``width``
(the backbone is built at width d2, ``model.embedding_dim`` = the encoder's width, and takes ``I_l``
as it is). LLM2SRGNN (LLM4SBR's Figure 5) is SemSR-I over SR-GNN.

``text_dim`` (a speed option, not the paper's): the item vectors are reduced once, by a fixed PCA, to
that width before anything else sees them; the fused table then costs ``n × (d1 + text_dim) × d``.

Controls that test whether the *text* helps: ``control: shuffled`` gives every item the text vector
of another item (a fixed permutation); ``control: random`` uses random unit vectors of the same width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError, DataError
from intentrec.models.base import Backbone, BackboneOutput, TextPlacement
from intentrec.models.features import ItemFeatureTable
from intentrec.models.layers import PackedTokens
from intentrec.models.methods.base import Method, MethodConfig
from intentrec.models.methods.registry import register_method
from intentrec.search_space import Choice, SearchSpace
from intentrec.semantic.item_texts import DEFAULT_TEMPLATE, TEMPLATES

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset

TEXT = "item_text"


class SemSRConfig(MethodConfig):
    mode: Literal["fuse", "init"] = Field("fuse", description="fuse = SemSR-F, init = SemSR-I")
    encoder: str = Field("minilm", description="frozen item-text encoder (see docs/semantic.md)")
    template: str = Field(DEFAULT_TEMPLATE, description="item text template (intentrec.semantic.item_texts)")
    init_map: Literal["pca", "width"] = Field("pca", description="mode=init: how d2-wide text vectors meet the table")
    control: Literal["none", "shuffled", "random"] = Field(
        "none", description="shuffled: each item gets another item's text vector; random: random unit vectors"
    )
    control_seed: int = 0
    text_dim: int | None = Field(
        None, ge=1, description="reduce the item vectors once (fixed PCA) to this width; None: the encoder's width"
    )

    search_space: ClassVar[SearchSpace] = {"text_dim": Choice(choices=(None, 32, 64, 128))}

    @model_validator(mode="after")
    def _known_template(self) -> SemSRConfig:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template '{self.template}' (known: {', '.join(TEMPLATES)})")
        return self


@register_method("semsr")
class SemSR(Method):
    Config: ClassVar[type[MethodConfig]] = SemSRConfig
    projects_text = False  # no per-example text; the item texts have their own layers

    def __init__(self, backbone: Backbone, config: SemSRConfig):
        super().__init__(backbone, config)
        self._width: int | None = None  # d2, known once the item vectors are loaded

    # ------------------------------------------------------------------ needs
    def feature_names(self) -> tuple[str, ...]:
        return ()

    def item_feature_names(self) -> tuple[str, ...]:
        return (TEXT,)

    def serving_problem(self) -> str | None:
        return None if TEXT in self.item_features else "the item text vectors are not loaded (call prepare(dataset))"

    # ------------------------------------------------------------------ item vectors
    def load_item_features(self, dataset: PreparedDataset) -> dict[str, ItemFeatureTable]:
        from intentrec.semantic.encoders import get_encoder
        from intentrec.semantic.intents import embed_catalogue

        cfg: SemSRConfig = self.config
        catalogue = embed_catalogue(dataset.path, get_encoder(cfg.encoder), normalize=True, template=cfg.template)
        vectors = np.asarray(catalogue.vectors, dtype=np.float32)
        if vectors.shape[0] != dataset.num_items:
            raise DataError(
                f"semsr: {vectors.shape[0]} item vectors for {dataset.num_items} items (built for another dataset?)",
                path=catalogue.path,
            )
        info = {
            "name": TEXT,
            "encoder_key": catalogue.info.get("encoder_key"),
            "template": cfg.template,
            "dim": int(vectors.shape[1]),
            "items_without_text": catalogue.info.get("untitled_items"),
            "fallback": "an item without text is encoded as 'item <item_id>'",
        }
        vectors, info["control"] = self._control(vectors)
        if cfg.text_dim is not None and cfg.text_dim < vectors.shape[1]:
            vectors = _principal_components(torch.from_numpy(vectors), cfg.text_dim).numpy()
            info.update(dim=cfg.text_dim, reduced="fixed PCA of the item vectors to text_dim (not trained)")
        return {TEXT: ItemFeatureTable(vectors, info=info)}

    def _control(self, vectors: np.ndarray) -> tuple[np.ndarray, str]:
        cfg: SemSRConfig = self.config
        rng = np.random.default_rng(cfg.control_seed)
        if cfg.control == "shuffled":
            return vectors[rng.permutation(len(vectors))], "shuffled: every item has another item's text vector"
        if cfg.control == "random":
            noise = rng.normal(size=vectors.shape).astype(np.float32)
            return noise / np.linalg.norm(noise, axis=1, keepdims=True), "random unit vectors of the encoder's width"
        return vectors, "none"

    def attach_items(self, tables: dict[str, ItemFeatureTable]) -> None:
        super().attach_items(tables)
        if TEXT not in tables:
            return
        width = int(tables[TEXT].values.shape[1])
        if self.config.mode == "fuse":
            self._build_fusion(width)
        else:
            self._initialise_table(torch.from_numpy(np.asarray(tables[TEXT].values, dtype=np.float32)))
        self._width = width

    def _build_fusion(self, d2: int) -> None:
        if self._width == d2:
            return  # prepared again (e.g. before loading a checkpoint): keep the layers
        d1 = d = self.backbone.dim
        device = self._device()
        self.query = nn.Linear(d2, 1, bias=False).to(device)  # q
        self.w_last = nn.Linear(d2, d2, bias=True).to(device)  # W1 (its bias is c)
        self.w_item = nn.Linear(d2, d2, bias=False).to(device)  # W2
        self.w_text = nn.Linear(2 * d2, d2).to(device)  # W3
        self.w_session = nn.Linear(d1 + d2, d).to(device)  # W4
        # W5 [I_m; I_l] as W5_m I_m + W5_l I_l: the same map without copying both tables into one
        self.w_items_id = nn.Linear(d1, d).to(device)  # W5_m (and W5's bias)
        self.w_items_text = nn.Linear(d2, d, bias=False).to(device)  # W5_l

    @torch.no_grad()
    def _initialise_table(self, text: torch.Tensor) -> None:
        cfg: SemSRConfig = self.config
        table = self.backbone.id_item_table()
        d1, d2 = table.shape[1], text.shape[1]
        if cfg.init_map == "width":
            if d1 != d2:
                raise ConfigError(
                    f"semsr init_map=width: the backbone is {d1} wide but the encoder's vectors are {d2}; "
                    f"set model.embedding_dim={d2}, or use init_map=pca"
                )
            values = text
        else:
            if d1 > min(text.shape):
                raise ConfigError(f"semsr init_map=pca: cannot keep {d1} components of {tuple(text.shape)} vectors")
            values = _principal_components(text, d1)
            # the table's initial spread (its init's std), so the optimiser sees the scale it expects
            values = values * (table.std() / values.std().clamp(min=1e-12))
        self.backbone.init_item_table(values.to(table.dtype).to(table.device))

    # ------------------------------------------------------------------ model
    def _text_session(self, batch: SessionBatch) -> torch.Tensor:
        """``s_l`` ``[B, d2]`` from the session's item text vectors (real clicks only, packed)."""
        text = self.item_feature(TEXT)  # [n, d2]
        packing = PackedTokens(batch.mask)
        items = packing.pack(batch.items)  # [T] item indices of the real clicks, row by row
        clicks = F.embedding(items - 1, text)  # [T, d2]
        last = clicks.index_select(0, packing.last)  # [B, d2]
        logits = self.query(
            torch.sigmoid(self.w_last(last).index_select(0, packing.rows) + self.w_item(clicks))
        ).squeeze(-1)
        earlier = torch.ones_like(items, dtype=torch.bool).index_fill_(0, packing.last, False)  # j < |s|
        # A finite mask keeps a one-click row's softmax finite (and its gradients); zeroing the last
        # click afterwards gives that row s' = 0 and leaves every other row's softmax as it is.
        masked = logits.masked_fill(~earlier, torch.finfo(logits.dtype).min)
        alpha = packing.softmax_per_row(masked).masked_fill(~earlier, 0.0)
        pooled = packing.sum_per_row(alpha.unsqueeze(1) * clicks)
        return self.w_text(torch.cat([pooled, last], dim=1))

    def fused_table(self) -> torch.Tensor:
        """``I = W5 [I_m; I_l]`` through the backbone's scoring table (once per step)."""
        fused = self.w_items_id(self.backbone.item_vectors()) + self.w_items_text(self.item_feature(TEXT))
        return self.backbone.scoring_table(fused)

    def fuse(self, output: BackboneOutput, batch: SessionBatch) -> tuple[BackboneOutput, dict[str, torch.Tensor]]:
        if self.config.mode == "init":
            return output, {}
        session = self.w_session(torch.cat([output.session, self._text_session(batch)], dim=1))
        return output.replace_session(session), {}

    def score(self, output: BackboneOutput) -> torch.Tensor:
        if self.config.mode == "init":
            return self.backbone.score(output)
        return self.backbone.score_with(output, self.fused_table())

    # ------------------------------------------------------------------ items known only by their text
    def new_items_problem(self) -> str | None:
        # SemSR-F always scores with score_with against its fused table, whatever the backbone's score
        return self.backbone.new_items_problem() if self.config.mode == "init" else None

    def scoring_table(self) -> torch.Tensor:
        return self.backbone.scoring_table() if self.config.mode == "init" else self.fused_table()

    def score_with(self, output: BackboneOutput, table: torch.Tensor) -> torch.Tensor:
        return self.backbone.score_with(output, table)

    def text_placement(self) -> TextPlacement | None:
        """SemSR-F's item branch ``W5 [I_m; I_l]`` for an item without clicks: its ID part is zero
        (no interactions to learn from), so the row is ``W5_l I_l`` plus W5's bias. None for SemSR-I
        (its table is the ID table), a control, or reduced vectors (the fixed PCA is not kept)."""
        cfg: SemSRConfig = self.config
        if cfg.mode != "fuse" or cfg.control != "none" or cfg.text_dim is not None or self._width is None:
            return None
        return TextPlacement(cfg.encoder, cfg.template, self.w_items_text.weight, self.w_items_id.bias)

    def loss(self, batch: SessionBatch) -> torch.Tensor:
        if batch.targets is None:
            raise ValueError("loss() needs a batch with targets")
        output, _ = self.fuse(self.backbone.encode(batch), batch)
        if self.config.mode == "init":
            return self.backbone.score_loss(output, batch.targets)
        return self.backbone.score_loss_with(output, self.fused_table(), batch.targets)

    def run_info(self) -> dict[str, Any]:
        cfg: SemSRConfig = self.config
        info = {**super().run_info(), "mode": cfg.mode, "encoder": cfg.encoder, "template": cfg.template}
        info["item_features"] = {k: t.info for k, t in self.item_features.items()}
        if cfg.mode == "init":
            info["init_map"] = cfg.init_map
        return info


def _principal_components(vectors: torch.Tensor, width: int) -> torch.Tensor:
    """The centred ``vectors`` projected on their top-``width`` principal directions (float32)."""
    centred = vectors.double() - vectors.double().mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:width].T).float()
