"""HeteroFL: nested unweighted aggregation, head-row rule, scaler, widths, end to end (static BN pooling:
test_pooled_bn.py)."""

from __future__ import annotations

import math

import pytest
import torch

from fedmol.fl.algorithm import LocalData, PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.heterofl import LABELLED, HeteroFL, labelled_tasks
from fedmol.fl.message import Message
from fedmol.models import slicing
from fedmol.models.slicing import Scaler
from fedmol.training import make_loader
from fl_graphs import binary_labels, graphs


def config(num_tasks=1, hidden=16, layers=2, dropout=0.0):
    return dict(name="gin", num_tasks=num_tasks, hidden=hidden, layers=layers, task_type="classification",
                dropout=dropout)


def make(caps, num_tasks=1, hparams=None, hidden=16, layers=2, seed=0):
    algo = HeteroFL(config(num_tasks, hidden, layers), hparams, seed=seed)
    partners = [PartnerInfo(k, 10 * (k + 1), DeviceProfile(c)) for k, c in enumerate(caps)]
    algo.init(partners)
    return algo, partners


def filled(algo, width, value, labelled=None):
    """A hand-made reply: the width slice that configure sends, every float entry = ``value``."""
    sub = {k: v for k, v in slicing.sub_state_dict(algo.model, width).items() if k not in algo._bn_keys}
    arrays = {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in sub.items()}
    if labelled is not None:
        arrays[LABELLED] = torch.tensor(labelled, dtype=torch.bool)
    return Message(arrays=arrays, config={"width": width}, metrics={"n_train": 1.0})


# ----------------------------------------------------------------------------------- aggregation


def test_nested_unweighted_aggregation_on_hand_made_states():
    algo, (pa, pb) = make([1.0, 0.5], hidden=8, layers=1)
    old = {k: v.clone() for k, v in algo.model.state_dict().items()}
    a, b = filled(algo, 1.0, 1.0), filled(algo, 0.5, 3.0)
    a.metrics["n_train"], b.metrics["n_train"] = 10.0, 1000.0  # unweighted: sizes must not matter
    algo.aggregate(0, [(pa, a), (pb, b)])
    new = algo.model.state_dict()
    spec = slicing.slice_spec(algo.model)
    checked_partial = 0
    for key, t in new.items():
        if key in algo._bn_keys:  # sBN statistics are never sent nor averaged
            assert torch.equal(t, old[key]), key
            continue
        block = tuple(slice(0, n) for n in b.arrays[key].shape)
        assert torch.allclose(t[block], torch.full_like(t[block], 2.0)), key  # (1 + 3) / 2
        outside = torch.ones_like(t, dtype=torch.bool)
        outside[block] = False
        if outside.any():
            checked_partial += 1
            assert torch.allclose(t[outside], torch.ones_like(t[outside])), key  # only A holds them
            assert key in spec
    assert checked_partial >= 5  # every hidden tensor had coordinates only the full-width partner holds

    # a round in which only the half-width partner answers: coordinates outside its slice keep their values
    before = {k: v.clone() for k, v in algo.model.state_dict().items()}
    algo.aggregate(1, [(pb, filled(algo, 0.5, 5.0))])
    for key, t in algo.model.state_dict().items():
        if key in algo._bn_keys:
            continue
        block = tuple(slice(0, n) for n in b.arrays[key].shape)
        assert torch.allclose(t[block], torch.full_like(t[block], 5.0)), key
        rest = before[key].clone()
        rest[block] = t[block]
        assert torch.equal(t, rest), key


def test_head_rows_come_only_from_partners_labelling_the_task():
    algo, (pa, pb) = make([1.0, 0.5], num_tasks=3, hidden=8, layers=1)
    old_w, old_b = algo.model.head.weight.detach().clone(), algo.model.head.bias.detach().clone()
    a = filled(algo, 1.0, 1.0, labelled=[True, False, False])  # labels task 0 only
    b = filled(algo, 0.5, 3.0, labelled=[True, True, False])  # labels tasks 0 and 1; nobody labels task 2
    algo.aggregate(0, [(pa, a), (pb, b)])
    w, bias = algo.model.head.weight.detach(), algo.model.head.bias.detach()
    half = slicing.sliced_dim(8, 0.5)
    assert torch.allclose(w[0, :half], torch.full((half,), 2.0)) and torch.allclose(w[0, half:], torch.ones(8 - half))
    assert torch.allclose(w[1, :half], torch.full((half,), 3.0))  # B alone
    assert torch.equal(w[1, half:], old_w[1, half:])  # nobody with task-1 labels holds these columns
    assert torch.equal(w[2], old_w[2]) and float(bias[2]) == float(old_b[2])  # unlabelled everywhere
    assert bias.tolist()[:2] == pytest.approx([2.0, 3.0])

    algo_all, (qa, qb) = make([1.0, 0.5], num_tasks=3, hidden=8, layers=1, hparams={"head_rule": "all"})
    algo_all.aggregate(0, [(qa, filled(algo_all, 1.0, 1.0, [True, False, False])),
                           (qb, filled(algo_all, 0.5, 3.0, [True, True, False]))])
    assert algo_all.model.head.bias.tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_client_reports_labelled_tasks_and_trains_only_their_rows():
    train = graphs(binary_labels(12, 3, missing=(1,)))
    assert labelled_tasks(train, 3).tolist() == [True, False, True]
    algo, (p,) = make([0.5], num_tasks=3)
    msg = algo.configure(0, p)
    assert not (set(msg.arrays) & algo._bn_keys)  # sBN statistics are not shipped in training rounds
    reply = HeteroFL.client_update(msg, LocalData(0, train, train[:2]))
    assert reply.arrays[LABELLED].tolist() == [True, False, True]
    assert not (set(reply.arrays) & algo._bn_keys)
    # masked loss: the unlabelled task's head row gets no gradient, so Adam (no weight decay) leaves it alone
    assert torch.equal(reply.arrays["head.weight"][1], msg.arrays["head.weight"][1])
    assert not torch.equal(reply.arrays["head.weight"][0], msg.arrays["head.weight"][0])


def test_truncated_upload_counts_as_the_narrower_sub_model():
    algo, (pa,) = make([1.0], num_tasks=2, hidden=8, layers=1)
    assert HeteroFL.accepts_partial_uploads
    old = {k: v.clone() for k, v in algo.model.state_dict().items()}
    reply = filled(algo, 1.0, 7.0, labelled=[True, False])
    reply.arrays = slicing.sub_state_dict(reply.arrays, 0.25, spec=slicing.slice_spec(algo.model))  # faulty link
    assert reply.arrays[LABELLED].tolist() == [True, False]
    algo.aggregate(0, [(pa, reply)])
    new = algo.model.state_dict()
    for key, t in new.items():
        if key in algo._bn_keys or key.startswith("head."):
            continue
        expected = old[key].clone()
        expected[tuple(slice(0, n) for n in reply.arrays[key].shape)] = 7.0
        assert torch.equal(t, expected), key
    c = slicing.sliced_dim(8, 0.25)
    w = new["head.weight"]
    assert torch.equal(w[0, :c], torch.full((c,), 7.0)) and torch.equal(w[0, c:], old["head.weight"][0, c:])
    assert torch.equal(w[1], old["head.weight"][1])  # task 1 unlabelled at this partner
    assert new["head.bias"].tolist() == [7.0, float(old["head.bias"][1])]


# ----------------------------------------------------------------------------------- scaler


def test_scaler_divides_by_rate_in_training_and_is_identity_in_eval(monkeypatch):
    algo, (p,) = make([0.25])
    msg = algo.configure(0, p)
    assert msg.config["width"] == 0.25 and msg.config["model"]["scaler"] is True
    assert msg.config["model"]["norm"] == "sbn"
    calls = []
    original = Scaler.forward

    def spy(self, x, width):
        out = original(self, x, width)
        calls.append((self.training, self.enabled, width, x.detach(), out.detach()))
        return out

    monkeypatch.setattr(Scaler, "forward", spy)
    train = graphs(binary_labels(8, 1))
    HeteroFL.client_update(msg, LocalData(0, train, train[:2]))
    assert calls and all(training and enabled and w == 0.25 for training, enabled, w, _, _ in calls)
    assert all(torch.allclose(out, x / 0.25) for *_, x, out in calls)

    calls.clear()
    model = HeteroFL.client_model(msg).eval()
    model(next(iter(make_loader(train, 8))))
    assert calls and all(not training for training, *_ in calls)
    assert all(torch.equal(out, x) for *_, x, out in calls)


# ----------------------------------------------------------------------------------- widths and rates


def test_widths_follow_the_smallest_cap_and_rates_the_mode():
    assert make([1.0, 0.5, 0.25, 0.125])[0].widths() == (1.0, 0.5, 0.25, 0.125)
    assert make([0.25, 0.5])[0].widths() == (1.0, 0.5, 0.25)
    assert make([1.0])[0].widths() == (1.0,)
    fix, parts = make([1.0, 0.25])
    assert [fix.rate(r, p) for r in range(3) for p in parts] == [1.0, 0.25] * 3
    dyn, parts = make([1.0, 0.25, 0.0625], hparams={"mode": "dynamic"}, seed=3)
    dyn2, _ = make([1.0, 0.25, 0.0625], hparams={"mode": "dynamic"}, seed=3)
    rates = {p.pid: [dyn.rate(r, p) for r in range(30)] for p in parts}
    assert rates == {p.pid: [dyn2.rate(r, p) for r in range(30)] for p in parts}  # seeded
    for p in parts:
        assert set(rates[p.pid]) <= {w for w in dyn.widths() if w <= p.device.max_width}
    assert set(rates[0]) == set(dyn.widths())  # the full-width partner visits every width
    assert set(rates[2]) == {0.0625}
    msg = dyn.configure(5, parts[0])
    assert msg.config["width"] == rates[0][5]


# ----------------------------------------------------------------------------------- end to end


def test_end_to_end_tiered_run_has_finite_metrics_at_every_width():
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    res = run_federated(RunConfig(algorithm="heterofl", dataset="b3db_regression", devices="tiered", rounds=2,
                                  hidden=16, layers=2, partners=4, hparams={"max_local_steps": 5}),
                        None, progress=False)
    assert set(res["test"]) == {"1.0", "0.5", "0.25", "0.125"}
    assert all(math.isfinite(v) for v in res["test"].values())
    assert all(math.isfinite(v) for v in res["valid"].values())
    assert [h["participants"] for h in res["history"]] == [4, 4] and res["failures"] == 0
    assert 0 < res["bytes_up"] and 0 < res["bytes_down"]
