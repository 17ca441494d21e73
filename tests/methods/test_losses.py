"""Alignment losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from intentrec.models.methods.losses import alignment, contrastive, directau, infonce, kl_feature, uniformity


def test_directau_on_two_point_sets():
    # x: two orthogonal unit vectors; y: x rotated so each pair is 90° apart.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # align = mean ||x_i - y_i||^2 = mean(2, 2) = 2
    assert alignment(x, y).item() == pytest.approx(2.0)
    # one pair per set, both at squared distance 2: unif = log exp(-2 * 2) = -4
    assert uniformity(x).item() == pytest.approx(-4.0)
    assert uniformity(y).item() == pytest.approx(-4.0)
    assert directau(x, y).item() == pytest.approx(2.0 + (-4.0 - 4.0) / 2)


def test_directau_normalises_and_averages_pairs():
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])  # unit: e1, e2, -e1
    # squared distances between unit vectors: (e1,e2)=2, (e1,-e1)=4, (e2,-e1)=2
    expected = math.log((math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3)
    assert uniformity(x).item() == pytest.approx(expected, rel=1e-6)
    assert alignment(x, x * 7).item() == pytest.approx(0.0, abs=1e-7)


def test_uniformity_of_one_point_is_zero_and_differentiable():
    z = torch.randn(1, 4, requires_grad=True)
    value = uniformity(z)
    value.backward()
    assert value.item() == 0.0 and z.grad is not None


def test_kl_on_tiny_distributions():
    x = torch.log(torch.tensor([[0.5, 0.5]]))  # softmax → (0.5, 0.5)
    y = torch.log(torch.tensor([[0.25, 0.75]]))  # softmax → (0.25, 0.75)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_feature(x, y).item() == pytest.approx(expected, rel=1e-6)
    assert kl_feature(y, y).item() == pytest.approx(0.0, abs=1e-7)


def test_infonce_prefers_matching_pairs():
    x = torch.eye(3)
    good = infonce(x, x, temperature=1.0).item()
    # matching pairs: logits diag 1, off-diag 0 → CE = -log(e / (e + 2))
    assert good == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)
    assert infonce(x, x[[1, 2, 0]], temperature=1.0).item() > good


def test_contrastive_is_zero_for_perfect_orthogonal_pairs():
    x = torch.eye(3)
    assert contrastive(x, x).item() == pytest.approx(0.0, abs=1e-7)
    # identical texts for all: positives fine (1 - 1 = 0), negatives at sim 1 > margin 0.5 → 0.5
    y = torch.ones(3, 3)
    assert contrastive(y, y).item() == pytest.approx(0.5, rel=1e-6)
