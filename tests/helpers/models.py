"""Every registered SessionModel, built small over a tiny dataset, for the shared contract tests."""

from __future__ import annotations

import numpy as np
import torch

from intentrec.data.batch import SessionBatch
from intentrec.models.base import SessionModel
from intentrec.models.features import FeatureTable, ItemFeatureTable
from intentrec.models.methods.registry import METHODS, build_method
from intentrec.models.methods.registry import load_all as load_methods
from intentrec.models.registry import BACKBONES, build_backbone
from intentrec.models.registry import load_all as load_backbones
from tests.helpers.llmgr import TINY_LLMGR

load_backbones()
load_methods()

TEXT_DIM = 12
SESSIONS = [[3], [1, 2], [5, 9, 4], [12, 3, 8, 30], [6, 6, 2], [10, 11, 12, 13, 14]]
TARGETS = [4, 3, 11, 1, 14, 15]
EXAMPLE_IDS = [0, 7, 3, 42, 5, 11]
#: "backbone" or "method(backbone)" for every registered backbone and every method over every backbone
MODEL_IDS = BACKBONES.names() + [f"{m}({b})" for m in METHODS.names() for b in BACKBONES.names()]
#: settings the shared tests build a method with (a method that loads a real LM gets a tiny random one)
METHOD_TEST_SETTINGS: dict[str, dict] = {"llmgr": TINY_LLMGR}


def synthetic_tables(method, ids=None, seed: int = 0, present=None) -> dict[str, FeatureTable]:
    """Random unit vectors per example id for every feature the method reads."""
    rng = np.random.default_rng(seed)
    ids = np.arange(64) if ids is None else ids
    tables = {}
    for name in method.feature_names():
        vectors = rng.normal(size=(len(ids), TEXT_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        tables[name] = FeatureTable(ids, vectors, np.ones(len(ids), bool) if present is None else present)
    return tables


def synthetic_item_tables(method, num_items: int, seed: int = 0) -> dict[str, ItemFeatureTable]:
    """Random unit vectors per item for every per-item feature the method reads."""
    rng = np.random.default_rng(seed)
    tables = {}
    for name in method.item_feature_names():
        vectors = rng.normal(size=(num_items, TEXT_DIM)).astype(np.float32)
        tables[name] = ItemFeatureTable(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return tables


def build(model_id: str, dataset, seed: int = 0, config: dict | None = None) -> SessionModel:
    """The model named by ``model_id``, with synthetic features for a method (no LLM, no files)."""
    torch.manual_seed(seed)
    method, _, backbone = model_id.rstrip(")").rpartition("(")
    model = build_backbone(backbone, dataset.num_items, dict(config or {}))
    model.prepare(dataset)
    if not method:
        return model
    wrapped = build_method(method, model, dict(METHOD_TEST_SETTINGS.get(method, {})))
    wrapped.attach(synthetic_tables(wrapped))
    wrapped.attach_items(synthetic_item_tables(wrapped, dataset.num_items))
    return wrapped


def batch() -> SessionBatch:
    return SessionBatch.from_lists(SESSIONS, targets=TARGETS, example_ids=EXAMPLE_IDS)
