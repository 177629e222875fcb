import json
import math

import numpy as np
import pytest

from fedmol.data.fingerprints import ecfp4
from fedmol.errors import FedmolError
from fedmol.fl import references as R


@pytest.fixture
def cfg(tiny_cfg):
    return tiny_cfg


@pytest.fixture
def fed(tiny_fed):
    return tiny_fed


def spy(monkeypatch, name):
    """Record the datasets passed to references.<name> and still run it."""
    calls = []
    original = getattr(R, name)

    def wrapper(train, *args, **kwargs):
        valid = args[0] if name == "fit_gnn" else None
        config = args[1] if name == "fit_gnn" else None
        calls.append(dict(train=R.rows_of(train).tolist(), valid=None if valid is None else R.rows_of(valid).tolist(),
                          config=config))
        return original(train, *args, **kwargs)

    monkeypatch.setattr(R, name, wrapper)
    return calls


def trees_test_score(fed, trees) -> float:
    """Trees' main metric on the federation's test set, computed here from their predictions."""
    from fedmol.evaluate import Evaluator

    ev = Evaluator(fed.dataset.task_type, fed.dataset.num_tasks)
    return ev.eval({"y_true": R.labels_of(fed.test), "y_pred": trees.predict(R.fingerprints(fed.test))})[ev.eval_metric]


def test_local_only_gnn_scores_every_partner_on_its_own_rows(cfg, fed, monkeypatch, tmp_path):
    calls = spy(monkeypatch, "fit_gnn")
    s = R.local_only(cfg, "gnn", tmp_path, fed=fed, progress=False, min_epochs=2)
    split = fed.split["partners"]
    assert len(calls) == 3
    for k, call in enumerate(calls):  # partner k's model sees exactly its own train and valid rows
        assert call["train"] == list(split[k]["train"])
        assert call["valid"] == list(split[k]["valid"])
        others = {r for j, p in enumerate(split) if j != k for r in p["train"] + p["valid"]} | set(fed.split["test"])
        assert not others & set(call["train"])
        assert call["config"]["width"] == fed.infos[k].device.max_width  # trained at its device's cap
    assert s["reference"] == "local-only" and s["model"] == "gnn" and s["metric"] == "rocauc"
    assert [p["partner"] for p in s["per_partner"]] == [0, 1, 2]
    for p, info in zip(s["per_partner"], fed.infos):
        assert 0.0 <= p["test"] <= 1.0 and p["width"] == info.device.max_width
        assert p["n_train"] == info.n_train and (math.isnan(p["valid"]) or 0.0 <= p["valid"] <= 1.0)
    assert s["test"]["mean"] == pytest.approx(np.mean([p["test"] for p in s["per_partner"]]))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["per_partner"] == s["per_partner"] and (tmp_path / "config.json").is_file()


def test_centralized_pools_exactly_the_partners_training_rows(cfg, fed, monkeypatch):
    calls = spy(monkeypatch, "fit_gnn")
    s = R.centralized(cfg, "gnn", fed=fed, progress=False, min_epochs=1)
    assert len(calls) == 1
    pooled = sorted(r for p in fed.split["partners"] for r in p["train"])
    assert calls[0]["train"] == pooled
    assert sorted(calls[0]["valid"]) == sorted(r for p in fed.split["partners"] for r in p["valid"])
    assert not set(pooled) & set(fed.split["test"])
    assert calls[0]["config"]["width"] == 1.0
    assert list(s["test"]) == ["1.0"] and 0.0 <= s["test"]["1.0"] <= 1.0
    assert all(p["test"] == s["test"]["1.0"] for p in s["per_partner"])  # one pooled model, scored per partner valid
    assert len(s["per_partner"]) == 3


def test_ecfp4_fingerprints():
    fp = ecfp4(["CCO", "c1ccccc1O", "not a molecule"])
    assert fp.shape == (3, 2048) and fp.dtype == np.uint8
    assert set(np.unique(fp)) <= {0, 1}
    assert fp[0].sum() > 0 and fp[1].sum() > fp[0].sum() and fp[2].sum() == 0
    assert not np.array_equal(fp[0], fp[1])


def test_fingerprints_follow_a_subset(fed):
    sub = fed.local[1].train
    fp = R.fingerprints(sub)
    assert fp.shape == (len(sub), 2048)
    np.testing.assert_array_equal(fp, ecfp4(R.smiles_of(sub)))


def test_forest_fits_each_task_on_its_labelled_rows():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(60, 32)).astype(np.uint8)
    Y = np.stack([X[:, 0], X[:, 1]], axis=1).astype(float)
    Y[:30, 1] = np.nan
    Y[:, 1][30:] = 1.0  # task 1: one class only among its labelled rows
    f = R.Forest("classification", seed=0, n_estimators=10, n_jobs=1).fit(X, Y)
    assert f.models[0].n_features_in_ == 32 and f.models[1] == 1.0
    p = f.predict(X)
    assert p.shape == (60, 2) and np.all(p[:, 1] == 1.0)
    assert np.corrcoef(p[:, 0], X[:, 0])[0, 1] > 0.9


def test_random_forest_on_bace_beats_chance(cfg, fed, monkeypatch):
    calls = spy(monkeypatch, "fit_forest")
    s = R.centralized(cfg, "rf-ecfp4", fed=fed, progress=False, n_jobs=2)
    assert calls[0]["train"] == sorted(r for p in fed.split["partners"] for r in p["train"])
    assert s["model"] == "rf-ecfp4" and s["test"]["1.0"] > 0.7  # the notes: ~0.87 on BACE, 80/10/10 split


def test_local_only_forest_per_partner(cfg, fed, monkeypatch):
    calls = spy(monkeypatch, "fit_forest")
    s = R.local_only(cfg, "rf-ecfp4", fed=fed, progress=False, n_jobs=2)
    assert [c["train"] for c in calls] == [list(p["train"]) for p in fed.split["partners"]]
    assert all(p["width"] is None for p in s["per_partner"])
    for pid in (0, 2):  # what the code must produce: the partner's own forest, by hand, on the test set
        forest = R.fit_forest(fed.local[pid].train, R._partner_seed(cfg.seed, pid), n_jobs=2)
        assert s["per_partner"][pid]["test"] == pytest.approx(trees_test_score(fed, forest), abs=1e-12)


def test_boosted_trees_fit_each_task_on_its_labelled_rows_deterministically():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(200, 32)).astype(np.uint8)
    Y = np.stack([X[:, 0] ^ X[:, 1], X[:, 2]], axis=1).astype(float)
    Y[:100, 1] = np.nan
    Y[100:, 1] = 0.0  # task 1: one class only among its labelled rows
    b = R.Boosted("classification", seed=3).fit(X, Y)
    assert b.models[1] == 0.0 and b.models[0].n_features_in_ == 32
    p = b.predict(X)
    assert p.shape == (200, 2) and np.all(p[:, 1] == 0.0) and np.all((p[:, 0] >= 0) & (p[:, 0] <= 1))
    assert np.corrcoef(p[:, 0], Y[:, 0])[0, 1] > 0.9  # XOR of two bits: trees learn what a linear model cannot
    np.testing.assert_array_equal(p, R.Boosted("classification", seed=3).fit(X, Y).predict(X))  # seeded, 1 thread
    reg = R.Boosted("regression", seed=0).fit(X, 2.0 * X[:, :1] - X[:, 1:2])
    assert np.abs(reg.predict(X)[:, 0] - (2.0 * X[:, 0] - X[:, 1])).max() < 0.2


def test_local_only_boosted_trees_per_partner(cfg, fed, monkeypatch):
    calls = spy(monkeypatch, "fit_boosted")
    s = R.local_only(cfg, "gbt-ecfp4", fed=fed, progress=False)
    assert [c["train"] for c in calls] == [list(p["train"]) for p in fed.split["partners"]]
    assert s["model"] == "gbt-ecfp4" and all(p["width"] is None for p in s["per_partner"])
    trees = R.fit_boosted(fed.local[1].train, R._partner_seed(cfg.seed, 1))
    assert s["per_partner"][1]["test"] == pytest.approx(trees_test_score(fed, trees), abs=1e-12)
    assert s["config"]["gbt"]["library"] == "lightgbm" and s["config"]["gbt"]["params"]["n_jobs"] == 1
    c = R.centralized(cfg, "gbt-ecfp4", fed=fed, progress=False)
    assert c["test"]["1.0"] > 0.7  # BACE: the pooled boosted trees beat chance clearly


def test_unknown_reference_or_model():
    with pytest.raises(FedmolError, match="unknown reference"):
        R.check_reference("federated", "gnn")
    with pytest.raises(FedmolError, match="unknown reference model"):
        R.check_reference("centralized", "svm")


def summary(metric, tests, valids):
    return dict(metric=metric, per_partner=[dict(partner=k, width=1.0, test=t, valid=v)
                                            for k, (t, v) in enumerate(zip(tests, valids))])


def test_federated_gain_rocauc():
    g = R.federated_gain(summary("rocauc", [0.8, 0.6, 0.7], [0.7, 0.7, 0.7]),
                         summary("rocauc", [0.7, 0.65, 0.7], [0.6, 0.8, 0.5]))
    gains = [p["gain_test"] for p in g["per_partner"]]
    assert gains == pytest.approx([0.1, -0.05, 0.0])
    assert g["per_partner"][0]["rel_gain_test"] == pytest.approx(0.1 / 0.7)
    assert g["gain_test"] == pytest.approx(0.05 / 3)
    assert g["share_test"] == pytest.approx(1 / 3)  # a zero gain is no gain
    assert [p["gain_valid"] for p in g["per_partner"]] == pytest.approx([0.1, -0.1, 0.2])
    assert g["share_valid"] == pytest.approx(2 / 3) and g["higher_is_better"] is True


def test_federated_gain_rmse_is_positive_when_the_error_drops():
    g = R.federated_gain(summary("rmse", [1.0, 2.0], [1.0, 1.0]), summary("rmse", [1.5, 1.8], [1.0, 0.5]))
    assert [p["gain_test"] for p in g["per_partner"]] == pytest.approx([0.5, -0.2])
    assert g["per_partner"][0]["rel_gain_test"] == pytest.approx(0.5 / 1.5)
    assert g["share_test"] == 0.5 and g["gain_test"] == pytest.approx(0.15)
    assert [p["gain_valid"] for p in g["per_partner"]] == pytest.approx([0.0, -0.5])
    assert g["share_valid"] == 0.0 and g["higher_is_better"] is False


def test_federated_gain_leaves_nan_partners_out():
    g = R.federated_gain(summary("rocauc", [0.8, 0.6], [float("nan"), 0.9]),
                         summary("rocauc", [0.7, 0.7], [0.5, 0.8]))
    assert math.isnan(g["per_partner"][0]["gain_valid"])
    assert g["gain_valid"] == pytest.approx(0.1) and g["share_valid"] == 1.0
    assert g["share_test"] == 0.5


def test_federated_gain_checks_what_it_compares():
    with pytest.raises(FedmolError, match="partners differ"):
        R.federated_gain(summary("rocauc", [0.8], [0.8]), summary("rocauc", [0.7, 0.7], [0.7, 0.7]))
    with pytest.raises(FedmolError, match="cannot compare"):
        R.federated_gain(summary("rocauc", [0.8], [0.8]), summary("rmse", [0.7], [0.7]))
