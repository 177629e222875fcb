import json
import math

import pytest
import torch
import torch.nn.functional as F

from fl_graphs import binary_labels, dataset, graphs

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import LocalData, PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.fedgen import (COUNTS, NORMAL_CENTRES, FedGen, Generator, PairSpace, _od_widths, _regularizer,
                              decayed, diversity_loss, teacher_loss)
from fedmol.fl.fjord import WidthSampler
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.models import build
from fedmol.models.slicing import width_tag
from fedmol.training import make_loader


def test_decay_schedule():
    assert decayed(10.0, 0) == 10.0
    assert decayed(10.0, 1) == pytest.approx(9.8)
    assert decayed(10.0, 10) == pytest.approx(10 * 0.98**10)
    assert decayed(10.0, 10_000) == 1e-4


def test_pair_counts_mask_missing_labels():
    space = PairSpace("classification", 2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0], [float("nan"), 0.0]])
    assert space.counts(y).tolist() == [[1.0, 2.0], [1.0, 2.0]]
    assert space.n_pairs == 4
    task, label = space.split(torch.tensor([0, 1, 2, 3]))
    assert task.tolist() == [0, 0, 1, 1] and label.tolist() == [0, 1, 0, 1]


def test_regression_pairs_are_quartile_bins_of_the_standardized_target():
    space = PairSpace("regression", 1, mean=[2.0], std=[0.5])
    y = torch.tensor([[0.0], [1.9], [2.1], [5.0], [float("nan")]])
    assert space.counts(y).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert space.targets(torch.tensor([0, 3])).tolist() == pytest.approx(
        [2.0 + 0.5 * NORMAL_CENTRES[0], 2.0 + 0.5 * NORMAL_CENTRES[3]])


def test_teacher_loss_weights_each_sample_by_its_label_share():
    space = PairSpace("classification", 1)  # pairs: 0 = (task 0, label 0), 1 = (task 0, label 1)
    pairs = torch.tensor([0, 1, 1])
    z = {1.0: torch.zeros(3, 2)}
    logits = [torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([[-0.3], [0.7], [0.1]])]
    heads = [(1.0, lambda _z, o=o: o) for o in logits]
    counts = torch.tensor([[9.0, 1.0], [1.0, 3.0]])  # partner 0 holds mostly negatives, partner 1 positives
    w = counts / counts.sum(0, keepdim=True)
    got = teacher_loss(z, pairs, heads, w, space)
    target = pairs.float()
    expect = 0.0
    for k in range(2):
        ce = F.binary_cross_entropy_with_logits(logits[k][:, 0], target, reduction="none")
        expect += sum(w[k, pairs[i]] * ce[i] for i in range(3)) / 3
    assert float(got) == pytest.approx(float(expect), rel=1e-6)
    # the official code's broadcasting bug would give mean(CE) * mean(w) instead: a different number
    buggy = sum(F.binary_cross_entropy_with_logits(logits[k][:, 0], target).item() * w[k, pairs].mean().item()
                for k in range(2))
    assert abs(float(got) - buggy) > 1e-3


def test_diversity_loss_by_hand():
    eps = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    # pairs (0,1) and (1,0): mean sq eps distance 1, mean |z| distance 1; the diagonal is 0
    assert float(diversity_loss(eps, z)) == pytest.approx(math.exp(-(1.0 * 1.0 * 2) / 4))


def test_generator_serves_every_width_as_a_nested_slice():
    torch.manual_seed(0)
    g = Generator(n_pairs=4, latent=40).eval()
    eps, pairs = torch.rand(5, 32), torch.tensor([0, 1, 2, 3, 0])
    full = g(eps, pairs, width=1.0)
    assert full.shape == (5, 40)
    for r, d in ((0.5, 20), (0.25, 10), (0.125, 5)):
        assert torch.allclose(g(eps, pairs, width=r), full[:, :d], atol=1e-6)


@pytest.fixture(scope="module")
def fedgen_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedgen")
    cfg = RunConfig(algorithm="fedgen", dataset="bace", partners=3, rounds=3, hidden=16, layers=2,
                    devices="tiered", hparams={"max_local_steps": 3, "gen_steps": 5})
    return out, run_federated(cfg, out, progress=False)


def test_fedgen_end_to_end_with_heterogeneous_widths(fedgen_run):
    out, s = fedgen_run
    assert set(s["test"]) >= {"1.0", "0.5"}
    assert all(0 <= v <= 1 for v in s["test"].values())
    h = s["history"]
    assert all("server_gen_teacher_loss" in r for r in h)
    assert h[1]["bytes_down"] > h[0]["bytes_down"]  # the generator is broadcast from round 1 on


def test_label_counts_that_leave_a_partner_are_recorded(fedgen_run):
    out, s = fedgen_run
    conf = json.loads((out / "config.json").read_text())
    assert COUNTS in conf["sent"]["extra"]
    lines = [json.loads(x) for x in (out / "sent.jsonl").read_text().splitlines()]
    assert len(lines) == sum(r["participants"] for r in s["history"])
    first = lines[0]
    counts = first["disclosed"][COUNTS]
    assert len(counts) == 1 and len(counts[0]) == 2
    part = conf["partners"][first["partner"]]
    assert sum(counts[0]) == part["n_train"]  # bace has no missing labels
    assert any(a["name"] == COUNTS for a in first["arrays"])


def test_fedgen_regression_runs():
    cfg = RunConfig(algorithm="fedgen", dataset="freesolv", partners=2, rounds=2, hidden=16, layers=2,
                    hparams={"max_local_steps": 2, "gen_steps": 3})
    s = run_federated(cfg, None, progress=False)
    assert s["metric"] == "rmse" and math.isfinite(s["test"]["1.0"])
    assert "server_gen_teacher_loss" in s["history"][1]


# ----------------------------------------------------------------------------------- ordered dropout (hp)


def _fedgen(caps, hparams):
    algo = FedGen(dict(name="gin", num_tasks=2, hidden=16, layers=2, task_type="classification"), hparams, seed=3)
    partners = [PartnerInfo(k, 16, DeviceProfile(c)) for k, c in enumerate(caps)]
    algo.init(partners)
    return algo, partners


@pytest.mark.parametrize("ordered_dropout,cap_every_step", [(False, False), (True, False), (True, True)])
def test_ordered_dropout_trains_and_keeps_statistics_of_the_drawn_widths(ordered_dropout, cap_every_step):
    hp = {"batch_size": 4, "local_epochs": 2, "ordered_dropout": ordered_dropout, "od_cap_every_step": cap_every_step}
    algo, (wide, _) = _fedgen([1.0, 0.25], hp)
    msg = algo.configure(0, wide)
    assert ("grid" in msg.config) == ordered_dropout
    train = dataset(binary_labels(16, 2, seed=1))
    reply = FedGen.client_update(msg, LocalData(0, train, train[:2]))
    steps = int(reply.metrics["steps"])
    assert steps == 8
    draws = WidthSampler(1.0, msg.config["seed"], [1.0, 0.5, 0.25]).draw(steps) if ordered_dropout else [1.0] * 8
    assert ordered_dropout == (len(set(draws)) > 1)
    for w in (1.0, 0.5, 0.25, 0.125):  # 1/8 is not served (the smallest cap is 1/4): never drawn
        key = f"convs.0.norm.running_mean_{width_tag(w)}"
        assert (key in reply.arrays) == (w in draws), w  # statistics of widths not run are not sent back
        assert w not in draws or not torch.equal(reply.arrays[key], msg.arrays[key]), w


@pytest.mark.parametrize("cap_every_step", [False, True])
def test_od_widths_draw_below_the_cap_and_keep_the_cap_when_asked(cap_every_step):
    c = {"width": 0.5, "seed": 11, "grid": [1.0, 0.5, 0.25, 0.125], "hp": {"od_cap_every_step": cap_every_step}}
    draws = WidthSampler(0.5, 11, c["grid"]).draw(40)
    widths = _od_widths(c)
    got = [widths() for _ in range(40)]
    if cap_every_step:
        assert got == [(0.5,) if d == 0.5 else (0.5, d) for d in draws]
    else:
        assert got == draws
    assert set(draws) == {0.5, 0.25, 0.125}


def test_a_step_at_several_widths_sums_their_losses():
    from fedmol.models import masked_loss
    from fedmol.training import train_epoch
    torch.manual_seed(0)
    model = build(name="gin", num_tasks=2, hidden=16, layers=2, norm="fjord_bn", dropout=0.0)
    batch = next(iter(make_loader(graphs(binary_labels(6, 2)), 6)))
    model.train()
    with torch.no_grad():
        want = sum(float(masked_loss(model(batch, width=w), batch.y, "classification")) for w in (1.0, 0.25))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train_epoch(model, make_loader(graphs(binary_labels(6, 2)), 6), opt, width=lambda: (1.0, 0.25))
    assert got["steps"] == 1 and got["loss"] == pytest.approx(want, rel=1e-5)
    seen = []
    train_epoch(model, make_loader(graphs(binary_labels(6, 2)), 6), opt, width=lambda: (1.0, 0.5),
                extra_loss=lambda m, b, pred, w: seen.append((w, pred.shape)) or pred.new_zeros(()))
    assert seen == [(1.0, (6, 2)), (0.5, (6, 2))]


def test_regularizer_runs_at_the_step_width():
    torch.manual_seed(0)
    space = PairSpace("classification", 2)
    gen = Generator(space.n_pairs, 16).eval()
    model = build(name="gin", num_tasks=2, hidden=16, layers=2, norm="fjord_bn").eval()
    qualified = torch.arange(space.n_pairs)
    batch = next(iter(make_loader(graphs(binary_labels(4, 2)), 4)))
    for width, cap in ((0.25, 1.0), (None, 0.5)):
        extra = _regularizer(gen, space, qualified, 2.0, 0.0, cap, 8, torch.Generator().manual_seed(5))
        got = extra(model, batch, model(batch, width=width or cap), width)
        g = torch.Generator().manual_seed(5)
        pairs = qualified[torch.randint(len(qualified), (8,), generator=g)]
        _, z = gen.sample(pairs, width=width or cap, generator=g)
        assert z.shape[1] == math.ceil((width or cap) * 16)
        want = 2.0 * space.head_loss(model.head(z, width=width or cap), pairs, "mean")
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)


def test_ordered_dropout_must_be_a_bool():
    with pytest.raises(FedmolError, match="fedgen: ordered_dropout must be true or false, got 'yes'"):
        _fedgen([1.0], {"ordered_dropout": "yes"})
