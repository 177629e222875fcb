"""FedAvgM's server step (hyperparameters ``server_lr``, ``server_momentum``; :class:`ServerMomentum`):
the step equals a hand computation over two rounds, leaves BN running statistics to the aggregate,
changes a run only when asked, is never sent to a partner, and is refused where no backbone trains."""

import json
import re

import pytest
import torch
from torch import nn

from fedmol.config import RunConfig
from fedmol.errors import FedmolError
from fedmol.fl.algorithm import ServerMomentum
from fedmol.fl.harness import run_federated

TINY = dict(dataset="bace", partners=3, alpha=1.0, rounds=2, hidden=16, layers=2, model="mlp", select="last",
            hparams={"max_local_steps": 2})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _aggregate_into(model: nn.Module, params: dict, running_mean: torch.Tensor) -> None:
    """What an algorithm's aggregate does: load the averaged weights (and BN statistics)."""
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
        model[1].running_mean.copy_(running_mean)


def test_two_rounds_equal_the_hand_computation():
    model, opt = _model(), ServerMomentum(lr=0.5, momentum=0.9)
    names = [k for k, _ in model.named_parameters()]
    w0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    a1 = {k: v + 1.0 for k, v in w0.items()}  # round 1's aggregate
    before = opt.before(model)
    _aggregate_into(model, a1, torch.tensor([3.0, 4.0]))
    opt.step(model, before)
    w1 = {k: w0[k] - 0.5 * (w0[k] - a1[k]) for k in names}  # v1 = w0 - a1
    for k, p in model.named_parameters():
        torch.testing.assert_close(p, w1[k], rtol=0, atol=1e-7)
    assert model[1].running_mean.tolist() == [3.0, 4.0]  # buffers: the aggregate's
    a2 = {k: w1[k] - 2.0 for k in names}
    before = opt.before(model)
    _aggregate_into(model, a2, torch.tensor([5.0, 6.0]))
    opt.step(model, before)
    for k, p in model.named_parameters():
        v2 = 0.9 * (w0[k] - a1[k]) + (w1[k] - a2[k])
        torch.testing.assert_close(p, w1[k] - 0.5 * v2, rtol=0, atol=1e-6)
    assert model[1].running_mean.tolist() == [5.0, 6.0]


def test_off_by_default_and_then_computes_nothing():
    opt = ServerMomentum(lr=1.0, momentum=0.0)
    assert not opt.active and opt.before(_model()) is None
    assert ServerMomentum(lr=1.0, momentum=0.5).active and ServerMomentum(lr=0.7, momentum=0.0).active


def test_a_run_with_server_momentum_differs_and_partners_are_not_sent_it(tmp_path):
    plain = run_federated(RunConfig(**TINY), None, progress=False)
    hp = {**TINY["hparams"], "server_momentum": 0.9}
    cfg = RunConfig(**{**TINY, "hparams": hp})
    out = tmp_path / "run"
    summary = run_federated(cfg, out, progress=False)
    assert summary["test"] != plain["test"]
    resolved = json.loads((out / "config.json").read_text())["algorithm"]["hparams"]
    assert resolved["server_momentum"] == 0.9 and resolved["server_lr"] == 1.0
    sent = (out / "sent.jsonl").read_text()
    assert sent and "server_momentum" not in sent and "server_lr" not in sent
    assert run_federated(cfg, None, progress=False)["test"] == summary["test"]


@pytest.mark.parametrize("hp, message", [
    ({"server_momentum": 1.0}, "fedavg: server_momentum must be a number in [0, 1), got 1.0"),
    ({"server_lr": 0.0}, "fedavg: server_lr must be a number > 0, got 0.0"),
])
def test_out_of_range_values_are_refused_in_one_line(hp, message):
    with pytest.raises(FedmolError, match="^" + re.escape(message) + "$"):
        run_federated(RunConfig(**{**TINY, "hparams": hp}), None, progress=False)


def test_refused_where_no_backbone_trains():
    with pytest.raises(FedmolError, match="^gbt-bagging: server_lr and server_momentum step a backbone's weights; "
                                          "gbt-bagging trains none$"):
        run_federated(RunConfig(**{**TINY, "algorithm": "gbt-bagging", "hparams": {"server_momentum": 0.5}}),
                      None, progress=False)
