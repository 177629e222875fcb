"""OGB-style atom and bond encoders with a width-sliced output.

An encoder maps the integer feature columns of atoms (9, ``x``) or bonds (3, ``edge_attr``) to
the sum of one learned embedding per column (Hu et al. 2020 / OGB's ``AtomEncoder``). Here the
per-column tables are fused into one table with row offsets and evaluated with a single
``embedding_bag(mode="sum")`` call. The embedding *dimension* follows the width; the vocabularies
(rows) never do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmol.models.slicing import SliceModule, sliced_dim

__all__ = ["feature_dims", "FeatureEncoder", "AtomEncoder", "BondEncoder"]


def feature_dims() -> tuple[list[int], list[int]]:
    """``(atom vocab sizes, bond vocab sizes)``: fedmol's featurizer, else OGB's (identical)."""
    try:
        from fedmol.data.featurize import ATOM_FEATURE_DIMS, BOND_FEATURE_DIMS
    except ImportError:
        from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

        return list(get_atom_feature_dims()), list(get_bond_feature_dims())
    return list(ATOM_FEATURE_DIMS), list(BOND_FEATURE_DIMS)


class FeatureEncoder(SliceModule):
    """Sum of per-column embeddings of integer features, output sliced to ``ceil(r * emb_dim)``.

    ``vocab_sizes``: size of each column's vocabulary. Input ``[rows, len(vocab_sizes)]`` int64.
    """

    def __init__(self, vocab_sizes: Sequence[int], emb_dim: int, width: float = 1.0) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.emb_dim = emb_dim
        offsets = torch.tensor([0] + self.vocab_sizes[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(self.vocab_sizes), sliced_dim(emb_dim, width)))
        self.set_rule("weight", (1, emb_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Xavier-uniform per column table, as OGB initialises its separate embeddings.
        with torch.no_grad():
            for off, v in zip(self.offsets.tolist(), self.vocab_sizes):
                bound = math.sqrt(6.0 / (v + self.emb_dim))
                self.weight[off : off + v].uniform_(-bound, bound)

    def forward(self, feats: Tensor, width: float) -> Tensor:
        c = sliced_dim(self.emb_dim, width)
        w = self.weight if c == self.weight.shape[1] else self.weight[:, :c]
        return F.embedding_bag(feats + self.offsets, w, mode="sum")

    def macs(self, width: float, rows: float) -> float:
        return rows * len(self.vocab_sizes) * sliced_dim(self.emb_dim, width)

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_sizes}, emb_dim={self.emb_dim}, allocated={tuple(self.weight.shape)}"


class AtomEncoder(FeatureEncoder):
    """Embeds the 9 OGB atom features."""

    def __init__(self, emb_dim: int, width: float = 1.0) -> None:
        super().__init__(feature_dims()[0], emb_dim, width)


class BondEncoder(FeatureEncoder):
    """Embeds the 3 OGB bond features."""

    def __init__(self, emb_dim: int, width: float = 1.0) -> None:
        super().__init__(feature_dims()[1], emb_dim, width)
