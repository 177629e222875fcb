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
  statistics). Before the global model is evaluated at a width, :meth:`HeteroFL.query` sends that
  width's slice to every partner; :meth:`HeteroFL.client_query` makes one no-grad pass over the
  partner's training molecules (:func:`~fedmol.models.slicing.recompute_bn_stats`: eval mode, so
  no dropout and no scaler -- the statistics describe the inputs BN sees at evaluation; during
  the pass each BN normalizes with its batch's statistics, as in the official sBN pass) and
  returns, for every BN layer, the *exact* sums ``count``, ``sum`` and
  ``sum of squares`` of that layer's inputs; :meth:`HeteroFL.absorb_query` adds them up, so the
  server's statistics are the pooled mean and (unbiased, as torch's BN) variance over the union
  of all partners' training data. The query goes to every partner, whatever its cap (a forward
  pass without gradients; the cap bounds training), so the statistics cover all the training
  data. :meth:`HeteroFL.eval_model` returns a copy of the global model whose BN layers use them.
  The statistics are cached until the weights change (evaluating the same width twice asks the
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
  of hidden activations over its training data (sBN). The harness counts round traffic only; the
  sBN query traffic (one width slice down, ``3 x channels`` float64 numbers per BN layer up, per
  partner and evaluated width) is not in ``bytes_up``/``bytes_down``.
* **No differential privacy** (hp ``dp_clip`` is refused): the sBN query's exact activation sums
  and the ``labelled_tasks`` mask leave the partner outside the clipped, noised update, so
  DP-FedAvg (:mod:`fedmol.fl.privacy`) would not bound what the run reveals.
* The sBN pass reads the training data in unshuffled batches of ``sbn_batch_size`` molecules
  (default 256; ``None``: the training ``batch_size``). The first BN layer's statistics do not
  depend on it; deeper layers see inputs normalized with their batch's statistics, which come
  closer to the pooled statistics used at evaluation the larger the batch, and the pass is about
  3x cheaper than with batches of 32. One-atom batches cannot be normalized with batch
  statistics; the pass skips batches with fewer than two atoms (only possible for a last batch
  holding a single one-atom molecule).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import Algorithm, LocalData, PartnerInfo
from fedmol.fl.message import Message
from fedmol.models import build, slicing
from fedmol.models.slicing import SliceBatchNorm
from fedmol.training import make_loader, seed_everything, train_epoch

__all__ = ["HeteroFL", "sbn_buffer_keys", "bn_moment_sums", "pool_bn_moments", "labelled_tasks",
           "make_optimizer"]

_TOL = 1e-9
HEAD_KEYS = ("head.weight", "head.bias")
LABELLED = "labelled_tasks"


# ------------------------------------------------------------------------------------ helpers


def sbn_buffer_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the running statistics of every :class:`SliceBatchNorm` in ``model``."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, SliceBatchNorm):
            for buf, _ in m.named_buffers(recurse=False):
                keys.add(f"{name}.{buf}" if name else buf)
    return keys


def _bn_modules(model: nn.Module) -> list[tuple[str, SliceBatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SliceBatchNorm)]


def _batches_with_two_atoms(loader: Iterable) -> Iterator:
    for batch in loader:
        if batch.num_nodes >= 2:
            yield batch


def bn_moment_sums(model: nn.Module, dataset, width: float, batch_size: int = 32) -> dict[str, Tensor]:
    """Exact per-channel moments of every BN layer's input over ``dataset`` at ``width``.

    One no-grad pass (:func:`slicing.recompute_bn_stats`: eval mode, each BN normalizing with its
    batch's statistics) with forward pre-hooks that add up, per BN layer ``name``, the number of
    rows (``name.count``, shape ``[1]``), the per-channel sum (``name.sum``) and sum of squares
    (``name.sumsq``) of its input, in float64. Sums from disjoint data sets add up to the sums
    over their union (given the same batches), which is what makes the server's pooling exact.
    """
    sums: dict[str, Tensor] = {}
    handles = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().to(torch.float64)
            c = x.shape[1]
            if f"{name}.sum" not in sums:
                sums[f"{name}.count"] = torch.zeros(1, dtype=torch.float64)
                sums[f"{name}.sum"] = torch.zeros(c, dtype=torch.float64)
                sums[f"{name}.sumsq"] = torch.zeros(c, dtype=torch.float64)
            sums[f"{name}.count"] += x.shape[0]
            sums[f"{name}.sum"] += x.sum(0)
            sums[f"{name}.sumsq"] += x.square().sum(0)
        return fn

    bns = _bn_modules(model)
    for name, m in bns:
        handles.append(m.register_forward_pre_hook(hook(name)))
    try:
        loader = make_loader(dataset, batch_size, shuffle=False)
        slicing.recompute_bn_stats(model, _batches_with_two_atoms(loader), width)
    finally:
        for h in handles:
            h.remove()
    for name, m in bns:  # a partner without usable batches reports zero counts
        if f"{name}.sum" not in sums:
            c = slicing.sliced_dim(m.num_features, width)
            sums[f"{name}.count"] = torch.zeros(1, dtype=torch.float64)
            sums[f"{name}.sum"] = torch.zeros(c, dtype=torch.float64)
            sums[f"{name}.sumsq"] = torch.zeros(c, dtype=torch.float64)
    return sums


def pool_bn_moments(replies: Iterable[dict[str, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """``{bn layer: (mean, var)}`` from the partners' :func:`bn_moment_sums` (count-weighted).

    ``mean = sum / count``; ``var = (sumsq - count * mean^2) / (count - 1)`` (unbiased, like
    torch's BN running variance), clamped at 0. Layers without any row keep identity statistics.
    """
    total: dict[str, Tensor] = {}
    for r in replies:
        for k, v in r.items():
            total[k] = total[k] + v if k in total else v.to(torch.float64).clone()
    out = {}
    for key in total:
        if not key.endswith(".count"):
            continue
        name = key[: -len(".count")]
        n, s, ss = total[key], total[f"{name}.sum"], total[f"{name}.sumsq"]
        if float(n) <= 0:
            out[name] = (torch.zeros_like(s), torch.ones_like(s))
            continue
        mean = s / n
        var = ((ss - n * mean.square()) / (n - 1).clamp_min(1.0)).clamp_min(0.0)
        out[name] = (mean, var)
    return out


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


class HeteroFL(Algorithm):
    name = "heterofl"
    norm = "sbn"
    scaler = True
    accepts_partial_uploads = True
    disclosures = {LABELLED: "which tasks the partner has at least one training label for (head-row rule)"}
    defaults = dict(mode="fix", head_rule="labelled", optimizer="adam", momentum=0.9, sbn_batch_size=256)
    dp_refusal = ("before every evaluation its static-BN query sends each partner's exact per-channel activation "
                  "sums over its training molecules, and its head rule uses each partner's label mask; DP-FedAvg's "
                  "clipping and noise protect neither")

    # ---------------------------------------------------------------- server side
    def init(self, partners: list[PartnerInfo]) -> None:
        if self.hp["mode"] not in ("fix", "dynamic"):
            raise FedmolError(f"heterofl: mode must be 'fix' or 'dynamic', got {self.hp['mode']!r}")
        if self.hp["head_rule"] not in ("labelled", "all"):
            raise FedmolError(f"heterofl: head_rule must be 'labelled' or 'all', got {self.hp['head_rule']!r}")
        if str(self.hp["optimizer"]).lower() not in ("adam", "sgd"):
            raise FedmolError(f"heterofl: optimizer must be 'adam' or 'sgd', got {self.hp['optimizer']!r}")
        if not partners:
            raise FedmolError("heterofl: needs at least one partner")
        super().init(partners)
        self._bn_keys = sbn_buffer_keys(self.model)
        self._version = 0  # bumped whenever the weights change
        self._bn_stats: dict[float, tuple[int, dict[str, Tensor]]] = {}  # width -> (version, stats)

    def widths(self) -> tuple[float, ...]:
        smallest = min(p.device.max_width for p in self.partners)
        return tuple(w for w in slicing.WIDTHS if w >= smallest - _TOL)

    def rate(self, rnd: int, partner: PartnerInfo) -> float:
        """The partner's width rate this round ("fix": its cap; "dynamic": seeded draw)."""
        cap = partner.device.max_width
        if self.hp["mode"] == "fix":
            return float(cap)
        affordable = [w for w in self.widths() if w <= cap + _TOL]
        rng = np.random.default_rng([self.seed, rnd, partner.pid, 4854])
        return float(affordable[int(rng.integers(len(affordable)))])

    def _strip_bn(self, msg: Message) -> Message:
        msg.arrays = {k: v for k, v in msg.arrays.items() if k not in self._bn_keys}
        return msg

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
        if self.hp["head_rule"] == "all":
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
        self._version += 1
        return {"mean_rate": float(np.mean([float(m.config.get("width", np.nan)) for m in msgs]))}

    # -- static BN
    def query(self, width: float) -> Message | None:
        width = float(width)
        cached = self._bn_stats.get(width)
        if cached is not None and cached[0] == self._version:
            return None  # the statistics of these weights at this width are known
        config = dict(width=width, model=self.model_config, hp=dict(self.hp), purpose="sbn")
        return self._strip_bn(Message(arrays=slicing.sub_state_dict(self.model, width), config=config))

    def absorb_query(self, width: float, replies: list[tuple[PartnerInfo, Message]]) -> None:
        pooled = pool_bn_moments(m.arrays for _, m in replies)
        stats: dict[str, Tensor] = {}
        for name, (mean, var) in pooled.items():
            stats[f"{name}.running_mean"] = mean.to(torch.float32)
            stats[f"{name}.running_var"] = var.to(torch.float32)
        self._bn_stats[float(width)] = (self._version, stats)

    def eval_model(self, width: float) -> nn.Module:
        cached = self._bn_stats.get(float(width))
        if cached is None or cached[0] != self._version:
            raise FedmolError(f"heterofl: no static-BN statistics for width {width} of the current weights; "
                              "run query(width) at the partners and absorb_query first")
        model = copy.deepcopy(self.model)
        slicing.load_sub_state_dict(model, cached[1], float(width), strict=False)
        return model.eval()

    def checkpoint(self) -> dict:
        """The weights and the static-BN statistics already pooled for them (no query repeated)."""
        ck = super().checkpoint()
        ck["sbn"] = {w: stats for w, (version, stats) in self._bn_stats.items() if version == self._version}
        return ck

    def restore(self, checkpoint: dict) -> None:
        super().restore(checkpoint)
        self._version += 1  # other weights: only the checkpoint's own statistics are valid for them
        self._bn_stats = {w: (self._version, stats) for w, stats in checkpoint["sbn"].items()}

    def state(self) -> dict[str, Tensor]:
        """Global weights; BN running statistics are the pooled full-width sBN statistics when they
        were computed for these weights (else identity)."""
        cached = self._bn_stats.get(1.0)
        model = self.model
        if cached is not None and cached[0] == self._version:
            model = copy.deepcopy(self.model)
            slicing.load_sub_state_dict(model, cached[1], 1.0, strict=False)
        return {k: v.detach().contiguous() for k, v in model.state_dict().items()}

    # ---------------------------------------------------------------- client side
    @classmethod
    def client_model(cls, msg: Message) -> nn.Module:
        """The standalone width model; sBN buffers absent from the message stay identity."""
        model = build(**{**msg.config["model"], "width": msg.config["width"]})
        missing, unexpected = model.load_state_dict(msg.arrays, strict=False)
        bad = set(missing) - sbn_buffer_keys(model)
        if bad or unexpected:
            raise KeyError(f"heterofl message does not match the model: missing {sorted(bad)}, "
                           f"unexpected {sorted(unexpected)}")
        return model

    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        """Local training of the standalone sub-model (sBN in batch-statistics mode, scaler on)."""
        seed_everything(msg.config["seed"])
        model = cls.client_model(msg)
        hp = msg.config["hp"]
        opt = make_optimizer(model.parameters(), hp)
        loader = make_loader(data.train, hp["batch_size"], shuffle=True, seed=msg.config["seed"])
        loss, steps = 0.0, 0
        for _ in range(int(hp["local_epochs"])):
            s = train_epoch(model, loader, opt, max_steps=hp["max_local_steps"], clip=hp["clip"])
            loss, steps = loss + s["loss"] * s["steps"], steps + s["steps"]
        bn_keys = sbn_buffer_keys(model)
        arrays = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in bn_keys}
        arrays[LABELLED] = labelled_tasks(data.train, model.num_tasks)
        return Message(arrays=arrays, config={"width": float(msg.config["width"])},
                       metrics={"n_train": float(len(data.train)), "loss": loss / max(steps, 1),
                                "steps": float(steps)})

    @classmethod
    def client_query(cls, msg: Message, data: LocalData) -> Message:
        """sBN: per-BN-layer count / sum / sum of squares of its inputs over the training data."""
        model = cls.client_model(msg)
        hp = msg.config["hp"]
        sums = bn_moment_sums(model, data.train, float(msg.config["width"]),
                              int(hp.get("sbn_batch_size") or hp.get("batch_size", 32)))
        return Message(arrays=sums, metrics={"n_train": float(len(data.train))})
