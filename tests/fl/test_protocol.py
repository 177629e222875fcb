"""The benchmark protocol: every algorithm and reference starts from the same weights, a partner is
scored only on a model it can run, per-width BN statistics come only from partners that ran the
width, references train and select like a federated partner, ties are called ties."""

import numpy as np
import pandas as pd
import pytest
import torch

from fedmol.evaluate import Evaluator
from fedmol.fl.algorithm import LocalData, PartnerInfo, initial_model
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.fjord import FjORD
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.fl.references import federated_gain
from fedmol.fl.registry import ALGORITHMS, get_algorithm
from fedmol.fl.report import ranks, seed_tables
from fedmol.stats import paired_pvalue
from fedmol.models import build, slicing
from fedmol.training import fit, make_loader

from fl_graphs import binary_labels, dataset

CONFIG = dict(name="gin", num_tasks=2, hidden=16, layers=2, task_type="classification", dropout=0.5)
CAPS = (1.0, 0.5, 0.25, 0.125)
PARTNERS = [PartnerInfo(k, 20 + k, DeviceProfile(max_width=c)) for k, c in enumerate(CAPS)]


def _params(model, width):
    """The width-``width`` slice of ``model``'s parameters (buffers differ by norm mode)."""
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in slicing.sub_state_dict(model, width).items() if k in names}


@pytest.mark.parametrize("name,hp", [(n, {}) for n in sorted(ALGORITHMS) if get_algorithm(n).trains_backbone]
                         + [("fedavg", {"hetero": "min"}), ("feddf", {"hetero": "min"})])
def test_every_algorithm_starts_from_the_same_weights(name, hp):
    cls = get_algorithm(name)
    algo = cls(CONFIG, hp, seed=3)
    algo.init(PARTNERS)
    width = float(algo.model_config["width"])
    start = initial_model({**CONFIG, "width": 1.0}, 3)
    got, want = _params(algo.model, width), _params(start, width)
    assert set(got) == set(want) and got
    for k in want:
        assert torch.equal(got[k], want[k]), (name, k)
    other = initial_model({**CONFIG, "width": 1.0}, 4)
    assert not all(torch.equal(a, b) for a, b in zip(_params(other, 1.0).values(), _params(start, 1.0).values()))


def test_initial_model_of_a_narrow_width_is_the_slice_of_the_full_start():
    narrow = initial_model({**CONFIG, "width": 0.25}, 7)
    full = initial_model({**CONFIG, "width": 1.0}, 7)
    for k, v in slicing.sub_state_dict(full, 0.25).items():
        assert torch.equal(narrow.state_dict()[k], v), k


# ------------------------------------------------------------------------------ per-width BN statistics
def test_a_partner_returns_only_the_statistics_of_the_widths_it_ran():
    model = build(**{**CONFIG, "norm": "fjord_bn", "width": 0.5})
    loader = make_loader(dataset(binary_labels(8, 2)), 8)
    model.train()
    model(next(iter(loader)), width=0.25)
    stale = slicing.untrained_stat_keys(model)
    widths_kept = {k.rsplit("_", 1)[-1] for k in model.state_dict() if "running_mean_" in k} - \
                  {k.rsplit("_", 1)[-1] for k in stale if "running_mean_" in k}
    assert widths_kept == {slicing.width_tag(0.25).rsplit("_", 1)[-1]}
    assert any(k.endswith(f"running_mean_{slicing.width_tag(0.5)}") for k in stale)
    reply = FjORD.reply(model, LocalData(0, [1, 2], []), {})
    assert not (set(reply.arrays) & stale) and set(reply.arrays) == set(model.state_dict()) - stale


def test_nested_average_of_width_statistics_uses_only_partners_that_ran_the_width():
    """Partner A (cap 1) runs width 1 only, B (cap 1/2) runs width 1/2 only: the served 1/2
    statistics are B's alone, not a blend with the stale values A received."""
    algo = FjORD(CONFIG, {}, seed=0)
    algo.init([PartnerInfo(0, 10, DeviceProfile(max_width=1.0)), PartnerInfo(1, 30, DeviceProfile(max_width=0.5))])
    batch = next(iter(make_loader(dataset(binary_labels(8, 2)), 8)))
    replies = []
    for pid, width in ((0, 1.0), (1, 0.5)):
        msg = algo.send(0, algo.partners[pid], width)
        model = FjORD.client_model(msg)
        model.train()
        model(batch, width=width)
        replies.append((algo.partners[pid], FjORD.reply(model, LocalData(pid, [0] * (10 + 20 * pid), []), {})))
    received = {k: v.clone() for k, v in algo.model.state_dict().items()}
    algo.aggregate(0, replies)
    new = algo.model.state_dict()
    half = [k for k in new if k.endswith(f"running_mean_{slicing.width_tag(0.5)}")]
    full = [k for k in new if k.endswith(f"running_mean_{slicing.width_tag(1.0)}")]
    quarter = [k for k in new if k.endswith(f"running_mean_{slicing.width_tag(0.25)}")]
    assert half and full and quarter
    for k in half:
        assert torch.equal(new[k], replies[1][1].arrays[k]), k
    for k in full:
        assert torch.equal(new[k], replies[0][1].arrays[k]), k
    for k in quarter:  # nobody ran 1/4: unchanged
        assert torch.equal(new[k], received[k]), k


# ------------------------------------------------------------------------------ who is scored on what
def test_a_partner_that_cannot_run_the_model_is_not_credited_with_it(tmp_path):
    cfg = RunConfig(dataset="bace", partners=4, alpha=1.0, rounds=1, hidden=16, layers=2, devices="tiered",
                    hparams={"max_local_steps": 2})
    s = run_federated(cfg, tmp_path, progress=False)
    served = [p for p in s["per_partner"] if p["served"]]
    unserved = [p for p in s["per_partner"] if not p["served"]]
    assert [p["width"] for p in served] == [1.0] and len(unserved) == 3 and s["unserved"] == 3
    assert all(p["test"] is None and p["valid"] is None and p["width"] is None for p in unserved)
    assert s["history"][0]["sat_out"] == 3
    local = dict(metric="rocauc", per_partner=[dict(partner=p["partner"], test=0.5, valid=0.5)
                                                 for p in s["per_partner"]])
    g = federated_gain(s, local)
    assert g["gain_test"] == pytest.approx(served[0]["test"] - 0.5)
    assert g["share_test"] == float(served[0]["test"] > 0.5)
    entries = [dict(kind="federated", dataset="bace", alpha=1.0, devices="tiered", seed=0, method="fedavg",
                    model="gin", path=str(tmp_path), summary=s)]
    per_seed, _ = seed_tables(entries)
    assert per_seed["served"].iloc[0] == 0.25
    assert per_seed["test@partner"].iloc[0] == pytest.approx(served[0]["test"])


# ------------------------------------------------------------------------------ references like partners
def test_fit_rebuilds_adam_every_round_and_selects_only_evaluated_rounds(monkeypatch):
    built = []
    real = torch.optim.Adam

    class Counting(real):
        def __init__(self, *a, **kw):
            built.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(torch.optim, "Adam", Counting)
    train = dataset(binary_labels(12, 2, seed=1))
    valid = dataset(binary_labels(6, 2, seed=2), offset=5)
    model = build(**CONFIG)
    res = fit(model, train, valid, Evaluator("classification", 2), seed=0, epochs=7, batch_size=4,
              round_epochs=2, eval_every=2)
    assert len(built) == 4  # rounds start at epochs 0, 2, 4, 6
    evaluated = [h["epoch"] for h in res["history"] if h["valid"] is not None]
    assert evaluated == [1, 5, 6]  # rounds 0 and 2 (every 2nd), and the last epoch
    assert res["best_epoch"] in evaluated
    built.clear()
    plain = fit(build(**CONFIG), train, valid, Evaluator("classification", 2), seed=0, epochs=3, batch_size=4)
    assert len(built) == 1 and [h["epoch"] for h in plain["history"] if h["valid"] is not None] == [0, 1, 2]


# ------------------------------------------------------------------------------ ties
def test_paired_pvalue():
    assert np.isnan(paired_pvalue([0.7], [0.6]))
    assert paired_pvalue([0.7, 0.8, 0.9], [0.7, 0.8, 0.9]) == 1.0
    assert paired_pvalue([0.7, 0.8, 0.9], [0.6, 0.7, 0.8]) == 0.0
    from scipy.stats import ttest_rel
    a, b = [0.70, 0.75, 0.72], [0.69, 0.70, 0.73]
    assert paired_pvalue(a, b) == pytest.approx(ttest_rel(a, b).pvalue)


def test_ranks_call_differences_within_seed_noise_ties():
    rows = []
    values = {"a": [0.80, 0.82, 0.81], "b": [0.79, 0.83, 0.80], "c": [0.70, 0.71, 0.705]}
    for m, vs in values.items():
        for seed, v in enumerate(vs):
            rows.append(dict(dataset="d", metric="rocauc", alpha=1.0, devices="tiered", kind="federated", method=m,
                             seed=seed, **{"test@partner": v}))
    r = ranks(pd.DataFrame(rows))
    assert r == {("d", 1.0, "tiered", "a"): "best", ("d", 1.0, "tiered", "b"): "tie",
                 ("d", 1.0, "tiered", "c"): "worse"}
    one_seed = pd.DataFrame([row for row in rows if row["seed"] == 0])
    assert ranks(one_seed) == {}
