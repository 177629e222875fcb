"""Differential privacy on partner updates (fedmol.fl.privacy): clipping, noise, uniform weights,
accounting against opacus, refusals, and real runs (harness, CLI, in-process pilot) that write it."""

import json
import math

import numpy as np
import pytest
import torch

from fedmol.errors import FedmolError
from fedmol.fl import privacy
from fedmol.fl.algorithm import PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.config import RunConfig
from fedmol.fl.harness import run_federated
from fedmol.fl.message import Message
from fedmol.fl.registry import get_algorithm
from fedmol.models import slicing

TINY_MODEL = dict(name="gin", num_tasks=2, hidden=8, layers=2, task_type="classification", dropout=0.0)
DP = {"dp_clip": 1.0, "dp_noise": 0.5}


# ------------------------------------------------------------------------------ clipping
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip,clipped", [(2.0, True), (5.0, False), (7.5, False)])
def test_clip_update_on_a_hand_made_delta(clip, clipped, dtype):
    received = {"w": torch.ones(2, 2, dtype=dtype), "b": torch.zeros(3, dtype=dtype),
                "n": torch.tensor(7, dtype=torch.long)}
    # delta: w +3 on one entry, b +4 on one entry -> joint L2 norm exactly 5
    sent = {"w": received["w"].clone(), "b": received["b"].clone(), "n": torch.tensor(9, dtype=torch.long)}
    sent["w"][0, 1] += 3.0
    sent["b"][2] += 4.0
    out, norm = privacy.clip_update(received, sent, clip)
    assert norm == pytest.approx(5.0, rel=1e-12)
    delta = {k: (out[k].double() - received[k].double()) for k in ("w", "b")}
    after = math.sqrt(sum(float(d.square().sum()) for d in delta.values()))
    assert out["n"] is sent["n"]  # non-float buffers pass unchanged
    assert out["w"].dtype == dtype and out["b"].dtype == dtype
    if clipped:
        assert after == pytest.approx(clip, rel=1e-6)
        # the direction is kept: each entry scaled by clip / norm
        assert float(delta["w"][0, 1]) == pytest.approx(3.0 * clip / 5.0, rel=1e-6)
        assert float(delta["b"][2]) == pytest.approx(4.0 * clip / 5.0, rel=1e-6)
    else:
        assert all(out[k] is sent[k] for k in sent)  # below the bound: sent as is
        assert after == pytest.approx(5.0)


def test_clip_update_refuses_a_float_tensor_it_cannot_clip():
    with pytest.raises(FedmolError, match="no received value"):
        privacy.clip_update({"w": torch.zeros(2)}, {"w": torch.zeros(2), "extra": torch.ones(3)}, 1.0)
    with pytest.raises(FedmolError, match="no received value"):
        privacy.clip_update({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 1.0)


# ------------------------------------------------------------------------------ noise in the aggregation
# 40,000 coordinates per region: the sample std's relative standard error is 1/sqrt(2 * 40000) = 0.35%;
# the tolerance, 2%, is more than 5 standard errors (and the seed is fixed: the test is deterministic).
STD_TOL = 0.02


@pytest.mark.parametrize("holders", [1, 3])
@pytest.mark.parametrize("std", [0.1, 2.0])
def test_noise_is_added_to_the_sum_with_the_right_std(holders, std):
    old = {"w": torch.full((200, 200), 5.0)}
    updates = [({"w": torch.full((200, 200), 1.0)}, 1.0) for _ in range(holders)]
    out = slicing.aggregate_nested(old, updates, noise_std=std, generator=privacy.noise_generator(0, 0))
    noise_on_sum = (out["w"].double() - 1.0) * holders  # mean = (sum + noise) / holders
    assert float(noise_on_sum.std()) == pytest.approx(std, rel=STD_TOL)
    assert abs(float(noise_on_sum.mean())) < 5 * std / 200


def test_nested_coordinates_get_noise_over_their_holders():
    std = 1.0
    old = {"w": torch.zeros(400, 200), "never_sent": torch.full((3,), 2.0),
           "bn.num_batches_tracked": torch.tensor(4, dtype=torch.long)}
    wide = {"w": torch.zeros(400, 200), "bn.num_batches_tracked": torch.tensor(9, dtype=torch.long)}
    narrow = {"w": torch.zeros(200, 100), "bn.num_batches_tracked": torch.tensor(6, dtype=torch.long)}
    out = slicing.aggregate_nested(old, [(wide, 1.0), (narrow, 1.0)], noise_std=std,
                                   generator=privacy.noise_generator(3, 1))
    w = out["w"].double()
    lead = w[:200, :100] * 2  # two holders
    rest = torch.cat([w[200:, :].flatten(), w[:200, 100:].flatten()])  # one holder
    assert float(lead.std()) == pytest.approx(std, rel=STD_TOL)
    assert float(rest.std()) == pytest.approx(std, rel=STD_TOL)
    assert torch.equal(out["never_sent"], old["never_sent"])  # nobody holds it: old value, no noise
    assert int(out["bn.num_batches_tracked"]) == 9  # non-float: the maximum, untouched by noise


def test_noise_requires_uniform_weights():
    old = {"w": torch.zeros(4)}
    with pytest.raises(ValueError, match="must be 1"):
        slicing.aggregate_nested(old, [({"w": torch.ones(4)}, 3.0)], noise_std=1.0)
    # noise_std=0: uniform averaging, no draw
    out = slicing.aggregate_nested(old, [({"w": torch.ones(4)}, 1.0), ({"w": torch.full((4,), 3.0)}, 1.0)],
                                   noise_std=0.0)
    assert torch.equal(out["w"], torch.full((4,), 2.0))


def test_noise_generator_is_seeded_by_run_and_round():
    draw = lambda *a: torch.randn(5, generator=privacy.noise_generator(*a))  # noqa: E731
    assert torch.equal(draw(0, 3), draw(0, 3))
    assert not torch.equal(draw(0, 3), draw(0, 4)) and not torch.equal(draw(0, 3), draw(1, 3))
    assert not torch.equal(draw(0, 3, 0), draw(0, 3, 1))


# ------------------------------------------------------------------------------ the algorithms
def _algo(name: str, hp: dict, partners: int = 2):
    algo = get_algorithm(name)(TINY_MODEL, hp, seed=0)
    algo.init([PartnerInfo(k, 10 * (k + 1), DeviceProfile()) for k in range(partners)])
    return algo


@pytest.mark.parametrize("name", ["fedavg", "fjord", "fedrescue"])
@pytest.mark.parametrize("dp", [False, True])
def test_uniform_weights_under_dp(name, dp):
    algo = _algo(name, {"dp_clip": 10.0, "dp_noise": 0.0} if dp else {})
    state = {k: v.clone() for k, v in algo.model.state_dict().items()}
    replies = []
    for k, (n, shift) in enumerate([(10.0, 1.0), (30.0, 3.0)]):
        arrays = {key: v + shift if v.is_floating_point() else v.clone() for key, v in state.items()}
        replies.append((algo.partners[k], Message(arrays=arrays, metrics={"n_train": n})))
    algo.aggregate(0, replies)
    key = next(k for k, v in state.items() if v.is_floating_point() and "running_var" not in k)
    got = algo.model.state_dict()[key] - state[key]
    want = 2.0 if dp else (10 * 1.0 + 30 * 3.0) / 40  # uniform mean vs n_k-weighted mean
    assert torch.allclose(got, torch.full_like(got, want), atol=1e-5), (key, float(got.flatten()[0]))


def test_bn_variances_stay_non_negative_under_large_noise():
    algo = _algo("fedavg", {"dp_clip": 1.0, "dp_noise": 100.0})
    state = algo.model.state_dict()
    algo.aggregate(0, [(p, Message(arrays={k: v.clone() for k, v in state.items()}, metrics={"n_train": 1.0}))
                       for p in algo.partners])
    new = algo.model.state_dict()
    var_keys = [k for k in new if k.endswith("running_var")]
    assert var_keys and all(bool((new[k] >= 0).all()) for k in var_keys)
    assert any(bool((new[k] == 0).any()) for k in var_keys)  # the clamp did act


@pytest.mark.parametrize("name,reason", [("feddf", "teacher"), ("fedgen", "label counts"),
                                         ("heterofl", "static-BN")])
def test_algorithms_outside_dp_fedavg_refuse(name, reason):
    with pytest.raises(FedmolError, match=rf"{name}: differential privacy \(dp_clip\) is not supported: .*{reason}"):
        get_algorithm(name)(TINY_MODEL, {"dp_clip": 1.0})
    get_algorithm(name)(TINY_MODEL, {"dp_noise": 1.0})  # DP off (no dp_clip): fine
    with pytest.raises(FedmolError, match="not supported"):  # a site refuses too, before training
        get_algorithm(name).partner_update(Message(config={"hp": {"dp_clip": 1.0}}), None)


@pytest.mark.parametrize("hp,match", [({"dp_clip": -1.0}, "dp_clip must be a positive"),
                                      ({"dp_clip": 1.0, "dp_noise": -0.1}, "dp_noise"),
                                      ({"dp_clip": 1.0, "dp_delta": 1.5}, "dp_delta"),
                                      ({"dp_clip": "big"}, "must be numbers")])
def test_bad_dp_hyperparameters_are_refused(hp, match):
    with pytest.raises(FedmolError, match=match):
        get_algorithm("fedavg")(TINY_MODEL, hp)


# ------------------------------------------------------------------------------ accounting
def test_epsilon_decreases_with_noise_and_grows_with_rounds():
    by_noise = [privacy.epsilon(s, 0.5, 20, 1e-5) for s in (0.5, 0.8, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:])), by_noise
    by_rounds = [privacy.epsilon(1.0, 0.5, r, 1e-5) for r in (1, 5, 20, 100)]
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:])), by_rounds
    assert privacy.epsilon(0.0, 1.0, 20, 1e-5) is None  # clip only: no guarantee


@pytest.mark.parametrize("sigma,q,rounds", [(1.0, 1.0, 20), (0.3, 1.0, 20), (1.1, 0.25, 50), (4.0, 0.1, 7)])
def test_epsilon_matches_opacus_rdp_accountant(sigma, q, rounds):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(rounds):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    assert privacy.epsilon(sigma, q, rounds, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
    rec = privacy.account({"dp_clip": 2.0, "dp_noise": sigma, "dp_delta": 1e-5}, [q] * 4, None, rounds)
    assert rec["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
    assert rec["sample_rate"] == q and rec["level"] == "partner" and rec["accountant"] == "rdp (opacus)"


@pytest.mark.parametrize("p_online,cpr,want", [([1.0] * 8, None, 1.0), ([1.0] * 8, 2, 0.25),
                                               ([0.9, 0.5, 0.5], None, 0.9),
                                               ([0.5, 1.0, 1.0], 1, 0.5 * 1 / 2 + 0.5 * 1 / 3)])
def test_sample_rate_is_the_largest_inclusion_probability(p_online, cpr, want):
    assert privacy.sample_rate(p_online, cpr) == pytest.approx(want)


def test_sample_rate_matches_the_harness_sampling_rule():
    p, cpr, draws = [0.3, 0.9, 0.6, 1.0, 0.8], 2, 40_000
    rng = np.random.default_rng(5)
    hits = np.zeros(len(p))
    for _ in range(draws):
        online = [k for k in range(len(p)) if rng.random() < p[k]]
        if len(online) > cpr:
            online = [online[i] for i in rng.choice(len(online), cpr, replace=False)]
        hits[online] += 1
    # Monte-Carlo standard error <= 0.0025 at 40k draws; tolerance 0.01 (4 standard errors)
    assert privacy.sample_rate(p, cpr) == pytest.approx(hits.max() / draws, abs=0.01)


# ------------------------------------------------------------------------------ real runs
def _cfg(**kw) -> RunConfig:
    base = dict(algorithm="fedavg", dataset="bbbp", partners=4, alpha=1.0, rounds=2, seed=0, hidden=16, layers=2,
                hparams={"max_local_steps": 3})
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    return run_federated(_cfg(hparams={"max_local_steps": 3, **DP}), out, progress=False), out


def test_real_run_writes_privacy(dp_run):
    summary, out = dp_run
    rec = json.loads((out / "summary.json").read_text())["privacy"]
    assert rec == summary["privacy"]
    assert rec["clip"] == 1.0 and rec["noise_multiplier"] == 0.5 and rec["delta"] == 1e-5 and rec["rounds"] == 2
    assert rec["sample_rate"] == 1.0 and math.isfinite(rec["epsilon"]) and rec["epsilon"] > 0
    assert rec["epsilon"] == pytest.approx(privacy.epsilon(0.5, 1.0, 2, 1e-5))
    assert json.loads((out / "config.json").read_text())["privacy"] == rec
    sent = [json.loads(line) for line in (out / "sent.jsonl").read_text().splitlines()]
    assert sent and all(s["metrics"]["dp_norm"] > 0 for s in sent if s["kind"] == "update")
    assert all(math.isfinite(v) for v in summary["test"].values())


def test_same_seed_same_metrics_and_cli_options(dp_run, tmp_path):
    """Determinism with DP noise, and `fedmol run --dp-clip/--dp-noise` sets the same hyperparameters."""
    from typer.testing import CliRunner

    from fedmol.cli import app

    summary, _ = dp_run
    res = CliRunner().invoke(app, ["run", "--algorithm", "fedavg", "--dataset", "bbbp", "--partners", "4",
                                   "--rounds", "2", "--hidden", "16", "--layers", "2", "--hp", "max_local_steps=3",
                                   "--dp-clip", "1.0", "--dp-noise", "0.5", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["privacy"] == summary["privacy"]
    assert again["test"] == summary["test"] and again["valid"] == summary["valid"]
    cfg = json.loads((tmp_path / "config.json").read_text())["algorithm"]["hparams"]
    assert (cfg["dp_clip"], cfg["dp_noise"], cfg["dp_delta"]) == (1.0, 0.5, 1e-5)


def test_dp_off_writes_null_and_differs(dp_run, tmp_path):
    summary, _ = dp_run
    off = run_federated(_cfg(), tmp_path, progress=False)
    assert off["privacy"] is None and json.loads((tmp_path / "summary.json").read_text())["privacy"] is None
    assert json.loads((tmp_path / "config.json").read_text())["privacy"] is None
    assert off["test"] != summary["test"]  # the noise (and uniform weights, clipping) did change the model


def test_nested_run_with_dp_and_the_pilot_writes_the_same(tmp_path):
    """FjORD on tiered devices (nested slices) with DP, in the harness and as an in-process pilot
    (coordinator + site code, messages through the wire format): same metrics, same privacy record."""
    from fedmol.data.dataset import load_dataset
    from fedmol.data.splits import make_split, write_split
    from fedmol.pilot.coordinator import LocalLink, run_coordinator
    from fedmol.pilot.demo import settings_for, site_configs

    cfg = _cfg(algorithm="fjord", devices="tiered", partners=2, hparams={"max_local_steps": 2, **DP})
    split_path = tmp_path / "split.json"
    split = make_split(load_dataset("bbbp", progress=False), 2, 1.0, 0, 0.0, progress=False)
    write_split(split, split_path)
    cfg.split = str(split_path)
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    sites = site_configs(cfg, split_path, split)
    link = LocalLink({100 + k: {**nc, "audit-dir": str(tmp_path / f"site{k}"), "threads": 1}
                      for k, nc in enumerate(sites)})
    s = settings_for(cfg, split_path, tmp_path / "pilot", len(sites), round_timeout=30, connect_timeout=5,
                     threads=1, record_inbox=False)
    pilot = run_coordinator(link, s, log=lambda m: None)
    assert harness["privacy"] is not None and pilot["privacy"] == harness["privacy"]
    assert json.loads((tmp_path / "pilot" / "summary.json").read_text())["privacy"] == harness["privacy"]
    for h, p in zip(harness["history"], pilot["history"]):
        for k, v in h.items():
            if k.startswith("test_"):
                assert v == pytest.approx(p[k], abs=1e-4), (k, v, p[k])
    audit = [json.loads(x) for x in (tmp_path / "site0" / "audit.jsonl").read_text().splitlines()]
    assert any("dp_norm" in e.get("metrics", {}) for e in audit if e.get("direction") == "sent")
