"""FjORD: ordered-dropout width sampler, self-distillation loss, per-width BN statistics, server rule, end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

import fl_graphs

from fedmol.fl.algorithm import LocalData, PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.fjord import FjORD, WidthSampler, affordable_widths, distill_loss, fjord_loss
from fedmol.fl.message import Message
from fedmol.models import WIDTHS, build, slicing
from fedmol.models.slicing import width_tag
from fedmol.training import make_loader, train_epoch


def graphs(n: int, tasks: int = 2, seed: int = 0, regression: bool = False) -> list[Data]:
    """``n`` of fl_graphs' molecules with seeded labels (0/1 or normal), about 30% of them missing."""
    gen = torch.Generator().manual_seed(seed)
    ys = []
    for _ in range(n):
        y = torch.randn(tasks, generator=gen) if regression else (torch.rand(tasks, generator=gen) < 0.5).float()
        y[torch.rand(tasks, generator=gen) < 0.3] = math.nan
        ys.append(y.tolist())
    return fl_graphs.graphs(ys)


def config(num_tasks=2, hidden=16, layers=2, dropout=0.0, task_type="classification"):
    return dict(name="gin", num_tasks=num_tasks, hidden=hidden, layers=layers, task_type=task_type,
                dropout=dropout)


def make(caps, hparams=None, hidden=16, layers=2, seed=0):
    algo = FjORD(config(hidden=hidden, layers=layers), hparams, seed=seed)
    partners = [PartnerInfo(k, 10 * (k + 1), DeviceProfile(c)) for k, c in enumerate(caps)]
    algo.init(partners)
    return algo, partners


# ----------------------------------------------------------------------------------- width sampler


def test_width_sampler_respects_the_cap_and_is_seeded():
    for cap in WIDTHS:
        draws = WidthSampler(cap, seed=7).draw(300)
        assert max(draws) <= cap
        assert set(draws) == set(affordable_widths(cap)) == {w for w in WIDTHS if w <= cap}  # all reachable
        assert draws == WidthSampler(cap, seed=7).draw(300)  # deterministic for a seed
    assert WidthSampler(1.0, seed=7).draw(50) != WidthSampler(1.0, seed=8).draw(50)
    counts = [WidthSampler(1.0, seed=1).draw(5000).count(w) for w in WIDTHS]
    assert all(abs(c / 5000 - 0.2) < 0.03 for c in counts)  # uniform over the affordable widths
    assert WidthSampler(0.5, 0, grid=(1.0, 0.5, 0.25)).choices == (0.5, 0.25)
    assert WidthSampler(0.5, 0).cap == 0.5


# ----------------------------------------------------------------------------------- distillation


def _model(task_type="classification"):
    torch.manual_seed(0)
    return build(**config(task_type=task_type), norm="fjord_bn").train()


def test_distillation_target_is_detached():
    model = _model()
    batch = next(iter(make_loader(graphs(8), 8)))
    teacher = model(batch, width=1.0)
    student = model(batch, width=0.25)
    kd = distill_loss(student, teacher, "classification")
    g_teacher, g_student = torch.autograd.grad(kd, [teacher, student], allow_unused=True)
    assert g_teacher is None  # no path from the distillation term back into the teacher's output
    assert g_student is not None and g_student.abs().sum() > 0
    # the full step: the teacher output's gradient is the CE term's alone
    loss_parts = {}

    def capture(module, args, out):
        if args[1] == 1.0:
            out.retain_grad()
            loss_parts["teacher"] = out

    h = model.head.register_forward_hook(capture)
    loss, _ = fjord_loss(model, batch, 0.25, 1.0, kd_weight=3.0)
    h.remove()
    loss.backward()
    t = loss_parts["teacher"]
    t_grad = t.grad.clone()  # (autograd.grad below would add to a retained .grad)
    (ce_grad,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(t, torch.nan_to_num(batch.y), reduction="none")
        .where(~torch.isnan(batch.y), torch.zeros(())).sum() / (~torch.isnan(batch.y)).sum(), t)
    torch.testing.assert_close(t_grad, ce_grad)


def _bce(z, q):
    return -(q * torch.log(torch.sigmoid(z)) + (1 - q) * torch.log(1 - torch.sigmoid(z)))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_is_ce_plus_weighted_kd_by_hand(temperature):
    model = _model()
    batch = next(iter(make_loader(graphs(10, seed=3), 10)))
    with torch.no_grad():
        t = model(batch, width=0.5)
        s = model(batch, width=0.125)
    y = batch.y
    mask = ~torch.isnan(y)
    ce = _bce(t[mask], y[mask]).mean()
    q = torch.sigmoid(t / temperature)
    kd = _bce(s / temperature, q).mean() * temperature**2  # all entries, labelled or not
    loss, parts = fjord_loss(model, batch, 0.125, 0.5, kd_weight=0.7, temperature=temperature)
    assert float(loss.detach()) == pytest.approx(float(ce + 0.7 * kd), rel=1e-5)
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-5) and parts["kd"] == pytest.approx(float(kd), rel=1e-5)
    same, parts = fjord_loss(model, batch, 0.5, 0.5, kd_weight=0.7)  # p = p_max: CE only
    assert float(same.detach()) == pytest.approx(float(ce), rel=1e-5) and parts["kd"] == 0.0
    plain, _ = fjord_loss(model, batch, 0.125, 0.5, self_distill=False)  # plain ordered dropout
    assert float(plain.detach()) == pytest.approx(float(_bce(s[mask], y[mask]).mean()), rel=1e-5)


def test_regression_distillation_is_mse_to_the_teacher():
    model = _model("regression")
    batch = next(iter(make_loader(graphs(10, regression=True), 10)))
    with torch.no_grad():
        t, s = model(batch, width=1.0), model(batch, width=0.25)
    mask = ~torch.isnan(batch.y)
    expected = (t[mask] - batch.y[mask]).square().mean() + 2.0 * (s - t).square().mean()
    loss, _ = fjord_loss(model, batch, 0.25, 1.0, kd_weight=2.0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_one_local_loop_takes_fjords_step_and_reports_its_parts():
    model = _model()
    loader = make_loader(graphs(8), 8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = train_epoch(model, loader, opt, loss_fn=lambda m, b: fjord_loss(m, b, 0.25, 1.0))
    assert out["steps"] == 1 and out["samples"] == 8
    assert out["loss"] == pytest.approx(out["ce"] + out["kd"], rel=1e-5) and out["kd"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------------- per-width BN


def test_client_keeps_per_width_bn_statistics():
    algo, (p,) = make([1.0], hparams={"batch_size": 4, "local_epochs": 2})
    msg = algo.configure(0, p)
    assert msg.config["width"] == 1.0 and msg.config["model"]["norm"] == "fjord_bn"
    train = graphs(16)
    reply = FjORD.client_update(msg, LocalData(0, train, train[:2]))
    steps = int(reply.metrics["steps"])
    assert steps == 8
    sampled = set(WidthSampler(1.0, msg.config["seed"], msg.config["grid"]).draw(steps))
    assert len(sampled - {1.0}) >= 1  # some narrower width was drawn
    name = "convs.0.norm"  # first BN layer (GIN MLP)
    moved = []
    for w in WIDTHS:
        key = f"{name}.running_mean_{width_tag(w)}"
        ran = w in sampled or w == 1.0  # the teacher (p_max) runs every step
        assert (key in reply.arrays) == ran, w  # statistics of widths not run are not sent back (stale)
        changed = ran and not torch.equal(reply.arrays[key], msg.arrays[key])
        assert changed == ran, w
        if changed:
            moved.append(w)
    assert len(moved) >= 2
    full = reply.arrays[f"{name}.running_mean_1"]
    for w in moved[1:]:
        narrow = reply.arrays[f"{name}.running_mean_{width_tag(w)}"]
        assert not torch.allclose(narrow, full[: narrow.shape[0]])  # each width's own statistics

    # a capped partner receives and returns only the statistics of the widths it can run
    algo, (q,) = make([0.25])
    msg = algo.configure(0, q)
    assert msg.config["width"] == 0.25
    assert not any(k.endswith(("running_mean_1", "running_mean_1_2")) for k in msg.arrays)
    reply = FjORD.client_update(msg, LocalData(0, train, train[:2]))
    ran = set(WidthSampler(0.25, msg.config["seed"], msg.config["grid"]).draw(int(reply.metrics["steps"]))) | {0.25}
    stats = {k for k in msg.arrays if ".running_" in k}
    assert set(reply.arrays) == (set(msg.arrays) - stats) | {k for k in stats if any(
        k.endswith(f"_{width_tag(w)}") for w in ran)}


# ----------------------------------------------------------------------------------- server rule


def _per_p_reference(model, global_state, replies):
    """The paper's rule, literally: for p descending, each tensor's width-p slice := sum_k n_k w_k / sum n_k
    over the partners with p_max >= p."""
    spec = slicing.slice_spec(model)
    default = slicing.SliceRule()
    out = {k: v.clone() for k, v in global_state.items()}
    for p in WIDTHS:
        holders = [(cap, arrays, n) for cap, arrays, n in replies if cap >= p]
        if not holders:
            continue
        for key in out:
            rule = spec.get(key, default)
            if not rule.present(p):
                continue
            num = sum(n * rule.narrow(arrays[key], p).double() for _, arrays, n in holders)
            den = sum(n for _, _, n in holders)
            rule.narrow(out[key], p).copy_((num / den).to(out[key].dtype))
    return out


@pytest.mark.parametrize("caps", [(1.0, 0.5, 0.25), (0.5, 0.25, 0.25), (0.125, 1.0)])
def test_server_rule_equals_per_width_weighted_means(caps):
    algo, partners = make(list(caps), hidden=8, layers=2)
    gen = torch.Generator().manual_seed(0)
    global_state = {k: v.clone() for k, v in algo.model.state_dict().items()}
    replies, ref_in = [], []
    for p, n in zip(partners, (10.0, 30.0, 60.0)):
        sub = slicing.sub_state_dict(algo.model, p.device.max_width)
        arrays = {k: torch.randn(v.shape, generator=gen) for k, v in sub.items()}
        replies.append((p, Message(arrays=arrays, metrics={"n_train": n})))
        ref_in.append((p.device.max_width, arrays, n))
    expected = _per_p_reference(algo.model, global_state, ref_in)
    algo.aggregate(0, replies)
    got = algo.model.state_dict()
    assert set(got) == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6, msg=key)
    if max(caps) < 1.0:  # nobody trained the outer ring: it keeps its old values
        w = got["convs.0.lin1.weight"]
        c = slicing.sliced_dim(16, max(caps))
        torch.testing.assert_close(w[c:], global_state["convs.0.lin1.weight"][c:])
        assert torch.equal(got["norms.0.running_var_1"], global_state["norms.0.running_var_1"])


def test_truncated_upload_keeps_the_outer_ring_and_wider_statistics():
    algo, (p,) = make([1.0], hidden=8)
    assert FjORD.accepts_partial_uploads
    old = {k: v.clone() for k, v in algo.model.state_dict().items()}
    arrays = {k: torch.full_like(v, 2.0) for k, v in slicing.sub_state_dict(algo.model, 1.0).items()}
    arrays = slicing.sub_state_dict(arrays, 0.5, spec=slicing.slice_spec(algo.model))  # faulty link
    algo.aggregate(0, [(p, Message(arrays=arrays, metrics={"n_train": 5.0}))])
    new = algo.model.state_dict()
    assert torch.equal(new["norms.0.running_mean_1"], old["norms.0.running_mean_1"])  # never arrived
    assert torch.equal(new["norms.0.running_mean_1_2"], torch.full_like(old["norms.0.running_mean_1_2"], 2.0))
    w = new["convs.0.lin1.weight"]
    assert torch.equal(w[:8, :4], torch.full((8, 4), 2.0)) and torch.equal(w[8:], old["convs.0.lin1.weight"][8:])


def test_widths_and_configure_follow_the_caps():
    algo, partners = make([0.5, 0.125])
    assert algo.widths() == (1.0, 0.5, 0.25, 0.125)
    assert algo.configure(0, partners[1]).config["grid"] == list(WIDTHS)
    served, _ = make([0.5, 0.125], hparams={"p_grid": "served"})
    assert served.configure(0, partners[1]).config["grid"] == [1.0, 0.5, 0.25, 0.125]
    assert make([1.0])[0].widths() == (1.0,)


# ----------------------------------------------------------------------------------- end to end


def test_end_to_end_tiered_run_has_finite_metrics_at_every_width():
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    res = run_federated(RunConfig(algorithm="fjord", dataset="b3db_regression", devices="tiered", rounds=2,
                                  hidden=16, layers=2, partners=4, hparams={"max_local_steps": 5}),
                        None, progress=False)
    assert set(res["test"]) == {"1.0", "0.5", "0.25", "0.125"}
    assert all(math.isfinite(v) for v in res["test"].values())
    assert all(math.isfinite(v) for v in res["valid"].values())
    assert [h["participants"] for h in res["history"]] == [4, 4] and res["failures"] == 0
