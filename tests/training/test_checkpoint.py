import random

import numpy as np
import pytest
import torch
from torch import nn

from intentrec.errors import DataError
from intentrec.training.checkpoint import (
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # shared storage, which safetensors cannot save as is


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
    save_weights(tmp_path / "w.safetensors", nn.Linear(2, 2))
    with pytest.raises(DataError, match="does not fit"):
        load_weights(tmp_path / "w.safetensors", Tied())
    model = Tied()
    with pytest.raises(DataError, match="not an intentrec resume state"):
        opt = torch.optim.Adam(model.parameters())
        save_weights(tmp_path / "t.safetensors", model)
        load_training_state(tmp_path / "t.safetensors", model, opt, None)
