"""LLM4SBR (Qiao et al., arXiv 2402.13840) as a plug-in over any backbone.

Two text views per example — long-term and short-term intent — each a localized text vector
(see :mod:`intentrec.semantic.views` for the ``llm`` and ``titles`` sources). With ``T_v`` the text
vector mapped to the model width by one shared linear map:

    l = w1ᵀ σ(global + T_long)          s = w2ᵀ σ(local + T_short)
    session = W [l · global ; s · local] + b
    loss = CE + λ · (AU(global, T_long) + AU(local, T_short))        (DirectAU, λ = 0.1)

Ablations (config switches): ``lambda_au=0`` (w/o AU); ``views=[short]`` / ``views=[long]`` (w/o
long / w/o short: the missing view's text term is zero and it has no AU term); ``normal=true`` (one
view without a long/short qualifier, used in both places, one AU term against ``global``);
``infer_only=true`` (LLM-Infer: no training; items are ranked by the cosine between the mean of the
example's view vectors and the catalogue's title vectors). "w/o LLM" is the backbone alone.

A control the paper does not have: ``shuffle_texts=true`` gives every example the view vectors of
another example of the same split (a fixed permutation). The fusion still gates ``local``/``global``
with per-example text-dependent weights, but the text says nothing about this session; what remains of
the gain over the backbone is due to the architecture, not to language.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.models.base import Backbone, BackboneOutput
from intentrec.models.features import FeatureTable
from intentrec.models.methods.base import Method, MethodConfig, TextSourceConfig
from intentrec.models.methods.losses import directau
from intentrec.models.methods.registry import register_method
from intentrec.search_space import FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset


class LLM4SBRConfig(TextSourceConfig):
    source: Literal["titles", "llm", "distilled"] = Field(
        "titles", description="where the texts come from (distilled: a student trained by 'intentrec distill')"
    )
    student: str | None = Field(None, description="source=distilled: the student folder")
    views: list[Literal["long", "short"]] = Field(default_factory=lambda: ["long", "short"])
    prompts: Literal["standard", "compact"] = Field(
        "standard", description="source=llm: wording of the view prompts (compact: ~40% fewer prompt tokens)"
    )
    normal: bool = Field(False, description="one unqualified view instead of long + short")
    lambda_au: float = Field(0.1, ge=0, description="weight of the alignment + uniformity losses")
    k: int = Field(3, ge=0, description="catalogue items per intent in localization (0 = raw)")
    short_window: int = Field(3, ge=1, description="source=titles: clicks in the short view")
    infer_only: bool = Field(False, description="LLM-Infer: rank by the text vectors alone, no training")
    shuffle_texts: bool = Field(
        False, description="control: give each example the view vectors of another example of its split"
    )

    search_space: ClassVar[SearchSpace] = {
        "lambda_au": FloatRange(low=0.01, high=1.0, log=True),
        "k": IntRange(low=1, high=5),
        "short_window": IntRange(low=1, high=5),
    }

    @model_validator(mode="after")
    def _check(self) -> LLM4SBRConfig:
        if not self.views and not self.normal:
            raise ValueError("views is empty: keep at least one of long, short (or set normal=true)")
        if self.source == "distilled" and not self.student:
            raise ValueError("source=distilled needs student=<folder written by 'intentrec distill'>")
        if self.student and self.source != "distilled":
            raise ValueError(f"student is only read with source=distilled (source is {self.source})")
        return self

    def view_names(self) -> tuple[str, ...]:
        return ("normal",) if self.normal else tuple(dict.fromkeys(self.views))


def shuffle_within_splits(table: FeatureTable, dataset: PreparedDataset, seed: int = 0) -> FeatureTable:
    """The same table with vectors permuted among the examples of each split (seeded)."""
    rng = np.random.default_rng(seed)
    order = np.arange(len(table.example_ids))
    for split in ("train", "valid", "test"):
        rows = table.positions(dataset.examples(split).example_ids)
        rows = rows[rows >= 0]
        order[rows] = rows[rng.permutation(len(rows))]
    counts = None if table.counts is None else table.counts[order]
    info = {**table.info, "shuffled_within_splits": True}
    return FeatureTable(table.example_ids, table.vectors[order], table.present[order], info=info, counts=counts)


@register_method("llm4sbr")
class LLM4SBR(Method):
    Config: ClassVar[type[MethodConfig]] = LLM4SBRConfig

    def __init__(self, backbone: Backbone, config: LLM4SBRConfig):
        super().__init__(backbone, config)
        d = backbone.dim
        self.w_long = nn.Linear(d, 1, bias=False)
        self.w_short = nn.Linear(d, 1, bias=False)
        self.combine = nn.Linear(2 * d, d)
        self.text_proj: nn.Linear | None = None  # created by attach() once the text width is known
        self._student = None  # source=distilled: set by load_features (not a submodule, never checkpointed)

    @property
    def trains(self) -> bool:
        return not self.config.infer_only

    # ------------------------------------------------------------------ features
    def feature_names(self) -> tuple[str, ...]:
        return self.config.view_names()

    def load_features(self, dataset: PreparedDataset) -> dict[str, FeatureTable]:
        from intentrec.models.methods.llm4sbr_features import llm_view, title_views
        from intentrec.semantic.encoders import get_encoder

        cfg: LLM4SBRConfig = self.config
        encoder = get_encoder(cfg.encoder)
        names = cfg.view_names()
        catalogue = None
        if cfg.infer_only or cfg.source in ("titles", "distilled"):
            from intentrec.semantic.intents import embed_catalogue

            catalogue = embed_catalogue(dataset.path, encoder, normalize=True).vectors
            self.register_buffer("_catalogue", torch.from_numpy(catalogue.astype(np.float16)), persistent=False)
            self._catalogue32 = catalogue  # float32, for computing new sessions' views exactly as stored
        if cfg.source == "titles":
            wanted = tuple(dict.fromkeys("long" if v == "normal" else v for v in names))
            tables = title_views(
                dataset.path, encoder, views=wanted, k=cfg.k, short_window=cfg.short_window, catalogue=catalogue
            )
            out = {v: tables["long" if v == "normal" else v] for v in names}
        elif cfg.source == "distilled":
            from intentrec.models.methods.llm4sbr_distill import distilled_views

            out, self._student = distilled_views(
                dataset.path, cfg.student, encoder, views=names, k=cfg.k, catalogue=catalogue
            )
        else:
            from intentrec.semantic.llm import resolve_llm_identity
            from intentrec.semantic.prompts import llm4sbr_view_template

            identity = resolve_llm_identity(cfg.llm)
            out = {
                v: llm_view(
                    dataset.path,
                    template=llm4sbr_view_template(v, cfg.prompts),
                    llm_identity=identity,
                    encoder=encoder,
                    k=cfg.k,
                    store_path=cfg.store,
                    name=v,
                )
                for v in names
            }
        if cfg.shuffle_texts:
            out = {name: shuffle_within_splits(table, dataset) for name, table in out.items()}
        return out

    def serving_problem(self) -> str | None:
        cfg: LLM4SBRConfig = self.config
        if cfg.source == "llm":
            return "its views come from LLM answers generated per dataset example (source=llm)"
        if cfg.shuffle_texts:
            return "it is the shuffled-texts control (its views belong to other examples)"
        if getattr(self, "_catalogue32", None) is None:
            return "the title catalogue is not loaded (call prepare(dataset) first)"
        if cfg.source == "distilled" and getattr(self, "_student", None) is None:
            return "the student is not loaded (call prepare(dataset) first)"
        return None

    def session_features(self, batch: SessionBatch) -> dict[str, torch.Tensor] | None:
        """Sessions outside the dataset: the ``titles`` rule or the student, exactly as the stored views."""
        cfg: LLM4SBRConfig = self.config
        if self.serving_problem() is not None:
            return None
        from intentrec.models.methods.llm4sbr_features import window_means
        from intentrec.semantic.localization import l2_normalise, localize

        lengths = batch.lengths.cpu().numpy()
        values = batch.items.cpu().numpy()[batch.mask.cpu().numpy()]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if cfg.source == "distilled":
            predicted = self._student.predict(values, offsets)
            return {
                n: torch.from_numpy(predicted[n].astype(np.float16)).float().to(batch.items.device)
                for n in self.features
            }
        names = list(self.features)
        raw = np.concatenate(
            [
                l2_normalise(
                    window_means(
                        self._catalogue32, values, offsets, None if n in ("long", "normal") else cfg.short_window
                    )
                )
                for n in names
            ]
        )
        # every view of the batch in one search; the stored catalogue is unit-norm already (embedded normalised)
        vectors = (
            localize(raw, self._catalogue32, cfg.k, method="exact", unit_catalogue=self._catalogue32) if cfg.k else raw
        )
        m = len(lengths)
        # rounded like the stored features, so a session scores the same online and offline
        return {
            n: torch.from_numpy(vectors[i * m : (i + 1) * m].astype(np.float16)).float().to(batch.items.device)
            for i, n in enumerate(names)
        }

    def run_info(self) -> dict[str, Any]:
        cfg: LLM4SBRConfig = self.config
        info = {**super().run_info(), "source": cfg.source, "views": list(cfg.view_names()), "k": cfg.k}
        if cfg.source == "distilled":
            info["student"] = cfg.student
        if cfg.shuffle_texts:
            info["control"] = "shuffled: each example got the view vectors of another example of its split"
        return info

    # ------------------------------------------------------------------ model
    def _texts(self, batch: SessionBatch) -> dict[str, torch.Tensor]:
        assert self.text_proj is not None, "prepare(dataset) or attach(tables) first"
        return {v: self.text_proj(self.feature(v, batch.example_ids)) for v in self.features}

    def fuse(self, output: BackboneOutput, batch: SessionBatch) -> tuple[BackboneOutput, dict[str, torch.Tensor]]:
        local = self.vector(output, "local", batch)
        global_ = self.vector(output, "global", batch)
        texts = self._texts(batch)
        t_long = texts.get("long", texts.get("normal"))
        t_short = texts.get("short", texts.get("normal"))
        long_in = global_ if t_long is None else global_ + t_long
        short_in = local if t_short is None else local + t_short
        weight_long = self.w_long(torch.sigmoid(long_in))
        weight_short = self.w_short(torch.sigmoid(short_in))
        session = self.combine(torch.cat([weight_long * global_, weight_short * local], dim=1))
        aux: dict[str, torch.Tensor] = {}
        if self.config.lambda_au > 0 and self.training:
            if "normal" in texts:
                aux["au_normal"] = directau(global_, texts["normal"])
            if "long" in texts:
                aux["au_long"] = directau(global_, texts["long"])
            if "short" in texts:
                aux["au_short"] = directau(local, texts["short"])
        return output.replace_session(session), aux

    def extra_loss(self, aux: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not aux:
            return None
        return self.config.lambda_au * sum(aux.values())

    def new_items_problem(self) -> str | None:
        if self.config.infer_only:
            return "LLM-Infer (infer_only) ranks by the catalogue's title vectors, not by an item table"
        return super().new_items_problem()

    def forward(self, batch: SessionBatch) -> torch.Tensor:
        if self.config.infer_only:
            return self.infer_scores(batch)
        return super().forward(batch)

    def infer_scores(self, batch: SessionBatch) -> torch.Tensor:
        """LLM-Infer: cosine between the mean view vector and every item's title vector."""
        raw = torch.stack([self.feature(v, batch.example_ids) for v in self.features]).mean(0)
        return F.normalize(raw, dim=-1) @ self._catalogue.float().t()
