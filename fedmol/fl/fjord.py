"""FjORD (Horvath, Laskaridis, Almeida, Leontiadis, Venieris & Lane, "FjORD: Fair and Accurate
Federated Learning under heterogeneous targets with Ordered Dropout", NeurIPS 2021), following
the paper and the authors' Flower baseline, for multi-task molecular property prediction.

What the paper does, and where it lives here:

* **Ordered dropout, OD (paper § "Ordered Dropout").** Width ``p`` keeps the first
  ``ceil(p * C)`` channels of every hidden layer; the output (task head) dimension is never
  dropped. fedmol's nested slicing (:mod:`fedmol.models.slicing`) is exactly this; the grid ``P``
  is fedmol's :data:`~fedmol.models.slicing.WIDTHS` (1 to 1/16) instead of the paper's
  {0.2, ..., 1.0}.
* **Client (§ "FjORD", Algorithm 1).** A partner holds the slice of its device cap ``p_max``
  (:class:`fedmol.fl.devices.DeviceProfile` ``max_width``) and, per mini-batch, draws one
  ``p`` uniformly from ``{p in P : p <= p_max}`` (:class:`WidthSampler`, seeded by the client's
  per-round seed).
* **Self-distillation (§ "Self-distillation" in FjORD's training; hp ``self_distill=True``,
  ``kd_weight=1.0``, ``kd_temperature=1.0``).** Per batch (:func:`fjord_loss`): the teacher is
  the widest affordable sub-network, ``f_{p_max}``, trained on the labels, and for a sampled
  ``p < p_max`` the student ``f_p`` is pulled towards the teacher's *detached* prediction::

      loss = masked_CE(f_{p_max}(x), y) + kd_weight * KD(f_p(x), stopgrad(f_{p_max}(x)))

  with a single optimizer step on the sum (the Flower baseline backpropagates the two terms
  one after the other before one step: the same gradient). When ``p == p_max`` the loss is the CE
  term alone. ``self_distill=False`` is plain OD: ``masked_CE(f_p(x), y)``.
  *Adaptation of the soft targets to molecular tasks* (:func:`distill_loss`): the paper's targets
  are softmax distributions over classes. For multi-task binary classification each task is its
  own two-class problem, so the soft target of task ``t`` is ``sigmoid(teacher_t / T)`` and the
  term is BCE-with-logits of ``student_t / T`` against it, times ``T^2`` (equal to
  ``KL(teacher || student)`` up to the teacher's entropy, a constant: same gradient). Soft
  targets exist for every task of every molecule, so the KD term averages over *all* task
  entries, including those without a label (that is where distillation adds information the
  labels do not carry). Regression: MSE between the student's and the detached teacher's
  predictions, over all entries. *Deviation:* the paper mixes ``(1 - a) CE + a KL``; the Flower
  baseline and this implementation add the terms (``kd_weight`` plays ``a / (1 - a)``).
* **BatchNorm (paper and Flower baseline).** Affine parameters shared and sliced; running
  statistics kept separately per width (``norm="fjord_bn"``): a forward at ``p`` in training
  updates only the statistics of ``p``, and evaluation at ``p`` uses them.
* **Server (Algorithm 1).** For every ``p`` in descending order, each tensor's width-``p`` slice
  becomes the ``n_k``-weighted mean over the partners with ``p_max >= p``. Because slices are
  nested, a coordinate's final value is the one written by the smallest ``p`` whose slice holds
  it, i.e. the ``n_k``-weighted mean over the partners whose cap slice contains the coordinate
  -- which is exactly :func:`fedmol.models.slicing.aggregate_nested` over the partners' full cap
  slices with weights ``n_k`` (one call, no per-``p`` loop). Per-width BN statistics: a partner
  returns only those of the widths it ran this round (the others would be the stale values it
  received), so width ``p``'s statistics are the mean over the partners that trained at ``p``. Coordinates no
  participant holds keep their old value. ``tests/fl/test_fjord.py`` checks the equivalence
  against the per-``p`` loop on hand-made tensors.
* **Widths served:** ``WIDTHS`` down to the smallest device cap.

Other choices:

* Local optimizer: Adam (lr 1e-3), fedmol's molecular default for every algorithm, rebuilt every
  round (the baseline uses SGD); ``local_epochs`` passes, ``max_local_steps`` per pass, gradient
  clip ``clip`` as in :attr:`Algorithm.base_defaults`.
* hp ``p_grid="all"`` (default): a partner samples from every width of ``WIDTHS`` up to its cap,
  as the paper samples from its whole grid ``P`` -- including widths below the smallest cap that
  are not served; ``p_grid="served"`` restricts the draw to :meth:`FjORD.widths`.
* Batches with fewer than two graphs are skipped (BatchNorm), as in
  :func:`fedmol.training.train_epoch`.
* Private heads (run option ``heads="private"``, :mod:`fedmol.fl.algorithm`; also FedResCuE):
  supported; the nested aggregation covers the trunk only and each partner keeps its own task
  head (at full width, trained at its cap's slice).

Differential privacy (hp ``dp_clip``; :mod:`fedmol.fl.privacy`, also for FedResCuE): DP-FedAvg on
the nested slices -- a partner clips the update of its cap slice (weights, biases and its per-width
BN statistics, one joint norm), the server replaces the ``n_k`` weights by uniform ones and adds
Gaussian noise to each coordinate's sum over the partners whose slice holds it.

The pieces FedResCuE reuses: :func:`affordable_widths`, :class:`WidthSampler`,
:func:`distill_loss`, :func:`fjord_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
import torch.nn.functional as F
from torch import Tensor, nn

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import Algorithm, HParams, LocalData, PartnerInfo
from fedmol.fl.message import Message
from fedmol.models import masked_loss, slicing
from fedmol.training import seed_everything

__all__ = ["FjORD", "affordable_widths", "WidthSampler", "distill_loss", "fjord_loss"]

_TOL = 1e-9


# ------------------------------------------------------------------------------------ reusable pieces


def affordable_widths(cap: float, grid: Sequence[float] = slicing.WIDTHS) -> tuple[float, ...]:
    """The widths of ``grid`` not above ``cap``, largest first (raises if there is none)."""
    out = tuple(sorted({float(w) for w in grid if float(w) <= float(cap) + _TOL}, reverse=True))
    if not out:
        raise FedmolError(f"no width of {tuple(grid)} fits a device capped at width {cap}")
    return out


class WidthSampler:
    """Ordered-dropout width sampler (FjORD Sec. 3.2): each call draws one ``p`` uniformly from
    :func:`affordable_widths` ``(cap, grid)``.

    Deterministic for a seed (its own NumPy generator, independent of torch's global state and
    of the data loader's generator). ``cap`` is the widest affordable width, ``p_max``.
    """

    def __init__(self, cap: float, seed: int, grid: Sequence[float] = slicing.WIDTHS) -> None:
        self.choices = affordable_widths(cap, grid)
        self.cap = self.choices[0]
        self.rng = np.random.default_rng([int(seed), 0xF0D])

    def __call__(self) -> float:
        return self.choices[int(self.rng.integers(len(self.choices)))]

    def draw(self, n: int) -> list[float]:
        """``n`` successive draws."""
        return [self() for _ in range(n)]


def distill_loss(student: Tensor, teacher: Tensor, task_type: str, temperature: float = 1.0) -> Tensor:
    """Self-distillation term: the student's predictions against the teacher's *detached* ones.

    * classification (multi-task binary, logits): ``T^2 * mean_{i,t} BCEWithLogits(s_it / T,
      sigmoid(t_it / T))`` -- per-task soft targets, over all entries (labelled or not);
    * regression: ``mean_{i,t} (s_it - t_it)^2``.

    The teacher is detached here, so no gradient ever reaches the teacher's forward pass through
    this term.
    """
    target = teacher.detach()
    if task_type == "classification":
        T = float(temperature)
        return F.binary_cross_entropy_with_logits(student / T, torch.sigmoid(target / T)) * (T * T)
    if task_type == "regression":
        return F.mse_loss(student, target)
    raise ValueError(f"unknown task_type {task_type!r}; known: classification, regression")


def fjord_loss(model: nn.Module, batch, p: float, p_max: float, kd_weight: float = 1.0,
               self_distill: bool = True, temperature: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """FjORD's per-batch loss at sampled width ``p`` on a client capped at ``p_max``.

    ``self_distill``: ``masked_CE(f_{p_max}(x), y) + kd_weight * distill_loss(f_p(x), f_{p_max}(x))``
    (the second term only when ``p < p_max``); else plain ordered dropout ``masked_CE(f_p(x), y)``.
    Returns ``(loss, {"ce": ..., "kd": ...})``.
    """
    if not self_distill:
        ce = masked_loss(model(batch, width=p), batch.y, model.task_type)
        return ce, {"ce": float(ce.detach()), "kd": 0.0}
    teacher = model(batch, width=p_max)
    ce = masked_loss(teacher, batch.y, model.task_type)
    if p >= p_max - _TOL:
        return ce, {"ce": float(ce.detach()), "kd": 0.0}
    kd = distill_loss(model(batch, width=p), teacher, model.task_type, temperature)
    return ce + float(kd_weight) * kd, {"ce": float(ce.detach()), "kd": float(kd.detach())}


# ------------------------------------------------------------------------------------ algorithm


class FjORDHParams(HParams):
    kd_weight: float = Field(1.0, ge=0, description="weight of the self-distillation term")
    self_distill: bool = Field(True, description="distil the sampled width from the partner's widest (false: "
                               "plain ordered dropout)")
    kd_temperature: float = Field(1.0, gt=0, description="temperature of the distillation targets")
    p_grid: Literal["all", "served"] = Field("all", description="widths a partner samples from: all of WIDTHS up "
                                             "to its cap, or only the served ones")


class FjORD(Algorithm):
    name = "fjord"
    norm = "fjord_bn"
    scaler = False
    accepts_partial_uploads = True
    defaults = FjORDHParams.defaults(own_only=True)
    hparam_schema = FjORDHParams
    supports_dp = True  # DP-FedAvg (fedmol.fl.privacy) through Algorithm.merge

    def init(self, partners: list[PartnerInfo]) -> None:
        if not partners:
            raise FedmolError("fjord: needs at least one partner")
        super().init(partners)

    def widths(self) -> tuple[float, ...]:
        return self.nested_widths()

    def grid(self) -> tuple[float, ...]:
        """The grid ``P`` partners sample from (hp ``p_grid``)."""
        return tuple(slicing.WIDTHS) if self.hp["p_grid"] == "all" else self.widths()

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        cap = affordable_widths(partner.device.max_width, self.grid())[0]
        return self.send(rnd, partner, cap, grid=list(self.grid()))

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        if replies:
            self.load(self.merge(rnd, self.model.state_dict(), [(m.arrays, m.metrics["n_train"]) for _, m in replies]))
        return {}

    # ---------------------------------------------------------------- client side
    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        """Local FjORD training: per batch a seeded OD width and one self-distillation step."""
        seed = msg.config["seed"]
        seed_everything(seed)
        model = cls.client_model(msg)  # the standalone slice of the cap p_max
        hp = msg.config["hp"]
        sampler = WidthSampler(float(msg.config["width"]), seed, msg.config.get("grid", slicing.WIDTHS))

        def loss_fn(m, batch):
            return fjord_loss(m, batch, sampler(), sampler.cap, hp["kd_weight"], hp["self_distill"],
                              hp["kd_temperature"])
        return cls.reply(model, data, cls.local_train(model, msg, data, loss_fn=loss_fn))
