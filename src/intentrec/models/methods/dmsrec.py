"""LLM-DMsRec ("Integrating LLM-Derived Multi-Semantic Intent into Graph Model for Session-based
Recommendation") as a plug-in over any backbone.

Per example two text vectors, explicit intent ``E`` and latent intent ``L`` (see
:mod:`intentrec.models.methods.dmsrec_features` for how they are built from the LLM's answer or, with the
``titles`` source, from the candidate list alone). With ``s`` the backbone's session vector::

    Ê = P(dropout(E)),  L̂ = P(dropout(L))          P: one Linear(text width → d) shared by both
    session = W [s ; Ê ; L̂]                          W: Linear(3d → d, no bias)
    loss = CE + β (α₁ A(s, Ê) + α₂ A(s, L̂))

``A`` is the alignment loss: ``kl`` (the paper's: KL(P_s ‖ P_text) with P = softmax over the feature
dimensions, batch mean), ``infonce``, ``contrastive`` or ``directau`` (the paper's Figure 4
alternatives), or ``none``. Auxiliary losses are computed in training mode only.

Ablations (config switches):
  * w/o KL — ``alignment=none`` (or ``beta=0``);
  * w/o explicit / w/o latent — ``use_explicit=false`` / ``use_latent=false``: the group is dropped
    from the fusion *and* its loss term; the fusion layer then reads ``[s ; other group]`` and is
    ``Linear(2d → d)`` (width ``(1 + groups) · d``), it is not a zero-padded ``Linear(3d → d)``;
  * w/o semantic — the backbone alone (train without ``--method``).

Defaults come from the authors' GCE-GNN code (nsswtt/LLM-DMsRec, models/GCE-GNN/model.py): text
dropout 0.6, a shared text projection with bias, fusion without bias, both KL terms with weight 1 and
their sum times 0.7 (so β = 0.7, α₁ = α₂ = 1); their SHARE variant uses 0.3 dropout and 0.2.

Candidates: every example's top-``candidate_top`` items from ``candidates_model`` (GCE-GNN), with
cross-fitted training examples (:mod:`intentrec.training.candidates`). The method declares the file
it reads (``needs().candidates``); an explicit step builds it — ``intentrec candidates`` (the missing
file's error gives the exact command) or the experiment runner, which builds it before the run
(``candidate_epochs`` epochs per candidate run: a small default that keeps the method usable on a CPU
— the authors trained GCE-GNN fully; for paper-scale runs make it larger or give a ready file with
``candidates_file``). ``prepare`` never trains. The ``llm`` source reads answers produced from
whatever candidates ``intentrec infer --candidates`` was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from intentrec.data.batch import SessionBatch
from intentrec.data.candidates import CandidateSpec, read_provenance
from intentrec.models.base import Backbone, BackboneOutput
from intentrec.models.features import FeatureTable
from intentrec.models.methods.base import Method, MethodConfig, TextSourceConfig
from intentrec.models.methods.losses import ALIGNMENTS
from intentrec.models.methods.registry import register_method
from intentrec.search_space import FloatRange, IntRange, SearchSpace

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset

GROUPS = ("explicit", "latent")


class DMsRecConfig(TextSourceConfig):
    alignment: Literal["kl", "infonce", "contrastive", "directau", "none"] = "kl"
    use_explicit: bool = True
    use_latent: bool = True
    session_vector: Literal["session", "global", "local"] = Field(
        "session", description="the backbone vector s that is fused and aligned (the paper: the session vector)"
    )
    beta: float = Field(0.7, ge=0, description="weight of the alignment losses (authors' GCE-GNN code: 0.7)")
    alpha_explicit: float = Field(1.0, ge=0)
    alpha_latent: float = Field(1.0, ge=0)
    text_dropout: float = Field(0.6, ge=0, lt=1, description="dropout on E and L before the projection")
    latent_top: int = Field(5, ge=1, description="source=titles: best unclicked candidates forming L")
    candidate_top: int = Field(50, ge=1, description="candidates per example")
    candidates_file: str | None = Field(None, description="a ready candidate parquet (example_id, candidates)")
    candidates_model: str = Field("gcegnn", description="backbone that ranks the candidates")
    candidate_folds: int = Field(2, ge=1)
    leaky_candidates: bool = Field(
        False, description="the authors' way: train examples scored by a model trained on them"
    )
    candidate_epochs: int = Field(3, ge=1, description="max epochs of each candidate run (small default; see docs)")
    candidate_seed: int = 0
    candidate_model_config: dict[str, Any] = Field(default_factory=dict)
    candidate_train: dict[str, Any] = Field(
        default_factory=dict, description="more trainer settings of the candidate runs"
    )
    candidate_work_dir: str | None = Field(None, description="folder for candidate runs (default runs/candidates/...)")

    # candidate settings are left out: each value would build (and train) a new candidate file
    search_space: ClassVar[SearchSpace] = {
        "beta": FloatRange(low=0.1, high=1.5, log=True),
        "alpha_explicit": FloatRange(low=0.1, high=2.0, log=True),
        "alpha_latent": FloatRange(low=0.1, high=2.0, log=True),
        "text_dropout": FloatRange(low=0.0, high=0.8),
        "latent_top": IntRange(low=1, high=10),
    }

    @model_validator(mode="after")
    def _check(self) -> DMsRecConfig:
        if not (self.use_explicit or self.use_latent):
            raise ValueError(
                "use_explicit and use_latent are both false: that is 'w/o semantic', i.e. the backbone "
                "alone (train without --method)"
            )
        if not self.leaky_candidates and self.candidate_folds < 2:
            raise ValueError("candidate_folds must be >= 2 for cross-fitting (or set leaky_candidates=true)")
        if self.latent_top > self.candidate_top:
            raise ValueError(f"latent_top ({self.latent_top}) exceeds candidate_top ({self.candidate_top})")
        if "epochs" in self.candidate_train:
            raise ValueError("set the candidate runs' epochs with candidate_epochs, not candidate_train.epochs")
        from intentrec.training.config import TrainerConfig

        TrainerConfig.build({**self.candidate_train, "epochs": self.candidate_epochs}, where="candidate_train")
        return self

    def groups(self) -> tuple[str, ...]:
        return tuple(g for g, used in zip(GROUPS, (self.use_explicit, self.use_latent)) if used)

    def weight(self, group: str) -> float:
        return self.alpha_explicit if group == "explicit" else self.alpha_latent


@register_method("dmsrec")
class DMsRec(Method):
    Config: ClassVar[type[MethodConfig]] = DMsRecConfig

    def __init__(self, backbone: Backbone, config: DMsRecConfig):
        super().__init__(backbone, config)
        d = backbone.dim
        self.fusion = nn.Linear((1 + len(config.groups())) * d, d, bias=False)
        self.text_proj: nn.Linear | None = None  # created by attach() once the text width is known
        self._candidates: dict[str, Any] = {}

    # ------------------------------------------------------------------ features
    def feature_names(self) -> tuple[str, ...]:
        return self.config.groups()

    def candidate_spec(self) -> CandidateSpec | None:
        """The candidate file the ``titles`` source reads (the ``llm`` source reads answers instead)."""
        cfg: DMsRecConfig = self.config
        if cfg.source != "titles":
            return None
        return self._spec()

    def _spec(self) -> CandidateSpec:
        cfg: DMsRecConfig = self.config
        return CandidateSpec(
            model=cfg.candidates_model,
            folds=cfg.candidate_folds,
            top=cfg.candidate_top,
            seed=cfg.candidate_seed,
            leaky=cfg.leaky_candidates,
            model_config=dict(cfg.candidate_model_config),
            trainer_config={**cfg.candidate_train, "epochs": cfg.candidate_epochs},
            work_dir=cfg.candidate_work_dir,
            given=cfg.candidates_file,
        )

    def candidate_file(self, dataset: PreparedDataset) -> tuple[Path, dict[str, Any]]:
        """The candidate file to read and its provenance; a missing file says which command builds it."""
        cfg: DMsRecConfig = self.config
        spec = self._spec()
        path = spec.path(dataset.path)
        if cfg.candidates_file:
            info = read_provenance(path)
            leaky = info.get("leaky", "unknown (no provenance file)")
            return path, {"file": cfg.candidates_file, "leaky": leaky, "given": True, "runs": _scored_by(info)}
        if not path.is_file():
            raise spec.missing(dataset.path)
        return path, {
            "file": str(path),
            "leaky": cfg.leaky_candidates,
            "given": False,
            "model": cfg.candidates_model,
            "folds": cfg.candidate_folds,
            "epochs": cfg.candidate_epochs,
            "runs": _scored_by(read_provenance(path)),
        }

    def load_features(self, dataset: PreparedDataset) -> dict[str, FeatureTable]:
        from intentrec.models.methods.dmsrec_features import llm_tables, titles_tables
        from intentrec.semantic.encoders import get_encoder

        cfg: DMsRecConfig = self.config
        encoder = get_encoder(cfg.encoder)
        if cfg.source == "titles":
            path, self._candidates = self.candidate_file(dataset)
            tables = titles_tables(
                dataset.path,
                encoder,
                path,
                top=cfg.candidate_top,
                latent_top=cfg.latent_top,
                info={"candidates_leaky": self._candidates.get("leaky")},
            )
        else:
            from intentrec.semantic.llm import resolve_llm_identity

            path = self._spec().path(dataset.path)
            self._candidates = {
                "file": str(path) if path.is_file() else None,
                "leaky": cfg.leaky_candidates,
                "note": "source=llm: the answers were generated from the candidates given to 'intentrec infer'",
            }
            tables = llm_tables(dataset.path, encoder, llm_identity=resolve_llm_identity(cfg.llm), store_path=cfg.store)
        return {g: tables[g] for g in cfg.groups()}

    def run_info(self) -> dict[str, Any]:
        cfg: DMsRecConfig = self.config
        return {
            **super().run_info(),
            "source": cfg.source,
            "views": list(cfg.groups()),
            "alignment": cfg.alignment,
            "candidates": self._candidates,
        }

    # ------------------------------------------------------------------ model
    def fuse(self, output: BackboneOutput, batch: SessionBatch) -> tuple[BackboneOutput, dict[str, torch.Tensor]]:
        assert self.text_proj is not None, "prepare(dataset) or attach(tables) first"
        cfg: DMsRecConfig = self.config
        s = output.session if cfg.session_vector == "session" else self.vector(output, cfg.session_vector, batch)
        texts = {
            g: self.text_proj(F.dropout(self.feature(g, batch.example_ids), cfg.text_dropout, self.training))
            for g in cfg.groups()
        }
        session = self.fusion(torch.cat([s, *texts.values()], dim=1))
        aux: dict[str, torch.Tensor] = {}
        if self.training and cfg.alignment != "none":
            align = ALIGNMENTS[cfg.alignment]
            for g, t in texts.items():
                aux[f"{cfg.alignment}_{g}"] = align(s, t)
        return output.replace_session(session), aux

    def extra_loss(self, aux: dict[str, torch.Tensor]) -> torch.Tensor | None:
        cfg: DMsRecConfig = self.config
        if not aux or cfg.beta == 0:
            return None
        return cfg.beta * sum(cfg.weight(name.rsplit("_", 1)[1]) * value for name, value in aux.items())


def _scored_by(provenance: dict[str, Any]) -> dict[str, Any]:
    runs = provenance.get("runs") or {}
    return {run: info.get("scored") for run, info in runs.items()}
