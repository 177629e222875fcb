"""masked_loss: NaN labels are ignored in value and gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmol.models import masked_loss

NAN = math.nan


def _data():
    pred = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7]], requires_grad=True)
    y = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, NAN]])
    return pred, y


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_value_equals_loss_on_labelled_entries(task_type):
    pred, y = _data()
    mask = ~torch.isnan(y)
    loss = masked_loss(pred, y, task_type)
    if task_type == "classification":
        ref = F.binary_cross_entropy_with_logits(pred[mask], y[mask])
    else:
        ref = F.mse_loss(pred[mask], y[mask])
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[~mask] == 0).all()
    assert (pred.grad[mask] != 0).all()


def test_all_nan_gives_zero_with_grad():
    pred = torch.randn(3, 2, requires_grad=True)
    loss = masked_loss(pred, torch.full((3, 2), NAN), "classification")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(3, 2))


def test_extreme_logits_at_nan_positions_do_not_leak():
    pred = torch.tensor([[1e30, 0.5]], requires_grad=True)
    loss = masked_loss(pred, torch.tensor([[NAN, 1.0]]), "regression")
    loss.backward()
    assert torch.isfinite(loss) and pred.grad[0, 0] == 0


def test_single_task_flat_labels_and_errors():
    pred = torch.zeros(4, 1)
    y = torch.tensor([1.0, 0.0, NAN, 1.0])
    torch.testing.assert_close(masked_loss(pred, y, "classification"), torch.tensor(math.log(2.0)))
    with pytest.raises(ValueError):
        masked_loss(pred, y, "ranking")
