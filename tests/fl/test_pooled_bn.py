"""Pooled BN statistics (HeteroFL's sBN query, optional for FedGen): exact pooling over the union of
the partners' data, caching per weight version, selection checkpoints, the saved state."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import LocalData, PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.fedgen import FedGen
from fedmol.fl.heterofl import HeteroFL
from fedmol.fl.message import Message
from fedmol.models import build, slicing
from fedmol.models.slicing import SliceBatchNorm
from fedmol.training import make_loader, predict
from fl_graphs import binary_labels, graphs

POOLING = {"heterofl": (HeteroFL, {"sbn_batch_size": 4}),
           "fedgen": (FedGen, {"pooled_bn": True, "sbn_batch_size": 4})}


def make(name, caps=(1.0, 0.5), seed=0):
    cls, hp = POOLING[name]
    algo = cls(dict(name="gin", num_tasks=1, hidden=16, layers=2, task_type="classification", dropout=0.0), hp,
               seed=seed)
    partners = [PartnerInfo(k, 8, DeviceProfile(c)) for k, c in enumerate(caps)]
    algo.init(partners)
    return algo, partners


def local_data():
    return [LocalData(0, graphs(binary_labels(8, 1, 1)), []), LocalData(1, graphs(binary_labels(8, 1, 2), offset=8), [])]


def ask(algo, partners, local, width):
    """One query round trip, as the driver makes it; returns whether the partners were asked."""
    q = algo.query(width)
    if q is None:
        return False
    replies = [(p, type(algo).client_query(q, d)) for p, d in zip(partners, local)]
    assert all(t.dtype == torch.float64 for _, r in replies for t in r.arrays.values())
    algo.absorb_query(width, replies)
    return True


def shifted_round(algo, partners):
    """Configure every partner and aggregate replies = what it received + 0.1 (new weights)."""
    replies = []
    for p in partners:
        msg = algo.configure(0, p)
        arrays = {k: v + 0.1 if v.is_floating_point() else v for k, v in msg.arrays.items()
                  if not k.startswith("generator.")}
        replies.append((p, Message(arrays=arrays, config={"width": msg.config["width"]}, metrics={"n_train": 8.0})))
    algo.aggregate(0, replies)


def stats_at(model, width) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: tuple(t.clone() for t in m._stats(width, slicing.sliced_dim(m.num_features, width)))
            for n, m in model.named_modules() if isinstance(m, SliceBatchNorm)}


def bn_inputs_over(model, data, width, batch_size):
    """Reference: every BN layer's inputs over ``data`` (the same pass the partners make)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.setdefault(n, []).append(args[0].detach()))
               for n, m in model.named_modules() if isinstance(m, SliceBatchNorm)]
    slicing.recompute_bn_stats(model, make_loader(data, batch_size), width)
    for h in handles:
        h.remove()
    return {n: torch.cat(v).double() for n, v in seen.items()}


@pytest.mark.parametrize("width", [1.0, 0.5])
@pytest.mark.parametrize("name", sorted(POOLING))
def test_pooled_statistics_equal_those_of_the_union(name, width):
    algo, partners = make(name)
    local = local_data()
    own = stats_at(algo.model, width)
    with pytest.raises(FedmolError, match="no pooled BN statistics"):
        algo.eval_model(width)
    assert ask(algo, partners, local, width)
    model = algo.eval_model(width)
    assert not model.training

    # batches of 4 split A, B and A+B identically, so the union's inputs are exactly those the partners saw
    union = local[0].train + local[1].train
    ref = bn_inputs_over(copy.deepcopy(algo.model), union, width, 4)
    served = stats_at(model, width)
    assert len(ref) == len(served) == 4  # 2 layers x (GIN MLP norm + layer norm)
    for layer, x in ref.items():
        mean, var = served[layer]
        torch.testing.assert_close(mean.double(), x.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(var.double(), x.var(0, unbiased=True), atol=1e-5, rtol=1e-5)
    # the first BN's inputs do not depend on batching: one exact pass over the union in one batch
    first = slicing.recompute_bn_stats(copy.deepcopy(algo.model), make_loader(union, 16), width)
    for a, b in zip(served["convs.0.norm"], stats_at(first, width)["convs.0.norm"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the global model keeps its own statistics; the pooled ones are cached until the weights change
    for layer, (mean, var) in stats_at(algo.model, width).items():
        assert torch.equal(mean, own[layer][0]) and torch.equal(var, own[layer][1])
    assert not ask(algo, partners, local, width)
    shifted_round(algo, partners)
    with pytest.raises(FedmolError, match="no pooled BN statistics"):
        algo.eval_model(width)
    assert ask(algo, partners, local, width)


@pytest.mark.parametrize("name", sorted(POOLING))
def test_a_selection_checkpoint_serves_its_own_pooled_statistics(name):
    algo, partners = make(name)
    local = local_data()
    ask(algo, partners, local, 0.5)
    ck, kept = algo.checkpoint(), stats_at(algo.eval_model(0.5), 0.5)
    shifted_round(algo, partners)
    ask(algo, partners, local, 0.5)
    assert not torch.equal(stats_at(algo.eval_model(0.5), 0.5)["convs.0.norm"][0], kept["convs.0.norm"][0])
    algo.restore(ck)
    assert algo.query(0.5) is None  # restored together with its weights: no new query
    for layer, (mean, var) in stats_at(algo.eval_model(0.5), 0.5).items():
        assert torch.equal(mean, kept[layer][0]) and torch.equal(var, kept[layer][1])
    assert algo.query(1.0) is not None


def test_saved_state_holds_the_pooled_statistics_of_every_known_width_for_fedgen_only_width_1_for_sbn():
    for name in POOLING:
        algo, partners = make(name)
        local = local_data()
        ask(algo, partners, local, 0.5)
        pooled_half = stats_at(algo.eval_model(0.5), 0.5)
        net = copy.deepcopy(algo.model)
        net.load_state_dict({k: v for k, v in algo.state().items() if not k.startswith("generator.")})
        got = stats_at(net, 0.5)
        if name == "fedgen":  # per-width buffers: width 1/2's are the pooled ones
            assert all(torch.equal(got[k][0], pooled_half[k][0]) for k in got)
        else:  # one shared buffer: only full-width statistics are written, here none yet (identity)
            assert all(torch.equal(got[k][0], torch.zeros_like(got[k][0])) for k in got)
        ask(algo, partners, local, 1.0)
        net.load_state_dict({k: v for k, v in algo.state().items() if not k.startswith("generator.")})
        full = stats_at(algo.eval_model(1.0), 1.0)
        assert all(torch.equal(stats_at(net, 1.0)[k][1], full[k][1]) for k in full)


def test_fedgen_without_pooling_asks_nothing_and_serves_its_own_statistics():
    algo = FedGen(dict(name="gin", num_tasks=1, hidden=16, layers=2, task_type="classification"), seed=0)
    algo.init([PartnerInfo(0, 8, DeviceProfile(1.0)), PartnerInfo(1, 8, DeviceProfile(0.5))])
    assert algo.hp["pooled_bn"] is False
    assert algo.query(0.5) is None and algo.eval_model(0.5) is algo.model
    with pytest.raises(FedmolError, match="pooled_bn must be true or false, got 'no'"):  # at construction (hp schema)
        FedGen(dict(name="gin", num_tasks=1, hidden=16, layers=2, task_type="classification"), {"pooled_bn": "no"})


def test_fedgen_pooled_run_records_the_query_traffic(tmp_path):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import build_federation, run_federated

    cfg = RunConfig(algorithm="fedgen", dataset="bace", partners=3, rounds=2, hidden=16, layers=2, devices="tiered",
                    hparams={"max_local_steps": 3, "gen_steps": 3, "pooled_bn": True})
    s = run_federated(cfg, tmp_path, progress=False)
    assert all(0 <= v <= 1 for v in s["test"].values())
    sent = [json.loads(x) for x in (tmp_path / "sent.jsonl").read_text().splitlines()]
    queries = [r for r in sent if r["kind"] == "query"]
    # every partner answers once per served width and weight version (2 rounds, + the final evaluation if reread)
    assert len(queries) >= 3 * len(s["test"]) * 2
    assert {a["name"].rsplit(".", 1)[1] for r in queries for a in r["arrays"]} == {"count", "sum", "sumsq"}
    # the saved state alone reproduces the served predictions at every width (what a leaderboard checks)
    assert FedGen.state_widths([1.0, 0.5, 0.25], 1.0) == [1.0, 0.5, 0.25]
    conf = json.loads((tmp_path / "config.json").read_text())
    net = build(**conf["model"])
    net.load_state_dict({k: v for k, v in load_file(str(tmp_path / "model.safetensors")).items()
                         if not k.startswith("generator.")})
    shipped = pd.read_csv(tmp_path / "test_predictions.csv")
    test = build_federation(cfg, progress=False).test
    for key in s["test"]:
        _, pred = predict(net, test, float(key))
        want = shipped[shipped.width == float(key)].sort_values("row")["logit:Class"].to_numpy()
        np.testing.assert_allclose(pred[:, 0], want, atol=1e-5)


@pytest.mark.parametrize("backbone", ["gin", "mlp"])
def test_a_last_batch_of_one_molecule_is_left_out_of_the_mlp_moments_only(backbone):
    """A batch norm needs two rows: the MLP's norms see molecules, so a partner whose last batch holds one
    molecule (9 molecules in batches of 4) leaves it out of its moment sums instead of failing (as its
    training skips such a batch); a GNN's norms see atoms, so that molecule still counts."""
    from fedmol.fl.pooled_bn import bn_moment_sums
    from fl_graphs import SMILES

    data = graphs(binary_labels(9, 1, 3))
    for i, g in enumerate(data):
        g.smiles = SMILES[i % len(SMILES)]
    extra = dict(fp_radius=2, fp_bits=256) if backbone == "mlp" else {}
    model = build(backbone, num_tasks=1, hidden=8, layers=2, task_type="classification", norm="sbn", **extra)
    sums = bn_moment_sums(model, data, 1.0, batch_size=4)
    counts = {float(v) for k, v in sums.items() if k.endswith(".count")}
    atoms = sum(int(g.num_nodes) for g in data)
    assert counts == ({8.0} if backbone == "mlp" else {float(atoms)})
