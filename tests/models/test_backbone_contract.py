"""The contract every registered backbone must keep (see ``intentrec.models.base``).

Parametrised over the registry, so a new backbone runs these checks as soon as it registers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intentrec.data.batch import SessionBatch
from intentrec.errors import ConfigError
from intentrec.models.registry import BACKBONES, build_backbone, load_all
from tests.helpers.tiny_dataset import write_tiny_dataset

load_all()
BACKBONE_NAMES = BACKBONES.names()

# Parameters that genuinely receive no gradient from the CE loss, per backbone, with the reason.
# Keep this empty unless a parameter is only used by an optional code path.
NO_GRADIENT_ALLOWED: dict[str, dict[str, str]] = {
    # A graph-attention softmax over a single in-edge is 1 whatever its logits; no node of the contract
    # batch has two distinct in-neighbours along these relations (tests/models/test_zoo_multi_intent.py
    # shows them learning on a session that has).
    "msgifsr": {
        f"layers.0.{side}_convs.{relation}.{vector}": "every target has one in-edge in the contract batch"
        for side in ("forward", "backward")
        for relation in ("intra_1", "intra_2", "intra_3", "inter")
        for vector in ("attn_l", "attn_r")
    },
    # normalise(γ_t h_t) = normalise(h_t): γ only selects, so the importance layer's gradient is zero up
    # to rounding (the bias shifts every logit alike and is exactly zero on some CPUs); see miasrec.py.
    "miasrec": {name: "γ only selects; its gradient is rounding" for name in ("importance.weight", "importance.bias")},
}

# Distinct sessions of lengths 1..8 (including three of length 1 with different items), so that a
# model can memorise an arbitrary target for each one.
SESSIONS = [
    [3],
    [7],
    [1, 2],
    [5, 9, 4],
    [12, 3, 8, 30],
    [6, 6, 2],
    [10, 11, 12, 13, 14],
    [21, 4, 17, 2, 9, 25],
    [28, 1, 5, 19, 22, 7, 3],
    [15, 16, 2, 23, 29, 8, 11, 27],
    [20],
    [2, 1],
]
TARGETS = [4, 8, 3, 11, 1, 14, 15, 26, 6, 30, 19, 24]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


def make_backbone(name: str, dataset, seed: int = 0):
    torch.manual_seed(seed)
    model = build_backbone(name, dataset.num_items, {})
    model.prepare(dataset)
    return model


def contract_batch() -> SessionBatch:
    return SessionBatch.from_lists(SESSIONS, targets=TARGETS)


def skip_unless_trainable(model) -> None:
    """Training tests skip a backbone with nothing to train (a similarity baseline), saying why."""
    why = model.capabilities()["train"]
    if why is not None:
        pytest.skip(f"{model.registry_name}: {why}")


def widen(batch: SessionBatch, extra: int) -> SessionBatch:
    return SessionBatch(
        items=F.pad(batch.items, (0, extra)),
        lengths=batch.lengths,
        example_ids=batch.example_ids,
        targets=batch.targets,
    )


def eval_outputs(model, batch: SessionBatch) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model.encode(batch)
        return {"session": out.session, "scores": model.score(out), **out.vectors}


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_shapes_and_finite_outputs(name, tiny_dataset):
    model = make_backbone(name, tiny_dataset)
    batch = contract_batch()
    assert batch.lengths.min().item() == 1
    n, d, b = tiny_dataset.num_items, model.dim, batch.size
    assert model.vector_names, "a backbone must name at least one vector"
    for training in (True, False):
        model.train(training)
        out = model.encode(batch)
        assert out.session.shape == (b, d)
        for vector in model.vector_names:
            assert vector in out.vectors, f"{name} documents '{vector}' but does not return it"
            assert out.vectors[vector].shape == (b, d), vector
            assert torch.isfinite(out.vectors[vector]).all(), vector
        scores = model.score(out)
        assert scores.shape == (b, n)
        assert torch.isfinite(out.session).all() and torch.isfinite(scores).all()
    assert model.item_table().shape == (n, d)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_gradients_reach_every_parameter(name, tiny_dataset):
    model = make_backbone(name, tiny_dataset)
    skip_unless_trainable(model)
    model.train()
    loss = model.loss(contract_batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    allowed = NO_GRADIENT_ALLOWED.get(name, {})
    missing = [
        param_name
        for param_name, param in model.named_parameters()
        if param.requires_grad and param_name not in allowed and (param.grad is None or not torch.any(param.grad != 0))
    ]
    assert not missing, f"{name}: no gradient reaches {missing}"


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_loss_is_cross_entropy_of_the_scores(name, tiny_dataset):
    """``loss`` may fuse scoring and softmax, but value and gradients are those of CE(scores)."""
    model = make_backbone(name, tiny_dataset)
    skip_unless_trainable(model)
    model.eval()  # no dropout, so both passes see the same network
    batch = contract_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = model.loss(batch)
    fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    plain = F.cross_entropy(model(batch), batch.targets)
    plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    for (param_name, _), a, b in zip(model.named_parameters(), fused_grads, plain_grads):
        assert (a is None) == (b is None), param_name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name}: {param_name}")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_padding_does_not_change_outputs(name, tiny_dataset):
    model = make_backbone(name, tiny_dataset)
    batch = contract_batch()
    narrow = eval_outputs(model, batch)
    wide = eval_outputs(model, widen(batch, 5))
    for key, value in narrow.items():
        torch.testing.assert_close(wide[key], value, atol=1e-5, rtol=1e-5, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_sessions_are_encoded_independently_of_their_batch(name, tiny_dataset):
    model = make_backbone(name, tiny_dataset)
    together = eval_outputs(model, contract_batch())["session"]
    for row in (0, 4, 9):  # a length-1, a length-4 and the longest session, each alone
        alone = eval_outputs(model, SessionBatch.from_lists([SESSIONS[row]]))["session"]
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_overfits_one_tiny_batch(name, tiny_dataset):
    model = make_backbone(name, tiny_dataset)
    skip_unless_trainable(model)
    batch = contract_batch()
    model.eval()
    with torch.no_grad():
        initial = model.loss(batch).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(1, 201):
        model.train()
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                final = model.loss(batch).item()
                top1 = model(batch).argmax(dim=1)
            if final < 0.2 * initial and top1.tolist() == batch.targets.tolist():
                break
    assert final < 0.2 * initial, f"{name}: loss {initial:.3f} -> {final:.3f}"
    assert top1.tolist() == batch.targets.tolist()


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_same_seed_same_model(name, tiny_dataset):
    batch = contract_batch()
    first = make_backbone(name, tiny_dataset, seed=7)
    skip_unless_trainable(first)  # a model with nothing to learn does not depend on the seed
    second = make_backbone(name, tiny_dataset, seed=7)
    other = make_backbone(name, tiny_dataset, seed=8)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert torch.equal(eval_outputs(first, batch)["scores"], eval_outputs(second, batch)["scores"])
    assert not torch.equal(eval_outputs(first, batch)["scores"], eval_outputs(other, batch)["scores"])


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_config_rejects_unknown_keys(name):
    with pytest.raises(ConfigError, match="no_such_option"):
        build_backbone(name, 10, {"no_such_option": 1})
    with pytest.raises(ConfigError, match="embedding_dim"):
        build_backbone(name, 10, {"embedding_dim": "wide"})


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_default_train_values_are_usable(name):
    defaults = BACKBONES.get(name).default_train
    assert isinstance(defaults, dict)
    for key in ("lr", "batch_size"):
        if key in defaults:
            assert defaults[key] > 0, key
    if "batch_size" in defaults:
        assert isinstance(defaults["batch_size"], int)
