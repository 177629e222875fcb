import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import Algorithm
from fedmol.fl.devices import DeviceProfile, assign_devices
from fedmol.fl.fedavg import FedAvg
from fedmol.config import RunConfig
from fedmol.fl.harness import build_federation, run_federated
from fedmol.fl.message import Message
from fedmol.models import slicing

TINY = dict(dataset="bace", partners=3, alpha=1.0, rounds=2, hidden=16, layers=2,
            hparams={"max_local_steps": 3})


def cfg(**kw):
    return RunConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run_federated(cfg(), out, progress=False)
    return out, summary


def test_result_files(run_dir):
    out, summary = run_dir
    s = json.loads((out / "summary.json").read_text())
    for key in ("dataset", "metric", "test", "valid", "per_partner", "bytes_up", "bytes_down", "seconds"):
        assert key in s
    assert s["dataset"] == "bace" and s["metric"] == "rocauc" and list(s["test"]) == ["1.0"]
    assert len(s["per_partner"]) == 3
    # the reported test score is the Evaluator's on the written predictions of the reported model
    from fedmol.evaluate import Evaluator
    fed = build_federation(cfg(), progress=False)
    preds = {int(r["row"]): float(r["logit:Class"]) for r in csv.DictReader(open(out / "test_predictions.csv"))}
    y_pred = torch.tensor([[preds[int(r)]] for r in fed.test.rows]).numpy()
    rescored = Evaluator("classification", 1).eval({"y_true": fed.test.labels, "y_pred": y_pred})["rocauc"]
    assert s["test"]["1.0"] == pytest.approx(rescored, abs=1e-12)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["round"] for r in rows] == ["0", "1"]
    assert {"participants", "failures", "bytes_up", "bytes_down", "seconds", "test_rocauc@1.0"} <= set(rows[0])
    assert sum(int(r["bytes_up"]) for r in rows) == s["bytes_up"]
    conf = json.loads((out / "config.json").read_text())
    assert conf["run"]["algorithm"] == "fedavg" and len(conf["partners"]) == 3
    assert conf["split"]["spec"]["dataset"] == "bace"
    weights = load_file(str(out / "model.safetensors"))
    algo = FedAvg(dict(name="gin", num_tasks=1, hidden=16, layers=2, task_type="classification", dropout=0.5),
                  TINY["hparams"], 0)
    algo.init(fed.infos)
    assert set(weights) == set(algo.state()) and "atom_encoder.weight" in weights
    assert all(torch.isfinite(t.float()).all() for t in weights.values())


def test_same_seed_same_metrics(run_dir, tmp_path):
    _, first = run_dir
    again = run_federated(cfg(), tmp_path, progress=False)
    assert again["test"] == first["test"] and again["per_partner"] == first["per_partner"]
    other = run_federated(cfg(seed=1), None, progress=False)
    assert other["test"] != first["test"]


def test_bytes_are_counted_from_the_tensors_sent(run_dir):
    _, s = run_dir
    fed = build_federation(cfg(), progress=False)
    algo = FedAvg(dict(name="gin", num_tasks=1, hidden=16, layers=2, task_type="classification", dropout=0.5),
                  TINY["hparams"], 0)
    algo.init(fed.infos)
    tensor_bytes = sum(t.numel() * t.element_size() for t in slicing.sub_state_dict(algo.model, 1.0).values())
    per_round = [r["bytes_down"] for r in s["history"]]
    for b in per_round:  # 3 partners, each receives the full model plus a small JSON config
        assert 3 * tensor_bytes < b < 3 * tensor_bytes + 3 * 4096
    assert s["bytes_down"] == sum(per_round)


def test_dropouts_are_logged_and_the_run_goes_on(tmp_path):
    prof = tmp_path / "flaky.toml"
    prof.write_text("[[tier]]\nshare = 1\nmax_width = 1.0\np_drop = 1.0\n")
    s = run_federated(cfg(devices=str(prof)), tmp_path / "run", progress=False)
    assert s["failures"] == 6 and s["bytes_up"] == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[0]["failures"] == "3" and "partner 0: dropped out mid-round" in rows[0]["failure_reasons"]


def test_non_finite_update_is_left_out(monkeypatch):
    original = FedAvg.client_update.__func__

    def poisoned(cls, msg, data):
        reply = original(cls, msg, data)
        if data.pid == 1:
            reply.arrays = {k: v.float() * float("nan") if v.is_floating_point() else v for k, v in reply.arrays.items()}
        return reply

    monkeypatch.setattr(FedAvg, "client_update", classmethod(poisoned))
    s = run_federated(cfg(), None, progress=False)
    assert s["failures"] == 2
    assert all(r["partner_ids"] == "0;2" and "partner 1: non-finite update rejected" in r["failure_reasons"]
               for r in s["history"])
    assert all(torch.isfinite(torch.tensor(v)) for v in s["test"].values())


def test_fedavg_heterogeneous_devices_sit_out_or_shrink():
    s = run_federated(cfg(devices="tiered", partners=4, rounds=1), None, progress=False)
    assert s["history"][0]["participants"] == 1  # only the full-width partner can train the full model
    m = run_federated(cfg(devices="tiered", partners=4, rounds=1, hparams={"hetero": "min", "max_local_steps": 2}),
                      None, progress=False)
    assert list(m["test"]) == ["0.125"] and m["history"][0]["participants"] == 4


def test_fedavg_aggregate_is_sample_weighted():
    algo = FedAvg(dict(name="gin", num_tasks=1, hidden=8, layers=1, task_type="classification"), seed=0)
    from fedmol.fl.algorithm import PartnerInfo
    infos = [PartnerInfo(0, 10, DeviceProfile()), PartnerInfo(1, 30, DeviceProfile())]
    algo.init(infos)
    sd = algo.model.state_dict()
    a = {k: torch.full_like(v, 1.0) if v.is_floating_point() else v for k, v in sd.items()}
    b = {k: torch.full_like(v, 5.0) if v.is_floating_point() else v for k, v in sd.items()}
    algo.aggregate(0, [(infos[0], Message(a, {}, {"n_train": 10.0})), (infos[1], Message(b, {}, {"n_train": 30.0}))])
    for k, v in algo.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, torch.full_like(v, 4.0)), k


def test_unknown_names_are_user_errors():
    with pytest.raises(FedmolError, match="unknown device profile 'gpu'"):
        assign_devices("gpu", [1, 2], 0)
    with pytest.raises(FedmolError, match="unknown hyperparameter"):
        FedAvg({"name": "gin", "num_tasks": 1}, {"nope": 1})
    with pytest.raises(FedmolError, match="max_width 0.3 is not one of the widths"):
        DeviceProfile(max_width=0.3)


@pytest.mark.parametrize("profile,n,expect", [
    ("homogeneous", 5, {1.0: 5}),
    ("tiered", 8, {1.0: 2, 0.5: 2, 0.25: 2, 0.125: 2}),
    ("pharma", 8, {1.0: 2, 0.25: 3, 0.125: 3}),
])
def test_builtin_profiles(profile, n, expect):
    devs = assign_devices(profile, list(range(10, 10 + n)), 0)
    counts = {}
    for d in devs:
        counts[d.max_width] = counts.get(d.max_width, 0) + 1
    assert counts == expect
    assert assign_devices(profile, list(range(10, 10 + n)), 0) == devs
    if profile == "pharma":  # the largest partners get the full width
        assert devs[-1].max_width == 1.0 and devs[-2].max_width == 1.0


def test_client_update_is_a_classmethod_that_cannot_see_the_server():
    assert isinstance(Algorithm.__dict__["client_update"], classmethod)
