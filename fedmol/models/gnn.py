"""Width-sliceable molecular GNNs: one base class, one small subclass per backbone.

:class:`SliceGNN` owns the plumbing -- atom encoder -> ``layers`` x [conv -> (scaler) -> norm ->
ReLU -> dropout] (+ optional residual) -> graph pooling -> linear task head -- and a backbone
only names its conv (:data:`fedmol.models.convs.CONVS`). As in OGB's mol GNNs (Hu et al. 2020)
the last layer has no ReLU and the graph embedding is the last layer's output ("JK last").

Every forward takes ``width``: an *absolute* width ``r`` (fraction of ``hidden``) no larger than
the model's own ``width``; the model then runs the nested sub-network with ``ceil(r * hidden)``
channels (``ceil(r * 2 * hidden)`` inside GIN's MLP). ``num_tasks`` (the head output) and the
feature vocabularies are never sliced.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from fedmol.errors import FedmolError
from fedmol.models import slicing
from fedmol.models.convs import CONVS, NORMS, GraphContext, make_norm
from fedmol.models.encoders import AtomEncoder
from fedmol.models.slicing import Scaler, SliceLinear, check_width, sliced_dim

__all__ = [
    "ModelConfigError",
    "BackboneOptions",
    "SliceGNN",
    "GIN",
    "GINE",
    "GCN",
    "SAGE",
    "GAT",
    "MODELS",
    "MODEL_NAMES",
    "GNN_NAMES",
    "TASK_TYPES",
    "POOLS",
    "build",
]

TASK_TYPES = ("classification", "regression")
#: graph pooling: PyG's global pools (a graph without atoms pools to 0)
POOLING = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}
POOLS = tuple(POOLING)


class ModelConfigError(FedmolError, ValueError):
    """An impossible model configuration (unknown backbone, norm, pooling, width, ...)."""


@dataclass(frozen=True)
class BackboneOptions:
    """The options every backbone takes, with their defaults, declared once: the keywords of
    :func:`build` and of each backbone's constructor besides ``num_tasks`` and the backbone's own
    options (``residual``, ``heads``, ``fp_*``). Values are kept as given (each backbone converts)."""

    hidden: int = 300
    layers: int = 5
    width: float = 1.0
    task_type: str = "classification"
    dropout: float = 0.5
    pool: str = "mean"
    norm: str = "bn"
    scaler: bool = False

    @classmethod
    def parse(cls, num_tasks: int, options: dict[str, Any]) -> tuple[BackboneOptions, dict[str, Any]]:
        """``options`` (a backbone's keywords) split into these options, checked together with
        ``num_tasks``, and the rest, in the order given (the backbone's own options)."""
        names = {f.name for f in fields(cls)}
        opts = cls(**{k: v for k, v in options.items() if k in names})
        opts.check(num_tasks)
        return opts, {k: v for k, v in options.items() if k not in names}

    def check(self, num_tasks: int) -> None:
        """Raise :class:`ModelConfigError` on the first impossible option."""
        if int(num_tasks) < 1:
            raise ModelConfigError(f"num_tasks must be >= 1, got {num_tasks}")
        if int(self.hidden) < 1 or int(self.layers) < 1:
            raise ModelConfigError(f"hidden and layers must be >= 1, got {self.hidden}, {self.layers}")
        if not (0.0 < float(self.width) <= 1.0):
            raise ModelConfigError(f"width must be in (0, 1], got {self.width}")
        if self.task_type not in TASK_TYPES:
            raise ModelConfigError(f"unknown task_type {self.task_type!r}; known: {', '.join(TASK_TYPES)}")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pool not in POOLS:
            raise ModelConfigError(f"unknown pool {self.pool!r}; known: {', '.join(POOLS)}")
        if self.norm not in NORMS:
            raise ModelConfigError(f"unknown norm {self.norm!r}; known: {', '.join(NORMS)}")


def _dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout (train mode) from a ``rand_like`` mask.

    Same distribution as ``F.dropout`` but ~3x faster on CPU, where ``bernoulli_`` dominated the
    step time of narrow models.
    """
    keep = 1.0 - p
    mask = torch.rand_like(x).lt_(keep).to(x.dtype).mul_(1.0 / keep)
    return x * mask


class SliceGNN(nn.Module):
    """Base molecular GNN; subclasses set :attr:`conv_name`.

    ``model(batch, width=r)`` -> ``[B, num_tasks]`` predictions (logits for classification);
    ``model.embed(batch, width=r)`` -> ``[B, ceil(r * hidden)]``; ``model.head(z, width=r)``
    -> predictions from an embedding. ``width=None`` means the model's own width.
    ``model.config`` rebuilds the model with :func:`build` (``build(**{**model.config, "width": r})``
    gives the standalone model that ``model.sub_state_dict(r)`` loads into).
    """

    conv_name: ClassVar[str] = ""

    def __init__(self, num_tasks: int, *, residual: bool = False, **options: Any) -> None:
        super().__init__()
        opts, conv_options = BackboneOptions.parse(num_tasks, options)
        self.pool, self.residual = opts.pool, bool(residual)
        self._keep_options(num_tasks, opts, pooled=True, residual=self.residual, **conv_options)
        conv_cls = CONVS[self.conv_name]
        allowed = set(inspect.signature(conv_cls.__init__).parameters) - {
            "self", "dim", "width", "norm", "scaler"
        }
        unknown = set(conv_options) - allowed
        if unknown:
            raise ModelConfigError(
                f"unknown option(s) {sorted(unknown)} for model {self.conv_name!r}; "
                f"known extra options: {sorted(allowed | {'residual'})}"
            )
        self.atom_encoder = AtomEncoder(opts.hidden, self.width)
        self.convs = nn.ModuleList(
            conv_cls(opts.hidden, width=self.width, norm=opts.norm, scaler=opts.scaler, **conv_options)
            for _ in range(opts.layers)
        )
        self._add_norms_and_head(num_tasks, opts)

    def _keep_options(self, num_tasks: int, opts: BackboneOptions, *, pooled: bool, **own: Any) -> None:
        """Keep the shared options as attributes and, with the backbone's ``own`` options last, as
        :attr:`config` (``pool`` only if the backbone is ``pooled``: pools node states)."""
        self.num_tasks, self.hidden, self.num_layers = int(num_tasks), int(opts.hidden), int(opts.layers)
        self.width = check_width(opts.width)
        self.task_type, self.dropout, self.norm = opts.task_type, float(opts.dropout), opts.norm
        pool = {"pool": opts.pool} if pooled else {}
        self.config: dict[str, Any] = dict(
            name=self.conv_name, num_tasks=self.num_tasks, hidden=self.hidden, layers=self.num_layers,
            width=self.width, task_type=self.task_type, dropout=self.dropout, **pool, norm=self.norm,
            scaler=bool(opts.scaler), **own,
        )

    def _add_norms_and_head(self, num_tasks: int, opts: BackboneOptions) -> None:
        """What every backbone adds after its trunk: one norm per layer, the scaler and the task head
        (registered in this order: the state dict's keys and the parameters' seeded initialization)."""
        self.norms = nn.ModuleList(make_norm(opts.norm, opts.hidden, self.width) for _ in range(opts.layers))
        self.scaler = Scaler(opts.scaler)
        self.head = SliceLinear(opts.hidden, num_tasks, slice_in=True, slice_out=False, width=self.width)

    # ------------------------------------------------------------------ forward
    def _width(self, width: float | None) -> float:
        if width is None:
            return self.width
        r = check_width(width)
        if r > self.width + 1e-9:
            raise ValueError(f"cannot run width {r} on a model built at width {self.width}")
        return r

    def embed(self, batch: Any, width: float | None = None) -> Tensor:
        """Graph embeddings ``[num_graphs, ceil(r * hidden)]`` of a (batched) ``Data``."""
        r = self._width(width)
        x = batch.x
        n = x.shape[0]
        ctx = GraphContext(batch.edge_index, n)
        edge_attr = getattr(batch, "edge_attr", None)
        h = self.atom_encoder(x, r)
        last = self.num_layers - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = norm(self.scaler(conv(h, edge_attr, r, ctx), r), r)
            if i < last:
                out = F.relu(out)
            if self.training and self.dropout > 0.0:
                out = _dropout(out, self.dropout)
            h = out + h if self.residual else out
        return self._pool(h, batch)

    def _pool(self, h: Tensor, batch: Any) -> Tensor:
        """PyG's global pooling of the node states per graph (a graph without atoms pools to 0)."""
        index = getattr(batch, "batch", None)
        if index is None:  # one graph: its nodes all belong to graph 0 (the same sums as a batch's)
            index = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        return POOLING[self.pool](h, index, size=int(getattr(batch, "num_graphs", 1) or 1))

    def norm_rows(self, batch: Any) -> int:
        """How many rows each norm layer normalizes over in ``batch``: its atoms (the norms act on
        node states; the fingerprint MLP's act on molecules)."""
        return int(batch.num_nodes)

    def forward(self, batch: Any, width: float | None = None) -> Tensor:
        """Predictions ``[num_graphs, num_tasks]`` (logits for classification)."""
        r = self._width(width)
        return self.head(self.embed(batch, r), r)

    # ------------------------------------------------------------------ slicing helpers
    def embed_dim(self, width: float | None = None) -> int:
        """Size of the graph embedding at ``width``: ``ceil(r * hidden)``."""
        return sliced_dim(self.hidden, self._width(width))

    def sub_state_dict(self, r: float) -> dict[str, Tensor]:
        """The width-``r`` slice; loads strictly into ``build(**{**self.config, "width": r})``."""
        self._width(r)
        return slicing.sub_state_dict(self, r)

    def load_sub_state_dict(self, sub: dict[str, Tensor], r: float, strict: bool = True):
        """Write a width-``r`` slice into this model's leading blocks (see slicing)."""
        self._width(r)
        return slicing.load_sub_state_dict(self, sub, r, strict)

    def macs(self, width: float, nodes: float, messages: float) -> float:
        """Analytic MACs of one forward pass of a graph (see :func:`slicing.count`)."""
        c = sliced_dim(self.hidden, width)
        total = self.atom_encoder.macs(width, nodes)
        for conv, norm in zip(self.convs, self.norms):
            total += conv.macs(width, nodes, messages) + norm.macs(width, nodes)
        if self.residual:
            total += self.num_layers * nodes * c
        total += nodes * c  # pooling sum
        return total + self.head.macs(width, 1.0)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, layers={self.num_layers}, width={self.width}, "
            f"task_type={self.task_type!r}, pool={self.pool!r}, norm={self.norm!r}"
        )


class GIN(SliceGNN):
    """GIN backbone (no bond features)."""

    conv_name = "gin"


class GINE(SliceGNN):
    """GIN with per-layer bond embeddings (OGB's mol GIN)."""

    conv_name = "gine"


class GCN(SliceGNN):
    """GCN backbone."""

    conv_name = "gcn"


class SAGE(SliceGNN):
    """GraphSAGE (mean) backbone."""

    conv_name = "sage"


class GAT(SliceGNN):
    """GAT backbone (``heads=4`` head-averaged heads by default; pass ``heads=`` to change)."""

    conv_name = "gat"


#: Backbone name -> model class ("mlp", the fingerprint backbone of :mod:`fedmol.models.mlp`, is added
#: at the end of this module: it subclasses SliceGNN).
MODELS: dict[str, type[SliceGNN]] = {c.conv_name: c for c in (GIN, GINE, GCN, SAGE, GAT)}
GNN_NAMES: tuple[str, ...] = tuple(MODELS)
MODEL_NAMES: tuple[str, ...] = (*GNN_NAMES, "mlp")


def build(name: str, num_tasks: int, **options: Any) -> SliceGNN:
    """Build backbone ``name`` (one of :data:`MODEL_NAMES`).

    ``options``: :class:`BackboneOptions` (``hidden=300, layers=5, width=1.0,
    task_type="classification", dropout=0.5, pool="mean", norm="bn", scaler=False``) and the
    backbone's own. ``width`` < 1 builds a standalone model holding only the width-``width`` block
    (``ceil(width * hidden)`` hidden channels); ``hidden`` is always the full-width size.
    ``norm``: "bn" | "sbn" | "fjord_bn" | "none"; ``scaler``: HeteroFL's scaler.
    Own options: ``residual=False`` (GNNs), ``heads=4`` (gat), ``fp_radius``, ``fp_bits``,
    ``fp_counts`` (mlp: the fingerprint; ``pool`` does not apply).
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return MODELS[key](num_tasks, **options)


from fedmol.models.mlp import FingerprintMLP  # noqa: E402  (imports this module)

MODELS["mlp"] = FingerprintMLP
