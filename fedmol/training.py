"""The few training and scoring loops that every part of fedmol shares.

Centralized reference training, local-only references and every federated client update are
built from these functions, so "how a model takes an optimizer step" and "how a model is scored"
exist once. Determinism: :func:`seed_everything` seeds Python, NumPy and torch; loaders shuffle
with their own ``torch.Generator`` seeded from the caller's seed, so data order never depends on
global state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from fedmol.evaluate import Evaluator
from fedmol.models import masked_loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)


def width_key(width: float) -> str:
    """The string a width is keyed by in results files: "1.0", "0.5", "0.25", "0.125", ..."""
    return repr(float(width))


@torch.no_grad()
def predict(model, dataset, width: float | None = None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` as float arrays (n, num_tasks) in dataset order; the model is left in eval mode."""
    model.eval()
    ys, ps = [], []
    for batch in make_loader(dataset, batch_size):
        ps.append(model(batch, width=width).float())
        ys.append(batch.y.float())
    if not ys:
        return np.zeros((0, model.num_tasks)), np.zeros((0, model.num_tasks))
    return torch.cat(ys).numpy(), torch.cat(ps).numpy()


def score(model, dataset, evaluator: Evaluator, width: float | None = None) -> dict:
    """The Evaluator's metrics of ``model`` at ``width`` on ``dataset``."""
    y_true, y_pred = predict(model, dataset, width)
    if len(y_true) == 0:
        return {evaluator.eval_metric: float("nan")}
    return evaluator.eval({"y_true": y_true, "y_pred": y_pred})


def train_epoch(model, loader: Iterable, optimizer: torch.optim.Optimizer, width: float | None = None,
                extra_loss: Callable | None = None, max_steps: int | None = None, clip: float | None = None) -> dict:
    """One pass (or ``max_steps`` mini-batches) of masked-loss training at ``width``.

    ``extra_loss(model, batch, pred)`` adds an algorithm's term (e.g. a regularizer) to the loss.
    Returns ``{"loss": mean loss, "steps": steps, "samples": graphs seen}``.
    """
    model.train()
    total, steps, samples = 0.0, 0, 0
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        if batch.num_graphs < 2:  # BatchNorm cannot train on a single graph
            continue
        optimizer.zero_grad(set_to_none=True)
        pred = model(batch, width=width)
        loss = masked_loss(pred, batch.y, model.task_type)
        if extra_loss is not None:
            loss = loss + extra_loss(model, batch, pred)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += float(loss.detach())
        steps += 1
        samples += batch.num_graphs
    return {"loss": total / max(steps, 1), "steps": steps, "samples": samples}
