"""The GNN backbones: shapes, slice-vs-standalone equality, gradient isolation, configuration."""

from __future__ import annotations

import pytest
import torch

from fedmol.models import (
    GNN_NAMES,
    MODEL_NAMES,
    NORMS,
    WIDTHS,
    build,
    masked_loss,
    recompute_bn_stats,
    slice_spec,
    sliced_dim,
)

HIDDEN = 32
LAYERS = 3


def make(name, norm="bn", width=1.0, **kw):
    torch.manual_seed(0)
    return build(name, 2, hidden=HIDDEN, layers=LAYERS, width=width, norm=norm, **kw)


def warm_up_stats(model, loader, widths):
    """Train-mode forwards (no optimizer) so BN running statistics are non-trivial."""
    model.train()
    with torch.no_grad():
        for r in widths:
            for b in loader:
                model(b, width=r)
    model.eval()


def test_model_names():
    assert GNN_NAMES == ("gin", "gine", "gcn", "sage", "gat")
    assert MODEL_NAMES == (*GNN_NAMES, "mlp")  # the fingerprint backbone: tests/models/test_mlp.py
    assert NORMS == ("bn", "sbn", "fjord_bn", "none")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", GNN_NAMES)
def test_shapes(name, width, batch):
    model = make(name).eval()
    c = sliced_dim(HIDDEN, width)
    z = model.embed(batch, width=width)
    assert z.shape == (batch.num_graphs, c)
    out = model(batch, width=width)
    assert out.shape == (batch.num_graphs, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(model.head(z, width=width), out)
    assert model.embed_dim(width) == c


@pytest.mark.parametrize("norm", ["bn", "fjord_bn", "sbn", "none"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", GNN_NAMES)
def test_slice_equals_standalone(name, width, norm, batch, loader):
    """model(batch, width=r) == build(width=r) loaded with model.sub_state_dict(r), in eval."""
    model = make(name, norm)
    if norm == "sbn":
        recompute_bn_stats(model, loader, width)
    else:
        warm_up_stats(model, loader, sorted({1.0, 0.125, width}))  # several widths touch the stats
    model.eval()
    standalone = make(name, norm, width=width)
    standalone.load_state_dict(model.sub_state_dict(width))  # strict
    standalone.eval()
    ref = model(batch, width=width)
    torch.testing.assert_close(standalone(batch), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(standalone(batch, width=width), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        standalone.embed(batch), model.embed(batch, width=width), atol=1e-5, rtol=1e-5
    )
    if norm == "sbn":  # the standalone model recomputes the same statistics itself
        standalone.train()
        recompute_bn_stats(standalone, loader, width)
        standalone.eval()
        torch.testing.assert_close(standalone(batch), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", GNN_NAMES)
def test_standalone_runs_narrower_widths(name, batch, loader):
    """A width-1/2 model runs width 1/8 exactly like the full model does (absolute widths)."""
    model = make(name, "fjord_bn")
    warm_up_stats(model, loader, WIDTHS)
    half = make(name, "fjord_bn", width=0.5)
    half.load_state_dict(model.sub_state_dict(0.5))
    half.eval()
    torch.testing.assert_close(half(batch, width=0.125), model(batch, width=0.125), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        half(batch, width=1.0)


@pytest.mark.parametrize("pool", ["mean", "sum", "max"])
@pytest.mark.parametrize("residual", [False, True])
def test_pool_and_residual_variants(pool, residual, batch):
    model = make("gine", "bn", pool=pool, residual=residual).eval()
    for r in (1.0, 0.25):
        standalone = make("gine", "bn", width=r, pool=pool, residual=residual).eval()
        standalone.load_state_dict(model.sub_state_dict(r))
        torch.testing.assert_close(standalone(batch), model(batch, width=r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", GNN_NAMES)
def test_gradients_stay_in_the_slice(name, batch):
    """Backward at width 1/4 leaves exactly zero (or no) gradient outside the 1/4 slice."""
    model = make(name, "bn", dropout=0.2, scaler=True).train()
    r = 0.25
    loss = masked_loss(model(batch, width=r), batch.y, "classification")
    loss.backward()
    spec = slice_spec(model)
    sliced_params = 0
    for key, p in model.named_parameters():
        if p.grad is None:
            continue
        rule = spec.get(key)
        if rule is None or not rule.dims:
            continue
        sliced_params += 1
        outside = p.grad.clone()
        rule.narrow(outside, r).zero_()
        assert torch.count_nonzero(outside) == 0, key
    assert sliced_params > 0
    assert model.head.weight.grad[:, : sliced_dim(HIDDEN, r)].abs().sum() > 0
    assert model.atom_encoder.weight.grad.abs().sum() > 0


def test_regression_and_single_graph(graphs):
    model = make("sage", task_type="regression").eval()
    out = model(graphs[1])  # a lone Data without .batch
    assert out.shape == (1, 2)
    assert model.task_type == "regression"
    loss = masked_loss(out, graphs[1].y, "regression")
    assert torch.isfinite(loss)


def test_config_rebuilds_the_model(batch):
    model = make("gat", heads=2).eval()
    cfg = dict(model.config)
    assert cfg["name"] == "gat" and cfg["heads"] == 2 and cfg["hidden"] == HIDDEN
    quarter = build(**{**cfg, "width": 0.25}).eval()
    quarter.load_state_dict(model.sub_state_dict(0.25))
    torch.testing.assert_close(quarter(batch), model(batch, width=0.25), atol=1e-5, rtol=1e-5)


def test_defaults_follow_ogb():
    model = build("gin", 1)
    assert (model.hidden, model.num_layers, model.dropout, model.pool, model.norm) == (
        300, 5, 0.5, "mean", "bn"
    )
    assert model.convs[0].lin1.weight.shape == (600, 300)


def test_deterministic_init(batch):
    a, b = make("gine").eval(), make("gine").eval()
    assert torch.equal(a(batch), b(batch))


def test_unknown_names():
    with pytest.raises(ValueError) as e:
        build("transformer", 1)
    for n in MODEL_NAMES:
        assert n in str(e.value)
    with pytest.raises(ValueError, match="norm"):
        build("gin", 1, norm="layernorm")
    with pytest.raises(ValueError, match="pool"):
        build("gin", 1, pool="attention")
    with pytest.raises(ValueError, match="heads"):
        build("gin", 1, heads=4)
    with pytest.raises(ValueError):
        build("gin", 1, width=0.0)
    with pytest.raises(ValueError):
        build("gin", 1, task_type="ranking")


def test_model_errors_are_fedmol_errors():
    from fedmol.errors import FedmolError

    with pytest.raises(FedmolError):
        build("nope", 1)
