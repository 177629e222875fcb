"""Federated gradient-boosted trees: bagging and cyclic, the tree federations Flower ships.

Both grow one boosted ensemble (:class:`fedmol.models.trees.TreeEnsemble`, on ECFP4 like the
``gbt-ecfp4`` reference, LightGBM with that reference's settings, one model per task on the rows
labelled for it) through the same round loop, transports and scoring as the neural algorithms:

* ``gbt-bagging`` -- every round each sampled partner receives the ensemble, boosts
  ``trees_per_round`` new trees on its own molecules from the ensemble's scores (LightGBM's
  ``init_score``) and sends them; the server adds every partner's trees (Flower's
  ``FedXgbBagging``; Ma et al., "Gradient-less federated gradient boosting trees with learnable
  learning rates", EuroMLSys 2023, Sec. 3). Deviation, hyperparameter ``combine``: ``"mean"``
  (default) weights each partner's trees of a task by its share of the round's molecules labelled
  for the task, so a round moves the ensemble by one boosting step (the partners' steps
  averaged); ``"sum"`` adds them with weight 1 as Flower does (K partners take K steps from the
  same scores, which overshoots with K).
* ``gbt-cyclic`` -- the ensemble visits one partner per round in partner order (round r, from 0:
  partner ``r mod K``), which adds its trees (Flower's ``FedXgbCyclic``; Ma et al. Sec. 3). A partner
  offline or not sampled at its turn leaves the round without an update. Early stopping's patience
  counts whole cycles (``patience x K`` rounds): the shared rule counts rounds in which every
  partner trains, and a cyclic round trains one. With one partner this is local LightGBM training
  with ``rounds x trees_per_round`` trees (a test checks it, without row and feature subsampling,
  whose random draws restart at each call).

System heterogeneity: a partner adds ``ceil(trees_per_round x max_width)`` trees (at least 1; its
device's compute cap scales the trees, not a width), and every partner can run the ensemble (a
partner is served whatever its cap). A truncated upload keeps the first trees in boosting order
(a prefix of a boosting sequence is a model); a lost one adds nothing. A tree is added only to the
task it was fitted for; a partner whose labelled rows for a task hold one class (or none) adds no
tree for it that round.

Same start for every method does not apply: an ensemble starts empty (as the ``gbt-ecfp4``
references do), whatever the run's backbone settings (``config.json``'s ``model`` says ``trees``).
A partner's local steps are its boosting iterations.

What leaves a site (``sent.jsonl``): the trees -- split features (which fingerprint bits, i.e.
substructures, separate its molecules), thresholds and leaf values (the boosting step's value on
the molecules of each leaf: at least ``min_child_samples`` of them) -- and ``task_counts``, its
molecules labelled per task (the weight of its trees). Differential privacy is refused; private
heads are refused (an ensemble has no trunk to share without its head). Neural hyperparameters
(``lr``, ``batch_size``, ...) are accepted, as every algorithm shares them in a suite, and unused.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import Algorithm, HParams, LocalData, PartnerInfo, client_seed, sent_hparams
from fedmol.fl.message import Message
from fedmol.models.trees import TREE_KEYS, TreeEnsemble, check_trees, concat_trees, empty_trees, trees_of_booster


class TreeHParams(HParams):
    trees_per_round: int = Field(10, ge=1, le=10_000, description="trees a partner with a full-width device adds "
                                 "per task and round (scaled by its width cap)")
    learning_rate: float = Field(0.05, gt=0, le=1, description="LightGBM's shrinkage of every tree")
    max_depth: int = Field(6, ge=1, le=64, description="LightGBM's max_depth")
    num_leaves: int = Field(31, ge=2, le=4096, description="LightGBM's num_leaves")
    min_child_samples: int = Field(20, ge=1, description="LightGBM's min_data_in_leaf: fewest molecules per leaf")
    subsample: float = Field(0.8, gt=0, le=1, description="LightGBM's bagging_fraction (1: no row subsampling)")
    colsample: float = Field(0.5, gt=0, le=1, description="LightGBM's feature_fraction (1: every feature)")


class BaggingHParams(TreeHParams):
    combine: Literal["mean", "sum"] = Field("mean", description="mean: a partner's trees weighted by its share of "
                                            "the round's labelled molecules; sum: weight 1 (Flower's bagging)")


def lgb_params(hp: dict, task_type: str, seed: int) -> dict:
    """LightGBM's settings of a partner's boosting (the ``gbt-ecfp4`` reference's, one thread, deterministic)."""
    return dict(objective="binary" if task_type == "classification" else "regression",
                learning_rate=hp["learning_rate"], max_depth=hp["max_depth"], num_leaves=hp["num_leaves"],
                min_data_in_leaf=hp["min_child_samples"], bagging_fraction=hp["subsample"],
                bagging_freq=1 if hp["subsample"] < 1 else 0, feature_fraction=hp["colsample"], seed=seed,
                num_threads=1, deterministic=True, force_row_wise=True, verbose=-1)


def boost(model: TreeEnsemble, X: np.ndarray, Y: np.ndarray, n_trees: int, hp: dict, seed: int
          ) -> tuple[dict[str, torch.Tensor], list[int]]:
    """``n_trees`` new trees per task fitted on the rows labelled for it, boosted from ``model``'s
    scores on ``X``, in boosting order (tree i of every task, then tree i + 1); and the labelled rows
    per task (0 where nothing was learned: one class or no label)."""
    import lightgbm as lgb

    base, have = model.raw(X), set(model.task.tolist())
    parts, counts = [], []
    for t in range(model.num_tasks):
        m = ~np.isnan(Y[:, t])
        y = Y[m, t]
        if y.size == 0 or (model.task_type == "classification" and y.min() == y.max()):
            counts.append(0)
            continue
        data = lgb.Dataset(X[m].astype(np.float32), y, init_score=base[m, t] if t in have else None,
                           params={"verbose": -1})
        params = lgb_params(hp, model.task_type, (seed + t) % (2**31 - 1))
        booster = lgb.train(params, data, num_boost_round=n_trees)
        parts.append(trees_of_booster(booster, t))
        counts.append(int(m.sum()))
    if not parts:
        return empty_trees(), counts
    trees = concat_trees(*parts)
    order = torch.argsort(torch.cat([torch.arange(len(p["task"])) for p in parts]), stable=True)
    return {k: v[order] for k, v in trees.items()}, counts


class BoostedTrees(Algorithm):
    """What both tree federations share: the ensemble, the message, the partner's boosting."""

    norm = "none"
    defaults = TreeHParams.defaults(own_only=True)
    hparam_schema = TreeHParams
    accepts_partial_uploads = True
    trains_backbone = False  # its own ensemble, which grows by the trees added
    model_disclosure = ("the trees each participating partner fitted this round on its molecules: split features "
                        "(fingerprint bits), thresholds and leaf values (the boosting step on each leaf's molecules)")
    disclosures = {"task_counts": "molecules labelled per task (the weight of the partner's trees)"}
    dp_refusal = "trees reveal split features and leaf values that DP-FedAvg's clipping and noise do not cover"
    private_heads_refusal = "a tree ensemble has no trunk that could be federated without its head"

    def __init__(self, model_config: dict, hparams: dict | None = None, seed: int = 0, heads: str = "shared"):
        super().__init__(model_config, hparams, seed, heads)
        from fedmol.data.fingerprints import ECFP4

        self.model_config = dict(name="trees", num_tasks=model_config.get("num_tasks", 1),
                                 task_type=model_config.get("task_type", "classification"), width=1.0,
                                 fingerprint=f"ecfp4 r={ECFP4['radius']} {ECFP4['bits']} bits")

    @classmethod
    def serving_cap(cls, cap: float) -> float:
        return 1.0  # any device runs a tree ensemble; its cap limits the trees it fits

    def init(self, partners: list[PartnerInfo]) -> None:
        self.partners = list(partners)
        self.model = TreeEnsemble(**self.model_config)

    def trees_for(self, partner: PartnerInfo) -> int:
        return max(1, math.ceil(self.hp["trees_per_round"] * partner.device.max_width - 1e-9))

    def send(self, rnd: int, partner: PartnerInfo, width: float = 1.0, **extra) -> Message:
        config = dict(round=rnd, pid=partner.pid, width=1.0, model=self.model_config, trees=self.trees_for(partner),
                      seed=client_seed(self.seed, rnd, partner.pid), hp=sent_hparams(self.hp), **extra)
        return Message(arrays=self.model.trees(), config=config)

    def upload_problem(self, reply: Message) -> str | None:
        """Why a reply's trees cannot be added (None: they can; :func:`check_trees`)."""
        return None if self.accept([(None, reply)])[0] else "reply is not a valid tree ensemble with task_counts"

    def accept(self, replies: list[tuple[PartnerInfo, Message]]) -> tuple[list, int]:
        """The replies whose trees are a valid ensemble (an upload is untrusted), and how many were not."""
        good = []
        for p, m in replies:
            counts = m.arrays.get("task_counts")
            if not (isinstance(counts, torch.Tensor) and counts.dtype == torch.float64
                    and tuple(counts.shape) == (self.model.num_tasks,) and bool((counts >= 0).all())):
                continue
            try:
                trees = check_trees({k: v for k, v in m.arrays.items() if k != "task_counts"}, self.model.num_tasks,
                                    self.model.num_features)
            except FedmolError:  # a malformed upload is rejected, not fatal
                continue
            good.append((p, trees, counts))
        return good, len(replies) - len(good)

    @classmethod
    def truncate_upload(cls, arrays: dict, msg: Message, rng, spec=None) -> tuple[dict, str] | None:
        """What arrives of a truncated upload: its first trees (a random number, fewer than sent)."""
        n = len(arrays["task"])
        if n < 1:
            return None
        keep = int(rng.integers(n))
        return {k: (v[:keep] if k in TREE_KEYS else v) for k, v in arrays.items()}, f"upload truncated at {keep} trees"

    @classmethod
    def shipped_model(cls, model_config: dict) -> TreeEnsemble:
        return TreeEnsemble(**model_config)

    @classmethod
    def client_model(cls, msg: Message) -> TreeEnsemble:
        model = cls.shipped_model(msg.config["model"])
        model.load_state_dict(msg.arrays)
        return model

    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        from fedmol.data.fingerprints import ecfp4_of
        from fedmol.fl.references import labels_of

        model = cls.client_model(msg)
        X, Y = ecfp4_of(list(data.train.smiles)), labels_of(data.train)
        trees, counts = boost(model, X, Y, int(msg.config["trees"]), msg.config["hp"], int(msg.config["seed"]))
        return Message(arrays={**trees, "task_counts": torch.tensor(counts, dtype=torch.float64)},
                       metrics={"n_train": float(len(data.train)), "trees": float(len(trees["task"])),
                                "steps": float(msg.config["trees"]), "samples": float(max(counts, default=0))})

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        good, rejected = self.accept(replies)
        if good:
            self.model.add(concat_trees(*[self.weighted(trees, counts, good) for _, trees, counts in good]))
        return {"trees": float(len(self.model.task)), **({"rejected": float(rejected)} if rejected else {})}

    def weighted(self, trees: dict, counts, good: list) -> dict:
        """A partner's trees with their weights in the ensemble (1 unless the algorithm says otherwise)."""
        return trees


class TreeBagging(BoostedTrees):
    name = "gbt-bagging"
    defaults = BaggingHParams.defaults(own_only=True)
    hparam_schema = BaggingHParams

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        return self.send(rnd, partner)

    def weighted(self, trees: dict, counts, good: list) -> dict:
        if self.hp["combine"] == "sum":
            return trees
        total = sum(c for _, _, c in good)  # molecules labelled per task over the round's partners
        share = torch.where(total > 0, counts / total.clamp(min=1), torch.zeros_like(total))
        return {**trees, "weight": trees["weight"] * share[trees["task"].long()]}


class TreeCyclic(BoostedTrees):
    name = "gbt-cyclic"

    def patience_rounds(self, patience: int) -> int:
        return int(patience) * len(self.partners)  # one partner a round: patience counts whole cycles

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        order = sorted(p.pid for p in self.partners)
        return self.send(rnd, partner) if partner.pid == order[rnd % len(order)] else None
