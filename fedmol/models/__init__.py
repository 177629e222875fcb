"""Width-sliceable molecular backbones (GNNs and a fingerprint MLP) for system-heterogeneous FL.

Public API::

    build(name, num_tasks, hidden=300, layers=5, width=1.0, task_type="classification",
          dropout=0.5, pool="mean", norm="bn", scaler=False, **kw) -> SliceGNN
    BackboneOptions: those options and their defaults, declared once (build's and every backbone's)
    MODEL_NAMES = ("gin", "gine", "gcn", "sage", "gat", "mlp");  NORMS = ("bn", "sbn", "fjord_bn", "none")
    GNN_NAMES = the graph backbones;  "mlp" (:mod:`fedmol.models.mlp`): SparseChem-style trunk on
    folded Morgan fingerprints (kw ``fp_radius``, ``fp_bits``, ``fp_counts``), same API
    model(batch, width=r) -> [B, num_tasks];  model.embed(batch, width=r) -> [B, ceil(r*hidden)]
    model.head(z, width=r);  model.sub_state_dict(r);  model.load_sub_state_dict(sub, r)
    masked_loss(pred, y, task_type)

Width slicing (the only place that slices tensors) lives in :mod:`fedmol.models.slicing`:
``WIDTHS``, ``sliced_dim``, ``sub_state_dict``, ``load_sub_state_dict``, ``aggregate_nested``,
``count``, ``recompute_bn_stats``, ``slice_spec``.

Which norm for which algorithm:

* ``"bn"``: single-width training (FedAvg, FedProx, FedGen, centralized) -- ordinary BN.
* ``"sbn"`` + ``scaler=True``: HeteroFL (static BN; call ``recompute_bn_stats`` before evaluating
  a width).
* ``"fjord_bn"``: FjORD and other methods that train several nested widths on one client and
  evaluate at any width of ``WIDTHS`` (FedResCuE) -- per-width running statistics.
* ``"none"``: no normalisation (ablations; also avoids BN statistics entirely).
"""

from fedmol.models.convs import CONVS
from fedmol.models.gnn import (
    GNN_NAMES,
    MODEL_NAMES,
    MODELS,
    POOLS,
    TASK_TYPES,
    BackboneOptions,
    ModelConfigError,
    SliceGNN,
    build,
)
from fedmol.models.losses import masked_loss
from fedmol.models.mlp import FingerprintMLP
from fedmol.models.slicing import (
    WIDTHS,
    aggregate_nested,
    count,
    load_sub_state_dict,
    recompute_bn_stats,
    slice_spec,
    sliced_dim,
    sub_state_dict,
)

#: Accepted ``norm=`` names.
NORMS: tuple[str, ...] = ("bn", "sbn", "fjord_bn", "none")

__all__ = [
    "build",
    "MODEL_NAMES",
    "GNN_NAMES",
    "MODELS",
    "NORMS",
    "POOLS",
    "TASK_TYPES",
    "CONVS",
    "BackboneOptions",
    "ModelConfigError",
    "SliceGNN",
    "FingerprintMLP",
    "masked_loss",
    "WIDTHS",
    "sliced_dim",
    "sub_state_dict",
    "load_sub_state_dict",
    "aggregate_nested",
    "count",
    "recompute_bn_stats",
    "slice_spec",
]
