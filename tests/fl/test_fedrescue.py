import numpy as np
import pytest
import torch

from fedmol.data.dataset import load_dataset
from fedmol.fl.algorithm import PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.fedrescue import FedResCuE, self_distillation_loss, step_widths
from fedmol.fl.fjord import distill_loss
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.fl.message import Message
from fedmol.models import build, masked_loss, slicing
from fedmol.training import make_loader

CHOICES = (0.5, 0.25, 0.125, 0.0625)


@pytest.mark.parametrize("how,check", [
    ("all", lambda w: w == list(CHOICES)),
    ("sandwich", lambda w: len(w) == 3 and w[0] == 0.5 and w[-1] == 0.0625 and w[1] in (0.25, 0.125)),
    ("one", lambda w: len(w) == 2 and w[0] == 0.5 and w[1] in CHOICES[1:]),
])
def test_step_widths(how, check):
    draws = [step_widths(CHOICES, how, np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1] and check(draws[0])
    assert all(check(step_widths(CHOICES, how, np.random.default_rng(s))) for s in range(10))


@pytest.fixture(scope="module")
def batch():
    ds = load_dataset("bace", progress=False)
    return next(iter(make_loader(ds.index_select(torch.arange(16)), 16)))


@pytest.mark.parametrize("direction,teachers", [
    ("progressive", [(0.5, 1.0), (0.25, 0.5)]),
    ("from_max", [(0.5, 1.0), (0.25, 1.0)]),
])
def test_self_distillation_targets(batch, direction, teachers):
    torch.manual_seed(0)
    model = build("gin", 1, hidden=16, layers=2, norm="fjord_bn", dropout=0.0).eval()
    widths = [1.0, 0.5, 0.25]
    loss, parts = self_distillation_loss(model, batch, widths, direction, kd_weight=0.7)
    assert parts["teachers"] == teachers
    out = {w: model(batch, width=w) for w in widths}
    expect = masked_loss(out[1.0], batch.y, "classification")
    for s, t in teachers:
        expect = expect + 0.7 * distill_loss(out[s], out[t], "classification")
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-6)


def test_teacher_outputs_receive_no_distillation_gradient(batch):
    torch.manual_seed(0)
    model = build("gin", 1, hidden=16, layers=2, norm="fjord_bn", dropout=0.0).eval()
    wide = model(batch, width=1.0)
    narrow = model(batch, width=0.5)
    wide.retain_grad()
    distill_loss(narrow, wide, "classification").backward()
    assert wide.grad is None or torch.count_nonzero(wide.grad) == 0


def test_truncated_uploads_are_aggregated_over_exactly_their_deliverers():
    cfg = dict(name="gin", num_tasks=1, hidden=8, layers=1, task_type="classification")
    algo = FedResCuE(cfg, seed=0)
    infos = [PartnerInfo(0, 10, DeviceProfile(1.0)), PartnerInfo(1, 30, DeviceProfile(1.0))]
    algo.init(infos)
    old = {k: v.clone() for k, v in algo.model.state_dict().items()}
    spec = slicing.slice_spec(algo.model)
    full_a = {k: torch.full_like(v, 1.0) if v.is_floating_point() else v for k, v in old.items()}
    full_b = {k: torch.full_like(v, 5.0) if v.is_floating_point() else v for k, v in old.items()}
    a = slicing.sub_state_dict(full_a, 1.0, spec=spec)   # delivered whole
    b = slicing.sub_state_dict(full_b, 0.25, spec=spec)  # cut after width 1/4
    algo.aggregate(0, [(infos[0], Message(a, {}, {"n_train": 10.0})), (infos[1], Message(b, {}, {"n_train": 30.0}))])
    new = algo.model.state_dict()
    inner = next(k for k in b if b[k].dim() == 2 and b[k].shape != old[k].shape)  # a sliced hidden weight
    r0, c0 = b[inner].shape
    assert torch.allclose(new[inner][:r0, :c0], torch.full((r0, c0), 4.0))  # (10*1 + 30*5) / 40
    assert torch.allclose(new[inner][r0:, :], torch.ones_like(new[inner][r0:, :]))  # only A delivered these
    assert torch.allclose(new[inner][:, c0:], torch.ones_like(new[inner][:, c0:]))
    # coordinates nobody delivered keep their old value
    nobody = slicing.sub_state_dict(full_a, 0.5, spec=spec)
    algo.load(old)
    algo.aggregate(1, [(infos[0], Message(nobody, {}, {"n_train": 10.0}))])
    after = algo.model.state_dict()
    r1, c1 = nobody[inner].shape
    assert torch.equal(after[inner][r1:, :], old[inner][r1:, :])


def test_end_to_end_under_faulty_links(tmp_path):
    cfg = RunConfig(algorithm="fedrescue", dataset="bace", partners=4, rounds=2, hidden=16, layers=2,
                    devices="tiered", faulty_links=1.0, hparams={"max_local_steps": 3})
    s = run_federated(cfg, tmp_path, progress=False)
    assert set(s["test"]) == {"1.0", "0.5", "0.25", "0.125"}
    assert all(np.isfinite(v) for v in s["test"].values())
    trunc = [r["truncated"] for r in s["history"]]
    assert sum(trunc) >= 4 and all(r["failures"] == 0 for r in s["history"])  # the 1/8 partner has nothing narrower to cut to
    assert "upload truncated at width" in s["history"][0]["truncations"]


def test_algorithms_without_partial_uploads_lose_truncated_ones():
    cfg = RunConfig(algorithm="fedavg", dataset="bace", partners=2, rounds=1, hidden=16, layers=2,
                    faulty_links=1.0, hparams={"max_local_steps": 2})
    s = run_federated(cfg, None, progress=False)
    assert s["history"][0]["failures"] == 2 and s["bytes_up"] == 0
    assert "upload truncated, unusable by fedavg" in s["history"][0]["failure_reasons"]
