"""Federated boosted trees (issue 23, item 2): the array ensemble predicts like LightGBM, untrusted
ensembles are checked before use, cyclic with one partner is local boosting, bagging averages the
partners' boosting steps, and both run through the harness with what they send on record."""

import dataclasses
import json
import math
import re

import lightgbm as lgb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedmol.config import RunConfig
from fedmol.errors import FedmolError
from fedmol.fl.algorithm import PartnerInfo, client_seed
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.harness import run_federated
from fedmol.fl.message import Message
from fedmol.fl.references import labels_of
from fedmol.fl.registry import get_algorithm
from fedmol.fl.trees import TreeBagging, TreeCyclic, lgb_params
from fedmol.data.fingerprints import ecfp4_of
from fedmol.models.trees import TREE_KEYS, TreeEnsemble, check_trees, trees_of_booster

PARAMS = dict(learning_rate=0.1, num_leaves=15, max_depth=5, min_data_in_leaf=5, num_threads=1, deterministic=True,
              force_row_wise=True, verbose=-1, seed=1)


def _data(rng, n=300, d=60, nan=False):
    X = (rng.random((n, d)) < 0.2).astype(np.float64)
    if nan:
        X[rng.random((n, d)) < 0.05] = np.nan
    return X, np.nan_to_num(X[:, :6]).sum(1) + rng.normal(0, 0.5, n)


@pytest.mark.parametrize("objective,nan", [("binary", False), ("regression", False), ("regression", True)])
def test_array_ensemble_predicts_exactly_like_lightgbm(objective, nan):
    rng = np.random.default_rng(0)
    X, y = _data(rng, nan=nan)
    y = (y > np.median(y)).astype(int) if objective == "binary" else y
    booster = lgb.train({**PARAMS, "objective": objective}, lgb.Dataset(X, y), num_boost_round=25)
    model = TreeEnsemble(num_tasks=2)
    model.num_features = X.shape[1]
    model.add(trees_of_booster(booster, task=1))
    got = model.raw(X)
    np.testing.assert_allclose(got[:, 1], booster.predict(X, raw_score=True), rtol=0, atol=1e-12)
    assert not got[:, 0].any() and len(model.task) == 25  # task 0 has no tree: raw score 0


def test_one_leaf_trees_predict_their_leaf():
    X = np.zeros((50, 4))
    booster = lgb.train({**PARAMS, "objective": "regression"}, lgb.Dataset(X, np.arange(50.0)), num_boost_round=3)
    model = TreeEnsemble(num_tasks=1)
    model.add(trees_of_booster(booster, 0))
    assert model.num_leaves.tolist() == [1]  # LightGBM stops when no split gains
    np.testing.assert_allclose(model.raw(X)[:, 0], booster.predict(X, raw_score=True), atol=1e-12)


def _valid_trees():
    rng = np.random.default_rng(1)
    X, y = _data(rng, d=2048)
    booster = lgb.train({**PARAMS, "objective": "regression"}, lgb.Dataset(X, y), num_boost_round=4)
    return trees_of_booster(booster, 0)


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.pop("weight"), "arrays must be"),
    (lambda t: t.update(threshold=t["threshold"].float()), "threshold must be a torch.float64 tensor"),
    (lambda t: t.update(leaf_value=t["leaf_value"][:, :-1]), "leaf_value must have shape"),
    (lambda t: t["feature"].__setitem__((0, 0), 2048), "feature must be in [0, 2047]"),
    (lambda t: t["task"].__setitem__(0, 1), "task must be in [0, 0]"),
    (lambda t: t["leaf_value"].__setitem__((1, 0), float("nan")), "leaf_value must be finite"),
    (lambda t: t["left"].__setitem__((0, 1), 0), "left children must be later internal nodes or leaves"),
    (lambda t: t["right"].__setitem__((0, 0), -100), "right children must be later internal nodes or leaves"),
    (lambda t: t["num_leaves"].__setitem__(0, 0), "num_leaves must be in"),
])
def test_an_untrusted_ensemble_is_checked_before_use(mutate, message):
    trees = _valid_trees()
    check_trees(trees, num_tasks=1, num_features=2048)  # the valid one passes
    bad = {k: v.clone() for k, v in trees.items()}
    mutate(bad)
    with pytest.raises(FedmolError, match="^" + re.escape(f"tree ensemble: {message}")):
        TreeEnsemble(num_tasks=1).load_state_dict(bad)


def _partners(fed, caps=None):
    caps = caps or [1.0] * len(fed.infos)
    return [dataclasses.replace(p, device=dataclasses.replace(p.device, max_width=c)) for p, c in zip(fed.infos, caps)]


def _round(algo, rnd, partners, local):
    replies = []
    for p in partners:
        msg = algo.configure(rnd, p)
        if msg is not None:
            replies.append((p, type(algo).partner_update(msg, local[p.pid])))
    return algo.aggregate(rnd, replies), replies


EXACT = {"subsample": 1.0, "colsample": 1.0, "trees_per_round": 4}


def test_cyclic_with_one_partner_is_local_boosting_with_as_many_trees(tiny_fed):
    data = tiny_fed.local[0]
    algo = TreeCyclic({"num_tasks": 1, "task_type": "classification"}, EXACT, seed=3)
    partner = PartnerInfo(0, len(data.train), DeviceProfile())
    algo.init([partner])
    for rnd in (1, 2, 3):
        _round(algo, rnd, [partner], tiny_fed.local)
    X, y = ecfp4_of(list(data.train.smiles)), labels_of(data.train)[:, 0]
    local = lgb.train(lgb_params(algo.hp, "classification", client_seed(3, 1, 0)), lgb.Dataset(X.astype(np.float32), y),
                      num_boost_round=12)
    Xt = ecfp4_of(list(tiny_fed.test.smiles))
    assert len(algo.model.task) == 12
    np.testing.assert_allclose(algo.model.raw(Xt)[:, 0], local.predict(Xt, raw_score=True), rtol=0, atol=1e-9)


def test_cyclic_visits_one_partner_per_round_in_order(tiny_fed):
    algo = TreeCyclic({"num_tasks": 1}, {"trees_per_round": 1})
    algo.init(tiny_fed.infos)
    sent = [[p.pid for p in tiny_fed.infos if algo.configure(r, p) is not None] for r in range(5)]
    assert sent == [[0], [1], [2], [0], [1]]


def test_bagging_adds_the_partners_steps_weighted_by_labelled_molecules(tiny_fed):
    partners = _partners(tiny_fed, caps=[1.0, 0.5, 0.25])
    algo = TreeBagging({"num_tasks": 1, "task_type": "classification"}, {"trees_per_round": 4}, seed=5)
    algo.init(partners)
    _, replies = _round(algo, 1, partners, tiny_fed.local)
    assert [len(m.arrays["task"]) for _, m in replies] == [4, 2, 1]  # a device's cap scales its trees
    n = [len(d.train) for d in tiny_fed.local]
    Xt = ecfp4_of(list(tiny_fed.test.smiles))
    hand = 0
    for p, m in replies:
        one = TreeEnsemble(num_tasks=1)
        one.load_state_dict({k: v for k, v in m.arrays.items() if k != "task_counts"})
        hand = hand + n[p.pid] / sum(n) * one.raw(Xt)
        assert m.arrays["task_counts"].tolist() == [n[p.pid]]
    np.testing.assert_allclose(algo.model.raw(Xt), hand, rtol=0, atol=1e-12)
    summed = TreeBagging({"num_tasks": 1}, {"trees_per_round": 4, "combine": "sum"})
    summed.init(partners)
    summed.aggregate(1, replies)
    assert summed.model.weight.tolist() == [1.0] * 7


def test_a_malformed_upload_is_rejected_and_the_others_kept(tiny_fed):
    partners = _partners(tiny_fed)
    algo = TreeBagging({"num_tasks": 1}, {"trees_per_round": 2})
    algo.init(partners)
    replies = [(p, TreeBagging.partner_update(algo.configure(1, p), tiny_fed.local[p.pid])) for p in partners]
    replies[1][1].arrays["feature"][0, 0] = 10**6
    agg = algo.aggregate(1, replies)
    assert agg == {"trees": 4.0, "rejected": 1.0}


def test_a_truncated_upload_keeps_its_first_trees():
    trees = {**_valid_trees(), "task_counts": torch.tensor([3.0], dtype=torch.float64)}
    arrays, note = TreeBagging.truncate_upload(trees, Message(config={"width": 1.0}), np.random.default_rng(0))
    keep = len(arrays["task"])
    assert keep < 4 and note == f"upload truncated at {keep} trees"
    assert all(torch.equal(arrays[k], trees[k][:keep]) for k in TREE_KEYS)
    assert torch.equal(arrays["task_counts"], trees["task_counts"])


@pytest.mark.parametrize("hp,heads,message", [
    ({"dp_clip": 1.0}, "shared", "gbt-bagging: differential privacy (dp_clip) is not supported: trees reveal"),
    ({}, "private", "gbt-bagging: private heads are not supported: a tree ensemble has no trunk"),
    ({"combine": "max"}, "shared", "gbt-bagging: combine must be"),
    ({"trees_per_round": 0}, "shared", "gbt-bagging: trees_per_round must be an integer in [1, 10000]"),
])
def test_refusals_and_bad_hyperparameters_are_one_line_errors(hp, heads, message):
    with pytest.raises(FedmolError, match="^" + re.escape(message)):
        TreeBagging({"num_tasks": 1}, hp, heads=heads)


@pytest.mark.parametrize("algorithm", ["gbt-bagging", "gbt-cyclic"])
def test_tree_federation_runs_through_the_harness(tmp_path, algorithm):
    cfg = RunConfig(dataset="bace", partners=3, alpha=1.0, devices="tiered", rounds=4, algorithm=algorithm,
                    hparams={"trees_per_round": 3}, faulty_links=0.3)
    s = run_federated(cfg, tmp_path, progress=False)
    assert [p["served"] for p in s["per_partner"]] == [True] * 3  # any device runs the ensemble
    assert all(p["width"] == 1.0 and p["test"] == s["test"]["1.0"] for p in s["per_partner"])
    assert 0.5 < s["test"]["1.0"] < 1.0
    sent = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
    assert sent and all(set(r["disclosed"]) == {"task_counts"} for r in sent)
    assert all({a["name"] for a in r["arrays"]} == set(TREE_KEYS) | {"task_counts"} for r in sent)
    if algorithm == "gbt-cyclic":
        assert [r["partner"] for r in sent] == [r["round"] % 3 for r in sent]  # rounds count from 0 here
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["sent"]["model_weights"].startswith("the trees each participating partner fitted")
    assert config["model"]["name"] == "trees" and config["widths"] == [1.0]
    # the shipped file reproduces the reported model's test predictions
    model = TreeEnsemble(num_tasks=1)
    model.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    logits = model.raw(ecfp4_of(list(_test_smiles(cfg))))[:, 0]
    rows = (tmp_path / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "row,width,Class,logit:Class"
    shipped = np.array([float(r.split(",")[3]) for r in rows[1:]])
    np.testing.assert_allclose(shipped, logits, rtol=1e-6, atol=1e-6)  # the model's output is float32


def _test_smiles(cfg):
    from fedmol.fl.harness import build_federation

    return build_federation(cfg, progress=False).test.smiles


def test_registry_knows_both():
    assert get_algorithm("gbt-bagging") is TreeBagging and get_algorithm("GBT-Cyclic") is TreeCyclic
    assert math.isclose(TreeBagging.serving_cap(0.0625), 1.0)


def test_cyclic_patience_counts_whole_cycles(tmp_path):
    cfg = RunConfig(dataset="bace", partners=3, alpha=1.0, devices="tiered", rounds=30, patience=1,
                    algorithm="gbt-cyclic", hparams={"trees_per_round": 2})
    s = run_federated(cfg, tmp_path, progress=False)
    assert s["rounds_run"] < 30, "the run should stop early on this fixture"
    assert s["rounds_run"] - 1 - s["selected_round"] == 3  # patience 1 = one cycle of the 3 partners
    assert s["stopped"].endswith("(patience 1: 3 rounds for gbt-cyclic)")


def test_scoring_again_after_trees_were_added_reuses_the_whole_blocks_bit_for_bit(monkeypatch):
    from fedmol.models import trees as T

    monkeypatch.setattr(T, "BLOCK", 3)
    trees = _valid_trees()  # 4 trees
    X = (np.random.default_rng(2).random((40, 2048)) < 0.1).astype(np.uint8)
    model = TreeEnsemble(num_tasks=1)
    model.load_state_dict(T.concat_trees(trees, trees))  # 8 trees: blocks 0-2, 3-5, 6-7
    T._RAW_MEMO.clear()
    first = model.raw(X)
    (entry,) = T._RAW_MEMO.values()
    assert entry[0] == 6  # the whole blocks are remembered, not the partial last one
    model.add(trees)  # 12 trees
    warm = model.raw(X)
    T._RAW_MEMO.clear()
    cold = model.raw(X)
    assert np.array_equal(warm, cold) and not np.array_equal(first, warm)
    other = TreeEnsemble(num_tasks=1)
    halved = torch.full((12,), 0.5, dtype=torch.float64)
    other.load_state_dict({**T.concat_trees(trees, trees, trees), "weight": halved})
    np.testing.assert_allclose(other.raw(X), cold / 2, rtol=1e-12)  # same X, other trees: the memo is not reused
