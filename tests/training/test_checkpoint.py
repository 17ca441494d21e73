import random

import numpy as np
import pytest
import torch
from torch import nn

from intentrec.errors import DataError
from intentrec.models.base import SessionModel
from intentrec.models.registry import build_backbone
from intentrec.training.checkpoint import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)


class Tied(SessionModel):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # shared storage, which safetensors cannot save as is


class Frozen(SessionModel):
    """A model over frozen pretrained weights (as a language model would be): only ``head`` trains."""

    def __init__(self, sha256: str = "ab" * 32):
        super().__init__()
        self.pretrained = nn.Linear(4, 4)
        self.pretrained.requires_grad_(False)
        self.head = nn.Linear(4, 2)
        self.sha256 = sha256

    def frozen_pretrained(self):
        return {"pretrained.": {"name": "toy-lm", "sha256": self.sha256}}


def _step(model, opt):
    opt.zero_grad()
    model.a(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()


def test_weights_roundtrip_with_tied_parameters_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    save_weights(tmp_path / "w.safetensors", model, {"epoch": 4})
    other = Tied()
    meta = load_weights(tmp_path / "w.safetensors", other)
    assert meta == {"epoch": 4}
    assert torch.equal(other.a.weight, model.a.weight) and other.b.weight is other.a.weight


def test_training_state_restores_optimizer_scheduler_and_rngs(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _step(model, opt)
    sched.step()
    random.seed(3)
    np.random.seed(4)
    save_training_state(tmp_path / "s.safetensors", model, opt, sched, {"epoch": 1, "history": [{"x": 1}]})
    expected_draws = (torch.rand(3), np.random.rand(2), random.random())
    _step(model, opt)
    expected_weight = model.a.weight.detach().clone()

    torch.manual_seed(99)
    restored = Tied()
    opt2 = torch.optim.Adam(restored.parameters(), lr=0.1, weight_decay=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    book = load_training_state(tmp_path / "s.safetensors", restored, opt2, sched2)
    assert book == {"epoch": 1, "history": [{"x": 1}]}
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    draws = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(draws[0], expected_draws[0])
    assert np.array_equal(draws[1], expected_draws[1]) and draws[2] == expected_draws[2]
    assert sched2.state_dict() == sched.state_dict()
    # the RNG is where it was, so the next step sees the same input; Adam's moments make it equal
    _step(restored, opt2)
    assert torch.equal(restored.a.weight, expected_weight)


def test_corrupt_or_foreign_checkpoints_raise_data_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="bad.safetensors"):
        load_weights(bad, Tied())
    with pytest.raises(DataError, match="not found"):
        load_weights(tmp_path / "missing.safetensors", Tied())
    other = SessionModel()
    other.layer = nn.Linear(2, 2)
    save_weights(tmp_path / "w.safetensors", other)
    with pytest.raises(DataError, match="does not fit"):
        load_weights(tmp_path / "w.safetensors", Tied())
    model = Tied()
    with pytest.raises(DataError, match="not an intentrec resume state"):
        opt = torch.optim.Adam(model.parameters())
        save_weights(tmp_path / "t.safetensors", model)
        load_training_state(tmp_path / "t.safetensors", model, opt, None)


def test_frozen_pretrained_weights_are_referenced_not_copied(tmp_path):
    torch.manual_seed(0)
    model = Frozen()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.head(model.pretrained(torch.randn(3, 4))).sum().backward()
    opt.step()
    save_weights(tmp_path / "w.safetensors", model)
    save_training_state(tmp_path / "s.safetensors", model, opt, None, {"epoch": 1})
    from safetensors import safe_open

    for name in ("w.safetensors", "s.safetensors"):
        with safe_open(str(tmp_path / name), framework="pt") as fh:
            keys = list(fh.keys())
        assert keys and not any("pretrained" in k for k in keys), keys
    # the same frozen weights (same identity) load and resume exactly
    torch.manual_seed(0)
    restored = Frozen()
    restored.pretrained.load_state_dict(model.pretrained.state_dict())
    opt2 = torch.optim.Adam([p for p in restored.parameters() if p.requires_grad], lr=0.1)
    assert load_training_state(tmp_path / "s.safetensors", restored, opt2, None) == {"epoch": 1}
    assert torch.equal(restored.head.weight, model.head.weight)
    # another base model is refused with a clear message, not silently mixed
    with pytest.raises(DataError, match="other frozen pretrained weights"):
        load_weights(tmp_path / "w.safetensors", Frozen(sha256="cd" * 32))


def test_checkpoints_of_earlier_versions_still_load(tmp_path):
    """Graph backbones called their ID table ``item_table`` before it became ``id_table``."""
    torch.manual_seed(0)
    model = build_backbone("srgnn", 20, {"embedding_dim": 8})
    old = {("item_table" if k == "id_table" else k): v for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "old.safetensors"))
    restored = build_backbone("srgnn", 20, {"embedding_dim": 8})
    load_weights(tmp_path / "old.safetensors", restored)
    assert torch.equal(restored.id_table, model.id_table)
