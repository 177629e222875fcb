"""Optional differential privacy on partner updates: DP-FedAvg with fixed clipping, and its accounting.

With hp ``dp_clip`` set (``dp_noise`` = sigma, ``dp_delta``), the algorithms that support it (FedAvg,
FjORD, FedResCuE: ``supports_dp``) run partner-level central DP as McMahan et al. (ICLR 2018, Alg. 1)
and Flower's fixed-clipping strategies; the full account is ``docs/privacy.md``:

* partner side (:func:`clip_update`, in :meth:`~fedmol.fl.algorithm.Algorithm.partner_update`): the
  update over every float tensor (BN statistics included) is clipped to L2 norm ``dp_clip`` jointly;
* server side (:func:`fedmol.models.slicing.aggregate_nested` with ``noise_std``): uniform weights and
  Gaussian noise of std ``dp_noise * dp_clip`` on every coordinate's sum over its holders, seeded
  from (run seed, round) (:func:`noise_generator`);
* accounting (:func:`account`): opacus's RDP accountant, one step per round at sampling rate ``q``
  (:func:`sample_rate`: the largest per-partner probability of being asked), epsilon at ``dp_delta``.

Threat model: the coordinator is trusted to add the noise (no secure aggregation). Covered: the
model and what is computed from it on data the partners do not own; not covered: partners'
validation scores, training-set sizes, per-reply metrics, and what the algorithms that refuse DP
send. Deviations (``docs/privacy.md``): fixed-size sampling accounted as Poisson, division by the
number of holders, BN variances clamped at 0, ``dp_noise = 0`` gives no guarantee (epsilon null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmol.errors import FedmolError

__all__ = ["MECHANISM", "check_hparams", "clip_update", "noise_std", "noise_generator", "clamp_variances",
           "sample_rate", "epsilon", "account"]

MECHANISM = "DP-FedAvg, fixed clipping, Gaussian noise (McMahan et al. 2018)"
ACCOUNTANT = "rdp (opacus)"
NOT_COVERED = ("validation scores on partners' data, training-set sizes, per-partner reply metrics "
               "(sent.jsonl)")


def enabled(hp: Mapping[str, Any]) -> bool:
    return hp.get("dp_clip") is not None


def check_hparams(hp: Mapping[str, Any], who: str = "") -> None:
    """Raise :class:`FedmolError` unless ``dp_clip`` (if set) > 0, ``dp_noise`` >= 0, 0 < ``dp_delta`` < 1."""
    if not enabled(hp):
        return
    pre = f"{who}: " if who else ""
    try:
        clip, noise, delta = float(hp["dp_clip"]), float(hp["dp_noise"]), float(hp["dp_delta"])
    except (TypeError, ValueError) as e:
        raise FedmolError(f"{pre}dp_clip, dp_noise and dp_delta must be numbers ({e})") from None
    if not (math.isfinite(clip) and clip > 0):
        raise FedmolError(f"{pre}dp_clip must be a positive number (the L2 bound of a partner's update), got {clip}")
    if not (math.isfinite(noise) and noise >= 0):
        raise FedmolError(f"{pre}dp_noise (the noise multiplier) must be >= 0, got {noise}")
    if not 0.0 < delta < 1.0:
        raise FedmolError(f"{pre}dp_delta must be in (0, 1), got {delta}")


# ---------------------------------------------------------------------------------- partner side
def clip_update(received: Mapping[str, Tensor], sent: Mapping[str, Tensor], clip: float
                ) -> tuple[dict[str, Tensor], float]:
    """Clip a partner's update to L2 norm ``clip``: returns ``(arrays, norm before clipping)``.

    ``delta = sent - received`` over every floating-point tensor of ``sent`` (one norm over all of
    them, computed in float64); if its norm exceeds ``clip`` the arrays become
    ``received + delta * clip / norm`` (cast back to their dtype), else they are returned as sent.
    Non-float tensors pass unchanged. A float tensor sent without a received counterpart of the
    same shape cannot be clipped and raises :class:`FedmolError`.
    """
    clip = float(clip)
    deltas: dict[str, Tensor] = {}
    for k, t in sent.items():
        if not t.is_floating_point():
            continue
        r = received.get(k)
        if r is None or tuple(r.shape) != tuple(t.shape):
            raise FedmolError(f"DP clipping: the update's float tensor {k!r} has no received value of the same "
                              "shape to clip against")
        deltas[k] = t.detach().to(torch.float64) - r.detach().to(torch.float64)
    norm = math.sqrt(sum(float(d.square().sum()) for d in deltas.values()))
    out = dict(sent)
    if norm > clip:
        scale = clip / norm
        for k, d in deltas.items():
            out[k] = (received[k].detach().to(torch.float64) + d * scale).to(sent[k].dtype).contiguous()
    return out, norm


# ---------------------------------------------------------------------------------- server side
def noise_std(hp: Mapping[str, Any]) -> float:
    """Standard deviation of the Gaussian noise on each coordinate's sum: ``dp_noise * dp_clip``."""
    return float(hp["dp_noise"]) * float(hp["dp_clip"])


def noise_generator(seed: int, rnd: int, stream: int = 0) -> torch.Generator:
    """The server's noise generator for round ``rnd`` of a run seeded ``seed`` (``stream``: a
    second independent draw in the same round). Deterministic, independent of torch's global state."""
    state = np.random.SeedSequence([int(seed), int(rnd), int(stream), 0xD1FF]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def clamp_variances(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Post-processing after noise: every BatchNorm running variance (``*.running_var``,
    FjORD's ``*.running_var_<width>``) clamped at 0, in place. Returns ``state``."""
    for k, v in state.items():
        if k.rsplit(".", 1)[-1].startswith("running_var") and v.is_floating_point():
            state[k] = v.clamp_min(0.0)
    return state


# ---------------------------------------------------------------------------------- accounting
def sample_rate(p_online: Sequence[float], clients_per_round: int | None = None) -> float:
    """The largest probability, over partners, of being asked in a round.

    Partner ``k`` is online with probability ``p_online[k]``; if more than ``clients_per_round``
    are online, that many of them are drawn uniformly without replacement (the harness's and the
    pilot coordinator's rule). With ``M`` = the number of *other* partners online (a
    Poisson-binomial variable), partner ``k`` is asked with probability
    ``p_k * E[min(1, C / (M + 1))]``, computed exactly.
    """
    p = [float(x) for x in p_online]
    if not p:
        return 0.0
    if not clients_per_round or clients_per_round >= len(p):
        return max(p)
    c = int(clients_per_round)
    best = 0.0
    for k in range(len(p)):
        dist = np.zeros(len(p))  # distribution of the number of other partners online
        dist[0] = 1.0
        for j, pj in enumerate(p):
            if j != k:
                dist[1:] = dist[1:] * (1 - pj) + dist[:-1] * pj
                dist[0] *= 1 - pj
        m = np.arange(len(p))
        best = max(best, p[k] * float(np.sum(dist * np.minimum(1.0, c / (m + 1.0)))))
    return min(best, 1.0)


def epsilon(noise_multiplier: float, q: float, rounds: int, delta: float) -> float | None:
    """Epsilon of ``rounds`` subsampled Gaussian steps (rate ``q``, noise multiplier sigma) at
    ``delta``, from opacus's RDP accountant; None when sigma = 0 (no guarantee: infinite)."""
    if noise_multiplier <= 0:
        return None
    if rounds <= 0 or q <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(q), int(rounds))]  # == `rounds` calls of acc.step
    return float(acc.get_epsilon(delta=float(delta)))


def account(hp: Mapping[str, Any], p_online: Sequence[float], clients_per_round: int | None,
            rounds: int) -> dict | None:
    """The privacy record of a run (summary.json and config.json key ``privacy``); None when DP is off.

    ``p_online``: the partners' availabilities (their device profiles); ``clients_per_round``:
    the cap on partners asked per round (None or 0: no cap); ``rounds``: the rounds of the run.
    """
    if not enabled(hp):
        return None
    check_hparams(hp)
    q = sample_rate(p_online, clients_per_round)
    sigma, delta = float(hp["dp_noise"]), float(hp["dp_delta"])
    return {"mechanism": MECHANISM, "level": "partner", "clip": float(hp["dp_clip"]), "noise_multiplier": sigma,
            "delta": delta, "epsilon": epsilon(sigma, q, int(rounds), delta), "rounds": int(rounds),
            "sample_rate": q, "accountant": ACCOUNTANT, "not_covered": NOT_COVERED}
