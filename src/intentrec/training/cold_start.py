"""``intentrec evaluate RUN --cold-start F``: rank items hidden from training by their text only.

The run must have been trained with ``train.cold_start = F`` (``intentrec train … --cold-start F``),
so its cold items never occurred in a training example (:mod:`intentrec.data.cold_items`). The run's
model gets a cold-start map (:mod:`intentrec.models.cold_start`; fitted on its trained items, or its
own text branch), the cold items' rows of its scoring table are replaced by the map's rows from their
text, and the split's examples — cold items removed from the inputs, cold targets kept — are ranked
against that table, the cold items' scores calibrated per session against the warm items' scores
(:func:`intentrec.models.cold_start.cold_item_scores`: placed rows score on another scale; by default
the cold items are ordered by text similarity, the choice measured on validation in docs/cold-start.md).
Reported on all targets, on cold targets and on warm ones, beside two baselines on the same examples:
``popularity`` (train clicks; a cold item has none) and ``text_similarity``
(LLMSeqSim: cosine of the session's mean text vector to every item's, with the map's encoder and
template), and the model with its own rows for the cold items (``id_rows``: rows that never saw a
click of theirs, for reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from intentrec.data.cold_items import ColdStartView, same_fraction
from intentrec.errors import IntentrecError
from intentrec.evaluation import rank_examples
from intentrec.evaluation.metrics import metrics_from_ranks
from intentrec.models.cold_start import (
    ColdScoringConfig,
    ColdStartMap,
    ColdStartMapConfig,
    cold_item_scores,
    fit_cold_start_map,
)
from intentrec.training.run import TrainedRun

#: what the report says of the map (from its identity)
_MAP_INFO = ("ridge_lambda", "items_fitted", "min_train_clicks", "standardize", "rescale_norm", "placement")


def check_cold_start_run(trained: TrainedRun, fraction: float) -> ColdStartView:
    """The run's cold-start view, or an error saying how to train a run for ``fraction``."""
    recorded, seed = trained.trainer.cold_start, trained.trainer.cold_start_seed
    data, model = trained.dataset.path, trained.record["model"]["name"]
    method = (trained.record.get("method") or {}).get("name")
    retrain = f"intentrec train {data} --model {model}{f' --method {method}' if method else ''} --cold-start {fraction}"
    if recorded is None:
        raise IntentrecError(
            f"{trained.run.path} was trained with every item; cold items must be hidden at training time: "
            f"{retrain} --out RUN, then intentrec evaluate RUN --cold-start {fraction}"
        )
    if not same_fraction(recorded, fraction):
        raise IntentrecError(
            f"{trained.run.path} was trained with --cold-start {recorded} (seed {seed}), not {fraction}: "
            f"evaluate it with --cold-start {recorded}, or train a run for {fraction}: {retrain} --out RUN"
        )
    assert isinstance(trained.dataset, ColdStartView)
    return trained.dataset


def evaluate_cold_start(
    trained: TrainedRun,
    fraction: float,
    *,
    split: str = "test",
    map_config: ColdStartMapConfig | dict[str, Any] | None = None,
    encoder: str | None = None,
    template: str | None = None,
    cold_map: ColdStartMap | None = None,
    save_map: Path | None = None,
    baselines: bool = True,
    scoring: ColdScoringConfig | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cold-start report of a run (module doc), JSON-ready. ``cold_map``: a saved map to use;
    ``scoring``: how the placed rows' scores are calibrated against the trained ones'."""
    view = check_cold_start_run(trained, fraction)
    how = scoring if isinstance(scoring, ColdScoringConfig) else ColdScoringConfig.build(scoring, where="cold scoring")
    model, cfg = trained.model, trained.trainer
    why = model.new_items_problem()
    if why is not None:
        raise IntentrecError(f"'{model.registry_name}' cannot rank items placed from text: {why}")
    if cold_map is None:
        cold_map = fit_cold_start_map(
            model, view, encoder, template=template, config=map_config, fitted_on=str(trained.run.path)
        )
    if save_map is not None:
        cold_map.save(save_map)
    text = _catalogue(view, cold_map)
    columns = view.cold.indices - 1
    device = trained.device
    with torch.no_grad():
        table = model.scoring_table().detach().clone()
        table[torch.from_numpy(columns).to(table.device)] = cold_map.rows_from_vectors(text[columns]).to(table)

    examples = model.select_examples(view.examples_with_cold_targets(split))
    if len(examples) == 0:
        raise IntentrecError(f"the {split} split of {view.path} has no examples left without the cold items")
    is_cold = view.cold.mask()[examples.targets]
    opts = dict(batch_size=cfg.eval_batch_size, max_length=cfg.max_length, device=device)
    text_model = _text_similarity(text, cold_map).to(device)
    cold_columns = torch.from_numpy(columns).to(device)

    def placed_scores(batch):
        scores = model.score_with(model.encode(batch), table)
        text_scores = text_model(batch)[:, cold_columns] if how.text_weight > 0 else None
        return cold_item_scores(scores, cold_columns, how, text_scores)

    placed = rank_examples(model, examples, scores=placed_scores, **opts)
    results = {"model": _by_target(placed.ranks, is_cold, cfg.ks)}
    if baselines:
        results["id_rows"] = _by_target(rank_examples(model, examples, **opts).ranks, is_cold, cfg.ks)
        results["popularity"] = _by_target(_popularity_ranks(view.train_counts(), examples.targets), is_cold, cfg.ks)
        results["text_similarity"] = _by_target(rank_examples(text_model, examples, **opts).ranks, is_cold, cfg.ks)
    return {
        "run": str(trained.run.path),
        "split": split,
        "checkpoint": (
            "checkpoint selected on TEST (paper mode)"
            if trained.paper_mode
            else f"checkpoint selected on VALID by {cfg.select_metric} (warm targets only)"
        ),
        "cold_start": {
            "fraction": view.cold.fraction,
            "seed": view.cold.seed,
            "cold_items": int(len(columns)),
            "examples": int(len(examples)),
            "cold_targets": int(is_cold.sum()),
            "inputs": "cold items removed from every input session; examples left empty dropped",
        },
        "map": {
            "kind": cold_map.kind,
            "encoder": cold_map.encoder,
            "template": cold_map.template,
            "normalize": cold_map.normalize,
            **{k: v for k, v in cold_map.identity.items() if k in _MAP_INFO},
            **({"saved": str(save_map)} if save_map is not None else {}),
        },
        "scoring": how.model_dump(),
        "metrics": results,
    }


def _catalogue(view: ColdStartView, cold_map: ColdStartMap) -> np.ndarray:
    from intentrec.semantic.intents import embed_catalogue

    vectors = embed_catalogue(view.path, cold_map.text_encoder(), normalize=True, template=cold_map.template).vectors
    return np.asarray(vectors, dtype=np.float32)


def _by_target(ranks: np.ndarray, is_cold: np.ndarray, ks: tuple[int, ...]) -> dict[str, dict[str, float] | None]:
    """Metrics on all targets, on cold targets and on warm ones (None where there are none)."""
    return {
        name: metrics_from_ranks(ranks[mask], ks) if mask.any() else None
        for name, mask in (("all", np.ones_like(is_cold)), ("cold", is_cold), ("warm", ~is_cold))
    }


def _popularity_ranks(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ranks when every session gets the items by train clicks; ties count against the target
    (as in ``target_ranks``), so an item without clicks ranks below every item with some."""
    ordered = np.sort(counts)
    return (len(counts) - np.searchsorted(ordered, counts[targets - 1], side="left")).astype(np.int64)


def _text_similarity(text: np.ndarray, cold_map: ColdStartMap) -> Any:
    """LLMSeqSim over the catalogue's text vectors: the session's mean text vector against every item's."""
    from intentrec.models.registry import build_backbone

    baseline = build_backbone(
        "llmseqsim",
        text.shape[0],
        {"embedding_dim": text.shape[1], "encoder": cold_map.encoder, "template": cold_map.template, "pooling": "mean"},
    )
    baseline.load_table(torch.from_numpy(text))
    return baseline.eval()
