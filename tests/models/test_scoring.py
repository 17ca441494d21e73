"""The fused full-softmax loss against ``F.cross_entropy`` of explicit scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from intentrec.models.scoring import linear_cross_entropy


def _inputs(batch=6, dim=4, items=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    session = torch.randn(batch, dim, dtype=torch.double, generator=generator, requires_grad=True)
    table = torch.randn(items, dim, dtype=torch.double, generator=generator, requires_grad=True)
    # Repeated targets and the first and last column, where an off-by-one would show.
    targets = torch.tensor([0, 8, 3, 3, 8, 5])[:batch]
    return session, table, targets


def test_value_and_gradients_equal_cross_entropy_of_linear_scores():
    session, table, targets = _inputs()
    fused = linear_cross_entropy(session, table, targets)
    fused_grads = torch.autograd.grad(3.0 * fused, (session, table))
    plain = F.cross_entropy(session @ table.t(), targets)
    plain_grads = torch.autograd.grad(3.0 * plain, (session, table))
    torch.testing.assert_close(fused, plain)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b)


def test_value_against_hand_computed_two_item_case():
    # scores [[0, ln 3]], target 1: p = 3/4, loss = -ln(3/4)
    session = torch.tensor([[1.0]])
    table = torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]])
    loss = linear_cross_entropy(session, table, torch.tensor([1]))
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(0.75)).item(), rel=1e-6)


def test_large_scores_stay_finite():
    session, table, targets = _inputs()
    loss = linear_cross_entropy(session * 1e3, table, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(session.grad).all() and torch.isfinite(table.grad).all()


def test_only_requested_gradients_are_computed():
    session, table, targets = _inputs()
    frozen = table.detach()
    (grad,) = torch.autograd.grad(linear_cross_entropy(session, frozen, targets), (session,))
    expected = torch.autograd.grad(F.cross_entropy(session @ frozen.t(), targets), (session,))[0]
    torch.testing.assert_close(grad, expected)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="at least one example"):
        linear_cross_entropy(torch.zeros(0, 2), torch.zeros(3, 2), torch.zeros(0, dtype=torch.long))


def test_a_second_backward_pass_is_refused_clearly():
    session, table, targets = _inputs()
    loss = linear_cross_entropy(session, table, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()
