"""The fingerprint backbone ``mlp``: a width-prunable feed-forward trunk on folded Morgan fingerprints.

SparseChem / MELLODDY's trunk (Heyndrickx et al., J Chem Inf Model 2023): a sparse fingerprint
times a dense weight, then hidden layers with ReLU and dropout, and a linear task head. Here
``layers`` hidden layers of ``hidden`` units, each [linear -> (scaler) -> norm -> ReLU -> dropout],
the first one reading the fingerprint through :class:`~fedmol.models.slicing.SliceEmbeddingBag`;
the embedding is the last hidden layer's output. Deviations: fedmol's norm modes, so that every
algorithm runs it (``norm="none"`` is closest to SparseChem), and the defaults radius 2 / 8192
bits / counts, measured on BBBP, BACE and B3DB (``benchmarks/mlp_defaults.py``), instead of
SparseChem's radius 3 / 32768: better validation ROC-AUC there, a quarter of the input weights
(each round's message).

Width slicing as in the GNNs: width ``r`` runs the first ``ceil(r * hidden)`` units of every hidden
layer; the fingerprint (input rows) and the head's outputs are never sliced. The width API
(``forward``, ``embed_dim``, ``sub_state_dict``, ...) is :class:`~fedmol.models.gnn.SliceGNN`'s.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from fedmol.data.fingerprints import FingerprintSpec, batch_fingerprints
from fedmol.models.gnn import BackboneOptions, ModelConfigError, SliceGNN, _dropout
from fedmol.models.slicing import SliceEmbeddingBag, SliceLinear

__all__ = ["FingerprintMLP"]


class FingerprintMLP(SliceGNN):
    """``model(batch, width=r)`` -> ``[B, num_tasks]``; ``embed`` -> ``[B, ceil(r * hidden)]``.

    A batch carries its fingerprints (:func:`fedmol.data.fingerprints.attach_fingerprints`) or its
    ``smiles`` (then they are computed, memoized). ``fp_radius``, ``fp_bits``, ``fp_counts``: the
    folded Morgan fingerprint (:data:`fedmol.data.fingerprints.DEFAULTS`).
    """

    conv_name = "mlp"

    def __init__(self, num_tasks: int, **options: Any) -> None:
        nn.Module.__init__(self)
        opts, fp = BackboneOptions.parse(num_tasks, options)
        unknown = set(fp) - {"fp_radius", "fp_bits", "fp_counts"}
        if unknown:
            raise ModelConfigError(f"unknown option(s) {sorted(unknown)} for model 'mlp'; known extra options: "
                                   "['fp_bits', 'fp_counts', 'fp_radius']")
        if opts.pool != "mean":
            raise ModelConfigError(f"model 'mlp' has no graph pooling (got pool={opts.pool!r})")
        self.fp = FingerprintSpec.from_config(fp)
        self._keep_options(num_tasks, opts, pooled=False, fp_radius=self.fp.radius, fp_bits=self.fp.bits,
                           fp_counts=self.fp.counts)
        self.input = SliceEmbeddingBag(self.fp.bits, opts.hidden, self.width)
        self.linears = nn.ModuleList(SliceLinear(opts.hidden, opts.hidden, width=self.width)
                                     for _ in range(opts.layers - 1))
        self._add_norms_and_head(num_tasks, opts)

    def embed(self, batch: Any, width: float | None = None) -> Tensor:
        """Trunk output ``[num_molecules, ceil(r * hidden)]`` of a (batched) ``Data``."""
        r = self._width(width)
        on, vals, offsets = batch_fingerprints(batch, self.fp, self.input.weight.device)
        h = self.input(on, offsets, vals if self.fp.counts else None, r)
        for i, norm in enumerate(self.norms):
            if i:
                h = self.linears[i - 1](h, r)
            h = F.relu(norm(self.scaler(h, r), r))
            if self.training and self.dropout > 0.0:
                h = _dropout(h, self.dropout)
        return h

    def norm_rows(self, batch: Any) -> int:
        """How many rows each norm layer normalizes over in ``batch``: its molecules."""
        return int(batch.num_graphs)

    def macs(self, width: float, nodes: float, messages: float) -> float:
        """Analytic MACs per molecule; on bits estimated as ``nodes * (fp_radius + 1)`` (one
        environment per atom and radius, an upper bound)."""
        total = self.input.macs(width, nodes * (self.fp.radius + 1))
        total += sum(lin.macs(width, 1.0) for lin in self.linears)
        total += sum(norm.macs(width, 1.0) for norm in self.norms)
        return total + self.head.macs(width, 1.0)

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden}, layers={self.num_layers}, width={self.width}, "
                f"task_type={self.task_type!r}, norm={self.norm!r}, fingerprint={self.fp.tag}")
