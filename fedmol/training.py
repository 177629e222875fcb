"""The few training and scoring loops that every part of fedmol shares.

Centralized reference training, local-only references and every federated client update are
built from these functions, so "how a model takes an optimizer step" and "how a model is scored"
exist once. Determinism: :func:`seed_everything` seeds Python, NumPy and torch; loaders shuffle
with their own ``torch.Generator`` seeded from the caller's seed, so data order never depends on
global state. Batches go to the device of the model's parameters (a model moved to a GPU trains
there; on CPU nothing moves); scores always come back as CPU arrays.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from fedmol import checkpoint as ckpt
from fedmol.data.batching import SliceLoader, fast_path_ok
from fedmol.evaluate import Evaluator
from fedmol.models import masked_loss


def model_device(model) -> torch.device:
    """Where ``model``'s parameters live (batches are moved there; CPU needs no move)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_device(device: str | None) -> torch.device:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``None`` (CPU), checked: a one-line error for a device
    this machine does not have."""
    from fedmol.errors import FedmolError

    name = device or "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise FedmolError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FedmolError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise FedmolError(f"device {name!r}: fedmol trains on cpu or cuda")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> torch.utils.data.DataLoader:
    """Mini-batches of ``dataset`` (shuffled with a generator seeded from ``seed``). An in-memory
    dataset's batches are cut from its stored tensors (:mod:`fedmol.data.batching`: the same batches
    in the same order as PyG's ``DataLoader``, faster); anything else goes through PyG's loader."""
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    if fast_path_ok(dataset):
        return SliceLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)


def width_key(width: float) -> str:
    """The string a width is keyed by in results files: "1.0", "0.5", "0.25", "0.125", ..."""
    return repr(float(width))


@torch.no_grad()
def predict(model, dataset, width: float | None = None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` as float arrays (n, num_tasks) in dataset order; the model is left in eval mode."""
    model.eval()
    dev = model_device(model)
    ys, ps = [], []
    for batch in make_loader(dataset, batch_size):
        ys.append(batch.y.float())
        if dev.type != "cpu":
            batch = batch.to(dev)
        ps.append(model(batch, width=width).float().cpu())
    if not ys:
        return np.zeros((0, model.num_tasks)), np.zeros((0, model.num_tasks))
    return torch.cat(ys).numpy(), torch.cat(ps).numpy()


def score(model, dataset, evaluator: Evaluator, width: float | None = None) -> dict:
    """The Evaluator's metrics of ``model`` at ``width`` on ``dataset``."""
    y_true, y_pred = predict(model, dataset, width)
    if len(y_true) == 0:
        return {evaluator.eval_metric: float("nan")}
    return evaluator.eval({"y_true": y_true, "y_pred": y_pred})


def snapshot(model) -> dict:
    """A copy of ``model``'s weights and buffers (what ``load_state_dict`` restores)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_epoch(model, loader: Iterable, optimizer: torch.optim.Optimizer,
                width: float | Callable[[], float] | None = None, extra_loss: Callable | None = None,
                max_steps: int | None = None, clip: float | None = None, loss_fn: Callable | None = None) -> dict:
    """One pass (or ``max_steps`` mini-batches) of training: the one local step of fedmol.

    The step's loss is ``loss_fn(model, batch) -> (loss, parts)`` (an algorithm's own loss, e.g.
    FjORD's self-distillation; ``parts``: named floats averaged into the result), or by default the
    masked supervised loss at ``width``: one width for every step, or a sampler called once per step
    (ordered dropout) that returns a width or a tuple of widths, whose losses are summed;
    ``extra_loss(model, batch, pred, width)`` adds an algorithm's term (e.g. a regularizer) at that width.
    Batches of one graph are skipped (BatchNorm). Returns ``{"loss": mean loss, **mean parts,
    "steps": steps, "samples": graphs seen}``.
    """
    model.train()
    dev = model_device(model)
    total, parts_sum, steps, samples = 0.0, {}, 0, 0
    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        if batch.num_graphs < 2:  # BatchNorm cannot train on a single graph
            continue
        if dev.type != "cpu":
            batch = batch.to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if loss_fn is not None:
            loss, parts = loss_fn(model, batch)
        else:
            loss, parts = supervised_loss(model, batch, width() if callable(width) else width, extra_loss), {}
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += float(loss.detach())
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
        steps += 1
        samples += batch.num_graphs
    mean = {k: v / max(steps, 1) for k, v in parts_sum.items()}
    return {"loss": total / max(steps, 1), **mean, "steps": steps, "samples": samples}


def supervised_loss(model, batch, widths, extra_loss: Callable | None = None):
    """The masked loss at each of ``widths`` (a width, None for the model's own, or a tuple), summed,
    each plus ``extra_loss(model, batch, pred, width)`` when given."""
    loss = 0.0
    for w in widths if isinstance(widths, tuple) else (widths,):
        pred = model(batch, width=w)
        loss = loss + masked_loss(pred, batch.y, model.task_type)
        if extra_loss is not None:
            loss = loss + extra_loss(model, batch, pred, w)
    return loss


def _evaluated(epoch: int, epochs: int, round_epochs: int | None, eval_every: int) -> bool:
    """Whether :func:`fit` evaluates after ``epoch`` (see its ``round_epochs``)."""
    if not round_epochs or epoch == epochs - 1:
        return True
    rnd, last_of_round = divmod(epoch + 1, int(round_epochs))
    return last_of_round == 0 and (rnd - 1) % int(eval_every) == 0


@dataclass
class FitProgress:
    """Where :func:`fit` stands: the epochs' history and the best evaluated epoch so far."""

    best: float = float("nan")          # its validation metric
    best_state: dict | None = None      # its weights (cloned)
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)  # {"epoch", "loss", "valid"[, "test"]} per epoch
    elapsed_before: float = 0.0         # seconds spent by earlier, interrupted processes

    @classmethod
    def restored(cls, saved: dict | None) -> "FitProgress":
        """The progress of a checkpoint :func:`fedmol.checkpoint.load` restored (a fresh one when none was)."""
        if not saved:
            return cls()
        return cls(best=saved["best"], best_state=saved["best_state"], best_epoch=saved["best_epoch"],
                   history=saved["history"], elapsed_before=saved["elapsed"])

    def patience_spent(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed since the best one, counted at an evaluated epoch."""
        h = self.history
        return bool(patience is not None and h and h[-1]["valid"] is not None
                    and h[-1]["epoch"] - self.best_epoch >= patience)

    def record(self, model, epoch: int, loss: float, evaluator: Evaluator, evaluated: bool, valid, test) -> float:
        """Add ``epoch`` to the history, when ``evaluated`` scored on ``valid`` and ``test`` (for the record),
        and keep ``model``'s weights when it is the best; returns the validation metric (NaN when not evaluated)."""
        metric = evaluator.eval_metric
        v = score(model, valid, evaluator)[metric] if evaluated and len(valid) else float("nan")
        self.history.append({"epoch": epoch, "loss": loss, "valid": v if evaluated else None})
        if test is not None and evaluated:
            self.history[-1]["test"] = score(model, test, evaluator)[metric] if len(test) else float("nan")
        if evaluated and (self.best_state is None or Evaluator.better(metric, v, self.best)
                          or (np.isnan(v) and np.isnan(self.best))):
            self.best, self.best_epoch = v, epoch
            self.best_state = snapshot(model)
        return v


def fit(model, train, valid, evaluator: Evaluator, *, seed: int, epochs: int, lr: float = 1e-3,
        weight_decay: float = 0.0, batch_size: int = 32, clip: float | None = None, max_steps: int | None = None,
        patience: int | None = None, on_epoch: Callable | None = None, test=None,
        checkpoint: Path | None = None, fingerprint: dict | None = None,
        round_epochs: int | None = None, eval_every: int = 1) -> dict:
    """Train ``model`` with Adam and early stopping on ``valid``; the best epoch's weights are kept.

    ``round_epochs`` (the federated protocol, for references trained like a partner): epochs come
    in rounds of ``round_epochs``, Adam is rebuilt at the start of every round (as a partner
    rebuilds it every round), and only the last epoch of every ``eval_every``-th round (and the
    last epoch) is evaluated and may be kept -- the rounds a federated run evaluates and selects
    among. Default (None): one Adam over all epochs, every epoch evaluated.

    Without a usable validation metric (e.g. one class only) the last epoch is kept. ``on_epoch(epoch,
    stats, valid_metric, best)`` is called after every epoch (progress bars). ``test``: a dataset
    scored after every epoch too, for the record only (the last-epoch protocol of Hu et al. 2020;
    it never influences which epoch is kept). ``checkpoint``: a folder where the whole training
    state is saved after every epoch (:mod:`fedmol.checkpoint`); when it already holds the state of
    this run (same ``fingerprint``), training continues after its last finished epoch, bit-identical
    to an uninterrupted run. Returns ``{"valid": best metric, "best_epoch", "epochs_run",
    "history": [{"epoch", "loss", "valid"[, "test"]}, ...], "resumed_from": epochs restored (0:
    fresh), "elapsed_before": seconds spent by earlier, interrupted processes}``; the model is left
    in eval mode.
    """
    seed_everything(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = make_loader(train, int(batch_size), shuffle=True, seed=seed)
    progress = FitProgress()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = dict(fingerprint or {}, seed=seed, epochs=int(epochs), lr=lr, weight_decay=weight_decay,
                           batch_size=int(batch_size), clip=clip, max_steps=max_steps, patience=patience,
                           **({"round_epochs": int(round_epochs), "eval_every": int(eval_every)} if round_epochs else {}))
        progress = FitProgress.restored(ckpt.load(checkpoint, fingerprint, model, opt, loader.generator))
    resumed_from, t0 = len(progress.history), time.perf_counter()
    for epoch in range(len(progress.history), int(epochs)):
        if progress.patience_spent(patience):
            break  # early stopping after an evaluated epoch (also for a resumed run that had met the rule)
        if round_epochs and epoch and epoch % int(round_epochs) == 0:
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        stats = train_epoch(model, loader, opt, max_steps=max_steps, clip=clip)
        evaluated = _evaluated(epoch, int(epochs), round_epochs, eval_every)
        v = progress.record(model, epoch, stats["loss"], evaluator, evaluated, valid, test)
        if on_epoch is not None:
            on_epoch(epoch, stats, v, progress.best)
        if checkpoint is not None:
            ckpt.save(checkpoint, fingerprint=fingerprint, epoch=epoch, model=model, best_state=progress.best_state,
                      best=progress.best, best_epoch=progress.best_epoch, history=progress.history,
                      elapsed=progress.elapsed_before + time.perf_counter() - t0, optimizer=opt,
                      loader_generator=loader.generator)
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    model.eval()
    return dict(valid=progress.best, best_epoch=progress.best_epoch, epochs_run=len(progress.history),
                history=progress.history, resumed_from=resumed_from, elapsed_before=progress.elapsed_before)
