"""One-shot ensembles of the partners' local models (issue 23, item 1): a hand average of the members."""

import math

import numpy as np
import pytest

from fedmol.evaluate import Evaluator
from fedmol.fl import references as R

TRAIN = dict(min_epochs=2, n_jobs=1)


@pytest.fixture
def ev(tiny_fed):
    return Evaluator(tiny_fed.dataset.task_type, tiny_fed.dataset.num_tasks)


def test_ensemble_average_weights_each_task_by_its_labelled_rows():
    a = np.array([[0.2, 0.9], [0.4, 0.1], [1.0, 0.5]])
    b = np.array([[0.6, 0.3], [0.0, 0.7], [0.5, 0.5]])
    out = R.ensemble_average([a, b], [np.array([3, 0]), np.array([1, 2])])
    # task 0: (3 a + 1 b) / 4; task 1: only b has labels
    np.testing.assert_allclose(out[:, 0], [(3 * 0.2 + 0.6) / 4, (3 * 0.4 + 0.0) / 4, (3 * 1.0 + 0.5) / 4])
    np.testing.assert_allclose(out[:, 1], b[:, 1])
    both_empty = R.ensemble_average([a, b], [np.array([0, 0]), np.array([0, 0])])  # no labels anywhere: equal
    np.testing.assert_allclose(both_empty, (a + b) / 2)


@pytest.mark.parametrize("family", ["gbt-ecfp4", "rf-ecfp4"])
def test_tree_ensemble_is_the_n_train_weighted_average_of_the_local_models(tiny_cfg, tiny_fed, ev, family):
    cfg, fed = tiny_cfg, tiny_fed
    s = R.ensemble(cfg, family, fed=fed, progress=False, **TRAIN)
    local = R.local_only(cfg, family, fed=fed, progress=False, **TRAIN)
    members = [R.local_model(cfg, fed, k, family, **TRAIN) for k in range(3)]
    X = R.fingerprints(fed.test)
    n = [len(d.train) for d in fed.local]
    hand = sum(n[k] * members[k].model.predict(X) for k in range(3)) / sum(n)  # probabilities of class 1
    y = R.labels_of(fed.test)
    assert s["test"] == {"1.0": pytest.approx(ev.eval({"y_true": y, "y_pred": hand})["rocauc"], abs=1e-12)}
    for k, (p, data) in enumerate(zip(s["per_partner"], fed.local)):  # trees run anywhere: every partner, all
        assert p["members"] == [0, 1, 2] and p["width"] is None and p["test"] == s["test"]["1.0"]
        Xv = R.fingerprints(data.valid)
        hv = sum(n[j] * members[j].model.predict(Xv) for j in range(3)) / sum(n)
        assert p["valid"] == pytest.approx(ev.eval({"y_true": R.labels_of(data.valid), "y_pred": hv})["rocauc"],
                                           abs=1e-12)
    # the members are exactly the local-only models: same scores, partner by partner
    assert [m["test"] for m in s["members"]] == [p["test"] for p in local["per_partner"]]
    sizes = [m.nbytes() for m in members]
    assert [m["bytes"] for m in s["members"]] == sizes and all(b > 0 for b in sizes)
    assert s["rounds"] == 1 and s["bytes_up"] == sum(sizes) and s["bytes_down"] == 2 * sum(sizes)
    assert s["config"]["ensemble"]["rounds"] == 1 and s["reference"] == "ensemble"


def test_gbt_model_size_is_its_lightgbm_text(tiny_cfg, tiny_fed):
    cfg, fed = tiny_cfg, tiny_fed
    m = R.local_model(cfg, fed, 0, "gbt-ecfp4")
    text = m.model.models[0].booster_.model_to_string()
    assert m.nbytes() == len(text.encode()) and text.startswith("tree")


def test_gnn_ensemble_averages_the_logits_a_partner_can_run(tiny_cfg, tiny_fed, ev):
    cfg, fed = tiny_cfg, tiny_fed
    s = R.ensemble(cfg, "gnn", fed=fed, progress=False, **TRAIN)
    local = R.local_only(cfg, "gnn", fed=fed, progress=False, **TRAIN)
    caps = [info.device.max_width for info in fed.infos]
    members = [R.local_model(cfg, fed, k, "gnn", **TRAIN) for k in range(3)]
    assert [m.width for m in members] == caps  # each local model at its partner's device cap
    assert [m["test"] for m in s["members"]] == [p["test"] for p in local["per_partner"]]  # the same models
    n = [len(d.train) for d in fed.local]
    y = R.labels_of(fed.test)
    for k, p in enumerate(s["per_partner"]):
        runs = [j for j in range(3) if caps[j] <= caps[k]]
        assert p["members"] == runs and k in runs and p["width"] == caps[k]
        logits = sum(n[j] * R.predict(members[j].model, fed.test)[1] for j in runs) / sum(n[j] for j in runs)
        assert p["test"] == pytest.approx(ev.eval({"y_true": y, "y_pred": logits})["rocauc"], abs=1e-9)
    widest = max(caps)
    assert s["test"][R.width_key(widest)] == next(p["test"] for p in s["per_partner"] if p["width"] == widest)
    assert set(s["test"]) == {R.width_key(c) for c in caps}
    sizes = [sum(t.numel() * t.element_size() for t in m.model.state_dict().values()) for m in members]
    assert s["bytes_up"] == sum(sizes)
    assert s["bytes_down"] == sum(sizes[j] for p in s["per_partner"] for j in p["members"] if j != p["partner"])
    assert all(math.isfinite(p["test"]) for p in s["per_partner"])
