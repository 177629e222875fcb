"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1).

Server: send the global model to the sampled partners; each runs ``local_epochs`` epochs of
mini-batch training (ClientUpdate); the new global model is the sample-weighted average
``w = sum_k n_k w_k / sum_k n_k`` over the partners that answered.

Heterogeneous devices (FedAvg has one model, so it cannot use partial widths), hyperparameter
``hetero``:

* ``"drop"`` (default): the model is full width; partners whose device cannot train it sit out.
  This is FedAvg as published, and its cost: the weak partners' data is never used.
* ``"min"``: everyone trains the width the weakest partner can afford (the whole federation is
  held to the smallest model).

BatchNorm: running statistics are averaged with the weights (one convention for every algorithm
in fedmol; ``num_batches_tracked`` takes the maximum). Deviation: Adam (lr 1e-3) replaces plain
SGD as the local optimizer, as in the molecular GNN literature; the optimizer is rebuilt every round.

Differential privacy (hp ``dp_clip``, ``dp_noise``, ``dp_delta``): DP-FedAvg with fixed clipping,
:mod:`fedmol.fl.privacy` -- partners clip their update, the server averages with uniform weights
(instead of ``n_k``) and adds Gaussian noise to the sums.

Private heads (run option ``heads="private"``, :mod:`fedmol.fl.algorithm`): supported; the server
averages the trunk only and each partner keeps its own task head.

Server momentum (hp ``server_momentum``, ``server_lr``; off by default) turns it into FedAvgM (Hsu et
al. 2019), through :class:`fedmol.fl.algorithm.ServerMomentum` (shared by every algorithm).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedmol.fl.algorithm import Algorithm, HParams, PartnerInfo
from fedmol.fl.message import Message


class FedAvgHParams(HParams):
    hetero: Literal["drop", "min"] = Field("drop", description="drop: full width, partners that cannot train it "
                                           "sit out; min: everyone trains the weakest partner's width")


class FedAvg(Algorithm):
    name = "fedavg"
    defaults = FedAvgHParams.defaults(own_only=True)
    hparam_schema = FedAvgHParams
    supports_dp = True  # DP-FedAvg (fedmol.fl.privacy) through Algorithm.merge

    def init(self, partners: list[PartnerInfo]) -> None:
        self.train_width = 1.0 if self.hp["hetero"] == "drop" else min(p.device.max_width for p in partners)
        self.model_config = {**self.model_config, "width": self.train_width}
        super().init(partners)  # the standalone model of the trained width, sliced from the common start

    def widths(self) -> tuple[float, ...]:
        return (self.train_width,)

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        if partner.device.max_width + 1e-9 < self.train_width:
            return None
        return self.send(rnd, partner, self.train_width)

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        if replies:
            self.load(self.merge(rnd, self.model.state_dict(), [(m.arrays, m.metrics["n_train"]) for _, m in replies]))
        return {}
