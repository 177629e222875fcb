"""FedResCuE (Zhu et al., ICML 2022, "Resilient and Communication Efficient Learning for
Heterogeneous Federated Systems"): self-distilling nested networks for arbitrary devices.

**The paper's code is not public.** This is a reconstruction from its abstract (PMLR 162:27504)
and fedmol's reference notes, with every assumption stated:

1. *Nested, prunable networks.* One set of weights, ordered widths as in FjORD (the first
   ``ceil(r * d)`` channels of every hidden layer form the width-r model); each partner holds the
   slice of its device cap ``p_max`` (the server's ``configure`` is FjORD's).
2. *Self-distillation, progressive* (assumption: the abstract's "capture knowledge in a nested,
   progressive manner"). At every local step the partner runs a set of widths
   ``p_max = w_0 > w_1 > ... > w_m`` (hp ``width_sampling``: ``"all"`` = every affordable width
   of the grid, default; ``"sandwich"`` = p_max, the narrowest and one random width between;
   ``"one"`` = p_max and one random narrower width, FjORD-like). The loss is
   ``CE(f_{w_0}(x), y) + kd_weight * sum_{i>=1} KD(f_{w_i}(x), f_{w_{i-1}}(x).detach())`` with
   hp ``direction``: ``"progressive"`` (default: each width learns from the next wider one) or
   ``"from_max"`` (every width learns from p_max). ``KD`` is FjORD's :func:`distill_loss`
   (per-task sigmoid soft targets / MSE). One optimizer step per batch on the sum.
3. *Resilient, ordered uploads.* The partner's upload is ordered from the narrowest ring
   outward, so any prefix of it is the sub-model of some width: a connection that breaks after
   width w still delivers a valid width-w model. In fedmol's simulation the harness models this
   for every algorithm with ``accepts_partial_uploads`` (HeteroFL, FjORD, FedResCuE) through the
   device option ``p_truncate``: the delivered arrays are
   ``slicing.sub_state_dict(upload, w)`` for a random narrower w.
4. *Aggregation* of each coordinate over exactly the partners that delivered it, weighted by
   their training-set size (:func:`fedmol.models.slicing.aggregate_nested`); coordinates nobody
   delivered keep their value. BN keeps per-width running statistics ("fjord_bn").

Differential privacy (hp ``dp_clip``): as FjORD's (:mod:`fedmol.fl.privacy`, uniform weights and
noise in the nested aggregation of item 4).

Private heads (run option ``heads="private"``): as FjORD's -- the trunk is aggregated, each
partner keeps its own task head.

The pieces are swappable through hyperparameters (``width_sampling``, ``direction``,
``kd_weight``, ``kd_temperature``, ``ce_all_widths`` to add the supervised loss at every width).
Deviation risk: the paper may weight or schedule the distillation differently; the defaults here
are the simplest faithful reading.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import LocalData
from fedmol.fl.fjord import FjORD, FjORDHParams, affordable_widths, distill_loss
from fedmol.fl.message import Message
from fedmol.models import masked_loss, slicing
from fedmol.training import seed_everything

SAMPLINGS = ("all", "sandwich", "one")
DIRECTIONS = ("progressive", "from_max")


def step_widths(choices: tuple[float, ...], how: str, rng: np.random.Generator) -> list[float]:
    """The widths run at one local step, widest first (``choices`` = affordable widths, widest first)."""
    if how == "all" or len(choices) <= 2:
        return list(choices)
    if how == "sandwich":
        middle = choices[1:-1]
        return [choices[0], middle[int(rng.integers(len(middle)))], choices[-1]]
    if how == "one":
        return [choices[0], choices[1 + int(rng.integers(len(choices) - 1))]]
    raise FedmolError(f"fedrescue: width_sampling must be one of {SAMPLINGS}, got {how!r}")


def self_distillation_loss(model, batch, widths: list[float], direction: str = "progressive",
                           kd_weight: float = 1.0, temperature: float = 1.0, ce_all_widths: bool = False):
    """CE at the widest width + distillation of each narrower width from its teacher (see module doc).

    Returns ``(loss, parts)``; ``parts["teachers"]`` lists (student width, teacher width) pairs.
    """
    outs = [model(batch, width=w) for w in widths]
    loss = masked_loss(outs[0], batch.y, model.task_type)
    ce = float(loss.detach())
    kd_total, pairs = 0.0, []
    for i in range(1, len(widths)):
        j = i - 1 if direction == "progressive" else 0
        kd = distill_loss(outs[i], outs[j], model.task_type, temperature)
        loss = loss + kd_weight * kd
        if ce_all_widths:
            loss = loss + masked_loss(outs[i], batch.y, model.task_type)
        kd_total += float(kd.detach())
        pairs.append((widths[i], widths[j]))
    return loss, {"ce": ce, "kd": kd_total, "teachers": pairs}


class FedResCuEHParams(FjORDHParams):
    width_sampling: Literal[SAMPLINGS] = Field("all", description="widths run at every step: all affordable, "
                                               "sandwich (cap, narrowest, one between) or one (cap and one narrower)")
    direction: Literal[DIRECTIONS] = Field("progressive", description="each width learns from the next wider "
                                           "(progressive) or from the cap (from_max)")
    ce_all_widths: bool = Field(False, description="add the supervised loss at every width, not only the cap")


class FedResCuE(FjORD):
    name = "fedrescue"
    accepts_partial_uploads = True
    defaults = FedResCuEHParams.defaults(own_only=True)
    hparam_schema = FedResCuEHParams

    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        seed = msg.config["seed"]
        seed_everything(seed)
        model = cls.client_model(msg)
        hp = msg.config["hp"]
        choices = affordable_widths(float(msg.config["width"]), msg.config.get("grid", slicing.WIDTHS))
        rng = np.random.default_rng([seed, 0x5E5C])

        def loss_fn(m, batch):
            loss, parts = self_distillation_loss(m, batch, step_widths(choices, hp["width_sampling"], rng),
                                                 hp["direction"], float(hp["kd_weight"]), float(hp["kd_temperature"]),
                                                 bool(hp["ce_all_widths"]))
            return loss, {"ce": parts["ce"], "kd": parts["kd"]}
        return cls.reply(model, data, cls.local_train(model, msg, data, loss_fn=loss_fn))
