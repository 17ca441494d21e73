"""Cold-start items: place an item known only by its text in a trained model's item space.

A :class:`ColdStartMap` turns item texts into rows of the model's scoring table, so that

    scores = model.score_with(output, torch.cat([model.scoring_table(), cold.rows(texts)]))

ranks the catalogue and the new items together (``POST /v1/items``, and ``intentrec evaluate RUN
--cold-start F``). Texts are encoded by ``encoder`` into unit-length vectors; then

``model``
    the model's own placement (``SessionModel.text_placement()``: SemSR-F's item branch, LLMSeqSim's
    identity), an affine map read off the model;
``ridge`` (default for every other model)
    ``rows = x W + b``, the closed-form ridge regression from the text vectors of the trained items
    (non-cold, at least ``min_train_clicks`` clicks in train) to their rows in ``scoring_table()``;
    λ is the one of ``lambdas`` with the lowest mean squared error on a seeded ``holdout`` of those
    items, then the map is refitted on all of them;
``mlp``
    one hidden ReLU layer, full-batch Adam on the same squared error, stopped on the same held-out items.

What the rows are regressed on is the table ``score_with`` consumes, so any scoring works (NISER's
scaled cosine, TAGNN's target attention over the table). When every trained row is unit-length (a
cosine table: NISER, LLMSeqSim, SemSR over NISER) the placed rows are normalised too, so a new item
is not penalised by the regression's shrinkage of its norm.

A map is saved as ``NAME.safetensors`` (its tensors) and ``NAME.json`` (identity: kind, encoder and
its identity, template, what it was fitted on, λ, normalisation, the tensors' sha256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from intentrec.config import Config
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.io import atomic_path, sha256_file, write_json
from intentrec.semantic.item_texts import DEFAULT_TEMPLATE, TEMPLATES

if TYPE_CHECKING:
    from intentrec.data.dataset import PreparedDataset
    from intentrec.models.base import SessionModel
    from intentrec.semantic.encoders import TextEncoder

FORMAT = "intentrec-cold-start-map/1"
#: rows within this of unit length count as a cosine table
_UNIT_TOLERANCE = 1e-3


class ColdStartMapConfig(Config):
    kind: Literal["auto", "ridge", "mlp"] = Field(
        "auto", description="auto: the model's own text placement if it has one, else ridge"
    )
    lambdas: tuple[float, ...] = Field(
        (0.01, 0.1, 1.0, 10.0, 100.0), description="ridge: the λ candidates, chosen on the held-out items"
    )
    holdout: float = Field(0.1, gt=0, lt=1, description="fraction of the trained items held out to choose λ / stop")
    seed: int = Field(0, description="seed of the held-out items and of the MLP's initialisation")
    min_train_clicks: int = Field(1, ge=1, description="items with fewer train clicks are not fitted on")
    standardize: bool = Field(False, description="ridge: regress the z-scored table columns (changes the chosen λ)")
    rescale: Literal["none", "mean_norm"] = Field(
        "none", description="mean_norm: placed rows get the trained rows' mean norm (ridge shrinks it)"
    )
    hidden: int = Field(256, ge=1, description="mlp: hidden width")
    lr: float = Field(1e-3, gt=0, description="mlp: Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="mlp: Adam weight decay")
    max_steps: int = Field(2000, ge=1, description="mlp: full-batch steps at most")
    patience: int = Field(50, ge=1, description="mlp: stop after this many steps without a better held-out error")

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, lambdas: tuple[float, ...]) -> tuple[float, ...]:
        if not lambdas or any(lam < 0 for lam in lambdas):
            raise ValueError("lambdas must be one or more non-negative values, e.g. [0.1, 1, 10]")
        return lambdas


class ColdScoringConfig(Config):
    """How the placed items' scores are put next to the trained items' (:func:`cold_item_scores`)."""

    calibration: Literal["moments", "quantiles", "none"] = Field(
        "moments",
        description="per session, map the cold items' scores onto the warm items' mean and std, or onto their "
        "score quantiles (by rank); none: as the model scores the placed rows",
    )
    text_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="weight of the session–item text cosine in the cold items' calibrated scores (1: text only; "
        "chosen on validation, docs/cold-start.md)",
    )

    @model_validator(mode="after")
    def _blend_is_calibrated(self) -> ColdScoringConfig:
        if self.text_weight > 0 and self.calibration == "none":
            raise ValueError("text_weight blends z-scored scores, which are then calibrated: it needs a calibration")
        return self


def cold_item_scores(
    scores: torch.Tensor,
    cold_columns: torch.Tensor,
    config: ColdScoringConfig,
    text_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scores`` ``[B, n]`` with the cold items' columns (``cold_columns``) recalibrated per session.

    A session's cold scores (blended, with ``text_weight``, with its text scores ``[B, m]``, both
    z-scored among the cold items) are mapped onto its scores of the other items: ``quantiles`` gives
    the cold item ranked ``r`` of ``m`` the warm score at quantile ``(r + ½) / m``, ``moments`` matches
    the mean and standard deviation. Placed rows score on another scale than trained ones (the map
    regresses toward the mean row); the cold items were drawn like the warm ones, so their scores
    should spread alike.
    """
    if config.calibration == "none":
        return scores
    cold = scores[:, cold_columns]
    if config.text_weight > 0:
        if text_scores is None:
            raise IntentrecError("cold-start scoring: text_weight > 0 needs the session–item text scores")
        cold = (1 - config.text_weight) * _z(cold) + config.text_weight * _z(text_scores)
    warm_mask = torch.ones(scores.shape[1], dtype=torch.bool, device=scores.device)
    warm_mask[cold_columns] = False
    warm = scores[:, warm_mask]
    out = scores.clone()
    if config.calibration == "moments":
        out[:, cold_columns] = _z(cold) * warm.std(1, keepdim=True) + warm.mean(1, keepdim=True)
    else:
        ordered = warm.sort(dim=1).values
        rank = cold.argsort(dim=1).argsort(dim=1).to(torch.float64)  # 0 = the lowest cold score
        at = ((rank + 0.5) / cold.shape[1] * ordered.shape[1]).long().clamp_(max=ordered.shape[1] - 1)
        out[:, cold_columns] = ordered.gather(1, at)
    return out


def _z(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp_min(1e-12)


@dataclass
class ColdStartMap:
    """Item text → scoring-table rows of one trained model (module doc)."""

    kind: Literal["model", "ridge", "mlp"]
    encoder: str  # what get_encoder() is given to encode new texts
    template: str
    tensors: dict[str, torch.Tensor]
    normalize: bool
    identity: dict[str, Any] = field(default_factory=dict)
    _encoder: TextEncoder | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ rows
    @property
    def width(self) -> int:
        """Width of the text vectors the map reads."""
        first = self.tensors["weight"] if self.kind != "mlp" else self.tensors["hidden.weight"]
        return int(first.shape[1] if self.kind == "mlp" else first.shape[0])

    @torch.no_grad()
    def rows_from_vectors(self, text_vectors: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scoring-table rows ``[m, d']`` (float32) for unit-length text vectors ``[m, w]`` of ``encoder``."""
        x = torch.as_tensor(np.asarray(text_vectors) if isinstance(text_vectors, np.ndarray) else text_vectors)
        if x.dim() != 2 or x.shape[1] != self.width:
            raise IntentrecError(
                f"cold-start map: expected text vectors [m, {self.width}] from encoder '{self.encoder}', "
                f"got shape {tuple(x.shape)}"
            )
        t = {k: v.to(x.device) for k, v in self.tensors.items()}
        x = x.float()
        if self.kind == "mlp":
            rows = F.linear(F.relu(F.linear(x, t["hidden.weight"], t["hidden.bias"])), t["out.weight"], t["out.bias"])
        else:
            rows = x @ t["weight"] + t["bias"]
        if self.normalize:
            return F.normalize(rows, dim=1)
        norm = self.identity.get("rescale_norm")
        return rows if norm is None else F.normalize(rows, dim=1) * float(norm)

    def rows(self, texts: list[str]) -> torch.Tensor:
        """Scoring-table rows ``[m, d']`` for item texts (rendered as ``template`` renders an item)."""
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise IntentrecError(
                f"cold-start map: item texts {empty[:5]} are empty; an item is placed from its text "
                f"(template {self.template})"
            )
        encoder = self.text_encoder()
        return self.rows_from_vectors(encoder.encode(list(texts), normalize=True))

    def text_encoder(self) -> TextEncoder:
        """The encoder the map was fitted with (checked against its recorded identity)."""
        if self._encoder is None:
            from intentrec.semantic.encoders import get_encoder

            encoder = get_encoder(self.encoder)
            recorded = self.identity.get("encoder_key")
            if recorded and encoder.identity_key() != recorded:
                raise IntentrecError(
                    f"cold-start map: encoder '{self.encoder}' is not the one the map was fitted with "
                    f"(identity {encoder.identity_key()} here, {recorded} recorded)"
                )
            self._encoder = encoder
        return self._encoder

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its identity ``path`` with suffix .json; returns the tensor file."""
        target = Path(path)
        if target.suffix != ".safetensors":
            raise ConfigError(f"a cold-start map is saved as NAME.safetensors, got {target}")
        tensors = {k: v.detach().cpu().float().contiguous().clone() for k, v in self.tensors.items()}
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        info = {
            "format": FORMAT,
            "kind": self.kind,
            "encoder": self.encoder,
            "template": self.template,
            "normalize": self.normalize,
            **{k: v for k, v in self.identity.items() if k not in ("format", "kind", "encoder", "template")},
            "tensors_sha256": sha256_file(target),
        }
        write_json(target.with_suffix(".json"), info)
        return target

    @classmethod
    def load(cls, path: str | Path, *, encoder: TextEncoder | None = None) -> ColdStartMap:
        """A map written by :meth:`save` (``encoder``: an encoder object to use instead of the recorded name)."""
        target = Path(path)
        info_path = target.with_suffix(".json")
        for p in (target, info_path):
            if not p.is_file():
                raise DataError("cold-start map file is missing (written by ColdStartMap.save)", path=p)
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", path=info_path) from None
        if info.get("format") != FORMAT:
            raise DataError(f"not a cold-start map (format {info.get('format')!r}, expected {FORMAT})", path=info_path)
        if info.get("tensors_sha256") != sha256_file(target):
            raise DataError(f"{target.name} does not match its identity file (tensors sha256 differs)", path=info_path)
        try:
            tensors = load_file(str(target))
        except SafetensorError as exc:
            raise DataError(f"not a safetensors file: {exc}", path=target) from None
        kind = info["kind"]
        expected = {"mlp": {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}}.get(kind, {"weight", "bias"})
        if set(tensors) != expected:
            raise DataError(f"a '{kind}' map holds {sorted(expected)}, found {sorted(tensors)}", path=target)
        identity = {k: v for k, v in info.items() if k not in ("normalize", "tensors_sha256")}
        return cls(kind, info["encoder"], info["template"], tensors, bool(info["normalize"]), identity, encoder)


# ---------------------------------------------------------------------------------------------------- fitting
def fit_cold_start_map(
    model: SessionModel,
    dataset: PreparedDataset,
    encoder: str | TextEncoder | None = None,
    *,
    template: str | None = None,
    config: ColdStartMapConfig | dict[str, Any] | None = None,
    fitted_on: str | None = None,
    text_vectors: np.ndarray | None = None,
) -> ColdStartMap:
    """The map for ``model``, trained on ``dataset`` (a cold-start view: its ``train_counts`` are zero
    for the hidden items, so they are never fitted on).

    ``encoder`` (a name for ``get_encoder``, or an encoder object) and ``template`` default to the
    model's own placement's, else ``minilm`` and ``title/1``. ``text_vectors`` ``[num_items, w]``
    (unit-length, by item column) skips encoding the catalogue. ``fitted_on`` names the run.
    """
    cfg = config if isinstance(config, ColdStartMapConfig) else ColdStartMapConfig.build(config, where="cold-start map")
    why = model.new_items_problem()
    if why is not None:
        raise IntentrecError(f"'{model.registry_name}' cannot rank items placed from text: {why}")
    placement = model.text_placement() if cfg.kind == "auto" else None
    encoder_name = _encoder_name(encoder)
    if placement is not None:
        if encoder_name is not None and encoder_name != placement.encoder:
            raise ConfigError(
                f"'{model.registry_name}' places items with its own encoder '{placement.encoder}'; "
                f"to fit a map from '{encoder_name}' instead, use kind=ridge (--map ridge)"
            )
        if template is not None and template != placement.template:
            raise ConfigError(
                f"'{model.registry_name}' places items from texts rendered by '{placement.template}', not "
                f"'{template}'; use kind=ridge (--map ridge) to fit a map for another template"
            )
        encoder, template = (encoder if encoder is not None else placement.encoder), placement.template
    template = template or DEFAULT_TEMPLATE
    if template not in TEMPLATES:
        raise ConfigError(f"unknown item text template '{template}' (known: {', '.join(TEMPLATES)})")
    encoder_obj = _resolve_encoder(encoder if encoder is not None else "minilm")
    name = encoder_name or (placement.encoder if placement is not None else "minilm")

    with torch.no_grad():
        table = model.scoring_table().detach().float().cpu()
    if table.shape[0] != dataset.num_items:
        raise DataError(f"the model has {table.shape[0]} items, the dataset {dataset.num_items}", path=dataset.path)
    fitted = np.flatnonzero(dataset.train_counts() >= cfg.min_train_clicks)
    normalize = bool(fitted.size) and bool(((table[fitted].norm(dim=1) - 1).abs() < _UNIT_TOLERANCE).all())
    identity: dict[str, Any] = {
        "encoder_identity": encoder_obj.identity(),
        "encoder_key": encoder_obj.identity_key(),
        "model": model.registry_name,
        "fitted_on": fitted_on or model.registry_name,
        "dataset": str(dataset.path),
        "table_dim": int(table.shape[1]),
    }
    if placement is not None:
        tensors = {
            "weight": placement.weight.detach().float().cpu().T.contiguous(),
            "bias": placement.bias.detach().float().cpu().clone(),
        }
        identity["placement"] = "the model's own text placement (SessionModel.text_placement)"
        return ColdStartMap("model", name, template, tensors, normalize, identity, encoder_obj)

    if fitted.size < 2:
        raise DataError(f"only {fitted.size} trained items to fit a cold-start map on", path=dataset.path)
    x = _catalogue_vectors(dataset, encoder_obj, template) if text_vectors is None else np.asarray(text_vectors)
    if x.shape[0] != dataset.num_items:
        raise DataError(f"{x.shape[0]} text vectors for {dataset.num_items} items", path=dataset.path)
    x_fit = torch.from_numpy(np.ascontiguousarray(x[fitted], dtype=np.float32))
    y_fit = table[fitted]
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(fitted.size)
    n_held = min(max(1, int(round(cfg.holdout * fitted.size))), fitted.size - 1)
    held, train = order[:n_held], order[n_held:]
    identity.update(items_fitted=int(fitted.size), items_held_out=int(n_held), min_train_clicks=cfg.min_train_clicks)
    kind: Literal["ridge", "mlp"] = "mlp" if cfg.kind == "mlp" else "ridge"
    if kind == "ridge":
        mean, scale = y_fit.mean(0), y_fit.std(0).clamp_min(1e-8) if cfg.standardize else None
        y_reg = y_fit if scale is None else (y_fit - mean) / scale
        errors = {lam: _mse(_ridge(x_fit[train], y_reg[train], lam), x_fit[held], y_reg[held]) for lam in cfg.lambdas}
        best = min(errors, key=lambda lam: (errors[lam], lam))
        tensors = _ridge(x_fit, y_reg, best)
        if scale is not None:  # back to the table's units: x W s + (b s + μ)
            tensors = {"weight": tensors["weight"] * scale, "bias": tensors["bias"] * scale + mean}
        identity.update(
            ridge_lambda=best, held_out_mse={str(k): v for k, v in errors.items()}, standardize=cfg.standardize
        )
    else:
        tensors, info = _mlp(x_fit, y_fit, train, held, cfg)
        identity.update(info)
    identity["target_mean_square"] = float(y_fit.double().pow(2).sum(1).mean())
    if cfg.rescale == "mean_norm" and not normalize:
        identity["rescale_norm"] = float(y_fit.norm(dim=1).mean())
    return ColdStartMap(kind, name, template, tensors, normalize, identity, encoder_obj)


def _encoder_name(encoder: str | TextEncoder | None) -> str | None:
    if encoder is None or isinstance(encoder, str):
        return encoder
    return str(encoder.identity().get("backend", type(encoder).__name__))


def _resolve_encoder(encoder: str | TextEncoder) -> TextEncoder:
    if isinstance(encoder, str):
        from intentrec.semantic.encoders import get_encoder

        return get_encoder(encoder)
    return encoder


def _catalogue_vectors(dataset: PreparedDataset, encoder: TextEncoder, template: str) -> np.ndarray:
    from intentrec.semantic.intents import embed_catalogue

    return np.asarray(embed_catalogue(dataset.path, encoder, normalize=True, template=template).vectors, np.float32)


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """``W, b`` minimising ``‖(x W + b) − y‖² + λ‖W‖²`` (the intercept unpenalised), in float64."""
    xd, yd = x.double(), y.double()
    x_mean, y_mean = xd.mean(0), yd.mean(0)
    xc, yc = xd - x_mean, yd - y_mean
    gram = xc.T @ xc + lam * torch.eye(xc.shape[1], dtype=torch.float64)
    # lstsq rather than solve: λ = 0 with rank-deficient texts still gives the minimum-norm solution
    weight = torch.linalg.lstsq(gram, xc.T @ yc).solution
    bias = y_mean - x_mean @ weight
    return {"weight": weight.float(), "bias": bias.float()}


def _mse(tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over items of the squared distance between the placed and the trained row."""
    return float((x @ tensors["weight"] + tensors["bias"] - y).double().pow(2).sum(1).mean())


def _mlp(
    x: torch.Tensor, y: torch.Tensor, train: np.ndarray, held: np.ndarray, cfg: ColdStartMapConfig
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    generator = torch.Generator().manual_seed(cfg.seed)
    hidden = torch.nn.Linear(x.shape[1], cfg.hidden)
    out = torch.nn.Linear(cfg.hidden, y.shape[1])
    with torch.no_grad():
        for layer in (hidden, out):
            bound = 1.0 / layer.in_features**0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    net = torch.nn.Sequential(hidden, torch.nn.ReLU(), out)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_train, y_train, x_held, y_held = x[train], y[train], x[held], y[held]
    best, best_state, best_step, step = float("inf"), None, 0, 0
    for step in range(1, cfg.max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        (net(x_train) - y_train).pow(2).sum(1).mean().backward()
        optimizer.step()
        with torch.no_grad():
            error = float((net(x_held) - y_held).pow(2).sum(1).mean())
        if error < best:
            best, best_step = error, step
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif step - best_step >= cfg.patience:
            break
    assert best_state is not None
    tensors = {
        "hidden.weight": best_state["0.weight"],
        "hidden.bias": best_state["0.bias"],
        "out.weight": best_state["2.weight"],
        "out.bias": best_state["2.bias"],
    }
    return tensors, {"mlp_hidden": cfg.hidden, "mlp_steps": step, "mlp_best_step": best_step, "held_out_mse": best}
