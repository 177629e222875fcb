"""FedDF: ensemble distillation for model fusion (Lin, Kong, Stich, Jaggi, NeurIPS 2020).

Algorithm 1 of the paper (details, defaults against the official values, deviations and cost:
``docs/feddf.md``):

* **ClientUpdate** is FedAvg's: local epochs on the partner's data, weights returned.
* **Server, each round**: per architecture group (Sec. 3's heterogeneous extension; here a group is
  a device width cap, hp ``hetero``: ``groups`` | ``drop`` | ``min``) the student starts as the
  group's FedAvg model and is distilled on an unlabeled public pool (:mod:`fedmol.fl.public_pool`:
  RDKit's NCI and WEHI molecules minus the federated dataset's) from the **AVGLOGITS** teacher of
  every model received this round (:func:`avg_logits`), with Adam, cosine annealing and early
  stopping, keeping the best checkpoint (:func:`distill`).

Deviations (``docs/feddf.md``): a label-free early-stopping criterion (the distillation loss on a
held-out part of the pool; step 0, the FedAvg model, is a candidate); per-task Bernoulli KL for
binary multi-task labels (MSE for regression); teacher outputs computed once per round; nested-width
groups from one seeded model; smaller step budgets than the paper's so a CPU round takes seconds.
The server step costs about 7x the partners' compute per round at the suite's budget: the
distillation itself, not overhead (``docs/feddf_server_cost.md``). Refused: differential privacy and
private heads (the teachers are the partners' individual whole models).

Metrics of ``server_step`` (``server_*`` columns of ``metrics.csv``): ``teachers``, ``pool_size``,
``distill_seconds`` and, per group width ``w``, ``distill_steps@w``, ``distill_best_step@w`` (0 = the
FedAvg start), ``distill_val_init@w`` and ``distill_val_best@w``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, Optional, Union

import torch
from pydantic import Field
import torch.nn.functional as F
from torch import Tensor, nn

from fedmol.fl.algorithm import Algorithm, HParams, PartnerInfo, client_seed
from fedmol.fl.message import Message
from fedmol.fl.public_pool import PublicPool, build_public_pool
from fedmol.models import build, slicing
from fedmol.training import make_loader, seed_everything, snapshot, width_key

log = logging.getLogger(__name__)

#: hyperparameters a client needs (the rest of FedDF's stay on the server)
LOCAL_KEYS = tuple(Algorithm.base_defaults)
_TOL = 1e-9


# ---------------------------------------------------------------------------------- building blocks
def avg_logits(outputs: Sequence[Tensor]) -> Tensor:
    """AVGLOGITS (paper Sec. 3): the element-wise mean of the teachers' logits (or predictions)."""
    if len(outputs) == 0:
        raise ValueError("avg_logits needs at least one teacher output")
    return torch.stack([o.float() for o in outputs]).mean(0)


def distill_loss(student: Tensor, teacher: Tensor, task_type: str, temperature: float = 1.0) -> Tensor:
    """Distillation loss of student outputs against (averaged) teacher outputs, both ``[B, T]``.

    Classification: per-task Bernoulli ``KL(p || q)``, ``p = sigmoid(teacher / T)``,
    ``q = sigmoid(student / T)``, averaged over tasks and molecules, times ``T^2``.
    Regression: mean squared difference.
    """
    teacher = teacher.detach().to(student.dtype)
    if task_type == "regression":
        return (student - teacher).square().mean()
    if task_type != "classification":
        raise ValueError(f"unknown task_type {task_type!r}; known: classification, regression")
    t = float(temperature)
    s, z = student / t, teacher / t
    p = torch.sigmoid(z)
    # KL(p||q) = p log p + (1-p) log(1-p) - p log q - (1-p) log(1-q), stable in the logits
    kl = (torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)
          - p * F.logsigmoid(s) - (1 - p) * F.logsigmoid(-s))
    return kl.mean() * t * t


@torch.no_grad()
def teacher_outputs(model_config: dict, teachers: Sequence[tuple[float, dict]], pool, batch_size: int = 256
                    ) -> list[Tensor]:
    """Each teacher's outputs ``[len(pool), num_tasks]`` on the pool, rows indexed by ``mol_id``.

    ``teachers``: ``(width, state_dict)`` pairs; each is loaded into a standalone model of its width
    (one model per distinct width, built once and reloaded for each teacher of that width) and run
    in eval mode.
    """
    batches = list(make_loader(pool, batch_size))
    n = int(max(int(b.mol_id.max()) for b in batches)) + 1 if batches else 0
    models: dict[float, nn.Module] = {}
    outs = []
    for width, state in teachers:
        model = models.get(float(width))
        if model is None:
            model = models[float(width)] = build(**{**model_config, "width": float(width)}).eval()
        model.load_state_dict(state)
        out = torch.zeros(n, model.num_tasks)
        for b in batches:
            out[b.mol_id] = model(b, width=float(width)).float()
        outs.append(out)
    return outs


def make_validator(valid_set, targets: Tensor, width: float, task_type: str, temperature: float = 1.0,
                   batch_size: int = 256) -> Callable[[nn.Module], float]:
    """Label-free validation score (lower is better): the distillation loss to ``targets`` on
    ``valid_set`` (the held-out part of the public pool), student in eval mode, averaged per molecule."""
    batches = list(make_loader(valid_set, batch_size))

    @torch.no_grad()
    def validate(model: nn.Module) -> float:
        was = model.training
        model.eval()
        total, n = 0.0, 0
        for b in batches:
            loss = distill_loss(model(b, width=width), targets[b.mol_id], task_type, temperature)
            total += float(loss) * b.num_graphs
            n += b.num_graphs
        model.train(was)
        return total / max(n, 1)

    return validate


def distill(student: nn.Module, width: float, train_set, targets: Tensor,
            validate: Callable[[nn.Module], float] | None, *, task_type: str, steps: int, eval_every: int,
            patience: int, batch_size: int = 128, lr: float = 1e-3, temperature: float = 1.0, seed: int = 0
            ) -> dict:
    """Distil ``targets`` (indexed by the graphs' ``mol_id``) into ``student`` at ``width``, in place.

    Adam + cosine annealing over ``steps``; mini-batches of ``batch_size`` drawn by reshuffling
    ``train_set`` every pass (seeded). ``validate(student)`` (lower is better) runs at step 0 and
    every ``eval_every`` steps; after an evaluation at step ``s``, distillation stops if
    ``s - best_step >= patience``, so it ends fewer than ``patience + eval_every`` steps after the
    best evaluation. The student is left holding the best evaluated weights (step 0 = the start).
    Without ``validate`` it runs all ``steps`` and keeps the last weights.
    Returns ``{"steps", "best_step", "val_init", "val_best", "loss"}``.
    """
    steps, eval_every = int(steps), max(1, int(eval_every))
    n_train = len(train_set)
    bs = min(int(batch_size), n_train)
    res = dict(steps=0, best_step=0, val_init=float("nan"), val_best=float("nan"), loss=float("nan"))
    if steps <= 0 or bs < 2:  # BatchNorm needs two graphs per batch
        return res
    best_state = None
    if validate is not None:
        res["val_init"] = res["val_best"] = float(validate(student))
        best_state = snapshot(student)
    opt = torch.optim.Adam(student.parameters(), lr=lr, foreach=True)  # same updates as the per-tensor loop
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    step, epoch, last_loss, stop = 0, 0, float("nan"), False
    while not stop and step < steps:
        loader = make_loader(train_set, bs, shuffle=True, seed=seed + epoch, drop_last=True)
        epoch += 1
        for batch in loader:
            student.train()
            opt.zero_grad(set_to_none=True)
            loss = distill_loss(student(batch, width=width), targets[batch.mol_id], task_type, temperature)
            if not torch.isfinite(loss):
                log.warning("feddf: non-finite distillation loss at step %d; stopping", step)
                stop = True
                break
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last_loss = float(loss.detach())
            if validate is not None and (step % eval_every == 0 or step == steps):
                score = float(validate(student))
                if math.isfinite(score) and (score < res["val_best"] or not math.isfinite(res["val_best"])):
                    res["val_best"], res["best_step"] = score, step
                    best_state = snapshot(student)
                elif step - res["best_step"] >= patience:
                    stop = True
            if stop or step >= steps:
                stop = True
                break
    res["steps"], res["loss"] = step, last_loss
    if validate is None:
        res["best_step"] = step
    elif best_state is not None:
        student.load_state_dict(best_state)
    return res


# ---------------------------------------------------------------------------------- the algorithm
class FedDFHParams(HParams):
    hetero: Literal["groups", "drop", "min"] = Field("groups", description="groups: one student per device width "
                                                     "group; drop: full width only; min: the smallest width only")
    distill_steps: int = Field(500, ge=0, description="server distillation steps per round (0: plain FedAvg)")
    eval_every: int = Field(50, ge=1, description="distillation steps between held-out validations")
    patience: int = Field(150, ge=0, description="stop distilling this many steps after the best validation")
    distill_batch: int = Field(128, ge=1, description="public-pool molecules per distillation step")
    distill_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the server distillation")
    temperature: float = Field(1.0, gt=0, description="softmax/sigmoid temperature of the distillation targets")
    pool_size: int = Field(2000, ge=1, description="at most this many public-pool molecules")
    pool_valid_frac: float = Field(0.2, ge=0, lt=1, description="held-out share of the pool for early stopping "
                                   "(0: no early stopping)")
    pool_sources: Optional[Union[str, list[str]]] = Field(None, description="public-pool source datasets, "
                                                          "comma-separated (null: the shipped default)")
    pool_exclude: Optional[Union[str, list[str]]] = Field(None, description="datasets whose molecules the pool "
                                                          "must avoid (null: the federated one)")
    pool_data_dir: Optional[str] = Field(None, description="folder of registry files used as pool sources")


class FedDF(Algorithm):
    name = "feddf"
    defaults = FedDFHParams.defaults(own_only=True)
    hparam_schema = FedDFHParams
    dp_refusal = ("its server step distils from every partner's own trained model (the teachers), which DP-FedAvg's "
                  "noisy average does not protect")
    private_heads_refusal = ("its server distils from the partners' whole trained models, heads included (the "
                             "teachers' outputs on the public pool); a head that never leaves its site gives no "
                             "teacher output")

    def __init__(self, model_config: dict, hparams: dict | None = None, seed: int = 0, heads: str = "shared"):
        super().__init__(model_config, hparams, seed, heads)
        self.pool: PublicPool | None = None
        self.students: dict[float, nn.Module] = {}
        self.groups: tuple[float, ...] = ()
        self._bound: tuple[str, list[str] | None, str | None] | None = None
        self._teachers: list[tuple[float, dict]] = []
        self.pool_exclusion = ""

    # ------------------------------------------------------------------ setup
    def bind_dataset(self, name: str, smiles: Sequence[str] | None = None, data_dir: str | None = None) -> None:
        """Tell FedDF which dataset is federated (called by the organiser before ``init``), so the
        public pool excludes its molecules. ``smiles``: all of its SMILES (needed for a user CSV)."""
        self._bound = (str(name), list(smiles) if smiles is not None else None, data_dir)

    def init(self, partners: list[PartnerInfo]) -> None:
        hp = self.hp
        caps = sorted({float(p.device.max_width) for p in partners}, reverse=True) or [1.0]
        if hp["hetero"] == "groups":
            self.groups = tuple(caps)
        elif hp["hetero"] == "drop":
            self.groups = (1.0,)
        else:
            self.groups = (caps[-1],)
        widest = self.groups[0]
        self.model_config = {**self.model_config, "width": widest}
        super().init(partners)  # seeded model at the widest group width
        self.students = {widest: self.model}
        for g in self.groups[1:]:
            m = build(**{**self.model_config, "width": g})
            m.load_state_dict(slicing.sub_state_dict(self.model, g))
            self.students[g] = m

    def widths(self) -> tuple[float, ...]:
        return self.groups

    def group_of(self, cap: float) -> float | None:
        """The group a device with width cap ``cap`` belongs to (the widest group it can run)."""
        fitting = [g for g in self.groups if g <= cap + _TOL]
        return max(fitting) if fitting else None

    def _student(self, width: float) -> nn.Module:
        for g, m in self.students.items():
            if abs(g - width) < _TOL:
                return m
        g = self.group_of(width)
        return self.students[g if g is not None else min(self.groups)]

    # ------------------------------------------------------------------ a round
    def configure(self, rnd: int, partner: PartnerInfo) -> Message | None:
        g = self.group_of(partner.device.max_width)
        if g is None:
            return None
        msg = self.send(rnd, partner, g)
        msg.arrays = slicing.sub_state_dict(self.students[g], g)  # the group's own student
        msg.config["hp"] = {k: self.hp[k] for k in LOCAL_KEYS}
        return msg

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        by_group: dict[float, list[Message]] = {}
        self._teachers = []
        for p, m in replies:
            g = self.group_of(p.device.max_width)
            if g is None:  # pragma: no cover - configure never sends to such a partner
                continue
            by_group.setdefault(g, []).append(m)
            self._teachers.append((g, m.arrays))
        for g, msgs in by_group.items():  # each group's student starts as the group's FedAvg model
            student = self.students[g]
            student.load_state_dict(slicing.aggregate_nested(
                student.state_dict(), [(m.arrays, m.metrics["n_train"]) for m in msgs]))
        return {}

    def server_step(self, rnd: int) -> dict:
        teachers, self._teachers = self._teachers, []
        metrics: dict[str, float] = {"teachers": float(len(teachers))}
        if not teachers:
            return metrics
        pool = self.ensure_pool()
        hp = self.hp
        t0 = time.perf_counter()
        task_type = self.model_config["task_type"]
        targets = avg_logits(teacher_outputs(self.model_config, teachers, pool))
        n = len(pool)
        n_valid = int(round(float(hp["pool_valid_frac"]) * n)) if hp["pool_valid_frac"] else 0
        n_valid = min(max(n_valid, 1 if hp["pool_valid_frac"] else 0), max(n - 2, 0))
        train_set, valid_set = pool[: n - n_valid], (pool[n - n_valid:] if n_valid else None)
        metrics["pool_size"] = float(n)
        for i, g in enumerate(self.groups):
            seed = client_seed(self.seed, rnd, 1_000_000 + i)
            seed_everything(seed)
            validate = (make_validator(valid_set, targets, g, task_type, hp["temperature"])
                        if valid_set is not None else None)
            res = distill(self.students[g], g, train_set, targets, validate, task_type=task_type,
                          steps=hp["distill_steps"], eval_every=hp["eval_every"], patience=hp["patience"],
                          batch_size=hp["distill_batch"], lr=hp["distill_lr"], temperature=hp["temperature"],
                          seed=seed)
            w = width_key(g)
            metrics[f"distill_steps@{w}"] = float(res["steps"])
            metrics[f"distill_best_step@{w}"] = float(res["best_step"])
            metrics[f"distill_val_init@{w}"] = res["val_init"]
            metrics[f"distill_val_best@{w}"] = res["val_best"]
        metrics["distill_seconds"] = round(time.perf_counter() - t0, 4)
        return metrics

    def eval_model(self, width: float) -> nn.Module:
        return self._student(width)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {f"student@{width_key(g)}": m for g, m in self.students.items()}

    # ------------------------------------------------------------------ the public pool
    def ensure_pool(self) -> PublicPool:
        """Build the public pool once (see the module docstring for what is excluded)."""
        if self.pool is not None:
            return self.pool
        from fedmol.data.registry import DATASETS

        hp = self.hp
        data_dir = hp["pool_data_dir"]
        exclude: list[str] = []
        exclude_smiles: list[str] = []
        if self._bound is not None:
            name, smiles, bound_dir = self._bound
            data_dir = data_dir or bound_dir
            if name.lower() in DATASETS:
                exclude.append(name.lower())
            if smiles:
                exclude_smiles = smiles
            if name.lower() not in DATASETS and not smiles:
                log.warning("feddf: dataset %s is not a registry dataset and no SMILES were given: the public "
                            "pool cannot be checked for overlap with it", name)
            self.pool_exclusion = f"bound: {name}"
        elif hp["pool_exclude"]:
            ex = hp["pool_exclude"]
            exclude = [s.strip() for s in ex.split(",")] if isinstance(ex, str) else list(ex)
            self.pool_exclusion = f"pool_exclude: {','.join(exclude)}"
        else:
            tt, nt = self.model_config["task_type"], self.model_config["num_tasks"]
            exclude = [k for k, info in DATASETS.items() if info.task_type == tt and info.num_tasks == nt]
            self.pool_exclusion = f"task signature ({tt}, {nt} task(s)): {','.join(exclude)}"
            log.warning("feddf: the federated dataset was not named (no bind_dataset, no pool_exclude); the public "
                        "pool excludes every registry dataset with %s: %s", f"{tt} x{nt}",
                        ", ".join(exclude) or "none (overlap cannot be checked)")
        self.pool = build_public_pool(exclude, exclude_smiles, sources=hp["pool_sources"], size=hp["pool_size"],
                                      seed=self.seed, data_dir=data_dir)
        self.pool.report["exclusion"] = self.pool_exclusion
        log.info("feddf: public pool of %d molecules (%s)", len(self.pool), self.pool_exclusion)
        return self.pool
