"""Width slicing: the one place in fedmol that knows how sub-networks are cut out of a model.

System heterogeneity is modelled with *nested* sub-networks (HeteroFL, FjORD, FedResCuE): one set
of weights serves the widths in :data:`WIDTHS`; the sub-network of width ``r`` uses the first
``sliced_dim(d, r) = ceil(r * d)`` channels of every hidden dimension ``d``, so the parameters of
width ``r`` are the *leading block* of those of every width ``r' > r``.

Widths are always **absolute**: ``d`` is the full-width (width 1) size, also inside a standalone
model built at width 0.25 (its tensors are the width-0.25 blocks and it can run any width <= 0.25).

How a tensor is sliced is declared by the module that owns it, never by architecture code: every
sliceable module registers a :class:`SliceRule` per parameter/buffer in ``self.slice_rules``
(see :meth:`SliceModule.set_rule`). :func:`slice_spec` collects them for a whole model, and
:func:`sub_state_dict` / :func:`load_sub_state_dict` / :func:`count` are generic. Tensors without
a rule (e.g. GIN's ``eps``, the head bias, the rows of embedding tables) are never sliced.

:func:`aggregate_nested` needs no rules at all: an update's tensor *shape* says which leading
block it covers. It is the only place that aggregates; with ``noise_std`` it is also DP-FedAvg's
noisy server step (:mod:`fedmol.fl.privacy`).

Non-float tensors (``num_batches_tracked`` of the "bn" norm) are copied unsliced by
:func:`sub_state_dict`; :func:`aggregate_nested` does not average them but takes the element-wise
maximum over the updates that sent them (for a counter: "the most-trained client's count"), and
keeps the old value when nobody sent them.

Layers here:

* :class:`SliceLinear` -- ``weight[:out_r, :in_r]`` (views, no copies).
* :class:`SliceBatchNorm` -- modes ``"bn"`` (ordinary BN, one set of running stats whose leading
  block is updated at every width), ``"sbn"`` (HeteroFL static BN: never tracks running stats
  in training, :func:`recompute_bn_stats` fills them before evaluation) and ``"fjord"``
  (FjORD: separate running stats per width of :data:`WIDTHS`, shared sliced affine parameters).
* :class:`Scaler` -- HeteroFL's scaler: divides by ``r`` in training, identity in eval.
* :class:`SliceEmbeddingBag` -- a sparse input times ``weight[:, :out_r]`` (the fingerprint
  backbone's input layer: rows never sliced).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "WIDTHS",
    "sliced_dim",
    "width_tag",
    "check_width",
    "SliceRule",
    "SliceModule",
    "SliceLinear",
    "SliceBatchNorm",
    "Scaler",
    "SliceEmbeddingBag",
    "slice_spec",
    "sub_state_dict",
    "load_sub_state_dict",
    "aggregate_nested",
    "untrained_stat_keys",
    "count",
    "recompute_bn_stats",
]

#: The widths every algorithm uses, largest first.
WIDTHS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)

_TOL = 1e-9


def check_width(r: float) -> float:
    """Return ``float(r)`` if ``0 < r <= 1``, else raise ``ValueError``."""
    r = float(r)
    if not (0.0 < r <= 1.0 + _TOL):
        raise ValueError(f"width must be in (0, 1], got {r}")
    return min(r, 1.0)


def sliced_dim(d: int, r: float) -> int:
    """Channels of a full-width dimension ``d`` used at width ``r``: ``ceil(r * d)``, at least 1."""
    r = check_width(r)
    return max(1, math.ceil(r * d - _TOL))


def width_tag(r: float) -> str:
    """Identifier-safe name of a width: ``1``, ``1_2``, ``1_4``, ... (others: ``0p3``)."""
    r = check_width(r)
    inv = 1.0 / r
    if abs(inv - round(inv)) < 1e-9:
        return "1" if round(inv) == 1 else f"1_{round(inv)}"
    return repr(r).replace(".", "p")


@dataclass(frozen=True)
class SliceRule:
    """How one tensor of a module is sliced.

    ``dims``: ``(dim, full_size)`` pairs; at width ``r`` dimension ``dim`` keeps its first
    ``sliced_dim(full_size, r)`` entries. ``min_width``: the tensor only exists in sub-networks
    of width ``>= min_width`` (FjORD's per-width statistics); it is never sliced further.
    """

    dims: tuple[tuple[int, int], ...] = ()
    min_width: float = 0.0

    def present(self, r: float) -> bool:
        return r >= self.min_width - _TOL

    def shape(self, t_shape: Iterable[int], r: float) -> tuple[int, ...]:
        """The shape at width ``r`` of a tensor currently shaped ``t_shape`` (any width >= r)."""
        shape = list(t_shape)
        for dim, full in self.dims:
            shape[dim] = sliced_dim(full, r)
        return tuple(shape)

    def narrow(self, t: Tensor, r: float) -> Tensor:
        """View of the leading block of ``t`` for width ``r`` (no copy)."""
        for dim, full in self.dims:
            n = sliced_dim(full, r)
            if n > t.shape[dim]:
                raise ValueError(
                    f"cannot take the width-{r} slice ({n} channels along dim {dim}) of a tensor "
                    f"with only {t.shape[dim]}: the source model is narrower than {r}"
                )
            if n != t.shape[dim]:
                t = t.narrow(dim, 0, n)
        return t


class SliceModule(nn.Module):
    """Base of modules whose tensors carry :class:`SliceRule` s in ``self.slice_rules``."""

    def __init__(self) -> None:
        super().__init__()
        self.slice_rules: dict[str, SliceRule] = {}

    def set_rule(self, name: str, *dims: tuple[int, int], min_width: float = 0.0) -> None:
        """Declare that tensor ``name`` slices each ``(dim, full_size)`` in ``dims``."""
        self.slice_rules[name] = SliceRule(tuple(dims), min_width)

    def macs(self, width: float, rows: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError


def _alloc(d: int, width: float, sliced: bool) -> int:
    return sliced_dim(d, width) if sliced else d


class SliceLinear(SliceModule):
    """``y = x W[:out_r, :in_r]^T + b[:out_r]`` -- a linear layer that runs at any width.

    ``in_features``/``out_features`` are full-width sizes; ``slice_in``/``slice_out`` say which
    sides follow the width (a task head has ``slice_out=False``). Built at ``width`` < 1 the
    layer only allocates its width-``width`` block. Slicing a contiguous weight is a view, so
    running narrow costs no copies.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        slice_in: bool = True,
        slice_out: bool = True,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.slice_in, self.slice_out = slice_in, slice_out
        i, o = _alloc(in_features, width, slice_in), _alloc(out_features, width, slice_out)
        self.weight = nn.Parameter(torch.empty(o, i))
        self.bias = nn.Parameter(torch.empty(o)) if bias else None
        wdims = ([(0, out_features)] if slice_out else []) + ([(1, in_features)] if slice_in else [])
        self.set_rule("weight", *wdims)
        if bias and slice_out:
            self.set_rule("bias", (0, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def dims(self, width: float) -> tuple[int, int]:
        """``(out, in)`` sizes used at ``width``."""
        return (
            sliced_dim(self.out_features, width) if self.slice_out else self.out_features,
            sliced_dim(self.in_features, width) if self.slice_in else self.in_features,
        )

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        w, b = self.weight, self.bias
        if width is not None:
            o, i = self.dims(width)
            if (o, i) != tuple(w.shape):
                w = w[:o, :i]
                b = b[:o] if b is not None else None
        return F.linear(x, w, b)

    def macs(self, width: float, rows: float) -> float:
        o, i = self.dims(width)
        return rows * o * i

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}->{self.out_features} (allocated {tuple(self.weight.shape)}), "
            f"slice_in={self.slice_in}, slice_out={self.slice_out}, bias={self.bias is not None}"
        )


def _grid_width(width: float) -> float:
    """The width of :data:`WIDTHS` equal to ``width`` (per-width statistics exist only for those)."""
    for r in WIDTHS:
        if abs(r - width) < _TOL:
            return r
    raise ValueError(f"norm 'fjord_bn' keeps statistics only for widths {WIDTHS}, got width {width}")


class SliceBatchNorm(SliceModule):
    """Batch normalisation over the first ``ceil(r * num_features)`` channels.

    Modes:

    * ``"bn"`` -- ordinary BN: train mode normalises with batch statistics and updates the leading
      block of one shared ``running_mean``/``running_var`` (exponential, ``momentum``); eval mode
      uses them. ``num_batches_tracked`` counts training forwards at any width.
    * ``"sbn"`` -- HeteroFL's static BN: train mode always uses batch statistics and tracks
      nothing; eval mode uses ``running_mean``/``running_var``, which must be filled by
      :func:`recompute_bn_stats` (for the width about to be evaluated) -- until then they are the
      identity (0 / 1).
    * ``"fjord"`` -- FjORD: per-width buffers ``running_mean_<tag>``/``running_var_<tag>`` for
      every width of :data:`WIDTHS` not larger than the module's own (tags: ``1``, ``1_2``, ...),
      each of that width's size; affine parameters shared and sliced. Only widths in
      :data:`WIDTHS` can run.

    In all modes :func:`recompute_bn_stats` can recompute the statistics of a width exactly
    (cumulative average over one pass of a loader).
    """

    MODES = ("bn", "sbn", "fjord")

    def __init__(
        self,
        num_features: int,
        mode: str = "bn",
        width: float = 1.0,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown batch-norm mode {mode!r}; known: {', '.join(self.MODES)}")
        self.num_features, self.mode, self.momentum, self.eps = num_features, mode, momentum, eps
        self.width = check_width(width)
        c = sliced_dim(num_features, width)
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.set_rule("weight", (0, num_features))
        self.set_rule("bias", (0, num_features))
        if mode == "fjord":
            for r in WIDTHS:
                if r <= self.width + _TOL:
                    tag = width_tag(r)
                    cr = sliced_dim(num_features, r)
                    self.register_buffer(f"running_mean_{tag}", torch.zeros(cr))
                    self.register_buffer(f"running_var_{tag}", torch.ones(cr))
                    self.set_rule(f"running_mean_{tag}", min_width=r)
                    self.set_rule(f"running_var_{tag}", min_width=r)
        else:
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))
            self.set_rule("running_mean", (0, num_features))
            self.set_rule("running_var", (0, num_features))
            if mode == "bn":
                self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._collect: int | None = None  # batches seen while recompute_bn_stats runs
        #: "fjord" mode: the widths whose statistics a training forward of this module updated
        #: (not saved: a partner's freshly built model starts empty; see :func:`untrained_stat_keys`)
        self.trained_widths: set[float] = set()

    def _stats(self, width: float, c: int) -> tuple[Tensor, Tensor]:
        if self.mode == "fjord":
            tag = width_tag(_grid_width(width))
            return getattr(self, f"running_mean_{tag}"), getattr(self, f"running_var_{tag}")
        return self.running_mean[:c], self.running_var[:c]

    def reset_stats(self, width: float) -> None:
        """Reset the running statistics used at ``width`` to 0 / 1."""
        c = sliced_dim(self.num_features, width)
        mean, var = self._stats(width, c)
        with torch.no_grad():
            mean.zero_()
            var.fill_(1.0)

    def set_stats(self, width: float, mean: Tensor, var: Tensor) -> None:
        """Make ``mean`` / ``var`` (one value per channel of ``width``) the statistics used at ``width``
        (the leading block of the shared buffers for "bn"/"sbn", the width's own for "fjord")."""
        c = sliced_dim(self.num_features, width)
        if mean.shape != (c,) or var.shape != (c,):
            raise ValueError(f"width {width} has {c} channels, got statistics of shapes "
                             f"{tuple(mean.shape)} and {tuple(var.shape)}")
        run_mean, run_var = self._stats(width, c)
        with torch.no_grad():
            run_mean.copy_(mean)
            run_var.copy_(var)

    def forward(self, x: Tensor, width: float | None = None) -> Tensor:
        width = self.width if width is None else width
        c = sliced_dim(self.num_features, width)
        w, b = self.weight, self.bias
        if c != w.shape[0]:
            w, b = w[:c], b[:c]
        if self._collect is not None:  # recompute_bn_stats: cumulative average of batch stats
            mean, var = self._stats(width, c)
            self._collect += 1
            return F.batch_norm(x, mean, var, w, b, True, 1.0 / self._collect, self.eps)
        if self.training:
            if self.mode == "sbn":
                return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)
            mean, var = self._stats(width, c)
            if self.mode == "bn":
                self.num_batches_tracked.add_(1)
            else:
                self.trained_widths.add(_grid_width(width))
            return F.batch_norm(x, mean, var, w, b, True, self.momentum, self.eps)
        mean, var = self._stats(width, c)
        return F.batch_norm(x, mean, var, w, b, False, 0.0, self.eps)

    def macs(self, width: float, rows: float) -> float:
        return 2.0 * rows * sliced_dim(self.num_features, width)  # scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, mode={self.mode!r}, width={self.width}"


class Scaler(nn.Module):
    """HeteroFL's scaler: ``x / r`` in training at width ``r``, identity in eval (or disabled)."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def forward(self, x: Tensor, width: float) -> Tensor:
        if self.enabled and self.training and width != 1.0:
            return x / width
        return x

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"


class SliceEmbeddingBag(SliceModule):
    """``y = sum_j v_j W[i_j, :out_r] + b[:out_r]`` per sample -- a linear layer on a sparse input.

    Equal to ``x @ W[:, :out_r] + b`` for the dense ``x`` with values ``v_j`` at columns ``i_j``,
    without building ``x``: one ``embedding_bag(mode="sum")`` over each sample's non-zero
    entries (``offsets``: where each sample's entries start; ``weights``: the values, None for all
    ones). ``num_inputs`` (rows) is never sliced; ``out_features`` follows the width.
    """

    def __init__(self, num_inputs: int, out_features: int, width: float = 1.0, bias: bool = True) -> None:
        super().__init__()
        self.num_inputs, self.out_features = num_inputs, out_features
        c = sliced_dim(out_features, width)
        self.weight = nn.Parameter(torch.empty(num_inputs, c))
        self.bias = nn.Parameter(torch.empty(c)) if bias else None
        self.set_rule("weight", (1, out_features))
        if bias:
            self.set_rule("bias", (0, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # a sample has tens of non-zero inputs, not num_inputs: nn.Linear's 1/sqrt(fan_in) bound would
        # vanish for a 32k-bit input, so the bound is 1/sqrt(out_features) (as sparse input layers do)
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, indices: Tensor, offsets: Tensor, weights: Tensor | None = None,
                width: float | None = None) -> Tensor:
        w, b = self.weight, self.bias
        if width is not None:
            c = sliced_dim(self.out_features, width)
            if c != w.shape[1]:
                w, b = w[:, :c], (b[:c] if b is not None else None)
        out = F.embedding_bag(indices, w, offsets, mode="sum", per_sample_weights=weights)
        return out if b is None else out + b

    def macs(self, width: float, rows: float) -> float:
        """``rows``: non-zero inputs looked up."""
        return rows * sliced_dim(self.out_features, width)

    def extra_repr(self) -> str:
        return f"{self.num_inputs}->{self.out_features} (allocated {tuple(self.weight.shape)}), bias={self.bias is not None}"


# ---------------------------------------------------------------- state-dict level operations


def slice_spec(model: nn.Module) -> dict[str, SliceRule]:
    """``{state-dict key: SliceRule}`` for every sliced tensor of ``model`` (others: unsliced)."""
    spec: dict[str, SliceRule] = {}
    for prefix, mod in model.named_modules():
        rules = getattr(mod, "slice_rules", None)
        if not rules:
            continue
        for name, rule in rules.items():
            spec[f"{prefix}.{name}" if prefix else name] = rule
    return spec


def _state_and_spec(
    model_or_state: nn.Module | Mapping[str, Tensor], spec: Mapping[str, SliceRule] | None
) -> tuple[Mapping[str, Tensor], Mapping[str, SliceRule]]:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict(), slice_spec(model_or_state) if spec is None else spec
    if spec is None:
        raise ValueError(
            "sub_state_dict of a plain state dict needs spec=slice_spec(model) "
            "(the slicing rules live on the modules)"
        )
    return model_or_state, spec


def sub_state_dict(
    model_or_state: nn.Module | Mapping[str, Tensor],
    r: float,
    spec: Mapping[str, SliceRule] | None = None,
) -> dict[str, Tensor]:
    """The width-``r`` slice of a model (or of a state dict, given ``spec=slice_spec(model)``).

    Every tensor is the leading block of the source's (cloned, contiguous, detached); tensors that
    only exist at larger widths (FjORD statistics) are dropped. The result loads strictly into a
    model built at width ``r`` with the same hidden size. ``r`` may not exceed the source's width.
    """
    r = check_width(r)
    state, spec = _state_and_spec(model_or_state, spec)
    default = SliceRule()
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        rule = spec.get(key, default)
        if not rule.present(r):
            continue
        out[key] = rule.narrow(t.detach(), r).clone(memory_format=torch.contiguous_format)
    return out


def load_sub_state_dict(
    model: nn.Module, sub: Mapping[str, Tensor], r: float, strict: bool = True
) -> nn.Module:
    """Write the width-``r`` slice ``sub`` into the leading blocks of ``model``'s tensors.

    Coordinates outside the slice (and tensors that only exist at larger widths) are untouched.
    ``strict``: ``sub`` must hold exactly the tensors of width ``r``, shaped as at width ``r``.
    Returns ``model``.
    """
    r = check_width(r)
    state, spec = model.state_dict(), slice_spec(model)
    default = SliceRule()
    expected = {k for k in state if spec.get(k, default).present(r)}
    if strict:
        missing, unexpected = expected - set(sub), set(sub) - expected
        if missing or unexpected:
            raise KeyError(
                f"width-{r} slice does not match the model: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
    with torch.no_grad():
        for key, value in sub.items():
            if key not in state:
                if strict:  # pragma: no cover - caught above
                    raise KeyError(key)
                continue
            target = spec.get(key, default).narrow(state[key], r)
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(
                    f"{key}: slice has shape {tuple(value.shape)}, width {r} needs "
                    f"{tuple(target.shape)}"
                )
            target.copy_(value)
    return model


def untrained_stat_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the per-width BN statistics (norm "fjord") that no training forward of
    ``model`` updated: a partner returns only the statistics of the widths it ran, so that
    :func:`aggregate_nested` averages the width-r statistics over the partners that ran width r
    (the rest would send back the stale values they received)."""
    keys: set[str] = set()
    for prefix, mod in model.named_modules():
        if isinstance(mod, SliceBatchNorm) and mod.mode == "fjord":
            for r in WIDTHS:
                tag = width_tag(r)
                if r not in mod.trained_widths and hasattr(mod, f"running_mean_{tag}"):
                    keys |= {f"{prefix}.running_mean_{tag}", f"{prefix}.running_var_{tag}"}
    return keys


def aggregate_nested(
    global_state: Mapping[str, Tensor],
    updates: Iterable[tuple[Mapping[str, Tensor], float]],
    noise_std: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """HeteroFL's nested aggregation: each coordinate becomes the weighted mean of the updates
    whose slice contains it; coordinates nobody sent keep their old value.

    ``updates``: ``(sub_state_dict, weight)`` pairs (weight 1 for an unweighted mean, ``n_k`` for
    a sample-weighted one; weights must be >= 0; keys the global state lacks are ignored, so
    messages may carry extra entries). A tensor of shape ``s`` in an update covers the
    leading block ``[:s0, :s1, ...]`` of the global tensor -- the shape alone says which, so no
    slicing rules are needed; tensors missing from an update are not covered by it. Float tensors
    are averaged (in float64, cast back); non-float ones (``num_batches_tracked``) become the
    element-wise maximum of the senders' values. Returns a new state dict (inputs are not modified).

    ``noise_std`` (differential privacy, :mod:`fedmol.fl.privacy`): every weight must then be 1,
    and Gaussian noise ``N(0, noise_std^2)`` drawn from ``generator`` is added to each float
    coordinate's *sum* over its holders before the division by their number (one draw of the
    global tensor's full shape per float tensor somebody sent, in state-dict order, so the draws
    do not depend on who sent what; coordinates nobody holds keep their old value, without noise).
    ``noise_std=0`` is uniform averaging without noise.
    """
    updates = list(updates)
    _check_aggregation_weights([w for _, w in updates], noise_std)
    out: dict[str, Tensor] = {}
    for key, old in global_state.items():
        old = old.detach()
        senders = [(u[key], float(w)) for u, w in updates if key in u]
        if not senders:
            out[key] = old.clone()
            continue
        _check_blocks_fit(key, old, senders)
        if not old.is_floating_point():
            out[key] = _nested_max(old, senders)
        else:
            out[key] = _nested_mean(old, senders, noise_std, generator)
    return out


def _check_aggregation_weights(weights: list, noise_std: float | None) -> None:
    """Weights are >= 0, and all 1 when noise is added (:func:`aggregate_nested`)."""
    for w in weights:
        if not (float(w) >= 0.0):
            raise ValueError(f"aggregation weights must be >= 0, got {w}")
    if noise_std is not None:
        if not (float(noise_std) >= 0.0):
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if any(float(w) != 1.0 for w in weights):
            raise ValueError("noise is added to sums over holders: every aggregation weight must be 1")


def _check_blocks_fit(key: str, old: Tensor, senders: list[tuple[Tensor, float]]) -> None:
    """Every sent tensor is a leading block of the global tensor ``old``."""
    for t, _ in senders:
        if t.dim() != old.dim() or any(a > b for a, b in zip(t.shape, old.shape)):
            raise ValueError(
                f"{key}: update of shape {tuple(t.shape)} does not fit the global "
                f"tensor {tuple(old.shape)}"
            )


def _nested_max(old: Tensor, senders: list[tuple[Tensor, float]]) -> Tensor:
    """A non-float tensor: each covered coordinate is the maximum of its senders' values."""
    new = old.clone()
    covered = torch.zeros(old.shape, dtype=torch.bool, device=old.device)
    for t, _ in senders:
        block = tuple(slice(0, n) for n in t.shape)
        t = t.to(old.device, old.dtype)
        new[block] = torch.where(covered[block], torch.maximum(new[block], t), t)
        covered[block] = True
    return new


def _nested_mean(old: Tensor, senders: list[tuple[Tensor, float]], noise_std: float | None,
                 generator: torch.Generator | None) -> Tensor:
    """A float tensor: each covered coordinate is the weighted mean of its senders' values (in float64,
    with noise on the sum when ``noise_std``); the others keep their old value."""
    acc = torch.zeros(old.shape, dtype=torch.float64, device=old.device)
    wsum = torch.zeros(old.shape, dtype=torch.float64, device=old.device)
    for t, w in senders:
        block = tuple(slice(0, n) for n in t.shape)
        acc[block] += w * t.detach().to(old.device, torch.float64)
        wsum[block] += w
    if noise_std:
        acc += float(noise_std) * torch.randn(old.shape, generator=generator, dtype=torch.float64).to(old.device)
    mean = acc / wsum.clamp_min(1e-300)
    return torch.where(wsum > 0, mean, old.to(torch.float64)).to(old.dtype)


def count(
    model: nn.Module, r: float = 1.0, avg_nodes: float = 25.0, avg_edges: float = 27.0
) -> dict[str, float]:
    """Size and cost of the width-``r`` sub-network.

    * ``params``: elements of the parameters of ``sub_state_dict(model, r)`` (no buffers).
    * ``bytes``: payload of the whole ``sub_state_dict(model, r)`` (parameters and buffers, at
      their dtypes) -- what a client downloads/uploads per round, before any compression.
    * ``macs``: analytic multiply-accumulates of one forward pass per graph with ``avg_nodes``
      atoms and ``avg_edges`` bonds (each bond = 2 directed messages). Dense layers count
      ``rows * in * out``; message passing one MAC per message channel; embedding-bag sums, BN
      scale/shift and attention coefficients one per element; activations, dropout, softmax
      exponentials and pooling are ignored. Needs ``model.macs(width, nodes, messages)``.
    """
    r = check_width(r)
    sub = sub_state_dict(model, r)
    pnames = {n for n, _ in model.named_parameters()}
    params = sum(t.numel() for k, t in sub.items() if k in pnames)
    nbytes = sum(t.numel() * t.element_size() for t in sub.values())
    if not hasattr(model, "macs"):
        raise TypeError(f"{type(model).__name__} has no macs(width, nodes, messages) method")
    macs = float(model.macs(r, float(avg_nodes), 2.0 * float(avg_edges)))
    return {"params": int(params), "bytes": int(nbytes), "macs": macs}


def recompute_bn_stats(model: nn.Module, loader: Iterable[Any], width: float = 1.0) -> nn.Module:
    """Recompute the running statistics every :class:`SliceBatchNorm` uses at ``width``.

    One pass over ``loader`` with the model in eval mode (no dropout, scaler off) and no grad,
    each BN normalising with batch statistics and accumulating their cumulative average into the
    statistics of ``width`` (the leading block for "bn"/"sbn", the width's own buffers for
    "fjord"). This is HeteroFL's sBN step before evaluation; it works for every mode. Only the
    statistics of ``width`` are valid afterwards ("sbn" must be recomputed per evaluated width).
    The model's train/eval mode is restored. Returns ``model``.
    """
    bns = [m for m in model.modules() if isinstance(m, SliceBatchNorm)]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        for m in bns:
            m.reset_stats(width)
            m._collect = 0
        with torch.no_grad():
            for batch in loader:
                model(batch.to(device), width=width)
    finally:
        for m in bns:
            m._collect = None
        model.train(was_training)
    return model
