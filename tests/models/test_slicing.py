"""Width slicing primitives: nested slices, write-back, nested aggregation, counting, BN modes."""

from __future__ import annotations

import math

import pytest
import torch

from fedmol.models import WIDTHS, aggregate_nested, build, count, slice_spec, sliced_dim
from fedmol.models import load_sub_state_dict, recompute_bn_stats, sub_state_dict
from fedmol.models.slicing import (
    Scaler,
    SliceBatchNorm,
    SliceLinear,
    SliceRule,
    check_width,
    width_tag,
)

HIDDEN = 32


def small(name="gin", norm="bn", width=1.0, **kw):
    torch.manual_seed(0)
    return build(name, 2, hidden=HIDDEN, layers=2, width=width, norm=norm, **kw)


# ----------------------------------------------------------------------------- basics


def test_widths_and_sliced_dim():
    assert WIDTHS == (1.0, 0.5, 0.25, 0.125, 0.0625)
    assert [sliced_dim(300, r) for r in WIDTHS] == [300, 150, 75, 38, 19]
    assert sliced_dim(600, 0.0625) == 38
    assert sliced_dim(3, 0.0625) == 1  # at least one channel
    assert sliced_dim(10, 0.3) == 3  # no float noise: 0.3 * 10 = 3.0000000000000004
    assert [width_tag(r) for r in WIDTHS] == ["1", "1_2", "1_4", "1_8", "1_16"]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            check_width(bad)


def test_slice_linear_views_and_shapes():
    lin = SliceLinear(8, 6)
    x = torch.randn(5, 8)
    for r in WIDTHS:
        o, i = sliced_dim(6, r), sliced_dim(8, r)
        y = lin(x[:, :i], width=r)
        ref = x[:, :i] @ lin.weight[:o, :i].T + lin.bias[:o]
        torch.testing.assert_close(y, ref)
    head = SliceLinear(8, 3, slice_out=False, width=0.5)
    assert tuple(head.weight.shape) == (3, 4) and tuple(head.bias.shape) == (3,)
    assert "bias" not in head.slice_rules  # the task dimension is never sliced


def test_scaler():
    s = Scaler(True)
    x = torch.ones(2, 3)
    assert torch.equal(s.train()(x, 0.25), x * 4)
    assert torch.equal(s.eval()(x, 0.25), x)
    assert torch.equal(Scaler(False).train()(x, 0.25), x)


# ----------------------------------------------------------------------------- nested slices


@pytest.mark.parametrize("norm", ["bn", "sbn", "fjord_bn"])
@pytest.mark.parametrize("name", ["gin", "gine", "gat"])
def test_sub_state_dict_is_leading_block(name, norm):
    model = small(name, norm)
    full = model.state_dict()
    spec = slice_spec(model)
    for r in WIDTHS:
        sub = model.sub_state_dict(r)
        for key, t in sub.items():
            src = full[key]
            block = src[tuple(slice(0, n) for n in t.shape)]
            assert torch.equal(t, block), key
            assert t.data_ptr() != src.data_ptr()  # cloned
            assert t.is_contiguous()
        # exactly the keys (and shapes) of the standalone width-r model
        standalone = small(name, norm, width=r).state_dict()
        assert sub.keys() == standalone.keys()
        assert {k: tuple(v.shape) for k, v in sub.items()} == {
            k: tuple(v.shape) for k, v in standalone.items()
        }
    c = sliced_dim(HIDDEN, 0.25)
    sub = model.sub_state_dict(0.25)
    assert sub["atom_encoder.weight"].shape[1] == c  # embedding dim sliced, vocab not
    assert sub["atom_encoder.weight"].shape[0] == full["atom_encoder.weight"].shape[0]
    assert tuple(sub["head.weight"].shape) == (2, c)  # num_tasks never sliced
    assert "convs.0.eps" not in spec or spec["convs.0.eps"] == SliceRule()


@pytest.mark.parametrize("norm", ["bn", "fjord_bn"])
def test_slice_of_slice_is_smaller_slice(norm):
    model = small("gine", norm)
    spec = slice_spec(model)
    for i, r1 in enumerate(WIDTHS):
        s1 = sub_state_dict(model, r1)
        mid = small("gine", norm, width=r1)
        mid.load_state_dict(s1)
        for r2 in WIDTHS[i:]:
            direct = sub_state_dict(model, r2)
            via_state = sub_state_dict(s1, r2, spec=spec)
            via_model = mid.sub_state_dict(r2)
            assert direct.keys() == via_state.keys() == via_model.keys()
            for k in direct:
                assert torch.equal(direct[k], via_state[k]), k
                assert torch.equal(direct[k], via_model[k]), k


def test_fjord_buffers_only_up_to_width():
    sub = small("gin", "fjord_bn").sub_state_dict(0.25)
    tags = {k.rsplit("running_mean_", 1)[1] for k in sub if "running_mean_" in k}
    assert tags == {"1_4", "1_8", "1_16"}


def test_sub_state_dict_errors():
    model = small("gin", width=0.25)
    with pytest.raises(ValueError):
        model.sub_state_dict(0.5)  # wider than the model
    with pytest.raises(ValueError):
        sub_state_dict(model.state_dict(), 0.125)  # a plain state dict needs spec=


def test_load_sub_state_dict_writes_only_the_block():
    model = small("gat", "bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sub = model.sub_state_dict(0.5)
    new = {k: (v + 1 if v.is_floating_point() else v + 5) for k, v in sub.items()}
    load_sub_state_dict(model, new, 0.5)
    after = model.state_dict()
    for k, old in before.items():
        block = tuple(slice(0, n) for n in new[k].shape)
        assert torch.equal(after[k][block], new[k]), k
        rest = after[k].clone()
        rest_old = old.clone()
        rest[block] = 0
        rest_old[block] = 0
        assert torch.equal(rest, rest_old), k
    with pytest.raises(KeyError):
        load_sub_state_dict(model, {k: v for k, v in sub.items() if k != "head.bias"}, 0.5)
    with pytest.raises(ValueError):
        load_sub_state_dict(model, model.sub_state_dict(0.25), 0.5, strict=False)


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_nested_hand_made():
    old = torch.arange(16.0).view(4, 4)
    u1 = torch.full((4, 4), 10.0)  # width 1
    u2 = torch.full((2, 2), 2.0)  # width 1/2
    w1, w2 = 1.0, 3.0
    new = aggregate_nested({"w": old}, [({"w": u1}, w1), ({"w": u2}, w2)])["w"]
    expected = torch.full((4, 4), 10.0)
    expected[:2, :2] = (w1 * 10.0 + w2 * 2.0) / (w1 + w2)  # = 4.0
    assert torch.equal(new, expected)
    # unweighted
    new = aggregate_nested({"w": old}, [({"w": u1}, 1), ({"w": u2}, 1)])["w"]
    assert torch.equal(new[:2, :2], torch.full((2, 2), 6.0))
    # coordinates nobody sent keep the old value; keys nobody sent too
    u3 = torch.full((1, 3), -1.0)
    state = {"w": old, "untouched": torch.ones(3)}
    out = aggregate_nested(state, [({"w": u2}, 2.0), ({"w": u3}, 2.0)])
    exp = old.clone()
    exp[:2, :2] = 2.0
    exp[0, :2] = 0.5  # mean of 2 and -1
    exp[0, 2] = -1.0  # only u3
    assert torch.equal(out["w"], exp)
    assert torch.equal(out["untouched"], torch.ones(3))
    assert out["untouched"] is not state["untouched"]
    assert torch.equal(state["w"], torch.arange(16.0).view(4, 4))  # input untouched


def test_aggregate_nested_weights_and_nonfloat():
    old = {"v": torch.zeros(4), "n": torch.tensor(3), "m": torch.tensor([1, 1, 1])}
    ups = [
        ({"v": torch.ones(4), "n": torch.tensor(7), "m": torch.tensor([9, 0, 0])}, 100.0),
        ({"v": torch.full((2,), 5.0), "n": torch.tensor(4), "m": torch.tensor([2])}, 300.0),
        ({"v": torch.full((1,), 9.0)}, 0.0),  # zero weight: no influence
    ]
    out = aggregate_nested(old, ups)
    torch.testing.assert_close(out["v"], torch.tensor([4.0, 4.0, 1.0, 1.0]))
    assert out["n"].item() == 7 and out["n"].dtype == torch.long  # max of senders
    assert out["m"].tolist() == [9, 0, 0]
    # only zero-weight senders: keep the old value
    out = aggregate_nested({"v": torch.zeros(2)}, [({"v": torch.ones(2)}, 0.0)])
    assert torch.equal(out["v"], torch.zeros(2))
    with pytest.raises(ValueError):
        aggregate_nested({"v": torch.zeros(2)}, [({"v": torch.ones(3)}, 1.0)])
    with pytest.raises(ValueError):
        aggregate_nested({"v": torch.zeros(2)}, [({"v": torch.ones(2)}, -1.0)])
    out = aggregate_nested({"v": torch.zeros(2)}, [({"v": torch.ones(2), "x": torch.ones(1)}, 1.0)])
    assert out.keys() == {"v"}  # extra entries in a message are ignored


@pytest.mark.parametrize("norm", ["bn", "fjord_bn"])
def test_aggregate_of_own_slices_is_identity(norm):
    model = small("gin", norm)
    state = model.state_dict()
    out = aggregate_nested(state, [(model.sub_state_dict(r), 1.0 + i) for i, r in enumerate(WIDTHS)])
    assert out.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(out[k], state[k], rtol=0, atol=1e-6)


def test_aggregate_heterofl_round():
    """Two clients at widths 1 and 1/4 both move their slice by +1 / +3: inside the 1/4 slice the
    global moves by the weighted mean, outside by +1 (only the width-1 client sent it)."""
    model = small("gcn")
    state = model.state_dict()
    up_full = {k: v + 1 for k, v in model.sub_state_dict(1.0).items()}
    up_q = {k: v + 3 for k, v in model.sub_state_dict(0.25).items()}
    out = aggregate_nested(state, [(up_full, 1.0), (up_q, 1.0)])
    k = "convs.0.lin.weight"
    c = sliced_dim(HIDDEN, 0.25)
    delta = out[k] - state[k]
    torch.testing.assert_close(delta[:c, :c], torch.full((c, c), 2.0))
    torch.testing.assert_close(delta[c:, :], torch.ones_like(delta[c:, :]))


# ----------------------------------------------------------------------------- count


@pytest.mark.parametrize("name", ["gin", "gine", "gcn", "sage", "gat"])
def test_count_params_and_macs(name):
    model = build(name, 3, hidden=300, layers=2)
    pnames = {n for n, _ in model.named_parameters()}
    macs = []
    for r in WIDTHS:
        c = count(model, r, avg_nodes=25, avg_edges=27)
        sub = model.sub_state_dict(r)
        assert c["params"] == sum(v.numel() for k, v in sub.items() if k in pnames)
        assert c["bytes"] == sum(v.numel() * v.element_size() for v in sub.values())
        standalone = build(name, 3, hidden=300, layers=2, width=r)
        assert c["params"] == sum(p.numel() for p in standalone.parameters())
        assert count(standalone, r) == count(model, r)
        macs.append(c["macs"])
    assert macs == sorted(macs, reverse=True)
    for big, little in zip(macs, macs[1:3]):  # 1 -> 1/2 -> 1/4: ~4x each (quadratic)
        assert 3.0 < big / little <= 4.2
    assert count(model)["macs"] == pytest.approx(model.macs(1.0, 25.0, 54.0))
    full_params = sum(p.numel() for p in model.parameters())
    assert count(model, 1.0)["params"] == full_params


# ----------------------------------------------------------------------------- batch norm modes


def test_bn_mode_updates_only_the_leading_block():
    bn = SliceBatchNorm(8, "bn").train()
    x = torch.randn(16, 2) * 3 + 5
    bn(x, width=0.25)
    assert (bn.running_mean[:2] != 0).all() and (bn.running_mean[2:] == 0).all()
    assert (bn.running_var[2:] == 1).all()
    assert bn.num_batches_tracked.item() == 1


def test_sbn_mode_tracks_nothing_in_training():
    bn = SliceBatchNorm(8, "sbn").train()
    y = bn(torch.randn(16, 8) * 3 + 5, width=1.0)
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    torch.testing.assert_close(y.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    assert "num_batches_tracked" not in bn.state_dict()


def test_fjord_mode_per_width_buffers():
    bn = SliceBatchNorm(8, "fjord").train()
    bn(torch.randn(16, 2) + 5, width=0.25)
    assert (bn.running_mean_1_4 != 0).all()
    for tag in ("1", "1_2", "1_8", "1_16"):
        assert (getattr(bn, f"running_mean_{tag}") == 0).all()
    assert tuple(bn.running_mean_1_8.shape) == (1,)
    with pytest.raises(ValueError):
        bn(torch.randn(4, 3), width=0.3)
    small_bn = SliceBatchNorm(8, "fjord", width=0.25)
    assert {k for k in small_bn.state_dict() if "mean" in k} == {
        "running_mean_1_4", "running_mean_1_8", "running_mean_1_16"
    }


@pytest.mark.parametrize("norm", ["bn", "sbn", "fjord_bn"])
def test_recompute_bn_stats_matches_data(norm, loader):
    """After recompute, the first BN's statistics equal the cumulative mean of the batch means of
    its input, and only the statistics of the recomputed width change."""
    model = small("gcn", norm)
    bn = model.norms[0]
    r = 0.5
    c = sliced_dim(HIDDEN, r)
    captured = []
    hook = bn.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    model.train()
    recompute_bn_stats(model, loader, r)
    hook.remove()
    assert model.training  # mode restored
    expected = torch.stack([x.mean(0) for x in captured]).mean(0)
    mean = bn.running_mean_1_2 if norm == "fjord_bn" else bn.running_mean[:c]
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)
    after = bn.state_dict()
    if norm == "fjord_bn":
        assert torch.equal(after["running_mean_1"], before["running_mean_1"])
    else:
        assert torch.equal(after["running_mean"][c:], before["running_mean"][c:])
    assert not math.isnan(after["weight"].sum().item())


@pytest.mark.parametrize("mode", SliceBatchNorm.MODES)
def test_set_stats_writes_the_statistics_a_width_uses_and_refuses_other_shapes(mode):
    bn = SliceBatchNorm(8, mode=mode)
    bn.set_stats(0.5, torch.arange(4.0), torch.full((4,), 2.0))
    bn.eval()
    x = torch.randn(5, 8)
    expected = (x[:, :4] - torch.arange(4.0)) / torch.sqrt(torch.tensor(2.0 + bn.eps))
    torch.testing.assert_close(bn(x[:, :4], width=0.5), expected * bn.weight[:4] + bn.bias[:4])
    with pytest.raises(ValueError, match="width 0.5 has 4 channels"):
        bn.set_stats(0.5, torch.zeros(8), torch.ones(8))
