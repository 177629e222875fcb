"""Width-sliceable graph convolutions (GIN, GINE, GCN, GraphSAGE, GAT) and norm layers.

Every conv maps ``[N, ceil(r * dim)]`` node features to ``[N, ceil(r * dim)]`` at width ``r`` and
is built only from :mod:`fedmol.models.slicing` layers plus gather / ``index_add_`` message
passing, so one set of weights runs at every width. Messages flow ``edge_index[0] -> [1]``
(source to target, as in torch_geometric). Per-batch graph quantities (self loops, degrees, GCN
normalisation) are computed once per forward in a :class:`GraphContext` shared by all layers.

Signature of a conv: ``Conv(dim, width=1.0, norm="bn", scaler=False, **options)``, called as
``conv(x, edge_attr, width, ctx)``; ``conv.macs(width, nodes, messages)`` estimates its cost.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from fedmol.models.encoders import BondEncoder
from fedmol.models.slicing import Scaler, SliceBatchNorm, SliceLinear, SliceModule, sliced_dim

__all__ = [
    "NORMS",
    "make_norm",
    "GraphContext",
    "GINConv",
    "GINEConv",
    "GCNConv",
    "SAGEConv",
    "GATConv",
    "CONVS",
]

#: Norm names accepted by ``build`` -> :class:`SliceBatchNorm` mode (``None``: no norm).
NORMS: dict[str, str | None] = {"bn": "bn", "sbn": "sbn", "fjord_bn": "fjord", "none": None}


class NoNorm(nn.Module):
    """Identity that accepts a width (``norm="none"``)."""

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        return x

    def macs(self, width: float, rows: float) -> float:
        return 0.0


def make_norm(norm: str, num_features: int, width: float = 1.0, **kw) -> nn.Module:
    """The norm layer called ``norm`` (a key of :data:`NORMS`) over ``num_features`` channels."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    mode = NORMS[norm]
    return NoNorm() if mode is None else SliceBatchNorm(num_features, mode, width, **kw)


class GraphContext:
    """Lazily computed, per-batch graph quantities shared by all layers of one forward pass."""

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        self.edge_index, self.num_nodes = edge_index, num_nodes
        self.src, self.dst = edge_index[0], edge_index[1]

    @cached_property
    def in_degree(self) -> Tensor:
        """Incoming messages per node, float ``[N, 1]``."""
        deg = torch.zeros(self.num_nodes, device=self.dst.device)
        return deg.index_add_(0, self.dst, torch.ones_like(self.dst, dtype=deg.dtype))[:, None]

    @cached_property
    def looped(self) -> tuple[Tensor, Tensor]:
        """``(src, dst)`` with one self loop per node appended (molecules have none)."""
        loop = torch.arange(self.num_nodes, device=self.src.device)
        return torch.cat([self.src, loop]), torch.cat([self.dst, loop])

    @cached_property
    def gcn_weight(self) -> Tensor:
        """Symmetric normalisation ``1/sqrt(deg_i deg_j)`` per looped edge, ``[E + N, 1]``."""
        src, dst = self.looped
        inv_sqrt = (self.in_degree[:, 0] + 1.0).rsqrt()
        return (inv_sqrt[src] * inv_sqrt[dst])[:, None]

    def sum_neighbors(self, msg: Tensor, n: int | None = None) -> Tensor:
        """Sum edge messages ``[E, ...]`` into their target nodes."""
        out = msg.new_zeros((self.num_nodes if n is None else n, *msg.shape[1:]))
        return out.index_add_(0, self.dst, msg)


class _Conv(SliceModule):
    def __init__(self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False):
        super().__init__()
        self.dim = dim
        self.scaler = Scaler(scaler)


class GINConv(_Conv):
    """GIN (Xu et al. 2019): ``MLP((1 + eps) x_i + sum_j x_j)``.

    MLP = SliceLinear(d, 2d) -> norm -> ReLU -> SliceLinear(2d, d), as OGB's GIN; ``eps`` is a
    learned unsliced scalar.
    """

    def __init__(self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False):
        super().__init__(dim, width, norm, scaler)
        self.eps = nn.Parameter(torch.zeros(1))
        self.lin1 = SliceLinear(dim, 2 * dim, width=width)
        self.norm = make_norm(norm, 2 * dim, width)
        self.lin2 = SliceLinear(2 * dim, dim, width=width)

    def aggregate(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        return ctx.sum_neighbors(x.index_select(0, ctx.src))

    def forward(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        h = (1.0 + self.eps) * x + self.aggregate(x, edge_attr, width, ctx)
        h = self.scaler(self.lin1(h, width), width)
        h = F.relu(self.norm(h, width))
        return self.lin2(h, width)

    def macs(self, width: float, nodes: float, messages: float) -> float:
        c = sliced_dim(self.dim, width)
        return (
            messages * c + nodes * c
            + self.lin1.macs(width, nodes) + self.norm.macs(width, nodes)
            + self.lin2.macs(width, nodes)
        )


class GINEConv(GINConv):
    """GIN with bond features (OGB's mol GIN): ``MLP((1 + eps) x_i + sum_j ReLU(x_j + e_ji))``,
    with a per-layer :class:`BondEncoder` whose output follows the width."""

    def __init__(self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False):
        super().__init__(dim, width, norm, scaler)
        self.bond_encoder = BondEncoder(dim, width)

    def aggregate(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        if edge_attr is None:
            raise ValueError("GINE needs bond features: the batch has no edge_attr")
        e = self.bond_encoder(edge_attr, width)
        return ctx.sum_neighbors(F.relu(x.index_select(0, ctx.src) + e))

    def macs(self, width: float, nodes: float, messages: float) -> float:
        c = sliced_dim(self.dim, width)
        return super().macs(width, nodes, messages) + self.bond_encoder.macs(width, messages) + (
            messages * c
        )


class GCNConv(_Conv):
    """GCN (Kipf & Welling 2017): ``sum_{j in N(i) + i} W x_j / sqrt(d_i d_j) + b`` with self loops."""

    def __init__(self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False):
        super().__init__(dim, width, norm, scaler)
        self.lin = SliceLinear(dim, dim, bias=False, width=width)
        self.bias = nn.Parameter(torch.zeros(sliced_dim(dim, width)))
        self.set_rule("bias", (0, dim))

    def forward(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        h = self.lin(x, width)
        src, dst = ctx.looped
        out = h.new_zeros(h.shape).index_add_(0, dst, h.index_select(0, src) * ctx.gcn_weight)
        c = h.shape[1]
        return out + (self.bias if c == self.bias.shape[0] else self.bias[:c])

    def macs(self, width: float, nodes: float, messages: float) -> float:
        c = sliced_dim(self.dim, width)
        return self.lin.macs(width, nodes) + (messages + nodes) * c + nodes * c


class SAGEConv(_Conv):
    """GraphSAGE (Hamilton et al. 2017), mean aggregation: ``W_l mean_j x_j + b + W_r x_i``."""

    def __init__(self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False):
        super().__init__(dim, width, norm, scaler)
        self.lin_l = SliceLinear(dim, dim, bias=True, width=width)
        self.lin_r = SliceLinear(dim, dim, bias=False, width=width)

    def forward(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        mean = ctx.sum_neighbors(x.index_select(0, ctx.src)) / ctx.in_degree.clamp_min(1.0)
        return self.lin_l(mean, width) + self.lin_r(x, width)

    def macs(self, width: float, nodes: float, messages: float) -> float:
        c = sliced_dim(self.dim, width)
        return messages * c + nodes * c + self.lin_l.macs(width, nodes) + self.lin_r.macs(width, nodes)


class GATConv(_Conv):
    """GAT (Velickovic et al. 2018) with self loops and ``heads`` head-averaged heads.

    Slicing choice: the head count is never sliced; each head has ``dim`` channels, sliced to
    ``ceil(r * dim)`` like every hidden dimension, and heads are *averaged* (``concat=False``),
    so the output is ``ceil(r * dim)`` wide at every width. The projection is stored as one
    ``[heads, dim, dim]`` tensor and the attention vectors as ``[heads, dim]``, so the width-``r``
    slice of both is their leading block (attention vectors are sliced with the channels).
    Attention logits: ``LeakyReLU_0.2(a_src . W x_j + a_dst . W x_i)``, softmax over the incoming
    edges of ``i``; no attention dropout.
    """

    def __init__(
        self, dim: int, width: float = 1.0, norm: str = "bn", scaler: bool = False, heads: int = 4
    ):
        super().__init__(dim, width, norm, scaler)
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.heads = heads
        c = sliced_dim(dim, width)
        self.weight = nn.Parameter(torch.empty(heads, c, c))
        self.att_src = nn.Parameter(torch.empty(heads, c))
        self.att_dst = nn.Parameter(torch.empty(heads, c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.set_rule("weight", (1, dim), (2, dim))
        self.set_rule("att_src", (1, dim))
        self.set_rule("att_dst", (1, dim))
        self.set_rule("bias", (0, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (2 * self.weight.shape[1]))
        nn.init.uniform_(self.weight, -bound, bound)
        bound = math.sqrt(6.0 / (1 + self.weight.shape[1]))
        nn.init.uniform_(self.att_src, -bound, bound)
        nn.init.uniform_(self.att_dst, -bound, bound)

    def forward(self, x: Tensor, edge_attr: Tensor | None, width: float, ctx: GraphContext):
        c = sliced_dim(self.dim, width)
        w, a_s, a_d, b = self.weight, self.att_src, self.att_dst, self.bias
        if c != w.shape[1]:
            w, a_s, a_d, b = w[:, :c, :c], a_s[:, :c], a_d[:, :c], b[:c]
        n, heads = x.shape[0], self.heads
        h = F.linear(x, w.reshape(heads * c, c)).view(n, heads, c)
        alpha_src = (h * a_s).sum(-1)  # [N, H]
        alpha_dst = (h * a_d).sum(-1)
        src, dst = ctx.looped
        alpha = F.leaky_relu(alpha_src.index_select(0, src) + alpha_dst.index_select(0, dst), 0.2)
        alpha = softmax(alpha, dst, num_nodes=n)
        msg = h.index_select(0, src) * alpha.unsqueeze(-1)
        out = h.new_zeros((n, heads, c)).index_add_(0, dst, msg)
        return out.mean(1) + b

    def macs(self, width: float, nodes: float, messages: float) -> float:
        c, hd = sliced_dim(self.dim, width), self.heads
        looped = messages + nodes
        return hd * (nodes * c * c + 2 * nodes * c + looped * c + nodes * c) + nodes * c

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads} (averaged), allocated={tuple(self.weight.shape)}"


#: Backbone name -> conv class.
CONVS: dict[str, type[_Conv]] = {
    "gin": GINConv,
    "gine": GINEConv,
    "gcn": GCNConv,
    "sage": SAGEConv,
    "gat": GATConv,
}
