"""Losses over multi-task labels with missing entries (NaN = not measured)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_loss"]


def masked_loss(pred: Tensor, y: Tensor, task_type: str) -> Tensor:
    """Mean loss over the labelled (non-NaN) entries of ``y``.

    ``pred``/``y``: ``[B, T]`` (a ``[B]`` ``y`` is accepted for ``T = 1``). ``task_type``:
    "classification" -> BCE-with-logits (``pred`` are logits, labels 0/1); "regression" -> MSE.
    Unlabelled entries contribute nothing and get exactly zero gradient; with no labelled entry
    the result is ``0`` still attached to the graph (``backward`` works, all grads zero).
    """
    y = y.to(pred.dtype).reshape(pred.shape)
    mask = ~torch.isnan(y)
    target = torch.where(mask, y, torch.zeros_like(y))
    if task_type == "classification":
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    elif task_type == "regression":
        loss = (pred - target).square()
    else:
        raise ValueError(f"unknown task_type {task_type!r}; known: classification, regression")
    loss = torch.where(mask, loss, torch.zeros_like(loss))
    return loss.sum() / mask.sum().clamp_min(1)
