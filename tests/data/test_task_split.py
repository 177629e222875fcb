"""Task splits: partners hold different tasks of one dataset, and see labels of their own tasks only."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedmol.data.dataset import load_dataset
from fedmol.data.splits import (check_task_split, deal_tasks, make_split, partner_subsets, pooled_subset, read_split,
                                verify_split, write_split)
from fedmol.errors import DataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tox21():
    return load_dataset("tox21", progress=False)


@pytest.fixture(scope="module")
def split_file(tox21, tmp_path_factory):
    """Tox21 dealt to 4 partners, its 12 tasks disjoint (3 each)."""
    return write_split(make_split(tox21, 4, 1.0, seed=0, progress=False, task_split="disjoint"),
                       tmp_path_factory.mktemp("tasks") / "tox21.json")


# -- the deal --------------------------------------------------------------------------------------
def test_deal_is_seeded_and_deterministic():
    assert deal_tasks(12, 5, 2, seed=3) == deal_tasks(12, 5, 2, seed=3)
    assert deal_tasks(12, 5, 2, seed=3) != deal_tasks(12, 5, 2, seed=4)
    assert deal_tasks(27, 8, 1, seed=0) != deal_tasks(27, 8, 1, seed=1)


@pytest.mark.parametrize("n_tasks,partners", [(12, 4), (12, 5), (12, 12), (27, 8), (2, 2)])
def test_disjoint_holds_every_task_exactly_once(n_tasks, partners):
    held = deal_tasks(n_tasks, partners, 1, seed=0)
    assert sorted(t for h in held for t in h) == list(range(n_tasks))
    assert {len(h) for h in held} <= {n_tasks // partners, -(-n_tasks // partners)} and all(held)


@pytest.mark.parametrize("n_tasks,partners,m", [(12, 4, 2), (12, 8, 3), (3, 8, 3), (27, 8, 8), (2, 2, 2)])
def test_overlap_gives_every_task_exactly_m_holders(n_tasks, partners, m):
    held = deal_tasks(n_tasks, partners, m, seed=7)
    for t in range(n_tasks):
        assert sum(t in h for h in held) == m
    assert all(len(set(h)) == len(h) for h in held) and all(held)


def test_split_file_records_the_deal(tox21, split_file):
    obj = read_split(split_file)
    assert obj["spec"]["task_split"] == {"mode": "disjoint", "holders_per_task": 1}
    names = list(tox21.info.tasks)
    held = [p["tasks"] for p in obj["partners"]]
    assert sorted(t for h in held for t in h) == sorted(names)
    assert held == [[names[t] for t in h] for h in deal_tasks(len(names), 4, 1, seed=0)]
    again = make_split(tox21, 4, 1.0, seed=0, progress=False, task_split="disjoint")
    assert again["partners"] == obj["partners"]
    other = make_split(tox21, 4, 1.0, seed=1, progress=False, task_split="disjoint")
    assert [p["tasks"] for p in other["partners"]] != held
    overlap = make_split(tox21, 4, 1.0, seed=0, progress=False, task_split="overlap")
    assert overlap["spec"]["task_split"] == {"mode": "overlap", "holders_per_task": 2}
    assert all(sum(t in p["tasks"] for p in overlap["partners"]) == 2 for t in names)


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (("esol", 1, 4, "disjoint", None), "a task split deals tasks to partners, but esol has a single task"),
    (("tox21", 12, 16, "disjoint", None), "--task-split disjoint needs at least as many tasks as partners: "
                                          "tox21 has 12 tasks for 16 partners"),
    (("tox21", 12, 16, "overlap", 1), "gives tox21's 12 tasks to 12 of 16 partners: every partner needs a task "
                                      "(use --holders-per-task 2 or more)"),
    (("tox21", 12, 4, "overlap", 5), "--holders-per-task must be an integer in [1, 4] (the partners), got 5"),
    (("tox21", 12, 4, "overlap", 0), "--holders-per-task must be an integer in [1, 4]"),
    (("tox21", 12, 4, "disjoint", 2), "--holders-per-task applies to --task-split overlap"),
    (("tox21", 12, 4, None, 2), "--holders-per-task needs --task-split overlap"),
    (("tox21", 12, 4, "random", None), "unknown task split 'random'; known: disjoint, overlap"),
])
def test_refusals(args, message):
    with pytest.raises(DataError, match=re.escape(message)):
        check_task_split(*args)


def test_single_task_dataset_is_refused_by_make_split():
    with pytest.raises(DataError, match="esol has a single task"):
        make_split(load_dataset("esol", progress=False), 4, 1.0, task_split="overlap")


def test_cli_refuses_in_one_line_before_featurizing(tmp_path):
    from fedmol.cli import app

    res = CliRunner().invoke(app, ["split", "make", "tox21", "-k", "16", "--task-split", "disjoint",
                                   "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "needs at least as many tasks as partners" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.json").exists()


# -- label masking ---------------------------------------------------------------------------------
def _check_masked(names, obj, ds, views):
    for k, p in enumerate(obj["partners"]):
        held = np.isin(names, p["tasks"])
        for part, view in zip(("train", "valid"), views[k]):
            full = ds.select_rows(p[part]).labels
            got = view.labels
            assert np.isnan(got[:, ~held]).all()
            np.testing.assert_array_equal(got[:, held], full[:, held])  # NaN where missing, equal elsewhere
            items = torch.cat([view[i].y for i in range(min(len(view), 40))]).numpy()
            np.testing.assert_array_equal(items, got[:len(items)])  # what a loader reads is masked too


def test_labels_are_masked_exactly(tox21, split_file):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import build_federation

    before = tox21.labels.copy()
    _ = [tox21[i] for i in range(len(tox21))]  # items cached in the full dataset must not leak into a partner's view
    obj = read_split(split_file)
    names = list(tox21.info.tasks)
    _check_masked(names, obj, tox21, partner_subsets(obj, tox21))
    fed = build_federation(RunConfig(split=str(split_file)), progress=False)
    _check_masked(names, obj, fed.dataset, [(d.train, d.valid) for d in fed.local])
    np.testing.assert_array_equal(fed.test.labels, fed.dataset.select_rows(obj["test"]).labels)
    assert (~np.isnan(fed.test.labels)).any(axis=0).all()  # the test set keeps every task
    from fedmol.fl.references import pooled_train

    for part, pooled in (("valid", fed.valid), ("train", pooled_train(fed))):  # each row: its own partner's tasks
        rows = sorted(r for p in obj["partners"] for r in p[part])
        expected = fed.dataset.select_rows(rows).labels.copy()
        for p in obj["partners"]:
            at = np.searchsorted(rows, sorted(p[part]))
            expected[np.ix_(at, [t for t, n in enumerate(names) if n not in p["tasks"]])] = np.nan
        np.testing.assert_array_equal(pooled.labels, expected)
        assert np.isnan(pooled.labels).sum() > np.isnan(fed.dataset.select_rows(rows).labels).sum()
    np.testing.assert_array_equal(fed.dataset.labels, before)
    np.testing.assert_array_equal(tox21.labels, before)
    np.testing.assert_array_equal(torch.cat([tox21[i].y for i in range(40)]).numpy(), before[:40])


def test_partner_subsets_without_task_split_are_plain_views(tox21):
    split = make_split(tox21, 4, 1.0, seed=0, progress=False)
    train, valid = partner_subsets(split, tox21)[0]
    np.testing.assert_array_equal(train.labels, tox21.select_rows(split["partners"][0]["train"]).labels)
    assert train._data is tox21._data  # no copy without a task split
    pooled = pooled_subset(split, tox21, "valid")
    assert pooled._data is tox21._data and len(pooled) == sum(len(p["valid"]) for p in split["partners"])


def test_loss_and_evaluator_ignore_masked_tasks(tox21, split_file):
    from fedmol.evaluate import Evaluator
    from fedmol.models import masked_loss

    obj = read_split(split_file)
    train, valid = partner_subsets(obj, tox21)[0]
    held = np.isin(list(tox21.info.tasks), obj["partners"][0]["tasks"])
    y = torch.as_tensor(train.labels[:64])
    pred = torch.randn(y.shape, requires_grad=True)
    loss = masked_loss(pred, y, "classification")
    loss.backward()
    assert torch.allclose(loss, masked_loss(pred[:, held], y[:, held], "classification"))
    assert (pred.grad[:, ~held] == 0).all() and (pred.grad[:, held] != 0).any()
    yv = valid.labels
    scores = Evaluator("classification", 12).eval({"y_true": yv, "y_pred": np.random.default_rng(0).random(yv.shape)})
    assert set(scores["skipped_tasks"]) >= set(np.flatnonzero(~held).tolist())
    assert np.isnan(np.asarray(scores["by_task"]["rocauc"])[~held]).all()


# -- files -----------------------------------------------------------------------------------------
def _rewrite(path, tmp_path, mutate):
    obj = json.loads(Path(path).read_text())
    mutate(obj)
    obj.pop("sha256")
    return write_split(obj, tmp_path / "t.json")


def test_round_trip_and_verify(split_file, tmp_path):
    obj = read_split(split_file)
    assert read_split(write_split({k: v for k, v in obj.items() if k != "sha256"}, tmp_path / "c.json")) == obj
    assert verify_split(split_file, progress=False)[0] == []

    def swap(o):
        o["partners"][0]["tasks"], o["partners"][1]["tasks"] = o["partners"][1]["tasks"], o["partners"][0]["tasks"]
    assert verify_split(_rewrite(split_file, tmp_path, swap), progress=False)[0] == [
        "rebuilding from the spec gives a different 'partners'"]


@pytest.mark.parametrize("mutate,match", [
    (lambda o: o["spec"].pop("task_split"), "partners list tasks but the spec has no task_split"),
    (lambda o: o["partners"][2].pop("tasks"), "the spec has a task_split but a partner lists no tasks"),
    (lambda o: o["spec"]["task_split"].update(mode="all"), "spec.task_split.mode"),
    (lambda o: o["spec"]["task_split"].update(holders_per_task=0), "spec.task_split.holders_per_task"),
])
def test_malformed_task_splits(split_file, tmp_path, mutate, match):
    with pytest.raises(DataError, match=match):
        read_split(_rewrite(split_file, tmp_path, mutate))


def test_without_task_split_files_are_byte_identical(tmp_path):
    ds = load_dataset("sider", progress=False)
    path = write_split(make_split(ds, 4, 1.0, seed=0, progress=False), tmp_path / "s.json")
    assert path.read_bytes() == (REPO / "data_splits" / "sider" / "K4-a1-s0.json").read_bytes()


def test_canonical_task_splits_are_indexed_and_intact():
    index = json.loads((REPO / "data_splits" / "tasks_index.json").read_text())
    files = sorted(str(p.relative_to(REPO / "data_splits")) for p in (REPO / "data_splits").glob("*/tasks/*.json"))
    assert sorted(r["file"] for r in index) == files and {r["dataset"] for r in index} == {"tox21", "sider"}
    for r in index:
        obj = read_split(REPO / "data_splits" / r["file"])
        assert obj["sha256"] == r["sha256"] and obj["spec"]["task_split"]["mode"] == r["task_split"]
        assert len(obj["partners"]) == r["partners"] == obj["spec"]["partners"]


def test_canonical_tox21_task_split_verifies():
    assert verify_split(REPO / "data_splits" / "tox21" / "tasks" / "K8-a1-s0-disjoint.json", progress=False)[0] == []


def test_show_lists_each_partners_tasks(split_file):
    from fedmol.cli import app

    res = CliRunner().invoke(app, ["split", "show", str(split_file)])
    assert res.exit_code == 0, res.output
    for k, p in enumerate(read_split(split_file)["partners"]):
        assert f"partner {k}: {', '.join(p['tasks'])}" in res.output
    shown = json.loads(CliRunner().invoke(app, ["split", "show", str(split_file), "--json"]).stdout)
    assert shown["tasks"] == [p["tasks"] for p in read_split(split_file)["partners"]]


# -- a federated run -------------------------------------------------------------------------------
def test_short_federated_run_on_a_task_split(tmp_path):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    split = REPO / "data_splits" / "tox21" / "tasks" / "K8-a1-s0-disjoint.json"
    cfg = RunConfig(split=str(split), rounds=1, hidden=8, layers=2, dropout=0.0, hparams={"max_local_steps": 2})
    summary = run_federated(cfg, tmp_path / "run", progress=False)
    assert len(summary["per_partner"]) == 8 and np.isfinite(summary["test"]["1.0"])
    assert all(len(p["test_by_task"]) == 12 for p in summary["per_partner"])
    names = list(load_dataset("tox21", progress=False).info.tasks)
    for p, deal in zip(summary["per_partner"], read_split(split)["partners"]):  # judged on its own assays only
        own = [v for v, n in zip(p["test_by_task"], names) if n in deal["tasks"]]
        others = [v for v, n in zip(p["test_by_task"], names) if n not in deal["tasks"]]
        assert own and all(v is None or math.isnan(v) for v in others)
        assert p["test"] == pytest.approx(np.nanmean([np.nan if v is None else v for v in own]))
    from fedmol.fl.references import local_only

    ref = local_only(cfg, "gnn", tmp_path / "local", progress=False, min_epochs=1)  # the baseline: the same rule
    scored = [{n for v, n in zip(p["test_by_task"], names) if v is not None and not math.isnan(v)}
              for p in ref["per_partner"]]
    assert all(s <= set(d["tasks"]) for s, d in zip(scored, read_split(split)["partners"])) and sum(map(len, scored)) > 8


# -- target-aware deals ----------------------------------------------------------------------------
def _sparse_table(n=240, tasks=6, seed=0):
    """Scaffolds (40 groups) and a sparse label table: every molecule measured on one or two tasks."""
    rng = np.random.default_rng(seed)
    scaffolds = [f"c1ccc{g % 40}cc1" for g in range(n)]
    y = np.full((n, tasks), np.nan)
    for i in range(n):
        y[i, rng.choice(tasks, size=1 + int(rng.random() < 0.3), replace=False)] = rng.normal(6, 1)
    y[:3] = np.nan  # molecules labelled on nothing stay with their group's partner
    return scaffolds, y


def test_target_aware_partition_sends_each_molecule_to_a_holder_of_its_tasks():
    from fedmol.data.partition import scaffold_partition

    scaffolds, y = _sparse_table()
    holders = [[0, 1], [2, 3], [4], [5]]
    kw = dict(n_clusters=2, test_fraction=0.1)
    part = scaffold_partition(scaffolds, y, "regression", 4, 1.0, 0, holders=holders, **kw)
    owner = part.owner(len(scaffolds))
    for i in np.flatnonzero(owner >= 0):
        labelled = set(np.flatnonzero(~np.isnan(y[i])))
        assert not labelled or labelled & set(holders[owner[i]]), (i, labelled, owner[i])
    assert part.params["target_aware"] is True
    again = scaffold_partition(scaffolds, y, "regression", 4, 1.0, 0, holders=holders, **kw)
    assert [p.train.tolist() for p in again.partners] == [p.train.tolist() for p in part.partners]
    plain = scaffold_partition(scaffolds, y, "regression", 4, 1.0, 0, **kw)
    assert np.array_equal(plain.test, part.test) and "target_aware" not in plain.params  # the same test set
    mixed = ~np.isnan(y[:, 0]) & ~np.isnan(y[:, 2])  # held by partners 0 and 1: either may get it
    assert set(owner[mixed & (owner >= 0)]) <= {0, 1}


def test_target_aware_split_file_round_trip_and_refusal(tox21, tmp_path):
    obj = make_split(tox21, 4, 1.0, seed=0, progress=False, task_split="disjoint", target_aware=True)
    assert obj["spec"]["task_split"] == {"mode": "disjoint", "holders_per_task": 1, "target_aware": True}
    path = write_split(obj, tmp_path / "ta.json")
    assert verify_split(path, progress=False)[0] == []
    plain = make_split(tox21, 4, 1.0, seed=0, progress=False, task_split="disjoint")
    assert plain["test"] == obj["test"] and plain["partners"] != obj["partners"]
    names, rows = list(tox21.info.tasks), tox21.rows.tolist()
    y = np.asarray(tox21.labels)
    for p in obj["partners"]:  # every training molecule is labelled on one of its partner's tasks
        own = [names.index(t) for t in p["tasks"]]
        pos = [rows.index(r) for r in p["train"][:200]]
        assert all((~np.isnan(y[i, own])).any() or np.isnan(y[i]).all() for i in pos)
    with pytest.raises(DataError, match="--target-aware deals each molecule to a holder of its tasks: it needs "
                                        "--task-split"):
        make_split(tox21, 4, 1.0, seed=0, progress=False, target_aware=True)


def test_run_config_makes_a_task_split_on_the_fly(tmp_path):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import build_federation

    cfg = RunConfig(dataset="sider", partners=4, task_split="disjoint", target_aware=True)
    fed = build_federation(cfg, progress=False)
    assert fed.split["spec"]["task_split"]["target_aware"] is True
    assert [p["tasks"] for p in fed.split["partners"]] == [
        p["tasks"] for p in make_split(fed.dataset, 4, 1.0, 0, progress=False, task_split="disjoint")["partners"]]
    from fedmol.errors import FedmolError
    with pytest.raises(FedmolError, match="task_split must be"):
        RunConfig.checked({"task_split": "all"})


def test_tasks_per_partner_is_the_issue_spelling_of_holders_per_task(tmp_path):
    from fedmol.cli import app

    res = CliRunner().invoke(app, ["split", "make", "tox21", "--partners", "16", "--task-split", "overlap",
                                   "--tasks-per-partner", "1", "--out", str(tmp_path / "s.json")])
    assert res.exit_code != 0 and "gives tox21's 12 tasks to 12 of 16 partners" in res.output
