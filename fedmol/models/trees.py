"""Boosted-tree ensembles as plain arrays: the model of fedmol's federated boosted trees.

A :class:`TreeEnsemble` holds gradient-boosted regression trees (fitted by LightGBM at the
partners, :mod:`fedmol.fl.trees`) as fixed-layout tensors, so the ensemble travels in messages,
checkpoints and ``model.safetensors`` like any backbone's weights and is never a pickle or a
LightGBM model string: a received ensemble is numbers checked by :func:`check_trees` and evaluated
by :meth:`TreeEnsemble.raw` in NumPy (equal to LightGBM's ``predict(raw_score=True)``; a test
compares them). Tree ``i`` of ``N`` (``M`` = most internal nodes of a tree, ``L = M + 1`` leaves):

* ``feature`` / ``threshold`` / ``left`` / ``right`` / ``default_left`` / ``missing`` ``[N, M]``: the
  split of each internal node (LightGBM's numerical decision: ``x <= threshold`` goes left; a value
  that is missing for the node's ``missing`` type -- 1: zero, 2: NaN -- goes the default side); a
  child ``c >= 0`` is an internal node (always a later one than its parent, as LightGBM numbers
  them, which bounds every path), ``c < 0`` is leaf ``~c``;
* ``leaf_value`` ``[N, L]`` (LightGBM's, learning rate applied), ``task`` ``[N]`` (the task the
  tree predicts), ``weight`` ``[N]`` (its factor in the sum: 1, or a partner's share of a round);
* ``num_leaves`` ``[N]``: the tree's leaves (a one-leaf tree has no split and starts at leaf 0).

The raw score of task ``t`` is ``sum(weight[i] * leaf_value[i, leaf_i(x)])`` over the trees of
task ``t`` (a logit for classification, the value for regression), on the molecule's ECFP4
(:data:`fedmol.data.fingerprints.ECFP4`: radius 2, 2048 bits, the tree references' input).
Width does not apply: the model ignores ``width``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedmol.errors import FedmolError

__all__ = ["TreeEnsemble", "TREE_KEYS", "check_trees", "trees_of_booster", "concat_trees", "empty_trees"]

#: the arrays of an ensemble, with their dtypes
TREE_KEYS = {"feature": torch.int32, "threshold": torch.float64, "left": torch.int32, "right": torch.int32,
             "default_left": torch.uint8, "missing": torch.uint8, "leaf_value": torch.float64,
             "num_leaves": torch.int32, "task": torch.int32, "weight": torch.float64}
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
#: LightGBM's "is zero" bound of a feature value (``kZeroThreshold``)
_ZERO = 1e-35
#: limits an ensemble received from elsewhere must respect
MAX_TREES, MAX_NODES = 1_000_000, 1 << 16


def empty_trees(nodes: int = 0) -> dict[str, Tensor]:
    """An ensemble of no tree (with room for ``nodes`` internal nodes per tree)."""
    return {k: torch.zeros((0, nodes + (k == "leaf_value")) if k in _NODE_KEYS else (0,), dtype=dt)
            for k, dt in TREE_KEYS.items()}


_NODE_KEYS = ("feature", "threshold", "left", "right", "default_left", "missing", "leaf_value")


def trees_of_booster(booster, task: int, weight: float = 1.0) -> dict[str, Tensor]:
    """The trees of a LightGBM ``booster`` (one task) as ensemble arrays, in boosting order."""
    trees = booster.dump_model()["tree_info"]
    nodes = max([t["num_leaves"] - 1 for t in trees] + [0])
    out = {k: np.zeros((len(trees), nodes + (k == "leaf_value")), dtype=_np(TREE_KEYS[k])) for k in _NODE_KEYS}
    for i, tree in enumerate(trees):
        _fill(out, i, tree["tree_structure"])
    arrays = {k: torch.from_numpy(v) for k, v in out.items()}
    arrays["num_leaves"] = torch.tensor([t["num_leaves"] for t in trees], dtype=torch.int32)
    arrays["task"] = torch.full((len(trees),), int(task), dtype=torch.int32)
    arrays["weight"] = torch.full((len(trees),), float(weight), dtype=torch.float64)
    return arrays


def _np(dtype: torch.dtype):
    return torch.empty(0, dtype=dtype).numpy().dtype


def _fill(out: dict[str, np.ndarray], i: int, node: dict) -> int:
    """Write the subtree ``node`` of tree ``i`` into ``out``; returns its child code (node or ~leaf)."""
    if "split_index" not in node:
        leaf = int(node.get("leaf_index", 0))
        out["leaf_value"][i, leaf] = float(node["leaf_value"])
        return ~leaf
    j = int(node["split_index"])
    if node.get("decision_type", "<=") != "<=":
        raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r} (only numerical '<=')")
    out["feature"][i, j] = int(node["split_feature"])
    out["threshold"][i, j] = float(node["threshold"])
    out["default_left"][i, j] = bool(node["default_left"])
    out["missing"][i, j] = _MISSING[node["missing_type"]]
    out["left"][i, j] = _fill(out, i, node["left_child"])
    out["right"][i, j] = _fill(out, i, node["right_child"])
    return j


def concat_trees(*parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ensembles ``parts`` one after the other (node arrays padded to the widest)."""
    nodes = max(p["feature"].shape[1] for p in parts)
    out = {}
    for k in TREE_KEYS:
        if k in _NODE_KEYS:
            width = nodes + (k == "leaf_value")
            out[k] = torch.cat([torch.nn.functional.pad(p[k], (0, width - p[k].shape[1])) for p in parts])
        else:
            out[k] = torch.cat([p[k] for p in parts])
    return out


def check_trees(arrays: dict[str, Any], num_tasks: int, num_features: int) -> dict[str, Tensor]:
    """``arrays`` as a valid ensemble for ``num_tasks`` tasks on ``num_features`` features, else a
    one-line :class:`FedmolError` (an ensemble received from a partner, a checkpoint or a
    leaderboard submission is untrusted): exactly :data:`TREE_KEYS` with their dtypes and shapes,
    features, tasks and children in range, every path descending, every value finite."""
    if set(arrays) != set(TREE_KEYS):
        raise FedmolError(f"tree ensemble: arrays must be {sorted(TREE_KEYS)}, got {sorted(arrays)}")
    for k, dt in TREE_KEYS.items():
        if not isinstance(arrays[k], Tensor) or arrays[k].dtype != dt:
            raise FedmolError(f"tree ensemble: {k} must be a {dt} tensor")
    n, m = arrays["feature"].shape if arrays["feature"].dim() == 2 else (-1, -1)
    if not (0 <= n <= MAX_TREES and 0 <= m < MAX_NODES):
        raise FedmolError(f"tree ensemble: feature must be [trees <= {MAX_TREES}, nodes < {MAX_NODES}]")
    for k in TREE_KEYS:
        want = (n, m + (k == "leaf_value")) if k in _NODE_KEYS else (n,)
        if tuple(arrays[k].shape) != want:
            raise FedmolError(f"tree ensemble: {k} must have shape {list(want)}, got {list(arrays[k].shape)}")
    a = {k: v.numpy() for k, v in arrays.items()}
    _check_ranges(a, n, m, num_tasks, num_features)
    return {k: v.contiguous() for k, v in arrays.items()}


def _check_ranges(a: dict[str, np.ndarray], n: int, m: int, num_tasks: int, num_features: int) -> None:
    leaves = a["num_leaves"].astype(np.int64)
    if n and (leaves.min() < 1 or leaves.max() > m + 1):
        raise FedmolError(f"tree ensemble: num_leaves must be in [1, {m + 1}]")
    if n and (a["task"].min() < 0 or a["task"].max() >= num_tasks):
        raise FedmolError(f"tree ensemble: task must be in [0, {num_tasks - 1}]")
    for k in ("threshold", "leaf_value", "weight"):
        if not np.isfinite(a[k]).all():
            raise FedmolError(f"tree ensemble: {k} must be finite")
    if (a["missing"] > 2).any() or (a["default_left"] > 1).any():
        raise FedmolError("tree ensemble: missing must be 0, 1 or 2 and default_left 0 or 1")
    used = np.arange(m)[None, :] < (leaves - 1)[:, None]  # the internal nodes of each tree
    if (a["feature"][used] < 0).any() or (a["feature"][used] >= num_features).any():
        raise FedmolError(f"tree ensemble: feature must be in [0, {num_features - 1}]")
    for side in ("left", "right"):
        child, node = a[side], np.broadcast_to(np.arange(m)[None, :], (n, m))
        inner_ok = (child > node) & (child < (leaves - 1)[:, None])
        leaf_ok = (child < 0) & (~child < leaves[:, None])
        if not (inner_ok | leaf_ok)[used].all():
            raise FedmolError(f"tree ensemble: {side} children must be later internal nodes or leaves of the tree")


class TreeEnsemble(nn.Module):
    """``model(batch) -> [B, num_tasks]`` raw scores of a boosted-tree ensemble on ECFP4.

    The arrays are buffers (:data:`TREE_KEYS`), so ``state_dict`` / ``load_state_dict`` /
    safetensors work as for a backbone; ``load_state_dict`` checks what it loads
    (:func:`check_trees`) and takes any number of trees."""

    def __init__(self, num_tasks: int, task_type: str = "classification", name: str = "trees", **_: Any) -> None:
        super().__init__()
        from fedmol.data.fingerprints import ECFP4

        self.num_tasks, self.task_type, self.width = int(num_tasks), task_type, 1.0
        self.num_features = ECFP4["bits"]
        for k, v in empty_trees().items():
            self.register_buffer(k, v)

    def trees(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in TREE_KEYS}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False) -> None:  # noqa: ARG002
        """Replace the ensemble by ``state`` once :func:`check_trees` accepts it (any number of trees;
        every key is required, so ``strict`` is always on)."""
        for k, v in check_trees(dict(state), self.num_tasks, self.num_features).items():
            setattr(self, k, v.clone())

    def add(self, trees: dict[str, Tensor]) -> None:
        """Append ``trees`` (arrays with every key of :data:`TREE_KEYS`) to the ensemble; the whole is
        checked once, by :meth:`load_state_dict`."""
        self.load_state_dict(concat_trees(self.trees(), trees))

    def forward(self, batch: Any, width: float | None = None) -> Tensor:  # noqa: ARG002 - no width
        from fedmol.data.fingerprints import ecfp4_of

        return torch.from_numpy(self.raw(ecfp4_of(list(batch.smiles)))).float()

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores ``[len(X), num_tasks]`` (float64) on feature rows ``X``: the trees' weighted leaf
        values summed block by block (:data:`BLOCK` trees at a time, in order). The sum over the
        first whole blocks is remembered per ``X`` (:data:`_RAW_MEMO`), so scoring the same molecules
        again after trees were added costs only the new blocks, with the same arithmetic."""
        a = {k: v.numpy() for k, v in self.trees().items()}
        X = np.ascontiguousarray(X)
        out = np.zeros((len(X), self.num_tasks))
        n = len(a["task"])
        if not len(X) or not n:
            return out
        key = hashlib.sha1(X.view(np.uint8).reshape(-1)).digest() + repr((X.shape, X.dtype.str)).encode()
        start, memo = 0, _RAW_MEMO.get(key)
        if memo is not None and memo[0] <= n and memo[1] == _digest(a, memo[0]):
            start, out = memo[0], memo[2].copy()
        whole = n - n % BLOCK  # the sum up to here is remembered; a partial last block is summed again next time
        for lo in range(start, n, BLOCK):
            out += self._block(a, X, lo, min(lo + BLOCK, n))
            if lo + BLOCK == whole:
                _remember(key, (whole, _digest(a, whole), out.copy()))
        return out

    def _block(self, a: dict[str, np.ndarray], X: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """The trees ``lo:hi``'s part of the raw scores ``[len(X), num_tasks]``."""
        part = {k: v[lo:hi] for k, v in a.items()}
        leaf = _leaves(part, X)
        values = np.take_along_axis(part["leaf_value"][None, :, :], leaf[:, :, None], axis=2)[:, :, 0] * part["weight"]
        out = np.zeros((len(X), self.num_tasks))
        for t in range(self.num_tasks):
            out[:, t] = values[:, part["task"] == t].sum(axis=1)
        return out

    def extra_repr(self) -> str:
        return f"trees={len(self.task)}, num_tasks={self.num_tasks}"


#: trees whose leaf values are summed together (raw scores accumulate block after block)
BLOCK = 256
#: feature rows' digest -> (trees, their digest, raw scores of those trees): the last scorings
_RAW_MEMO: "OrderedDict[bytes, tuple[int, bytes, np.ndarray]]" = OrderedDict()
_RAW_MEMO_MAX = 64


def _digest(a: dict[str, np.ndarray], n: int) -> bytes:
    """A digest of the first ``n`` trees of the ensemble arrays ``a``."""
    h = hashlib.sha1()
    for k in TREE_KEYS:
        h.update(np.ascontiguousarray(a[k][:n]).tobytes())
        h.update(repr(a[k][:n].shape).encode())
    return h.digest()


def _remember(key: bytes, entry: tuple) -> None:
    _RAW_MEMO[key] = entry
    _RAW_MEMO.move_to_end(key)
    while len(_RAW_MEMO) > _RAW_MEMO_MAX:
        _RAW_MEMO.popitem(last=False)


def _leaves(a: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The leaf ``[B, N]`` each row of ``X`` reaches in each tree (LightGBM's numerical decision)."""
    cur = np.where(a["num_leaves"] > 1, 0, -1)[None, :].repeat(len(X), 0)  # a one-leaf tree: leaf 0
    while True:
        b, t = np.nonzero(cur >= 0)
        if not len(b):
            return ~cur
        node = cur[b, t]
        x = X[b, a["feature"][t, node]].astype(np.float64)
        miss = a["missing"][t, node]
        x = np.where(np.isnan(x) & (miss != 2), 0.0, x)
        default = ((miss == 1) & (np.abs(x) <= _ZERO)) | ((miss == 2) & np.isnan(x))
        go_left = np.where(default, a["default_left"][t, node] == 1, x <= a["threshold"][t, node])
        cur[b, t] = np.where(go_left, a["left"][t, node], a["right"][t, node])
