"""The fingerprint backbone ``mlp``: slice == standalone, sparse input == dense, fingerprints cached,
every algorithm runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from fedmol.data import fingerprints as fpm
from fedmol.data.fingerprints import FP_VERSION, FingerprintSpec, attach_fingerprints, compute_fingerprints
from fedmol.errors import FedmolError
from fedmol.fl.registry import ALGORITHMS, get_algorithm
from fedmol.models import MODEL_NAMES, WIDTHS, build, count, masked_loss, recompute_bn_stats, slice_spec, sliced_dim
from fedmol.models.slicing import SliceEmbeddingBag

from model_molecules import SMILES

HIDDEN, LAYERS = 32, 3
FP = dict(fp_radius=2, fp_bits=256, fp_counts=True)


def make(norm="bn", width=1.0, **kw):
    torch.manual_seed(0)
    return build("mlp", 2, hidden=HIDDEN, layers=LAYERS, width=width, norm=norm, **{**FP, **kw})


@pytest.fixture(scope="module")
def fp_graphs(graphs):
    """The shared 12 molecules with their SMILES and attached fingerprints (radius 2, 256 bits, counts)."""
    t = compute_fingerprints(SMILES, FingerprintSpec(2, 256, True))
    ends = t["fp_n"].cumsum(0).tolist()
    out = []
    for g, s, start, end in zip(graphs, SMILES, [0] + ends[:-1], ends):
        g = g.clone()
        g.smiles = s
        g.fp_on, g.fp_vals = t["fp_on"][start:end], t["fp_vals"][start:end]
        g.fp_n, g.fp_key = torch.tensor([end - start]), FingerprintSpec(2, 256, True).key()
        out.append(g)
    return out


@pytest.fixture(scope="module")
def fp_batch(fp_graphs):
    return next(iter(DataLoader(fp_graphs, batch_size=len(fp_graphs))))


@pytest.fixture(scope="module")
def fp_loader(fp_graphs):
    return DataLoader(fp_graphs, batch_size=4)


def test_registered():
    assert MODEL_NAMES[-1] == "mlp"
    model = make()
    assert model.config == dict(name="mlp", num_tasks=2, hidden=HIDDEN, layers=LAYERS, width=1.0,
                                task_type="classification", dropout=0.5, norm="bn", scaler=False, **FP)
    assert build("mlp", 1).config["fp_bits"] == fpm.DEFAULTS["fp_bits"]


@pytest.mark.parametrize("width", WIDTHS)
def test_shapes_and_head(width, fp_batch):
    model = make().eval()
    z = model.embed(fp_batch, width=width)
    assert z.shape == (12, sliced_dim(HIDDEN, width)) == (12, model.embed_dim(width))
    out = model(fp_batch, width=width)
    assert out.shape == (12, 2) and torch.isfinite(out).all()
    torch.testing.assert_close(model.head(z, width=width), out)


@pytest.mark.parametrize("norm", ["bn", "fjord_bn", "sbn", "none"])
@pytest.mark.parametrize("width", WIDTHS)
def test_slice_equals_standalone(width, norm, fp_batch, fp_loader):
    """model(batch, width=r) == build(width=r) loaded with model.sub_state_dict(r), in eval."""
    model = make(norm)
    if norm == "sbn":
        recompute_bn_stats(model, fp_loader, width)
    else:  # train-mode forwards at several widths so that the statistics are not trivial
        model.train()
        with torch.no_grad():
            for r in sorted({1.0, 0.125, width}):
                for b in fp_loader:
                    model(b, width=r)
    model.eval()
    standalone = make(norm, width=width)
    standalone.load_state_dict(model.sub_state_dict(width))  # strict
    standalone.eval()
    ref = model(fp_batch, width=width)
    torch.testing.assert_close(standalone(fp_batch), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(standalone.embed(fp_batch), model.embed(fp_batch, width=width), atol=1e-5, rtol=1e-5)
    assert standalone.input.weight.shape == (256, sliced_dim(HIDDEN, width))  # fingerprint rows never sliced
    assert standalone.head.weight.shape == (2, sliced_dim(HIDDEN, width))  # head outputs never sliced


def test_gradients_stay_in_the_slice(fp_batch):
    model = make(dropout=0.2, scaler=True).train()
    r = 0.25
    masked_loss(model(fp_batch, width=r), fp_batch.y, "classification").backward()
    spec = slice_spec(model)
    for key, p in model.named_parameters():
        rule = spec.get(key)
        if p.grad is not None and rule is not None and rule.dims:
            outside = p.grad.clone()
            rule.narrow(outside, r).zero_()
            assert torch.count_nonzero(outside) == 0, key
    assert model.input.weight.grad[:, : sliced_dim(HIDDEN, r)].abs().sum() > 0


@pytest.mark.parametrize("width", [1.0, 0.25, 0.0625])
def test_sparse_input_equals_dense_matmul(width):
    gen = torch.Generator().manual_seed(0)
    n = torch.tensor([3, 0, 5, 1])  # a molecule with no on bit: a zero input
    on = torch.randint(0, 100, (int(n.sum()),), generator=gen)
    vals = torch.rand(len(on), generator=gen) * 3
    layer = SliceEmbeddingBag(100, 48)
    dense = torch.zeros(4, 100).index_put_((torch.repeat_interleave(torch.arange(4), n), on), vals, accumulate=True)
    c = sliced_dim(48, width)
    want = dense @ layer.weight[:, :c] + layer.bias[:c]
    got = layer(on, torch.cumsum(n, 0) - n, vals, width)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    ones = torch.zeros(4, 100).index_put_((torch.repeat_interleave(torch.arange(4), n), on), torch.ones(len(on)),
                                          accumulate=True)
    torch.testing.assert_close(layer(on, torch.cumsum(n, 0) - n, None, width),
                               ones @ layer.weight[:, :c] + layer.bias[:c], atol=1e-5, rtol=1e-5)


def test_attached_fingerprints_equal_the_ones_computed_from_smiles(fp_batch):
    model = make().eval()
    smiles_only = fp_batch.clone()
    for k in ("fp_on", "fp_vals", "fp_n", "fp_key"):
        delattr(smiles_only, k)
    torch.testing.assert_close(model(smiles_only), model(fp_batch))
    other = build("mlp", 2, hidden=HIDDEN, layers=LAYERS, fp_radius=3, fp_bits=256, fp_counts=False).eval()
    torch.testing.assert_close(other(fp_batch), other(smiles_only))  # another setting ignores the attached ones
    bare = fp_batch.clone()
    for k in ("fp_on", "fp_vals", "fp_n", "fp_key", "smiles"):
        delattr(bare, k)
    with pytest.raises(ValueError, match="the mlp backbone needs fingerprints"):
        model(bare)


def test_fingerprint_values():
    """Bits are 1; counts count environments (ethanol at radius 0: two carbons and one oxygen)."""
    t = compute_fingerprints(["CCO"], FingerprintSpec(0, 2048, True))
    assert sorted(t["fp_vals"].tolist()) == [1.0, 1.0, 1.0]  # CH3, CH2, OH: three different atoms
    t = compute_fingerprints(["CC"], FingerprintSpec(0, 2048, True))
    assert t["fp_vals"].tolist() == [2.0] and t["fp_n"].tolist() == [1]
    t = compute_fingerprints(["CC", "not a smiles"], FingerprintSpec(0, 2048, False))
    assert t["fp_vals"].tolist() == [1.0] and t["fp_n"].tolist() == [1, 0]


def test_count_and_config_errors():
    c = count(make(), 0.5)
    assert c["params"] == sum(t.numel() for k, t in make().sub_state_dict(0.5).items() if "running" not in k
                              and "num_batches" not in k)
    assert c["macs"] > 0
    with pytest.raises(FedmolError, match=r"^fp_bits must be an integer in \[1, 1048576\], got 0$"):
        build("mlp", 1, fp_bits=0)
    with pytest.raises(FedmolError, match=r"^fp_radius must be an integer in \[0, 6\], got 7$"):
        build("mlp", 1, fp_radius=7)
    with pytest.raises(FedmolError, match=r"^fp_counts must be true or false, got 1$"):
        build("mlp", 1, fp_counts=1)
    with pytest.raises(FedmolError, match=r"unknown option\(s\) \['heads'\] for model 'mlp'"):
        build("mlp", 1, heads=2)
    with pytest.raises(FedmolError, match="model 'mlp' has no graph pooling"):
        build("mlp", 1, pool="max")


def test_leaderboard_schema_takes_the_fingerprint_keys():
    from pydantic import ValidationError

    from fedmol.leaderboard.schema import ModelConfig

    gin = dict(name="gin", num_tasks=1, hidden=32, layers=2, task_type="classification", dropout=0.5, norm="bn",
               scaler=False, width=1.0)
    assert ModelConfig.model_validate(gin).model_dump() == gin  # no fp_* keys appear for a GNN
    mlp = {**make().config, "num_tasks": 1}
    assert ModelConfig.model_validate(mlp).model_dump() == mlp
    build(**ModelConfig.model_validate(mlp).model_dump())
    with pytest.raises(ValidationError, match="less than or equal to 65536"):
        ModelConfig.model_validate({**mlp, "fp_bits": 1 << 20})


# ------------------------------------------------------------------------------------------ data and cache
def test_fingerprints_cached_beside_the_graphs_and_reused(data_dir):
    from fedmol.data.dataset import load_dataset

    spec = FingerprintSpec(1, 512, False)
    ds = load_dataset("bace", progress=False)
    assert not hasattr(ds[0], "fp_on")  # a GNN load computes nothing
    path = Path(ds.cache_path) / f"fp-{FP_VERSION}-r1-b512-bits.safetensors"
    path.unlink(missing_ok=True)
    before = fpm.stats["computed"]
    ds = load_dataset("bace", progress=False, fingerprints=spec)
    assert fpm.stats["computed"] == before + len(ds) and path.is_file()
    again = load_dataset("bace", progress=False, fingerprints=spec)
    assert fpm.stats["computed"] == before + len(ds)  # read from the cache file
    item = again.select_rows([int(again.rows[7])])[0]
    want = compute_fingerprints([item.smiles], spec)
    assert torch.equal(item.fp_on, want["fp_on"]) and item.fp_key.tolist() == [[1, 512, 0]]
    attach_fingerprints(again, FingerprintSpec(1, 512, True))  # the setting is part of the key
    assert (Path(ds.cache_path) / f"fp-{FP_VERSION}-r1-b512-counts.safetensors").is_file()
    batch = next(iter(DataLoader(again, batch_size=5)))
    assert batch.fp_key.tolist() == [[1, 512, 1]] * 5 and len(batch.fp_on) == int(batch.fp_n.sum())
    with pytest.raises(ValueError, match="before taking subsets"):
        attach_fingerprints(again.select_rows(again.rows[:3]), spec)


# ------------------------------------------------------------------------------------- every algorithm
HP = {"max_local_steps": 2}
EXTRA = {"feddf": {"pool_size": 64, "distill_steps": 2, "eval_every": 1, "distill_batch": 16},
         "fedgen": {"gen_steps": 2}}


def _run(tmp_path, algorithm, dataset="bace", **kw):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    cfg = RunConfig(algorithm=algorithm, dataset=dataset, partners=3, alpha=1.0, devices="tiered", rounds=2,
                    model="mlp", hidden=32, layers=2, hparams={**HP, **EXTRA.get(algorithm, {})}, **kw)
    return run_federated(cfg, tmp_path / algorithm, progress=False)


def _finite(summary):
    scores = [v for v in summary["test"].values()] + [v for v in summary["valid"].values()]
    return scores and all(v is not None and math.isfinite(v) for v in scores)


@pytest.mark.parametrize("algorithm", [a for a in sorted(ALGORITHMS) if get_algorithm(a).trains_backbone])
def test_every_algorithm_runs_the_mlp(algorithm, tmp_path, data_dir):
    from fedmol.leaderboard.schema import ModelConfig, RunSettings

    s = _run(tmp_path, algorithm)
    assert _finite(s), s["test"]
    config = json.loads((tmp_path / algorithm / "config.json").read_text())
    assert config["model"]["name"] == "mlp"
    ModelConfig.model_validate(config["model"])  # the leaderboard's schema accepts the run (a submission's
    RunSettings.model_validate(config["run"])    # split is a frozen file, not this on-the-fly one)


@pytest.mark.parametrize("algorithm,dataset", [("fedavg", "esol"), ("heterofl", "sider")])
def test_regression_and_multitask(algorithm, dataset, tmp_path, data_dir):
    s = _run(tmp_path, algorithm, dataset)
    assert _finite(s), s["test"]
