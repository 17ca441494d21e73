"""The toy method of docs/extending.md, written by following that page, end to end.

``popularity`` adds a learned multiple of each item's log train popularity to any backbone's scores.
It reads a per-item integer feature table (train click counts), so it exercises the whole method
contract: config, registry, declared needs, item features, ``fuse``, training, checkpoints, serving,
and the shared contract tests (called here on the toy, since it is registered only for this module).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

import tests.models.test_session_model_contract as contract
from intentrec.data.batch import SessionBatch
from intentrec.data.dataset import PreparedDataset
from intentrec.models.base import BackboneOutput
from intentrec.models.features import ItemFeatureTable
from intentrec.models.methods.base import Method, MethodConfig
from intentrec.models.methods.registry import METHODS, register_method
from tests.helpers.tiny_dataset import write_tiny_dataset
from tests.helpers.tinyrun import write_tiny_dataset as write_run_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- the code a contributor writes (docs/extending.md, "Add a method")
class PopularityConfig(MethodConfig):
    initial_weight: float = Field(0.0, description="starting weight of log(1 + train clicks)")


class Popularity(Method):
    Config: ClassVar[type[MethodConfig]] = PopularityConfig
    projects_text = False  # no per-example text to map to the model width

    def __init__(self, backbone, config: PopularityConfig):
        super().__init__(backbone, config)
        self.weight = nn.Parameter(torch.tensor(config.initial_weight))

    def feature_names(self) -> tuple[str, ...]:
        return ()

    def item_feature_names(self) -> tuple[str, ...]:
        return ("train_clicks",)

    def load_item_features(self, dataset: PreparedDataset) -> dict[str, ItemFeatureTable]:
        return {
            "train_clicks": ItemFeatureTable(dataset.train_counts().astype(np.int64), info={"name": "train_clicks"})
        }

    def serving_problem(self) -> str | None:
        return None  # item features do not depend on the session

    def fuse(self, output: BackboneOutput, batch: SessionBatch):
        return output, {}

    def score(self, output: BackboneOutput) -> torch.Tensor:
        prior = torch.log1p(self.item_feature("train_clicks").float())
        return self.backbone.score(output) + self.weight * prior


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_method("popularity")(Popularity)
    yield
    METHODS.unregister("popularity")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("toy"))


def _prepared(dataset, backbone: str = "srgnn"):
    return contract.build(f"popularity({backbone})", dataset)


def test_item_features_are_read_by_item_column_and_stay_integer(dataset):
    model = _prepared(dataset)
    model.prepare(dataset)
    counts = model.item_feature("train_clicks")
    assert counts.dtype == torch.int64
    assert counts.tolist() == dataset.train_counts().tolist()
    assert model.needs().item_features == ("train_clicks",) and model.needs().example_features == ()


@pytest.mark.parametrize(
    "check",
    [
        contract.test_needs_and_capabilities_are_declared,
        contract.test_items_are_embedded_in_one_place_padding_is_zero,
        contract.test_an_item_transform_reaches_embedding_and_scoring,
        contract.test_scores_loss_and_rerank,
        contract.test_training_plan_covers_every_trainable_parameter,
        contract.test_checkpoint_state_round_trip,
        contract.test_serving_a_new_session_or_saying_why_not,
    ],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("backbone", ["srgnn", "gru4rec"])
def test_the_shared_contract_holds_for_the_toy(check, backbone, dataset, monkeypatch):
    original = contract.build

    def build_prepared(model_id, data, seed=0, config=None):
        model = original(model_id, data, seed, config)
        model.prepare(data)  # the toy's item features come from prepare, not synthetic tables
        return model

    monkeypatch.setattr(contract, "build", build_prepared)
    check(f"popularity({backbone})", dataset)


def test_it_trains_evaluates_and_serves_through_the_normal_commands(tmp_path):
    from intentrec.serving.recommend import recommend
    from intentrec.training import evaluate_run, load_run, train

    data = write_run_dataset(tmp_path / "data")
    result = train(
        data,
        "srgnn",
        {"embedding_dim": 16},
        {"epochs": 2},
        out=tmp_path / "run",
        method="popularity",
        method_config={"initial_weight": 0.5},
        progress=False,
    )
    assert result.epochs_run == 2 and 0.0 <= result.test["HR@20"] <= 1.0
    trained = load_run(tmp_path / "run")
    assert trained.model.weight.item() != 0.5  # the weight trained and was restored from the checkpoint
    report = evaluate_run(trained, "test")
    assert report["metrics"]["HR@20"] == pytest.approx(result.test["HR@20"])
    recs = recommend(trained.model, trained.dataset, trained.dataset.item_ids()[:2], 3)
    assert len(recs.items) == 3
