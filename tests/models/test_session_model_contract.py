"""The SessionModel contract, kept by every registered backbone and every method over every backbone.

Training, evaluation and serving rely on exactly these promises. A new backbone or method runs them as
soon as it registers; a test a model cannot pass by design is skipped with the reason its
``capabilities()`` gives.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intentrec.errors import IntentrecError
from intentrec.models.base import CAPABILITIES, Needs
from intentrec.training.config import TrainerConfig
from tests.helpers.models import MODEL_IDS, batch, build
from tests.helpers.tiny_dataset import write_tiny_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("contract"))


def _skip_unless(model, capability: str) -> None:
    why = model.capabilities()[capability]
    if why is not None:
        pytest.skip(f"{capability}: {why}")


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_needs_and_capabilities_are_declared(model_id, dataset):
    model = build(model_id, dataset)
    needs = model.needs()
    assert isinstance(needs, Needs)
    capabilities = model.capabilities()
    assert set(capabilities) == set(CAPABILITIES)
    for name, why in capabilities.items():
        assert why is None or (isinstance(why, str) and why), f"{name}: an unsupported capability says why"
    assert (capabilities["serve"] is None) == needs.serves_new_sessions
    assert (capabilities["train"] is None) == needs.trains


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_items_are_embedded_in_one_place_padding_is_zero(model_id, dataset):
    model = build(model_id, dataset)
    table = model.item_table()
    assert table.shape == (dataset.num_items, model.dim)
    indices = torch.tensor([[0, 1, 5], [dataset.num_items, 0, 2]])
    vectors = model.embed_items(indices)
    assert vectors.shape == (2, 3, model.dim)
    assert torch.all(vectors[0, 0] == 0) and torch.all(vectors[1, 1] == 0)
    assert torch.any(vectors[0, 1] != 0)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_an_item_transform_reaches_embedding_and_scoring(model_id, dataset):
    """A method can replace or fuse the item table of every backbone without editing it."""
    model = build(model_id, dataset)
    backbone = getattr(model, "backbone", model)
    b = batch()
    model.eval()
    with torch.no_grad():
        before = model(b)
    transform = nn.Linear(backbone.dim, backbone.dim)  # maps the backbone's ID table (a method may be wider)
    backbone.set_item_transform(transform)
    ids = torch.tensor([1, 4])
    with torch.no_grad():
        expected = transform(backbone.id_item_table())[ids - 1]
        torch.testing.assert_close(backbone.embed_items(ids), expected)
        assert not torch.allclose(model(b), before)
    model.train()
    model.zero_grad(set_to_none=True)
    model.loss(b).backward()
    assert transform.weight.grad is not None and torch.any(transform.weight.grad != 0)
    assert any(n.startswith("item_transform.") or ".item_transform." in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_scores_loss_and_rerank(model_id, dataset):
    model = build(model_id, dataset)
    b = batch()
    model.eval()
    with torch.no_grad():
        scores = model(b)
    assert scores.shape == (b.size, dataset.num_items) and torch.isfinite(scores).all()
    _skip_unless(model, "rerank")
    candidates = torch.topk(scores, 5, dim=1).indices.flip(1)  # another model's top-5, worst first
    with torch.no_grad():
        reranked = model.rerank(b, candidates)
    assert reranked.shape == (b.size, 5)
    torch.testing.assert_close(reranked, scores.gather(1, candidates))
    model.train()
    loss = model.loss(b)
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_training_plan_covers_every_trainable_parameter(model_id, dataset):
    model = build(model_id, dataset)
    _skip_unless(model, "train")
    plan = model.training_plan(TrainerConfig(lr_decay_step=3), torch.device("cpu"))
    in_groups = {id(p) for group in plan.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable
    assert plan.accumulate >= 1 and plan.scheduler is not None


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_checkpoint_state_round_trip(model_id, dataset):
    model = build(model_id, dataset, seed=1)
    state = model.checkpoint_state()
    assert not any(k.split(".")[-1].startswith(("_feat_", "_rows_", "_item_")) for k in state)
    other = build(model_id, dataset, seed=2)
    other.load_checkpoint_state(state)
    b = batch()
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(b), model(b), rtol=0, atol=0)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_serving_a_new_session_or_saying_why_not(model_id, dataset):
    model = build(model_id, dataset).eval()
    b = batch()
    why = model.capabilities()["serve"]
    if why is not None:
        with pytest.raises(IntentrecError, match="new session"):
            model.serve_scores(b)
        return
    with torch.no_grad():
        assert model.serve_scores(b).shape == (b.size, dataset.num_items)
