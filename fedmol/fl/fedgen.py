"""FedGen: data-free knowledge distillation (Zhu, Hong, Zhou, ICML 2021), on molecular GNNs.

The paper's Algorithm 1 in fedmol's interface (details, reasons and measurements: ``docs/fedgen.md``):

* **configure**: broadcast the global model (each partner's width slice) and the generator
  G(eps, y) -> z in the backbone's embedding space (``model.embed``; paper Sec. 3.2), with the
  decayed coefficients alpha_t, beta_t.
* **client update** (Eq. 5): masked supervised loss + ``alpha_t * L_gen`` + (official code, not the
  paper) ``beta_t * L_latent``; round 0 is plain supervised training. The partner also returns its
  **label counts** (disclosed: ``sent.jsonl``).
* **aggregate**: sample-weighted nested average over widths (:func:`fedmol.models.slicing.aggregate_nested`).
* **server step** (Eq. 4): ``gen_steps`` Adam steps on ``L_teacher + L_div`` against this round's
  partner heads, with the per-sample label-count weights (the official code's broadcast bug is not
  reproduced).

Official defaults are kept (generator shape, uniform noise d = 32, Adam 3e-4, 50 x 32 steps,
alpha_0 = beta_0 = 10 decaying x0.98). Deviations, each explained in ``docs/fedgen.md``: G is
conditioned on (task, label) pairs (regression: (task, quartile bin)); per-width BN statistics
("fjord_bn"), optionally pooled (hp ``pooled_bn``); optional FjORD ordered dropout (hp
``ordered_dropout``, ``od_cap_every_step``); the harness's shared local budget; the latent KL as a
per-(molecule, task) BCE. Refused: differential privacy and private heads (the server trains the
generator on every partner's head and label counts).
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fedmol.fl.algorithm import Algorithm, HParams, LocalData, PartnerInfo
from fedmol.fl.fjord import WidthSampler
from fedmol.fl.message import Message
from fedmol.fl.pooled_bn import PooledBNStats
from fedmol.models import build, slicing
from fedmol.models.slicing import SliceLinear
from fedmol.training import seed_everything

COUNTS = "fedgen.label_counts"
MOMENTS = "fedgen.target_moments"
GEN = "generator."
#: standard-normal quartile edges and the conditional means of the four bins (regression pairs)
NORMAL_EDGES = (-0.6744897501960817, 0.0, 0.6744897501960817)
NORMAL_CENTRES = (-1.2710535, -0.3177580, 0.3177580, 1.2710535)


def decayed(c0: float, rnd: int, decay: float = 0.98, floor: float = 1e-4) -> float:
    """The official exponential schedule ``max(floor, c0 * decay^round)``."""
    return max(floor, c0 * decay**rnd)


class Generator(nn.Module):
    """G(eps, y) -> z: ``[eps; onehot(y)] -> Linear(d+C, H) -> BN -> ReLU -> SliceLinear(H, latent)``."""

    def __init__(self, n_pairs: int, latent: int, noise_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.n_pairs, self.noise_dim = n_pairs, noise_dim
        self.fc = nn.Linear(noise_dim + n_pairs, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.out = SliceLinear(hidden, latent, slice_in=False, slice_out=True)

    def forward(self, eps: Tensor, pairs: Tensor, width: float = 1.0) -> Tensor:
        h = torch.cat([eps, F.one_hot(pairs, self.n_pairs).to(eps.dtype)], dim=1)
        return self.out(F.relu(self.bn(self.fc(h))), width=width)

    def sample(self, pairs: Tensor, width: float = 1.0, generator: torch.Generator | None = None):
        eps = torch.rand(len(pairs), self.noise_dim, generator=generator)
        return eps, self(eps, pairs, width)


def diversity_loss(eps: Tensor, z: Tensor) -> Tensor:
    """``exp(-mean_{i,j}[ mean_d (eps_i-eps_j)^2 * mean_d |z_i-z_j| ])`` (official DiversityLoss, l1)."""
    d_eps = (eps[:, None, :] - eps[None, :, :]).square().mean(-1)
    d_z = (z[:, None, :] - z[None, :, :]).abs().mean(-1)
    return torch.exp(-(d_eps * d_z).mean())


class PairSpace:
    """The (task, label) pairs G is conditioned on, and how a head is scored on one."""

    def __init__(self, task_type: str, num_tasks: int, mean=None, std=None):
        self.task_type, self.T = task_type, num_tasks
        self.L = 2 if task_type == "classification" else len(NORMAL_CENTRES)
        self.mean = torch.as_tensor(mean if mean is not None else np.zeros(num_tasks), dtype=torch.float32)
        self.std = torch.as_tensor(std if std is not None else np.ones(num_tasks), dtype=torch.float32)

    @property
    def n_pairs(self) -> int:
        return self.T * self.L

    def split(self, pairs: Tensor) -> tuple[Tensor, Tensor]:
        return pairs // self.L, pairs % self.L

    def counts(self, y: Tensor) -> Tensor:
        """``[T, L]`` label counts of a label matrix ``y`` (NaN = missing, not counted)."""
        y = y.reshape(-1, self.T).float()
        mask = ~torch.isnan(y)
        if self.task_type == "classification":
            lab = torch.where(mask, y, torch.zeros_like(y)).long()
        else:
            zs = (torch.where(mask, y, torch.zeros_like(y)) - self.mean) / self.std
            lab = torch.bucketize(zs, torch.tensor(NORMAL_EDGES))
        out = torch.zeros(self.T, self.L)
        t_idx = torch.arange(self.T).expand_as(lab)
        out.index_put_((t_idx[mask], lab[mask]), torch.ones(int(mask.sum())), accumulate=True)
        return out

    def targets(self, pairs: Tensor) -> Tensor:
        """The value a head's output for the pair's task should take."""
        task, label = self.split(pairs)
        if self.task_type == "classification":
            return label.float()
        return self.mean[task] + self.std[task] * torch.tensor(NORMAL_CENTRES)[label]

    def head_loss(self, pred: Tensor, pairs: Tensor, reduction: str = "none") -> Tensor:
        """Loss of ``pred`` [B, T] on generated samples for ``pairs`` [B] (task-t output only)."""
        t, _ = self.split(pairs)
        out = pred.gather(1, t[:, None]).squeeze(1)
        target = self.targets(pairs)
        if self.task_type == "classification":
            loss = F.binary_cross_entropy_with_logits(out, target, reduction="none")
        else:
            loss = (out - target).square()
        return loss.mean() if reduction == "mean" else loss

    def to_config(self) -> dict:
        return dict(task_type=self.task_type, num_tasks=self.T, mean=self.mean.tolist(), std=self.std.tolist())

    @classmethod
    def from_config(cls, c: dict) -> "PairSpace":
        return cls(c["task_type"], c["num_tasks"], c["mean"], c["std"])


def teacher_loss(z_at: dict[float, Tensor], pairs: Tensor, heads: list, weights: Tensor, space: PairSpace) -> Tensor:
    """``sum_k mean_i[ w_k(y_i) * loss(h_k(z_i), y_i) ]`` with per-sample weights.

    ``z_at[r]``: generated embeddings at width r; ``heads``: (width, head callable) per partner;
    ``weights``: ``[K, n_pairs]`` label-count weights ``c_k(y) / sum_j c_j(y)``.
    """
    total = z_at[next(iter(z_at))].new_zeros(())
    for k, (r, head) in enumerate(heads):
        per_sample = space.head_loss(head(z_at[r]), pairs)  # [B]
        total = total + (weights[k, pairs] * per_sample).mean()
    return total


class FedGenHParams(HParams):
    alpha0: float = Field(10.0, ge=0, description="initial weight of the partners' generative loss L_gen")
    beta0: float = Field(10.0, ge=0, description="initial weight of the latent loss L_latent")
    coef_decay: float = Field(0.98, gt=0, le=1, description="per-round decay of alpha and beta")
    gen_steps: int = Field(50, ge=0, description="server generator steps per round")
    gen_batch: int = Field(32, ge=1, description="generated embeddings per generator step")
    gen_lr: float = Field(3e-4, gt=0, description="generator Adam learning rate")
    gen_weight_decay: float = Field(1e-2, ge=0, description="generator Adam weight decay")
    gen_lr_decay: float = Field(0.98, gt=0, le=1, description="per-round decay of the generator learning rate")
    noise_dim: int = Field(32, ge=1, description="generator noise dimension")
    gen_hidden: int = Field(256, ge=1, description="generator hidden units")
    reg_batch: int = Field(32, ge=1, description="generated embeddings per partner step (its regularizer)")
    pooled_bn: bool = Field(False, description="serve BN statistics pooled over all partners (sBN query)")
    sbn_batch_size: int = Field(256, ge=1, description="molecules per batch of the pooled-BN query")
    ordered_dropout: bool = Field(False, description="FjORD's ordered dropout: every served width up to the cap")
    od_cap_every_step: bool = Field(False, description="with ordered_dropout: also a step at the cap every batch")


class FedGen(PooledBNStats, Algorithm):
    name = "fedgen"
    norm = "fjord_bn"
    disclosures = {COUNTS: "per (task, label) counts of the partner's training labels (regression: per task "
                           "and target bin), every round from round 1 (classification: from round 0)",
                   MOMENTS: "per task: count, sum and sum of squares of the training targets (regression, round 0)"}
    defaults = FedGenHParams.defaults(own_only=True)
    hparam_schema = FedGenHParams
    dp_refusal = ("its server step trains the generator on every partner's own head and its label counts, which "
                  "DP-FedAvg's noisy average does not protect")
    private_heads_refusal = ("its server trains the generator against the partners' heads (the teacher), so every "
                             "partner's head must reach the server")

    def pooled_bn(self) -> bool:
        return bool(self.hp["pooled_bn"])

    def init(self, partners: list[PartnerInfo]) -> None:
        super().init(partners)
        hidden, T = self.model_config["hidden"], self.model_config["num_tasks"]
        self.space = PairSpace(self.model_config["task_type"], T)
        g = torch.Generator().manual_seed(self.seed + 1)
        torch.manual_seed(self.seed + 1)
        self.generator = Generator(self.space.n_pairs, hidden, self.hp["noise_dim"], self.hp["gen_hidden"])
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=self.hp["gen_lr"],
                                        weight_decay=self.hp["gen_weight_decay"], betas=(0.9, 0.999))
        self.gen_sched = torch.optim.lr_scheduler.ExponentialLR(self.gen_opt, gamma=self.hp["gen_lr_decay"])
        self.rng = g
        self.counts = torch.zeros(len(partners), T, self.space.L)
        self.trained = False  # no generator signal before the first server step
        self.heads: list = []
        self.last_widths: dict[int, float] = {}

    def widths(self) -> tuple[float, ...]:
        return self.nested_widths()

    def configure(self, rnd: int, partner: PartnerInfo) -> Message:
        w = partner.device.max_width
        msg = self.send(rnd, partner, w, pairs=self.space.to_config(), use_generator=self.trained,
                        alpha=decayed(self.hp["alpha0"], rnd, self.hp["coef_decay"]),
                        beta=decayed(self.hp["beta0"], rnd, self.hp["coef_decay"]),
                        qualified=self.qualified().tolist(),
                        **({"grid": list(self.widths())} if self.hp["ordered_dropout"] else {}))
        if self.trained:
            msg.arrays.update({GEN + k: v.detach().clone() for k, v in self.generator.state_dict().items()})
        self.last_widths[partner.pid] = w
        return msg

    def qualified(self) -> Tensor:
        """Pairs some partner holds (the labels G is trained and sampled on)."""
        return torch.nonzero(self.counts.sum(0).flatten() > 0).flatten()

    def aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> dict:
        if not replies:
            return {}
        if self.space.task_type == "regression" and rnd == 0:
            mom = sum(m.arrays[MOMENTS].double() for _, m in replies)  # [3, T]: count, sum, sumsq
            n = mom[0].clamp_min(1)
            mean = mom[1] / n
            std = (mom[2] / n - mean**2).clamp_min(1e-12).sqrt()
            self.space = PairSpace("regression", self.space.T, mean.float(), std.float())
        for p, m in replies:
            if COUNTS in m.arrays:
                self.counts[p.pid] = m.arrays[COUNTS]
        models = [(p, {k: v for k, v in m.arrays.items() if not k.startswith("fedgen.")}, m) for p, m in replies]
        self.load(slicing.aggregate_nested(self.model.state_dict(), [(a, m.metrics["n_train"]) for _, a, m in models]))
        self.weights_changed()
        self.heads = []
        for p, arrays, _ in models:  # the teachers: this round's partner heads
            r = self.last_widths[p.pid]
            net = build(**{**self.model_config, "width": r})
            # statistics of narrower widths the partner did not run are not sent back (unused at width r)
            net.load_state_dict({**slicing.sub_state_dict(self.model, r), **arrays})
            net.eval()
            for q in net.parameters():
                q.requires_grad_(False)
            self.heads.append((p.pid, r, net))
        return {}

    def server_step(self, rnd: int) -> dict:
        qualified = self.qualified()
        if not self.heads or len(qualified) == 0:
            return {}
        ids = [pid for pid, _, _ in self.heads]
        c = self.counts[ids].flatten(1)  # [K, n_pairs]
        weights = c / c.sum(0, keepdim=True).clamp_min(1e-12)
        heads = [(r, (lambda z, net=net, r=r: net.head(z, width=r))) for _, r, net in self.heads]
        widths = sorted({r for r, _ in heads})
        self.generator.train()
        t_loss = d_loss = 0.0
        for _ in range(int(self.hp["gen_steps"])):
            pick = torch.randint(len(qualified), (int(self.hp["gen_batch"]),), generator=self.rng)
            pairs = qualified[pick]
            eps = torch.rand(len(pairs), self.generator.noise_dim, generator=self.rng)
            z_at = {r: self.generator(eps, pairs, width=r) for r in widths}
            lt = teacher_loss(z_at, pairs, heads, weights, self.space)
            ld = diversity_loss(eps, z_at[max(widths)])
            self.gen_opt.zero_grad(set_to_none=True)
            (lt + ld).backward()
            self.gen_opt.step()
            t_loss, d_loss = float(lt.detach()), float(ld.detach())
        self.gen_sched.step()
        self.trained = True
        return {"gen_teacher_loss": round(t_loss, 6), "gen_diversity_loss": round(d_loss, 6)}

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "generator": self.generator}

    def state(self) -> dict[str, Tensor]:
        s = super().state()
        s.update({GEN + k: v.detach().contiguous() for k, v in self.generator.state_dict().items()})
        return s

    # ------------------------------------------------------------------ client side
    @classmethod
    def client_update(cls, msg: Message, data: LocalData) -> Message:
        seed_everything(msg.config["seed"])
        c = msg.config
        gen_arrays = {k[len(GEN):]: v for k, v in msg.arrays.items() if k.startswith(GEN)}
        model_msg = Message({k: v for k, v in msg.arrays.items() if not k.startswith(GEN)}, c)
        model = cls.client_model(model_msg)
        space = PairSpace.from_config(c["pairs"])
        extra = None
        if c["use_generator"] and gen_arrays:
            gen = Generator(space.n_pairs, c["model"]["hidden"], c["hp"]["noise_dim"], c["hp"]["gen_hidden"])
            gen.load_state_dict(gen_arrays)
            gen.eval()
            qualified = torch.tensor(c["qualified"], dtype=torch.long)
            g = torch.Generator().manual_seed(c["seed"])
            extra = _regularizer(gen, space, qualified, c["alpha"], c["beta"], c["width"], c["hp"]["reg_batch"], g)
        width = _od_widths(c) if c["hp"]["ordered_dropout"] else None
        stats = cls.local_train(model, msg, data, width=width, extra_loss=extra)
        reply = cls.reply(model, data, stats)
        y = torch.as_tensor(data.train.labels, dtype=torch.float32).reshape(-1, space.T)
        if space.task_type == "regression" and c["round"] == 0:
            m = ~torch.isnan(y)
            v = torch.where(m, y, torch.zeros_like(y)).double()
            reply.arrays[MOMENTS] = torch.stack([m.sum(0).double(), v.sum(0), v.square().sum(0)]).float()
        else:
            reply.arrays[COUNTS] = space.counts(y)
        return reply


def _od_widths(c: dict):
    """Ordered dropout's widths for each step: a width drawn from the served ones up to the cap, with
    the cap itself too when hp ``od_cap_every_step`` (FjORD's structure: the widest affordable network
    trains on every batch)."""
    sampler = WidthSampler(c["width"], c["seed"], c["grid"])
    if not c["hp"]["od_cap_every_step"]:
        return sampler
    return lambda: tuple(dict.fromkeys((sampler.cap, sampler())))


def _regularizer(gen: Generator, space: PairSpace, qualified: Tensor, alpha: float, beta: float, cap: float,
                 batch: int, g: torch.Generator):
    """The client's generative terms (paper Eq. 5 + the official latent term), as an extra loss at the
    step's width (the cap, or the width ordered dropout drew)."""

    def extra(model, data_batch, pred, width):
        width = cap if width is None else width
        with torch.no_grad():
            pairs = qualified[torch.randint(len(qualified), (batch,), generator=g)]
            _, z = gen.sample(pairs, width=width, generator=g)
        loss = alpha * space.head_loss(model.head(z, width=width), pairs, "mean")
        if beta > 0 and space.task_type == "classification":
            y = data_batch.y.reshape(pred.shape)
            mask = ~torch.isnan(y)
            if mask.any():
                rows, tasks = torch.nonzero(mask, as_tuple=True)
                lab = y[rows, tasks].long()
                with torch.no_grad():
                    _, z_true = gen.sample(tasks * space.L + lab, width=width, generator=g)
                    target = torch.sigmoid(model.head(z_true, width=width).gather(1, tasks[:, None]).squeeze(1))
                loss = loss + beta * F.binary_cross_entropy_with_logits(pred[rows, tasks], target)
        return loss

    return extra
