"""Private heads (``RunConfig.heads="private"``, docs/private_heads.md): each partner's task head
stays at its site, the server aggregates the trunk only, a partner's model is the federated trunk
plus its own head. Tiny runs on the canonical Tox21 task split (4 partners, tasks disjoint)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import HEAD_KEYS, initial_model
from fedmol.config import RunConfig
from fedmol.fl.harness import InProcessTransport, run_federated
from fedmol.fl.registry import get_algorithm
from fedmol.numerics import rerun_tolerance

REPO = Path(__file__).resolve().parents[2]
SPLIT = str(REPO / "data_splits" / "tox21" / "tasks" / "K4-a1-s0-disjoint.json")
TINY = dict(split=SPLIT, rounds=2, hidden=8, layers=2, hparams={"max_local_steps": 2})

pytestmark = pytest.mark.skipif(not (REPO / "data_splits" / "tox21" / "tasks").is_dir(), reason="no task splits")


def cfg(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


def watched_run(config: RunConfig, out):
    """Run ``config`` with the in-process transport watched: every message sent down, every reply
    sent up, the server's head after every aggregation, and the transport (the partners' side)."""
    seen = dict(down=[], up=[], server_heads=[], transports=[])
    train = InProcessTransport.train

    def watched_train(self, rnd, sends):
        seen["transports"].append(self)
        seen["down"] += [msg for _, msg in sends]
        answer = train(self, rnd, sends)

        def record(partner, msg):
            got = answer(partner, msg)
            seen["up"].append(got.reply)
            return got
        return record

    from fedmol.fl.registry import get_algorithm
    algo_cls = get_algorithm(config.algorithm)
    aggregate = algo_cls.aggregate

    def watched_aggregate(self, rnd, replies):
        out = aggregate(self, rnd, replies)
        seen["server_heads"].append({k: v.detach().clone() for k, v in self.model.state_dict().items()
                                     if k in HEAD_KEYS})
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InProcessTransport, "train", watched_train)
        mp.setattr(algo_cls, "aggregate", watched_aggregate)
        summary = run_federated(config, out, progress=False)
    return summary, seen


def assert_no_head_left(out: Path, seen: dict) -> None:
    """No head tensor in any upload (sent.jsonl and the replies themselves), nor in what was sent down."""
    lines = [json.loads(line) for line in (out / "sent.jsonl").read_text().splitlines()]
    assert any(rec["kind"] == "update" for rec in lines)  # and HeteroFL's static-BN query answers
    sent_names = {a["name"] for rec in lines for a in rec["arrays"]}
    assert sent_names and not sent_names & set(HEAD_KEYS)
    assert not any(n.startswith("head.") for n in sent_names)
    assert seen["up"] and all(r is not None and not set(r.arrays) & set(HEAD_KEYS) for r in seen["up"])
    assert seen["down"] and all(not set(m.arrays) & set(HEAD_KEYS) for m in seen["down"])
    assert all(m.config["heads"] == "private" for m in seen["down"])


@pytest.fixture(scope="module")
def fedavg_private(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedavg-private")
    summary, seen = watched_run(cfg(algorithm="fedavg", heads="private"), out)
    return out, summary, seen


def test_shared_heads_are_unchanged(tmp_path):
    """The default (shared heads) gives the recorded numbers (single-threaded, on the CPU kind of
    benchmarks/results/quick/numerics.json): recorded before private heads existed, re-recorded when the
    pooled validation set became labelled on each molecule's own partner's tasks (pooled_subset: the
    selected round moved from 0 to 1)."""
    torch.set_num_threads(1)
    s = run_federated(cfg(algorithm="fedavg"), tmp_path, progress=False)
    recorded = json.loads((REPO / "benchmarks" / "results" / "quick" / "numerics.json").read_text())["numerics"]
    tol, same = rerun_tolerance(recorded, 1e-9)
    assert s["test"]["1.0"] == pytest.approx(0.4936902921068669, abs=tol)
    assert s["valid"]["1.0"] == pytest.approx(0.4314350422422098, abs=tol)
    assert [p["valid"] for p in s["per_partner"]] == pytest.approx(
        [0.3798082531747857, 0.5871132052229613, 0.51253633797293, 0.24628237259816207], abs=tol)
    # bytes up include the reported loss metrics, whose JSON length follows the numerics
    assert abs(s["bytes_up"] - 73219) <= (0 if same else 64) and "heads" not in s
    assert json.loads((tmp_path / "config.json").read_text())["run"]["heads"] == "shared"
    names = {a["name"] for line in (tmp_path / "sent.jsonl").read_text().splitlines()
             for a in json.loads(line)["arrays"]}
    assert set(HEAD_KEYS) <= names  # shared heads do leave the site


def test_no_head_tensor_leaves_a_site(fedavg_private):
    out, summary, seen = fedavg_private
    assert_no_head_left(out, seen)
    assert summary["heads"] == "private"
    assert json.loads((out / "config.json").read_text())["run"]["heads"] == "private"


def test_the_server_head_never_changes(fedavg_private):
    out, summary, seen = fedavg_private
    config = json.loads((out / "config.json").read_text())
    start = initial_model(config["model"], 0).state_dict()
    assert len(seen["server_heads"]) == 2
    for heads in [*seen["server_heads"], load_file(str(out / "model.safetensors"))]:
        for k in HEAD_KEYS:
            assert torch.equal(heads[k], start[k])


def test_each_partner_keeps_its_own_head(fedavg_private):
    out, summary, seen = fedavg_private
    local = seen["transports"][0].fed.local
    config = json.loads((out / "config.json").read_text())
    start = initial_model(config["model"], 0).head.state_dict()
    heads = [d.head.state_dict() for d in local]
    assert len(heads) == 4 and all(h is not None for h in heads)
    for i, h in enumerate(heads):
        assert not torch.equal(h["weight"], start["weight"])  # trained at its site
        for g in heads[i + 1:]:
            assert not torch.equal(h["weight"], g["weight"])


def test_partners_are_scored_on_their_own_tasks(fedavg_private):
    out, summary, seen = fedavg_private
    split = json.loads(Path(SPLIT).read_text())
    fed = seen["transports"][0].fed
    names = list(fed.dataset.info.tasks)
    for entry, part in zip(summary["per_partner"], split["partners"]):
        own = {names.index(t) for t in part["tasks"]}
        by_task = entry["test_by_task"]
        assert all(math.isnan(v) for t, v in enumerate(by_task) if t not in own)
        assert all(math.isfinite(by_task[t]) for t in own)
        assert math.isfinite(entry["test"]) and math.isfinite(entry["valid"])
    # the run's test score is the mean over partners of their own models' scores (the selected
    # round's trunk with that round's heads)
    mean = sum(e["test"] for e in summary["per_partner"]) / len(summary["per_partner"])
    assert summary["test"]["1.0"] == pytest.approx(mean, abs=1e-12)


@pytest.mark.parametrize("algorithm", ["fedgen", "feddf"])
def test_teacher_algorithms_refuse_private_heads(algorithm):
    with pytest.raises(FedmolError, match=f"^{algorithm}: private heads are not supported: .*head") as e:
        run_federated(cfg(algorithm=algorithm, heads="private"), None, progress=False)
    assert "\n" not in str(e.value)


def test_unknown_heads_value_is_refused():
    with pytest.raises(FedmolError, match="run setting heads must be 'shared' or 'private', got 'mine'"):
        RunConfig.checked({**TINY, "heads": "mine"})
    with pytest.raises(FedmolError, match="heads must be one of shared, private, got 'mine'"):
        get_algorithm("fedavg").check_heads("mine")


def test_algorithm_cards_say_it():
    from fedmol.cli import algorithm_card
    assert algorithm_card("fjord")["private_heads"] == "supported"
    assert algorithm_card("fedgen")["private_heads"].startswith("refused: its server trains the generator")
    assert algorithm_card("feddf")["private_heads"].startswith("refused: its server distils")


@pytest.mark.parametrize("algorithm", ["fjord", "heterofl", "fedrescue"])
def test_nested_width_algorithms_run_with_private_heads(algorithm, tmp_path):
    """Tiered devices: partners train their heads at narrower widths; still no head leaves a site."""
    summary, seen = watched_run(cfg(algorithm=algorithm, heads="private", devices="tiered"), tmp_path)
    assert_no_head_left(tmp_path, seen)
    if algorithm == "heterofl":  # the head rule's label mask is not sent either
        assert all("labelled_tasks" not in r.arrays for r in seen["up"])
    assert summary["heads"] == "private"
    assert any(math.isfinite(v) for v in summary["test"].values())
    start = initial_model(json.loads((tmp_path / "config.json").read_text())["model"], 0).state_dict()
    assert all(torch.equal(h[k], start[k]) for h in seen["server_heads"] for k in HEAD_KEYS)
    served = [e for e in summary["per_partner"] if e["served"]]
    assert served and all(math.isfinite(e["valid"]) for e in served)


def test_cli_refuses_private_heads_of_teacher_algorithms_on_every_backend(tmp_path):
    """Before any data is read or Ray started (flower-sim runs private heads: tests/pilot/test_simulation.py)."""
    from typer.testing import CliRunner

    from fedmol.cli import app
    for backend in ("inprocess", "flower-sim"):
        res = CliRunner().invoke(app, ["run", "-A", "feddf", "--split", SPLIT, "--heads", "private", "--backend",
                                       backend, "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and "feddf: private heads are not supported" in res.output
        assert "Flower simulation engine" not in res.output


# -- a private regression head starts at its owner's labels ------------------------------------------
def test_centre_head_sets_each_regression_bias_to_its_label_mean():
    from fedmol.fl.algorithm import centre_head

    head = torch.nn.Linear(4, 3)
    before = head.bias.detach().clone()
    y = [[7.0, float("nan"), float("nan")], [9.0, 1.0, float("nan")], [float("nan"), 3.0, float("nan")]]
    centre_head(head, y, "regression")
    assert head.bias.tolist()[:2] == pytest.approx([8.0, 2.0]) and head.bias[2] == before[2]  # no label: kept
    same = torch.nn.Linear(4, 3)
    same.load_state_dict({"weight": head.weight, "bias": before})
    centre_head(same, y, "classification")  # AUC ignores the bias: classification heads keep theirs
    assert torch.equal(same.bias, before)


def test_private_regression_heads_start_at_each_partners_own_labels():
    """A partner's first head and the MLP references of a private-heads run are centred on the labels
    each trains on (hand-computed means); a shared-heads reference is not."""
    import numpy as np

    from fedmol.fl.algorithm import LocalData, own_head
    from fedmol.fl.harness import build_federation
    from fedmol.fl.message import Message
    from fedmol.fl.references import fit_model
    from fedmol.fl.setup import start_algorithm

    run = RunConfig(dataset="esol", partners=4, heads="private", model="mlp", hidden=8, layers=2, rounds=1,
                    hparams={"max_local_steps": 1})
    fed = build_federation(run, progress=False)
    algo, _ = start_algorithm(run, fed.dataset, fed.infos, "private")
    train, valid = fed.local[1].train, fed.local[1].valid
    mean = float(np.nanmean(train.labels))
    own = LocalData(1, train, valid)
    own_head(Message(arrays={}, config={"heads": "private", "init_seed": 0, "width": 1.0,
                                        "model": algo.model_config}), own)
    assert float(own.head.bias.detach()[0]) == pytest.approx(mean, abs=1e-5)
    for heads in ("private", "shared"):  # no training step: the start is what is kept
        fitted = fit_model(run.replace(heads=heads), fed, "gnn", train, valid, seed=0, max_steps=0)
        bias = float(fitted.model.head.bias.detach()[0])
        assert (bias == pytest.approx(mean, abs=1e-5)) if heads == "private" else abs(bias - mean) > 0.5


# -- FedRep's head phase: head_steps ----------------------------------------------------------------
def test_refit_head_trains_the_head_alone_and_lowers_its_loss():
    """The trunk (weights and BN statistics) is untouched bit for bit, the head's training loss falls,
    the same seed gives the same head, and the model comes back in eval mode."""
    from fedmol.fl.algorithm import refit_head
    from fedmol.fl.harness import build_federation
    from fedmol.models import masked_loss
    from fedmol.training import predict

    run = cfg(model="mlp", hidden=16)
    fed = build_federation(run, progress=False)
    train = fed.local[0].train
    model = initial_model(dict(name="mlp", num_tasks=fed.dataset.num_tasks, hidden=16, layers=2,
                               task_type="classification"), 0)
    hp = dict(head_steps=30, lr=1e-2, weight_decay=0.0, batch_size=32, clip=None)

    def train_loss(m):
        y, pred = predict(m, train)
        return float(masked_loss(torch.as_tensor(pred), torch.as_tensor(y), "classification"))

    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    before = train_loss(model)
    refit_head(model, train, hp, seed=7)
    assert not model.training
    assert all(torch.equal(v, trunk[k]) for k, v in model.state_dict().items() if k in trunk)
    assert train_loss(model) < before - 0.05
    again = initial_model(dict(name="mlp", num_tasks=fed.dataset.num_tasks, hidden=16, layers=2,
                               task_type="classification"), 0)
    refit_head(again, train, hp, seed=7)
    assert torch.equal(again.head.weight, model.head.weight)
    untouched = initial_model(dict(name="mlp", num_tasks=fed.dataset.num_tasks, hidden=16, layers=2,
                                   task_type="classification"), 0)
    head = untouched.head.weight.clone()
    refit_head(untouched, train, {**hp, "head_steps": 0}, seed=7)
    assert torch.equal(untouched.head.weight, head)


@pytest.mark.parametrize("hp, heads, message", [
    ({"head_steps": 3}, "shared", "fedavg: head_steps acts on a partner's private head: it needs heads = private"),
    ({"head_steps": 3, "freeze_head": True}, "shared",
     "fedavg: head_steps acts on a partner's private head: it needs heads = private"),
    ({"freeze_head": True}, "private",
     "fedavg: freeze_head leaves a partner's head to the head phase: set head_steps > 0"),
])
def test_fedrep_phases_need_private_heads_and_a_head_phase(hp, heads, message):
    with pytest.raises(FedmolError, match="^" + message + "$"):
        run_federated(cfg(algorithm="fedavg", heads=heads, hparams={"max_local_steps": 2, **hp}), None,
                      progress=False)


@pytest.mark.parametrize("algorithm", ["fedavg", "fjord"])
def test_freeze_head_trains_the_trunk_only_and_keeps_the_refit_head(algorithm):
    """FedRep's representation phase: after the head phase the update trains the trunk, the head stays
    exactly the refit one (the partner keeps it); without the freeze the update moves the head too."""
    import copy

    from fedmol.fl.algorithm import refit_own_head
    from fedmol.fl.harness import build_federation
    from fedmol.fl.setup import start_algorithm

    run = cfg(model="mlp", hidden=16, algorithm=algorithm, heads="private",
              hparams={"max_local_steps": 3, "head_steps": 4, "freeze_head": True})
    fed = build_federation(run, progress=False)
    algo, _ = start_algorithm(run, fed.dataset, fed.infos, "private")
    msg = algo.configure(1, fed.infos[0])
    assert msg.config["hp"]["freeze_head"] is True
    refit_only = copy.deepcopy(fed.local[0])
    refit_own_head(type(algo), copy.deepcopy(msg), refit_only)
    data = copy.deepcopy(fed.local[0])
    reply = type(algo).partner_update(copy.deepcopy(msg), data)
    assert all(torch.equal(a, b) for a, b in zip(data.head.state_dict().values(), refit_only.head.state_dict().values()))
    assert any(not torch.equal(reply.arrays[k], v) for k, v in msg.arrays.items() if k.endswith("weight"))
    joint = copy.deepcopy(fed.local[0])
    unfrozen = copy.deepcopy(msg)
    unfrozen.config["hp"] = {**msg.config["hp"], "freeze_head": False}
    type(algo).partner_update(unfrozen, joint)
    assert not torch.equal(joint.head.weight, refit_only.head.weight)


def test_head_steps_change_the_partners_models_and_no_head_leaves(tmp_path):
    """With a head phase the scores move (the heads are refit on every received trunk) and still no head
    tensor is sent; a rerun gives the same numbers."""
    base, _ = watched_run(cfg(algorithm="fedavg", heads="private"), tmp_path / "base")
    run = cfg(algorithm="fedavg", heads="private", hparams={"max_local_steps": 2, "head_steps": 4})
    summary, seen = watched_run(run, tmp_path / "refit")
    assert_no_head_left(tmp_path / "refit", seen)
    assert summary["test"] != base["test"]
    assert [e["test"] for e in summary["per_partner"]] != [e["test"] for e in base["per_partner"]]
    again = run_federated(run, None, progress=False)
    assert again["test"] == summary["test"]
    assert json.dumps(again["per_partner"]) == json.dumps(summary["per_partner"])  # NaN off a partner's tasks


def test_refit_before_an_update_normalizes_static_bn_with_batch_statistics():
    """At a partner, HeteroFL's static BN keeps no statistics (identity until pooled ones are served): the head
    phase before its update normalizes with batch statistics, as the update will; a scored model's refit uses
    the model's statistics. Ordinary BN is refit in eval mode either way (same head both ways)."""
    from fedmol.fl.algorithm import refit_head
    from fedmol.fl.harness import build_federation

    fed = build_federation(cfg(model="mlp", hidden=16), progress=False)
    train = fed.local[0].train
    hp = dict(head_steps=10, lr=1e-2, weight_decay=0.0, batch_size=32, clip=None)
    heads = {}
    for norm in ("sbn", "bn"):
        for batch_stats in (False, True):
            model = initial_model(dict(name="mlp", num_tasks=fed.dataset.num_tasks, hidden=16, layers=2,
                                       task_type="classification", norm=norm), 0)
            buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
            refit_head(model, train, hp, seed=3, static_bn_batch_stats=batch_stats)
            assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())  # nothing tracked
            heads[norm, batch_stats] = model.head.weight.detach().clone()
    assert not torch.equal(heads["sbn", False], heads["sbn", True])
    assert torch.equal(heads["bn", False], heads["bn", True])
