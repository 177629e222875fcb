"""HeteroFL (Diao, Ding & Tarokh, "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients", ICLR 2021), for multi-task molecular property prediction.

What the paper does, and where it lives here:

* **Sub-model shrinking (paper § "Heterogeneous models").** A client of width rate ``r`` holds
  the first ``ceil(r * C)`` channels of every hidden layer (the leading block of every hidden
  tensor); input vocabularies and the task head's output dimension keep their full size. Slicing
  is :func:`fedmol.models.slicing.sub_state_dict` (the rates are
  :data:`~fedmol.models.slicing.WIDTHS`, 1 to 1/16 as in the paper).
* **Rate assignment (experiments section, "fix" / "dynamic").** hp ``mode="fix"`` (default): a
  partner always trains at its device cap ``DeviceProfile.max_width``. ``mode="dynamic"``: every
  round a partner's rate is redrawn uniformly from the served widths not above its cap (seeded by
  ``(run seed, round, partner)``). *Deviation:* the official code draws dynamic rates from the
  global mix of levels regardless of the client; drawing only affordable rates keeps every
  partner within its device's capacity, which is the premise of this benchmark.
* **Scaler (§ "Scaler").** ``scaler=True``: after every hidden layer the activations are divided
  by ``r`` in training and left alone in evaluation (:class:`fedmol.models.slicing.Scaler`).
* **Static batch normalization, sBN (§ "Static batch normalization").** ``norm="sbn"``: BN layers
  never track running statistics while training (they always normalize with the batch's
  statistics). Before the global model is evaluated at a width, the server asks every partner,
  whatever its cap (a forward pass without gradients; the cap bounds training), for the exact
  per-channel moments of every BN layer's inputs over its training molecules and serves the
  pooled mean and variance over the union of all partners' data: the query of
  :mod:`fedmol.fl.pooled_bn` (:class:`~fedmol.fl.pooled_bn.PooledBNStats`, shared with FedGen),
  where the pass and its batching (hp ``sbn_batch_size``, default 256) are documented. The
  statistics are cached until the weights change (evaluating the same width twice asks the
  partners once).
* **Aggregation (§ "Heterogeneous models").** Each coordinate becomes the *unweighted* mean over
  the partners whose sub-model contains it; coordinates nobody trained this round keep their old
  value (:func:`~fedmol.models.slicing.aggregate_nested` with weight 1 per partner; the official
  code also averages without sample weights).
* **Output layer (non-IID experiments; ``label_split`` in the official code).** The paper lets a
  client update only the output rows of the classes it holds (single-label multiclass).
  *Adaptation to multi-task binary / regression (hp ``head_rule="labelled"``, default):* a
  partner contributes task ``t``'s head row (``head.weight[t]``) and bias (``head.bias[t]``) only
  if its training set has at least one label for task ``t``; each task row is then averaged,
  unweighted, over exactly those partners (tasks nobody labelled keep their old row). The partner
  reports which tasks it labels as a boolean vector ``labelled_tasks`` in its reply. The official
  code additionally masks the logits of absent classes in the softmax; the masked BCE/MSE loss
  (:func:`fedmol.models.masked_loss`) already gives unlabelled tasks exactly zero gradient, so no
  masking is needed here. ``head_rule="all"``: every partner contributes every row.
* **Widths served:** every width of ``WIDTHS`` from 1 down to the smallest device cap.

Other deviations and choices (written down as required):

* **Optimizer.** The official client uses SGD (momentum 0.9, weight decay 5e-4, gradient-norm
  clip 1, optimizer rebuilt each round). fedmol's molecular default is Adam (lr 1e-3, no weight
  decay, no clip; :attr:`Algorithm.base_defaults`) for every algorithm, and HeteroFL keeps it so
  methods differ only in what the papers change. hp ``optimizer="sgd"`` with ``momentum`` (0.9)
  gives the official client; set ``lr``, ``weight_decay=5e-4`` and ``clip=1.0`` alongside. The
  optimizer is rebuilt every round in both cases.
* **BN statistics are not communicated in training rounds.** The sBN buffers are never used in
  training, so they are left out of the model slice sent down and of the replies (fewer bytes);
  the client rebuilds its model with identity statistics.
* **What leaves a partner beyond the weights:** which tasks it has labels for (one boolean per
  task, for the head rule) and, at evaluation time, the per-channel count / sum / sum of squares
  of hidden activations over its training data (sBN). The sBN query traffic (one width slice
  down, ``3 x channels`` float64 numbers per BN layer up, per partner, evaluated width and weight
  version) is counted in ``bytes_up``/``bytes_down`` and written to ``sent.jsonl`` (kind ``query``).
* **No differential privacy** (hp ``dp_clip`` is refused): the sBN query's exact activation sums
  and the ``labelled_tasks`` mask leave the partner outside the clipped, noised update, so
  DP-FedAvg (:mod:`fedmol.fl.privacy`) would not bound what the run reveals.
* The sBN pass's batching: see :mod:`fedmol.fl.pooled_bn`.
* **Private heads** (run option ``heads="private"``, :mod:`fedmol.fl.algorithm`): supported. The
  server aggregates the trunk only (the head rule has nothing to do), each partner keeps its own
  head, and the ``labelled_tasks`` mask, which only the head rule needs, is not sent.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import HEAD_KEYS, Algorithm, HParams, LocalData, PartnerInfo
from fedmol.fl.message import Message
from fedmol.fl.pooled_bn import PooledBNStats, sbn_buffer_keys
from fedmol.models import slicing
from fedmol.training import seed_everything

__all__ = ["HeteroFL", "labelled_tasks", "make_optimizer"]

_TOL = 1e-9
LABELLED = "labelled_tasks"


# ------------------------------------------------------------------------------------ helpers


def labelled_tasks(dataset, num_tasks: int) -> Tensor:
    """Boolean ``[num_tasks]``: whether ``dataset`` has at least one (non-NaN) label per task."""
    if len(dataset) == 0:
        return torch.zeros(num_tasks, dtype=torch.bool)
    y = getattr(dataset, "y", None) if hasattr(dataset, "_data") else None
    if y is None:
        y = torch.cat([d.y.reshape(1, -1) for d in dataset])
    y = torch.as_tensor(y).reshape(-1, num_tasks)
    return (~torch.isnan(y.float())).any(0)


def make_optimizer(params, hp: dict) -> torch.optim.Optimizer:
    """The local optimizer named by ``hp["optimizer"]``: "adam" (fedmol default) or "sgd"
    (official HeteroFL client: momentum ``hp["momentum"]``)."""
    kind = str(hp.get("optimizer", "adam")).lower()
    if kind == "adam":
        return torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    if kind == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                               weight_decay=hp["weight_decay"])
    raise FedmolError(f"unknown optimizer {kind!r}; known: adam, sgd")


# ------------------------------------------------------------------------------------ algorithm


class HeteroFLHParams(HParams):
    mode: Literal["fix", "dynamic"] = Field("fix", description="fix: a partner always trains its cap's width; "
                                            "dynamic: a width drawn every round")
    head_rule: Literal["labelled", "all"] = Field("labelled", description="labelled: a partner updates only the "
                                                  "head rows of tasks it labels; all: every row")
    optimizer: str = Field("adam", pattern=r"(?i)^(adam|sgd)$", description="local optimizer: adam (fedmol) or "
                           "sgd (the official client)", json_schema_extra={"requirement": "'adam' or 'sgd'"})
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optimizer sgd)")
    sbn_batch_size: int = Field(256, ge=1, description="molecules per batch of the static-BN query")


class HeteroFL(PooledBNStats, Algorithm):
    name = "heterofl"
    norm = "sbn"
    scaler = True
    accepts_partial_uploads = True
    disclosures = {LABELLED: "which tasks the partner has at least one training label for (head-row rule)"}
    defaults = HeteroFLHParams.defaults(own_only=True)
    hparam_schema = HeteroFLHParams
    dp_refusal = ("before every evaluation its static-BN query sends each partner's exact per-channel activation "
                  "sums over its training molecules, and its head rule uses each partner's label mask; DP-FedAvg's "
                  "clipping and noise protect neither")

    # ---------------------------------------------------------------- server side
    def init(self, partners: list[PartnerInfo]) -> None:
        if not partners:
            raise FedmolError("heterofl: needs at least one partner")
        super().init(partners)

    def widths(self) -> tuple[float, ...]:
        return self.nested_widths()

    def rate(self, rnd: int, partner: PartnerInfo) -> float:
        """The partner's width rate this round ("fix": its cap; "dynamic": seeded draw)."""
        cap = partner.device.max_width
        if self.hp["mode"] == "fix":
            return float(cap)
        affordable = [w for w in self.widths() if w <= cap + _TOL]
        rng = np.random.default_rng([self.seed, rnd, partner.pid, 4854])
        return float(affordable[int(rng.integers(len(affordable)))])

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        return self._strip_bn(self.send(rnd, partner, self.rate(rnd, partner)))

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        if not replies:
            return {}
        state = self.model.state_dict()
        msgs = [m for _, m in replies]
        body = [({k: v for k, v in m.arrays.items() if k in state and k not in HEAD_KEYS}, 1.0) for m in msgs]
        new = slicing.aggregate_nested(state, body)
        head_state = {k: state[k] for k in HEAD_KEYS if k in state}
        heads = [{k: m.arrays[k] for k in head_state if k in m.arrays} for m in msgs]
        if self.heads == "private":  # no head was sent: the server's stays as it is
            pass
        elif self.hp["head_rule"] == "all":
            new.update(slicing.aggregate_nested(head_state, [(h, 1.0) for h in heads]))
        else:
            num_tasks = self.model.num_tasks
            masks = [m.arrays.get(LABELLED, torch.ones(num_tasks, dtype=torch.bool)).bool() for m in msgs]
            holders = torch.stack(masks, 1)  # [T, partners]
            groups: dict[tuple[int, ...], list[int]] = {}
            for t in range(num_tasks):
                groups.setdefault(tuple(holders[t].nonzero().flatten().tolist()), []).append(t)
            for who, tasks in groups.items():
                agg = slicing.aggregate_nested(head_state, [(heads[i], 1.0) for i in who])
                idx = torch.tensor(tasks)
                for k in head_state:  # row t of the head = task t
                    new[k][idx] = agg[k][idx]
        self.load(new)
        self.weights_changed()
        return {"mean_rate": float(np.mean([float(m.config.get("width", np.nan)) for m in msgs]))}

    # ---------------------------------------------------------------- client side
    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        """Local training of the standalone sub-model (sBN in batch-statistics mode, scaler on)."""
        seed_everything(msg.config["seed"])
        model = cls.client_model(msg)
        hp = msg.config["hp"]
        stats = cls.local_train(model, msg, data, optimizer=lambda params: make_optimizer(params, hp))
        bn_keys = sbn_buffer_keys(model)
        arrays = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in bn_keys}
        if msg.config.get("heads") != "private":  # the head rule's input; private heads have no head rule
            arrays[LABELLED] = labelled_tasks(data.train, model.num_tasks)
        return Message(arrays=arrays, config={"width": float(msg.config["width"])},
                       metrics={"n_train": float(len(data.train)), **stats})
