"""The one Algorithm interface, in the papers' words.

A round is: the server **configures** each sampled partner (which width, which hyperparameters,
what it receives), each partner **updates** from what it received and its own data and returns a
message, the server **aggregates** the messages (then, with ``server_momentum`` / ``server_lr``, takes
FedAvgM's server step: :class:`ServerMomentum`), then optionally runs a **server step** (FedDF's
distillation, FedGen's generator); :meth:`Algorithm.update_global` is that sequence. Algorithms
that must ask partners something before evaluating (pooled BN statistics: HeteroFL's static BN,
FedGen with ``pooled_bn``; :mod:`fedmol.fl.pooled_bn`) use the optional **query** pair.

Boundaries, so the same objects run over Flower between real machines:

* Server methods (``init``, ``configure``, ``aggregate``, ``server_step``, ``eval_model``,
  ``query``, ``absorb_query``, ``checkpoint``, ``restore``) see :class:`PartnerInfo` only (id,
  training-set size, device), never a partner's data.
* Client methods (``client_update``, ``client_query``) are *classmethods*: they cannot reach the
  server's state. They see only the :class:`Message` they received and their own
  :class:`LocalData`, and return a :class:`Message`.

Narrow widths: a partner trains the *standalone* model of the width it is sent (sliced by
:meth:`Algorithm.send`, built by :meth:`Algorithm.client_model`, written back by the aggregation), never
the full model run with ``width=r``; why, what it saves and what stays sliced: ``docs/narrow_widths.md``.

Subclasses describe themselves with ``name``, ``norm`` / ``scaler`` (how the backbone normalizes,
see :mod:`fedmol.models`), and ``defaults`` (hyperparameters; every key may be overridden) with
``hparam_schema``, the typed pydantic model of every hyperparameter (type, range, meaning;
:class:`HParams` extended) that :meth:`Algorithm.check_hparams` validates before anything runs.

Differential privacy (:mod:`fedmol.fl.privacy`, DP-FedAvg with fixed clipping) is switched on by
the shared hyperparameter ``dp_clip`` (with ``dp_noise``, ``dp_delta``) for algorithms with
``supports_dp``; the others refuse it at construction with ``dp_refusal``. It hooks in at one place
per side: :meth:`Algorithm.partner_update` (what the harness and a pilot site call: the
algorithm's ``client_update``, then the partner-side clipping) and :meth:`Algorithm.merge` (what a
supporting algorithm's ``aggregate`` calls: :func:`fedmol.models.slicing.aggregate_nested`, with
uniform weights and seeded Gaussian noise when DP is on).

Private heads (run option ``heads="private"``, ``docs/private_heads.md``): the task head
(:data:`HEAD_KEYS`, the backbone's output layer) never leaves a partner. :meth:`Algorithm.send`
leaves the head out of what the server sends; :meth:`Algorithm.partner_update` completes the
message with the partner's own head (:attr:`LocalData.head`, initialized from the run's common
starting weights, kept between rounds) before the algorithm's ``client_update`` and takes it back
out of the reply before anything is sent, so the server aggregates the trunk only (coordinates
nobody sent keep their value: the server's head stays the initial one). A partner's head predicts
its own data's tasks (:func:`own_num_tasks`: a pilot site may hold other target columns). Algorithms whose server
needs the partners' heads set ``private_heads_refusal`` and refuse the option. With the shared
hyperparameter ``head_steps`` a partner first refits its head alone on the trunk it receives
(FedRep's head phase, :func:`refit_head`), before it trains and before its model is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from fedmol.errors import requirement
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.message import Message
from fedmol.models import build
from fedmol.models import slicing
from fedmol.training import make_loader, seed_everything, snapshot, train_epoch


@dataclass(frozen=True)
class PartnerInfo:
    """What the server knows about a partner."""

    pid: int
    n_train: int
    device: DeviceProfile


@dataclass
class LocalData:
    """What only the partner holds: its own training and validation molecules, and with private
    heads its own task head (a full-width ``head`` module, kept between rounds, never sent)."""

    pid: int
    train: Any
    valid: Any
    head: Optional[nn.Module] = None


#: the state-dict keys of a backbone's task head (the output layer, ``model.head``)
HEAD_KEYS = ("head.weight", "head.bias")
#: the run option ``heads``: one head federated with the trunk, or a private head per partner
HEADS = ("shared", "private")


def own_num_tasks(msg: Message, data: LocalData) -> int:
    """How many tasks the partner's own head predicts: its own data's (a pilot site may hold other
    target columns than the others), else the message's model's."""
    return int(getattr(data.train, "num_tasks", None) or msg.config["model"]["num_tasks"])


def first_head(model_config: dict, init_seed: int, num_tasks: int) -> nn.Module:
    """A partner's first head: that of the run's common starting weights (:func:`initial_model` of
    ``init_seed``, full width) built for ``num_tasks`` tasks (the trunk is every partner's)."""
    return initial_model({**model_config, "width": 1.0, "num_tasks": int(num_tasks)}, int(init_seed)).head


def centre_head(head: nn.Module, labels, task_type: str) -> nn.Module:
    """A private regression head starts at its owner's labels: each task's output bias becomes the
    mean of the training labels it will fit (``labels``: ``(n, num_tasks)``, NaN where missing; a
    task without a label keeps its bias). The start of an offset-sensitive metric (RMSE on pKi
    values near 7) is then the same for every model of a private-heads comparison, federated or
    reference, instead of a climb from 0 that a few local steps a round cannot finish; ROC-AUC does
    not depend on the bias, so classification heads are left as they are. Returns ``head``."""
    if task_type != "regression":
        return head
    y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1, head.bias.shape[0])
    seen = ~torch.isnan(y)
    count = seen.sum(dim=0)
    mean = torch.where(seen, y, torch.zeros_like(y)).sum(dim=0) / count.clamp(min=1)
    with torch.no_grad():
        head.bias.copy_(torch.where(count > 0, mean.to(head.bias.dtype), head.bias))
    return head


def own_head(msg: Message, data: LocalData) -> Message:
    """``msg`` (which carries no head) completed with the width-``msg`` slice of the partner's own
    head (first :func:`first_head`, centred on the partner's own training labels:
    :func:`centre_head`), its model config predicting the partner's own tasks."""
    num_tasks = own_num_tasks(msg, data)
    if data.head is None:
        head = first_head(msg.config["model"], msg.config["init_seed"], num_tasks)
        data.head = centre_head(head, data.train.labels, msg.config["model"].get("task_type", "classification"))
    head = slicing.sub_state_dict(data.head, float(msg.config["width"]))
    config = {**msg.config, "model": {**msg.config["model"], "num_tasks": num_tasks}}
    return Message(arrays={**msg.arrays, **{f"head.{k}": v for k, v in head.items()}}, config=config)


class _HeadOnFrozenTrunk(nn.Module):
    """``model``'s head on its frozen trunk, for :func:`fedmol.training.train_epoch`: training mode
    reaches the head only (the trunk stays in eval mode: no dropout, BN statistics unchanged) and
    the trunk's output is computed without gradients. ``static_bn_batch_stats``: HeteroFL's static BN
    layers (mode ``sbn``, which keep no statistics of their own at a partner) normalize with each
    batch's statistics, as in the partner's local update (they track nothing: no side effect)."""

    def __init__(self, model: nn.Module, static_bn_batch_stats: bool = False):
        super().__init__()
        self.model, self.task_type = model, model.task_type
        self.static_bn = [m for m in model.modules() if isinstance(m, slicing.SliceBatchNorm) and m.mode == "sbn"
                          ] if static_bn_batch_stats else []

    def train(self, mode: bool = True):
        self.training = mode
        self.model.eval()
        self.model.head.train(mode)
        for m in self.static_bn:
            m.train(mode)
        return self

    def forward(self, batch, width=None):
        with torch.no_grad():
            z = self.model.embed(batch)
        return self.model.head(z, self.model.width)


def refit_head(model: nn.Module, train, hp: dict, seed: int, static_bn_batch_stats: bool = False) -> nn.Module:
    """FedRep's head phase (Collins et al., ICML 2021, Alg. 1: the head is updated with the received
    representation fixed): ``hp["head_steps"]`` steps of the partner's local optimizer (Adam, its
    ``lr``, ``weight_decay``, ``batch_size``, ``clip``) on ``model.head`` alone, the trunk frozen, over
    the partner's own training molecules in the order of ``seed``. The trunk normalizes as the model
    it serves: with its statistics (a scored model: HeteroFL's pooled ones), or, before a partner's
    update (``static_bn_batch_stats``), static BN with batch statistics as that update will. Returns
    ``model`` in eval mode."""
    steps = int(hp.get("head_steps") or 0)
    if steps:
        opt = torch.optim.Adam(model.head.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        loader = make_loader(train, hp["batch_size"], shuffle=True, seed=seed)
        head_alone, done = _HeadOnFrozenTrunk(model, static_bn_batch_stats), 0
        while done < steps:  # more than an epoch on a small site: the loader reshuffles each pass
            taken = train_epoch(head_alone, loader, opt, max_steps=steps - done, clip=hp["clip"])["steps"]
            if not taken:  # nothing trainable (fewer than two molecules)
                break
            done += taken
    return model.eval()


def refit_scored_head(model: nn.Module, data: LocalData, hp: dict, run_seed: int, rnd: int) -> nn.Module:
    """A scored model's head phase (when ``hp`` sets ``head_steps``): ``model`` (the served trunk with
    partner ``data.pid``'s head) refit on its training molecules, seeded by round ``rnd``'s client seed,
    so every transport (in-process, a pilot site) scores the same model for the same round."""
    return refit_head(model, data.train, hp, client_seed(run_seed, rnd, data.pid))


def refit_own_head(algo_cls, msg: Message, data: LocalData) -> Message:
    """:func:`own_head` of ``msg``, the partner's head first refit on the received trunk
    (:func:`refit_head`, seeded by the message's client seed; the refit head is kept) when the
    message's ``head_steps`` asks for it: what a private-heads partner trains from."""
    if msg.config["hp"].get("head_steps"):
        model = refit_head(algo_cls.client_model(own_head(msg, data)), data.train, msg.config["hp"],
                           msg.config["seed"], static_bn_batch_stats=True)
        slicing.load_sub_state_dict(data.head, model.head.state_dict(), float(msg.config["width"]))
    return own_head(msg, data)


def keep_own_head(reply: Message, data: LocalData, width: float) -> Message:
    """Write the trained head of ``reply`` (width ``width``) back into the partner's own head and
    leave it out of ``reply``: what the partner then sends holds no head tensor."""
    trained = {k[len("head."):]: reply.arrays[k] for k in HEAD_KEYS}
    slicing.load_sub_state_dict(data.head, trained, float(width))
    reply.arrays = {k: v for k, v in reply.arrays.items() if k not in HEAD_KEYS}
    return reply


def initial_model(model_config: dict, seed: int) -> nn.Module:
    """The run's starting weights, the same for every algorithm and reference of one seed: the
    full-width backbone built right after seeding, then (when ``model_config["width"] < 1``) its
    leading slice loaded into the standalone model of that width. Normalization modes differ by
    algorithm only in buffers (statistics start at 0 / 1), so every algorithm's parameters start equal."""
    seed_everything(seed)
    full = build(**{**model_config, "width": 1.0})
    width = float(model_config.get("width", 1.0))
    if width >= 1.0:
        return full
    model = build(**model_config)
    model.load_state_dict(slicing.sub_state_dict(full, width))
    return model


class HParams(BaseModel):
    """The hyperparameters every algorithm shares (local training, DP), typed and ranged: an
    algorithm's own model (``hparam_schema``, next to its ``defaults`` in its module) extends this
    one. Validation only checks (strict: no string or bool passes as a number, no float as an
    integer, no NaN or infinity); a run keeps the values exactly as given."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    local_epochs: int = Field(1, ge=1, description="passes over the partner's training set per round")
    batch_size: int = Field(32, ge=1, description="molecules per local mini-batch")
    lr: float = Field(1e-3, gt=0, description="learning rate of the partners' local optimizer")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the partners' local optimizer")
    max_local_steps: Optional[int] = Field(None, ge=1, description="at most this many local steps per epoch "
                                           "(null: the whole epoch)")
    clip: Optional[float] = Field(None, gt=0, description="clip local gradients to this L2 norm (null: no clipping)")
    dp_clip: Optional[float] = Field(None, gt=0, description="differential privacy: clip each partner's update to "
                                     "this L2 norm (null: DP off)")
    dp_noise: float = Field(0.0, ge=0, description="DP noise multiplier sigma")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="DP delta of the reported epsilon")
    head_steps: int = Field(0, ge=0, description="private heads: steps a partner first trains its own head alone "
                            "on the trunk it receives (trunk frozen; FedRep's head phase), before it trains and "
                            "before its model is scored (0: off)")
    freeze_head: bool = Field(False, description="private heads: a partner's local update trains the trunk only, "
                              "its head frozen (FedRep's representation phase; needs head_steps)")
    server_lr: float = Field(1.0, gt=0, description="server learning rate of FedAvgM's server step on the trunk and "
                             "head weights (1 with server_momentum 0: the aggregate as it is)")
    server_momentum: float = Field(0.0, ge=0, lt=1, description="server momentum (FedAvgM, Hsu et al. 2019): the "
                                   "aggregate's change of the weights is accumulated across rounds (0: off)")

    @classmethod
    def defaults(cls, own_only: bool = False) -> dict[str, Any]:
        """Every field's default (``own_only``: only the fields this model adds to :class:`HParams`)."""
        return {k: f.default for k, f in cls.model_fields.items() if not (own_only and k in HParams.model_fields)}

    @classmethod
    def describe(cls) -> dict[str, dict[str, Any]]:
        """``{name: {"default", "type" (type and range in words), "meaning"}}`` of every field."""
        return {k: dict(default=f.default, type=requirement(f), meaning=f.description or "")
                for k, f in cls.model_fields.items()}


#: hyperparameters only the server uses (a partner is never sent them)
SERVER_ONLY = ("server_lr", "server_momentum")


#: hyperparameters added later that a message leaves out while off (without them a message stays
#: byte for byte what it was, and so do the committed byte counts)
SENT_WHEN_ON = ("head_steps", "freeze_head")


def sent_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a message carries: every one, except those of :data:`SENT_WHEN_ON` while
    they are off and the server's own (:data:`SERVER_ONLY`)."""
    return {k: v for k, v in hp.items() if (k not in SENT_WHEN_ON or v) and k not in SERVER_ONLY}


class ServerMomentum:
    """FedAvgM's server step (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data
    distribution", Alg. 1; Reddi et al. ICLR 2021, Alg. 2 with SGD-momentum as the server optimizer):
    with ``delta = w_t - aggregate`` (the pseudo-gradient), ``v <- beta v + delta`` and
    ``w_{t+1} = w_t - eta v``. It acts on the model's parameters only (BN running statistics and the
    step counter stay the aggregate's, as in FedAvg); coordinates nobody updated have ``delta = 0``
    (their velocity still decays into them). ``eta = 1, beta = 0`` is the aggregate itself, and then
    nothing is computed."""

    def __init__(self, lr: float, momentum: float):
        self.lr, self.momentum = float(lr), float(momentum)
        self.velocity: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.lr != 1.0 or self.momentum != 0.0

    def before(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The parameters before aggregation (None when the step is off)."""
        return {k: p.detach().clone() for k, p in model.named_parameters()} if self.active else None

    @torch.no_grad()
    def step(self, model: nn.Module, before: dict[str, torch.Tensor] | None) -> None:
        """Replace the aggregated parameters of ``model`` by the server step from ``before``."""
        if before is None:
            return
        for k, p in model.named_parameters():
            v = self.velocity.get(k)
            delta = before[k] - p
            self.velocity[k] = delta if v is None else self.momentum * v + delta
            p.copy_(before[k] - self.lr * self.velocity[k])


def client_seed(run_seed: int, rnd: int, pid: int) -> int:
    """Deterministic per-(run, round, partner) seed for a client's data order and sampling."""
    return (run_seed * 1_000_003 + rnd * 10_007 + pid) % (2**31 - 1)


class Algorithm:
    name: ClassVar[str] = ""
    norm: ClassVar[str] = "bn"
    scaler: ClassVar[bool] = False
    #: hyperparameters shared by every algorithm's local training (per-algorithm defaults extend them)
    base_defaults: ClassVar[dict[str, Any]] = HParams.defaults()
    defaults: ClassVar[dict[str, Any]] = {}
    #: the typed model of every hyperparameter (type, range, meaning): :class:`HParams` extended
    hparam_schema: ClassVar[type[HParams]] = HParams
    #: whether a truncated upload (the sub-model of a narrower width) can still be aggregated
    accepts_partial_uploads: ClassVar[bool] = False
    #: whether the algorithm trains the run's backbone from the common start weights (False: federated
    #: boosted trees, whose ensemble starts empty and grows, so a leaderboard check of
    #: ``model.safetensors`` cannot compare its shapes with the untrained model's)
    trains_backbone: ClassVar[bool] = True
    #: what a partner's model upload reveals (``config.json``'s ``sent``, ``fedmol algorithms``)
    model_disclosure: ClassVar[str] = "each participating partner's trained weights at its width"
    #: arrays a partner sends besides model weights (name -> what it reveals); their values are
    #: written to the run's ``sent.jsonl`` so a partner can see exactly what left it
    disclosures: ClassVar[dict[str, str]] = {}
    #: whether the algorithm runs DP-FedAvg when ``dp_clip`` is set (its ``aggregate`` goes through
    #: :meth:`merge` and nothing else it sends or uses depends on a partner's data); else why not
    supports_dp: ClassVar[bool] = False
    dp_refusal: ClassVar[str] = "its server step has not been checked against DP-FedAvg's guarantee"
    #: why the algorithm refuses private heads (``heads="private"``); None: it runs them, the
    #: server aggregating the trunk only
    private_heads_refusal: ClassVar[Optional[str]] = None

    def __init__(self, model_config: dict, hparams: dict | None = None, seed: int = 0, heads: str = "shared"):
        self.heads = self.check_heads(heads)
        self.hp: dict[str, Any] = self.check_hparams(hparams)
        self.check_head_phases(heads)
        self.server_opt = ServerMomentum(self.hp["server_lr"], self.hp["server_momentum"])
        if self.server_opt.active and not self.trains_backbone:
            from fedmol.errors import FedmolError
            raise FedmolError(f"{self.name}: server_lr and server_momentum step a backbone's weights; "
                              f"{self.name} trains none")
        self.model_config = {**model_config, "norm": self.norm, "scaler": self.scaler, "width": 1.0}
        self.seed = seed
        self.model: nn.Module | None = None
        self.partners: list[PartnerInfo] = []

    @classmethod
    def check_hparams(cls, hparams: dict | None) -> dict[str, Any]:
        """The resolved hyperparameters (defaults, then ``hparams`` exactly as given) once every one is
        known, of its type and in its range (:attr:`hparam_schema`) and DP is supported if asked for;
        else a one-line :class:`FedmolError` (what a run checks before loading any data)."""
        from fedmol.errors import FedmolError

        known = {**cls.base_defaults, **cls.defaults}
        unknown = set(hparams or {}) - set(known)
        if unknown:
            raise FedmolError(f"{cls.name}: unknown hyperparameter(s) {sorted(unknown)}; known: {sorted(known)}")
        hp = {**known, **(hparams or {})}
        if hp["dp_clip"] is not None:
            from fedmol.fl import privacy
            if not cls.supports_dp:
                raise FedmolError(f"{cls.name}: differential privacy (dp_clip) is not supported: {cls.dp_refusal}")
            privacy.check_hparams(hp, cls.name)
        fields = cls.hparam_schema.model_fields  # an algorithm without a schema of its own: its extra keys pass
        try:
            cls.hparam_schema.model_validate({k: v for k, v in hp.items() if k in fields})
        except ValidationError as e:
            bad = list(dict.fromkeys(str(err["loc"][0]) for err in e.errors() if err["loc"]))
            key = bad[0]
            more = f" (also wrong: {', '.join(bad[1:])})" if len(bad) > 1 else ""
            raise FedmolError(f"{cls.name}: {key} must be {requirement(fields[key])}, got {hp[key]!r}{more}") from None
        return hp

    def check_head_phases(self, heads: str) -> None:
        """FedRep's phases (``head_steps``, ``freeze_head``) need private heads, and a frozen head
        needs the head phase (else it never trains); else a one-line error."""
        from fedmol.errors import FedmolError

        for key in ("head_steps", "freeze_head"):
            if self.hp.get(key) and heads != "private":
                raise FedmolError(f"{self.name}: {key} acts on a partner's private head: it needs heads = private")
        if self.hp.get("freeze_head") and not self.hp.get("head_steps"):
            raise FedmolError(f"{self.name}: freeze_head leaves a partner's head to the head phase: set head_steps > 0")

    @classmethod
    def check_heads(cls, heads: str) -> str:
        """``heads`` if it is one of :data:`HEADS` and the algorithm runs it; else a one-line error."""
        from fedmol.errors import FedmolError

        if heads not in HEADS:
            raise FedmolError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
        if heads == "private" and cls.private_heads_refusal is not None:
            raise FedmolError(f"{cls.name}: private heads are not supported: {cls.private_heads_refusal}")
        return heads

    # ---------------------------------------------------------------- server side
    def init(self, partners: list[PartnerInfo]) -> None:
        """Server initialization: the global model (seeded) and whatever the algorithm needs."""
        self.partners = list(partners)
        self.model = initial_model(self.model_config, self.seed)

    def widths(self) -> tuple[float, ...]:
        """The widths at which the global model can be served (and is evaluated)."""
        return (1.0,)

    @classmethod
    def serving_cap(cls, cap: float) -> float:
        """The widest model a partner whose device trains at most width ``cap`` can run (a
        width-prunable backbone: its cap; a tree ensemble runs anywhere)."""
        return cap

    @classmethod
    def truncate_upload(cls, arrays: dict, msg: Message, rng, spec=None) -> tuple[dict, str] | None:
        """What arrives of an upload a faulty link truncates: ``(arrays, note)``, or None when the
        algorithm cannot use a partial upload. Ordered narrow-to-wide, the sub-model of a random
        narrower width arrives (drawn from ``rng``)."""
        narrower = [w for w in slicing.WIDTHS if w < msg.config["width"] - 1e-9]
        if not narrower or not cls.accepts_partial_uploads:
            return None
        cut = float(narrower[int(rng.integers(len(narrower)))])
        return slicing.sub_state_dict(arrays, cut, spec=spec), f"upload truncated at width {cut:g}"

    def patience_rounds(self, patience: int) -> int:
        """How many rounds without a better pooled validation score stop the run, for the run's
        ``patience``: a round in which every sampled partner trains counts as one."""
        return int(patience)

    def nested_widths(self) -> tuple[float, ...]:
        """The widths of :data:`~fedmol.models.slicing.WIDTHS` from the weakest partner's cap up: what
        an algorithm training nested widths (FjORD, FedResCuE, HeteroFL, FedGen) serves."""
        smallest = min(p.device.max_width for p in self.partners)
        return tuple(w for w in slicing.WIDTHS if w >= smallest - 1e-9)

    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        """What ``partner`` receives this round; None means it sits this round out."""
        raise NotImplementedError

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        raise NotImplementedError

    def server_step(self, rnd: int) -> dict:
        """Optional server-side work after aggregation; returns metrics."""
        return {}

    def update_global(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        """A round's server side (what the round loop calls): :meth:`aggregate`, FedAvgM's server step
        when ``server_lr`` / ``server_momentum`` ask for it (:class:`ServerMomentum`), then
        :meth:`server_step`; returns the metrics of both."""
        before = self.server_opt.before(self.model)
        metrics = self.aggregate(rnd, replies)
        self.server_opt.step(self.model, before)
        metrics.update(self.server_step(rnd))
        return metrics

    def query(self, width: float) -> Message | None:
        """Optional question to every partner before evaluating ``width`` (None: no query)."""
        return None

    def absorb_query(self, width: float, replies: list[tuple[PartnerInfo, Message]]) -> None:
        pass

    def eval_model(self, width: float) -> nn.Module:
        """The global model, ready to be evaluated at ``width``."""
        return self.model

    def state(self) -> dict[str, torch.Tensor]:
        """The final global weights (saved as safetensors)."""
        return {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}

    @classmethod
    def state_widths(cls, widths: list[float], own: float) -> list[float]:
        """The served ``widths`` at which :meth:`state` alone, loaded into the backbone of width
        ``own``, is the model :meth:`eval_model` serves (what a leaderboard check can recompute):
        every width up to ``own`` when ``eval_model`` serves the global model itself, else ``own`` only."""
        if cls.eval_model is Algorithm.eval_model:
            return [w for w in widths if w <= own + 1e-9]
        return [w for w in widths if abs(w - own) < 1e-9]

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The modules that :meth:`eval_model` and :meth:`state` read (what a checkpoint copies)."""
        return {"model": self.model}

    def checkpoint(self) -> dict:
        """A copy of everything the served global model depends on (the harness keeps the one of
        the round it reports, :mod:`fedmol.fl.selection`)."""
        return {name: snapshot(m) for name, m in self.checkpoint_modules().items()}

    def restore(self, checkpoint: dict) -> None:
        """Serve the global model of ``checkpoint`` again (a :meth:`checkpoint` of this run)."""
        for name, m in self.checkpoint_modules().items():
            m.load_state_dict(checkpoint[name])

    def upload_problem(self, reply: Message) -> str | None:
        """Why a partner's training reply from the network cannot be aggregated (None: it can): an
        array of the model's name with another dtype or rank, or larger than the model's."""
        state = self.model.state_dict()
        for k, t in reply.arrays.items():
            g = state.get(k)
            larger = g is not None and any(a > b for a, b in zip(t.shape, g.shape))
            if g is not None and (t.dtype != g.dtype or t.dim() != g.dim() or larger):
                return (f"reply does not match the model: {k} is {t.dtype} {list(t.shape)}, "
                        f"the model has {g.dtype} {list(g.shape)}")
        return None

    # helpers for subclasses
    def send(self, rnd: int, partner: PartnerInfo, width: float, **extra: Any) -> Message:
        """The width-``width`` slice of the global model, with everything a client needs (with
        private heads: without the head, and with the run seed the partner's first head starts from)."""
        config = dict(round=rnd, pid=partner.pid, width=float(width), model=self.model_config,
                      seed=client_seed(self.seed, rnd, partner.pid),
                      hp=sent_hparams(self.hp), **extra)
        arrays = slicing.sub_state_dict(self.model, width)
        if self.heads == "private":
            config.update(heads="private", init_seed=self.seed)
            arrays = {k: v for k, v in arrays.items() if k not in HEAD_KEYS}
        return Message(arrays=arrays, config=config)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def merge(self, rnd: int, state: dict[str, torch.Tensor], updates: list[tuple[dict, float]],
              stream: int = 0) -> dict[str, torch.Tensor]:
        """:func:`slicing.aggregate_nested` of ``updates`` (``(arrays, weight)`` pairs) into ``state``;
        with DP on (``dp_clip``) the weights become uniform, Gaussian noise of std
        ``dp_noise * dp_clip`` is added to each coordinate's sum (generator seeded by the run seed,
        ``rnd`` and ``stream``) and BN variances are clamped at 0 (see :mod:`fedmol.fl.privacy`)."""
        if self.hp["dp_clip"] is None:
            return slicing.aggregate_nested(state, updates)
        from fedmol.fl import privacy
        new = slicing.aggregate_nested(state, [(u, 1.0) for u, _ in updates], noise_std=privacy.noise_std(self.hp),
                                       generator=privacy.noise_generator(self.seed, rnd, stream))
        return privacy.clamp_variances(new)

    # ---------------------------------------------------------------- client side
    @classmethod
    def partner_update(cls, msg: Message, data: LocalData) -> Message:
        """What a partner runs for a training message (the harness and a pilot site both call
        this): :meth:`client_update`, then, when the message's hyperparameters set ``dp_clip``,
        DP-FedAvg's partner-side clipping of the update (:func:`fedmol.fl.privacy.clip_update`),
        with the norm before clipping reported as the metric ``dp_norm``. With private heads
        (``msg.config["heads"]``) the update runs on the received trunk plus the partner's own head
        (:func:`own_head`), which is kept and left out of the reply (:func:`keep_own_head`)."""
        clip = msg.config.get("hp", {}).get("dp_clip")
        if clip is not None and not cls.supports_dp:
            from fedmol.errors import FedmolError
            raise FedmolError(f"{cls.name}: differential privacy (dp_clip) is not supported: {cls.dp_refusal}")
        if msg.config.get("heads") == "private":
            cls.check_heads("private")
            reply = keep_own_head(cls.client_update(refit_own_head(cls, msg, data), data), data, msg.config["width"])
        else:
            reply = cls.client_update(msg, data)
        if clip is not None:
            from fedmol.fl import privacy
            reply.arrays, norm = privacy.clip_update(msg.arrays, reply.arrays, float(clip))
            reply.metrics["dp_norm"] = float(norm)
        return reply

    @classmethod
    def shipped_model(cls, model_config: dict) -> nn.Module:
        """The untrained model of ``model_config`` (``config.json``'s ``model``) that a run's
        ``model.safetensors`` loads into (what a leaderboard check rebuilds)."""
        return build(**model_config)

    @classmethod
    def client_model(cls, msg: Message) -> nn.Module:
        """Rebuild the model a message carries (standalone at its width)."""
        model = build(**{**msg.config["model"], "width": msg.config["width"]})
        model.load_state_dict(msg.arrays)
        return model

    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        """Default local update (FedAvg, McMahan et al. 2017, Alg. 1 ClientUpdate): E epochs of
        mini-batch training from the received weights; the optimizer is rebuilt every round."""
        seed_everything(msg.config["seed"])
        model = cls.client_model(msg)
        stats = cls.local_train(model, msg, data)
        return cls.reply(model, data, stats)

    @classmethod
    def local_train(cls, model: nn.Module, msg: Message, data: LocalData, width=None, extra_loss=None,
                    loss_fn=None, optimizer=None) -> dict:
        """A partner's local training, the one loop every algorithm uses: ``local_epochs`` passes of
        :func:`fedmol.training.train_epoch` (``width``: a width or a per-step sampler; ``extra_loss``:
        an algorithm's added term; ``loss_fn(model, batch) -> (loss, parts)``: an algorithm's whole
        loss) with a fresh optimizer (``optimizer(params)``, default Adam with the message's ``lr`` and
        ``weight_decay``). Returns the mean loss (and parts) per step, ``steps`` and ``samples``."""
        hp = msg.config["hp"]
        if hp.get("freeze_head"):  # FedRep's representation phase: the head takes no step
            model.head.requires_grad_(False)
        opt = (optimizer or (lambda params: torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])))(
            [p for p in model.parameters() if p.requires_grad])
        loader = make_loader(data.train, hp["batch_size"], shuffle=True, seed=msg.config["seed"])
        epochs = [train_epoch(model, loader, opt, width=width, extra_loss=extra_loss, max_steps=hp["max_local_steps"],
                              clip=hp["clip"], loss_fn=loss_fn) for _ in range(int(hp["local_epochs"]))]
        steps = sum(e["steps"] for e in epochs)
        means = {k: sum(e[k] * e["steps"] for e in epochs) / max(steps, 1)
                 for k in epochs[0] if k not in ("steps", "samples")} if epochs else {"loss": 0.0}
        return {**means, "steps": float(steps), "samples": float(sum(e["samples"] for e in epochs))}

    @classmethod
    def reply(cls, model: nn.Module, data: LocalData, stats: dict) -> Message:
        """The trained weights; per-width BN statistics only of the widths this partner ran
        (:func:`slicing.untrained_stat_keys`: the others would be the stale values it received)."""
        stale = slicing.untrained_stat_keys(model)
        return Message(arrays={k: v.detach().clone() for k, v in model.state_dict().items() if k not in stale},
                       metrics={"n_train": float(len(data.train)), **{k: float(v) for k, v in stats.items()}})

    @classmethod
    def client_query(cls, msg: Message, data: LocalData) -> Message:
        raise NotImplementedError


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
