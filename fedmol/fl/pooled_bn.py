"""Pooled BatchNorm statistics, queried from the partners before the global model is evaluated.

Nested width slicing leaves BatchNorm's running statistics without a good owner: the averaged
weights of width ``r`` come from every partner that holds them, but the statistics a partner
tracks in training describe only its own data at the width it trained. HeteroFL's answer
(Diao et al., ICLR 2021, § "Static batch normalization", sBN) is a query: before evaluating width
``r`` the server sends the width-``r`` slice to every partner, each partner makes one no-grad pass
over its training molecules and returns, per BN layer, the *exact* count, sum and sum of squares
of that layer's inputs, and the server pools them into the mean and (unbiased, as torch's BN)
variance over the union of all partners' training data. This module is that query, shared by
every algorithm that uses it:

* :class:`PooledBNStats` -- a mixin for :class:`fedmol.fl.algorithm.Algorithm`: ``query`` /
  ``absorb_query`` / ``eval_model`` on the server (statistics cached per width until the weights
  change, kept in selection checkpoints), ``client_query`` on the partner. An algorithm switches it
  on by returning True from :meth:`PooledBNStats.pooled_bn` and calls
  :meth:`PooledBNStats.weights_changed` whenever it replaces the global weights.
* HeteroFL (``norm="sbn"``) always pools: its BN never tracks statistics in training.
* FedGen (``norm="fjord_bn"``, per-width statistics) pools when its hyperparameter
  ``pooled_bn=True``: the pooled statistics of width ``r`` replace the ones tracked by the partners
  that trained at ``r`` (only the narrow devices, for the narrow widths).

The pass (:func:`bn_moment_sums`) runs the model in eval mode -- no dropout, no HeteroFL scaler:
the statistics describe the inputs BN sees at evaluation -- with each BN normalizing with its
batch's statistics, as in the official sBN pass (:func:`fedmol.models.slicing.recompute_bn_stats`).
It reads the training data in unshuffled batches of ``sbn_batch_size`` molecules (default 256).
The first BN layer's statistics do not depend on the batch size; deeper layers see inputs
normalized with their batch's statistics, which come closer to the pooled ones used at evaluation
the larger the batch. One-atom batches cannot be normalized with batch statistics; the pass skips
batches with fewer than two atoms (only possible for a last batch holding one one-atom molecule).

What leaves a partner: per BN layer ``3 x channels`` float64 numbers (activation count, sums and
sums of squares over its training molecules) per evaluated width and weight version. The driver
counts this traffic in the run's ``bytes_up``/``bytes_down`` and writes it to ``sent.jsonl``
(kind ``query``), like the training rounds'.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import sent_hparams
from fedmol.fl.message import Message
from fedmol.models import build, slicing
from fedmol.models.slicing import SliceBatchNorm
from fedmol.training import make_loader

__all__ = ["PooledBNStats", "sbn_buffer_keys", "bn_moment_sums", "pool_bn_moments"]


def sbn_buffer_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the running statistics of every :class:`SliceBatchNorm` in ``model``."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, SliceBatchNorm):
            for buf, _ in m.named_buffers(recurse=False):
                keys.add(f"{name}.{buf}" if name else buf)
    return keys


def _bn_modules(model: nn.Module) -> list[tuple[str, SliceBatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SliceBatchNorm)]


def _batches_norms_can_run(loader: Iterable, model: nn.Module) -> Iterator:
    """The batches that give every norm layer at least two rows (a batch norm normalizing with its
    batch's statistics needs two): atoms for a GNN, molecules for the fingerprint MLP."""
    for batch in loader:
        if model.norm_rows(batch) >= 2:
            yield batch


def bn_moment_sums(model: nn.Module, dataset, width: float, batch_size: int = 32) -> dict[str, Tensor]:
    """Exact per-channel moments of every BN layer's input over ``dataset`` at ``width``.

    One no-grad pass (:func:`slicing.recompute_bn_stats`: eval mode, each BN normalizing with its
    batch's statistics) with forward pre-hooks that add up, per BN layer ``name``, the number of
    rows (``name.count``, shape ``[1]``), the per-channel sum (``name.sum``) and sum of squares
    (``name.sumsq``) of its input, in float64. Sums from disjoint data sets add up to the sums
    over their union (given the same batches), which is what makes the server's pooling exact.
    """
    sums: dict[str, Tensor] = {}
    handles = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().to(torch.float64)
            c = x.shape[1]
            if f"{name}.sum" not in sums:
                sums[f"{name}.count"] = torch.zeros(1, dtype=torch.float64)
                sums[f"{name}.sum"] = torch.zeros(c, dtype=torch.float64)
                sums[f"{name}.sumsq"] = torch.zeros(c, dtype=torch.float64)
            sums[f"{name}.count"] += x.shape[0]
            sums[f"{name}.sum"] += x.sum(0)
            sums[f"{name}.sumsq"] += x.square().sum(0)
        return fn

    bns = _bn_modules(model)
    for name, m in bns:
        handles.append(m.register_forward_pre_hook(hook(name)))
    try:
        loader = make_loader(dataset, batch_size, shuffle=False)
        slicing.recompute_bn_stats(model, _batches_norms_can_run(loader, model), width)
    finally:
        for h in handles:
            h.remove()
    for name, m in bns:  # a partner without usable batches reports zero counts
        if f"{name}.sum" not in sums:
            c = slicing.sliced_dim(m.num_features, width)
            sums[f"{name}.count"] = torch.zeros(1, dtype=torch.float64)
            sums[f"{name}.sum"] = torch.zeros(c, dtype=torch.float64)
            sums[f"{name}.sumsq"] = torch.zeros(c, dtype=torch.float64)
    return sums


def pool_bn_moments(replies: Iterable[dict[str, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """``{bn layer: (mean, var)}`` from the partners' :func:`bn_moment_sums` (count-weighted).

    ``mean = sum / count``; ``var = (sumsq - count * mean^2) / (count - 1)`` (unbiased, like
    torch's BN running variance), clamped at 0. Layers without any row keep identity statistics.
    """
    total: dict[str, Tensor] = {}
    for r in replies:
        for k, v in r.items():
            total[k] = total[k] + v if k in total else v.to(torch.float64).clone()
    out = {}
    for key in total:
        if not key.endswith(".count"):
            continue
        name = key[: -len(".count")]
        n, s, ss = total[key], total[f"{name}.sum"], total[f"{name}.sumsq"]
        if float(n) <= 0:
            out[name] = (torch.zeros_like(s), torch.ones_like(s))
            continue
        mean = s / n
        var = ((ss - n * mean.square()) / (n - 1).clamp_min(1.0)).clamp_min(0.0)
        out[name] = (mean, var)
    return out


def with_stats(model: nn.Module, stats: dict[float, dict[str, tuple[Tensor, Tensor]]]) -> nn.Module:
    """A copy of ``model`` whose BN layers use the pooled ``stats`` (``{width: {layer: (mean, var)}}``)."""
    model = copy.deepcopy(model)
    bns = dict(_bn_modules(model))
    for width in sorted(stats):  # ascending: with one shared buffer ("bn"/"sbn") the widest write wins
        for name, (mean, var) in stats[width].items():
            bns[name].set_stats(width, mean, var)
    return model


class PooledBNStats:
    """Mixin for :class:`~fedmol.fl.algorithm.Algorithm` (put it first in the bases): the pooled
    BN query of this module's docstring, active when :meth:`pooled_bn` is True."""

    def pooled_bn(self) -> bool:
        """Whether the served model's BN statistics come from the query (else: the algorithm's own)."""
        return True

    # ---------------------------------------------------------------- server side
    def init(self, partners) -> None:
        super().init(partners)
        self._bn_keys = sbn_buffer_keys(self.model)
        self._bn_stats: dict[float, dict[str, tuple[Tensor, Tensor]]] = {}  # width -> pooled stats of these weights

    def weights_changed(self) -> None:
        """Call after replacing the global weights: the pooled statistics no longer describe them."""
        self._bn_stats = {}

    def _strip_bn(self, msg: Message) -> Message:
        msg.arrays = {k: v for k, v in msg.arrays.items() if k not in self._bn_keys}
        return msg

    def query(self, width: float) -> Message | None:
        if not self.pooled_bn():
            return super().query(width)
        width = float(width)
        if width in self._bn_stats:
            return None  # the statistics of these weights at this width are known
        config = dict(width=width, model=self.model_config, hp=sent_hparams(self.hp), purpose="sbn")
        return self._strip_bn(Message(arrays=slicing.sub_state_dict(self.model, width), config=config))

    def absorb_query(self, width: float, replies) -> None:
        if not self.pooled_bn():
            return super().absorb_query(width, replies)
        pooled = pool_bn_moments(m.arrays for _, m in replies)
        stats = {name: (mean.to(torch.float32), var.to(torch.float32)) for name, (mean, var) in pooled.items()}
        self._bn_stats[float(width)] = stats

    def eval_model(self, width: float) -> nn.Module:
        if not self.pooled_bn():
            return super().eval_model(width)
        stats = self._bn_stats.get(float(width))
        if stats is None:
            raise FedmolError(f"{self.name}: no pooled BN statistics for width {width} of the current weights; "
                              "run query(width) at the partners and absorb_query first")
        return with_stats(self.model, {float(width): stats}).eval()

    def checkpoint(self) -> dict:
        """The weights and the statistics already pooled for them (no query repeated)."""
        ck = super().checkpoint()
        ck["pooled_bn"] = dict(self._bn_stats)
        return ck

    def restore(self, checkpoint: dict) -> None:
        super().restore(checkpoint)
        self._bn_stats = dict(checkpoint["pooled_bn"])  # the statistics of the restored weights

    def state(self) -> dict[str, Tensor]:
        """Global weights, with the pooled statistics of the current weights where they are known
        (per width for "fjord_bn"; the full width's for one shared buffer, else identity for "sbn")."""
        if not self.pooled_bn():
            return super().state()
        stats = self._bn_stats
        if self.norm != "fjord_bn":
            stats = {1.0: stats[1.0]} if 1.0 in stats else {}
        model = with_stats(self.model, stats) if stats else self.model
        return {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    @classmethod
    def state_widths(cls, widths: list[float], own: float) -> list[float]:
        """Per-width statistics ("fjord_bn"): :meth:`state` holds each served width's pooled ones in
        that width's own buffers, so every width up to ``own``; one shared buffer: ``own`` only."""
        if cls.norm == "fjord_bn":
            return [w for w in widths if w <= own + 1e-9]
        return super().state_widths(widths, own)

    # ---------------------------------------------------------------- client side
    @classmethod
    def client_model(cls, msg: Message) -> nn.Module:
        """The standalone width model; BN statistics absent from the message stay identity."""
        model = build(**{**msg.config["model"], "width": msg.config["width"]})
        missing, unexpected = model.load_state_dict(msg.arrays, strict=False)
        bad = set(missing) - sbn_buffer_keys(model)
        if bad or unexpected:
            raise KeyError(f"{cls.name} message does not match the model: missing {sorted(bad)}, "
                           f"unexpected {sorted(unexpected)}")
        return model

    @classmethod
    def client_query(cls, msg: Message, data) -> Message:
        """Per-BN-layer count / sum / sum of squares of its inputs over the partner's training data."""
        model = cls.client_model(msg)
        hp = msg.config["hp"]
        sums = bn_moment_sums(model, data.train, float(msg.config["width"]),
                              int(hp.get("sbn_batch_size") or hp.get("batch_size", 32)))
        return Message(arrays=sums, metrics={"n_train": float(len(data.train))})
