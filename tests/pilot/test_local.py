"""The coordinator and the site code in one process (no Flower processes): parity with the harness
for FedAvg, HeteroFL, FedGen and the federated boosted trees, failures, refusals and the partners' audit logs. Every message
still goes through the wire conversion (RecordDict and back)."""

import csv
import json
import math

import pytest

from fedmol.errors import FedmolError
from fedmol.fl.harness import run_federated
from fedmol.pilot.config import PilotSettings
from fedmol.pilot.coordinator import LocalLink, run_coordinator
from fedmol.pilot.demo import settings_for, site_configs
from fedmol.pilot.records import PilotError

from pilot_common import TINY, assert_parity, tiny


def local_run(cfg, split_path, out, extra: dict | None = None, dead=(), link_cls=LocalLink) -> tuple[dict, LocalLink]:
    from fedmol.data.splits import read_split

    sites = site_configs(cfg, split_path, read_split(split_path))
    ncs = {100 + k: {**nc, "audit-dir": str(out / f"site{k}"), "threads": 1} for k, nc in enumerate(sites)}
    ncs.update(extra or {})
    link = link_cls(ncs)
    link.dead = {100 + k for k in dead}
    s = settings_for(cfg, split_path, out, len(ncs), round_timeout=5, connect_timeout=5, threads=1, record_inbox=False)
    return run_coordinator(link, s, log=lambda m: None), link


@pytest.mark.parametrize("algorithm,devices,hp", [("fedavg", "homogeneous", {}), ("heterofl", "tiered", {}),
                                                  ("fedgen", "tiered", {}), ("fedgen", "tiered", {"pooled_bn": True}),
                                                  ("fedgen", "tiered", {"ordered_dropout": True}),
                                                  ("gbt-bagging", "tiered", {"trees_per_round": 3}),
                                                  ("gbt-cyclic", "tiered", {"trees_per_round": 3})])
def test_parity_with_harness(algorithm, devices, hp, bace_split, tmp_path):
    cfg = tiny(algorithm=algorithm, devices=devices, hparams={**TINY["hparams"], **hp})
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    pilot, _ = local_run(cfg, bace_split, tmp_path / "pilot")
    assert_parity(harness, pilot)
    for name in ("config.json", "metrics.csv", "summary.json", "model.safetensors", "test_predictions.csv",
                 "sent.jsonl", "nodes.json"):
        assert (tmp_path / "pilot" / name).is_file(), name
    assert (tmp_path / "pilot" / "test_predictions.csv").read_text() == \
        (tmp_path / "harness" / "test_predictions.csv").read_text()
    strip = lambda path: [json.loads(x) for x in path.read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "pilot" / "sent.jsonl") == strip(tmp_path / "harness" / "sent.jsonl")


def test_dead_partner_is_a_recorded_failure(bace_split, tmp_path):
    s, _ = local_run(tiny(rounds=1), bace_split, tmp_path, dead=[1])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[0]["participants"] == "1" and rows[0]["partner_ids"] == "0" and rows[0]["failures"] == "1"
    assert "partner 1: no reply within the deadline" in rows[0]["failure_reasons"]
    assert s["failures"] == 1 and s["per_partner"][1]["valid_error"].startswith("not asked")


def test_refused_partners(bace_split, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("mol,Class\nCCO,1\nCCN,0\n")
    extra = {7: {"partition-id": 5, "csv": str(bad), "smiles-col": "smiles", "target-cols": "Class",
                 "task": "classification", "audit-dir": str(tmp_path / "bad")},
             8: {"partition-id": 0, "split": str(bace_split), "audit-dir": str(tmp_path / "dup")}}
    s, _ = local_run(tiny(rounds=1), bace_split, tmp_path / "out", extra=extra)
    nodes = {e["node_id"]: e for e in json.loads((tmp_path / "out" / "nodes.json").read_text())}
    assert nodes[7]["status"] == "refused" and "no SMILES column 'smiles'" in nodes[7]["reason"]
    assert str(tmp_path) not in nodes[7]["reason"]  # the site's folders do not leave it
    for n in (8, 100):  # two machines claim partner 0: neither is trusted
        assert nodes[n]["status"] == "refused" and "partition-id 0 is claimed by several nodes" in nodes[n]["reason"]
    assert s["partners"] == 1 and len(s["refused"]) == 3 and s["per_partner"][0]["partner"] == 1
    failed = [json.loads(x) for x in (tmp_path / "bad" / "audit.jsonl").read_text().splitlines()][-1]
    assert failed["direction"] == "failed" and str(tmp_path) in failed["reason"]  # full text stays local


def test_nobody_joins(tmp_path, bace_split):
    bad = {1: {"partition-id": 0, "csv": str(tmp_path / "missing.csv"), "smiles-col": "s", "target-cols": "y",
               "task": "classification", "audit-dir": str(tmp_path / "a")}}
    s = settings_for(tiny(), bace_split, tmp_path / "out", 1, 5, 5, 1, False)
    with pytest.raises(PilotError, match="no partner joined.*not found"):
        run_coordinator(LocalLink(bad), s, log=lambda m: None)
    assert "no partner joined" in json.loads((tmp_path / "out" / "pilot_error.json").read_text())["error"]


def test_audit_log_records_disclosures(bace_split, tmp_path):
    local_run(tiny(algorithm="fedgen", rounds=1), bace_split, tmp_path)
    entries = [json.loads(x) for x in (tmp_path / "site0" / "audit.jsonl").read_text().splitlines()]
    kinds = [(e["kind"], e["direction"]) for e in entries]
    assert kinds == [("hello", "received"), ("hello", "sent"), ("train", "received"), ("train", "sent"),
                     ("validate", "received"), ("validate", "sent")]
    sent = [e for e in entries if e["kind"] == "train" and e["direction"] == "sent"][0]
    assert "fedgen.label_counts" in sent["disclosed"] and sent["bytes"] > 0
    assert {a["name"] for a in sent["arrays"]} >= {"fedgen.label_counts"}
    assert sent["metrics"]["n_train"] > 0


def test_settings_validation(tmp_path):
    with pytest.raises(FedmolError, match="out-dir"):
        PilotSettings.from_run_config({"split": "x.json"})
    with pytest.raises(FedmolError, match="unknown pilot run-config"):
        PilotSettings.from_run_config({"out-dir": "x", "split": "x", "colour": "red"})
    s = PilotSettings.from_run_config({"out-dir": str(tmp_path), "split": "s.json", "hparams": '{"lr": 0.01}',
                                       "round-timeout": 5})
    assert s.hparams == {"lr": 0.01} and s.round_timeout == 5.0
    assert PilotSettings.from_run_config(s.to_run_config()) == s


def test_devices_come_from_node_caps(bace_split, tmp_path):
    """The width a partner trains is its node's width-cap, whatever the profile would have said."""
    from fedmol.data.splits import read_split

    cfg = tiny(algorithm="heterofl", rounds=1)
    sites = site_configs(cfg, bace_split, read_split(bace_split))
    sites[1]["width-cap"] = 0.25
    ncs = {100 + k: {**nc, "audit-dir": str(tmp_path / f"s{k}"), "threads": 1} for k, nc in enumerate(sites)}
    s = settings_for(cfg, bace_split, tmp_path / "out", 2, 5, 5, 1, False)
    summary = run_coordinator(LocalLink(ncs), s, log=lambda m: None)
    assert [e["width"] for e in summary["per_partner"]] == [1.0, 0.25]
    got = [json.loads(x) for x in (tmp_path / "s1" / "audit.jsonl").read_text().splitlines()]
    assert [e["config"]["width"] for e in got if e["kind"] == "train" and e["direction"] == "received"] == [0.25]


def test_sites_with_their_own_csv(tmp_path, data_dir):
    """A real pilot's data path: each site reads its own CSV, the coordinator a test CSV."""
    import numpy as np

    from fedmol.data.dataset import load_dataset

    ds = load_dataset("bace", progress=False)
    smiles, y = ds.smiles, ds.labels[:, 0]

    def write(path, rows):
        path.write_text("compound,activity\n" + "".join(f"{smiles[i]},{int(y[i])}\n" for i in rows))
        return str(path)

    rng = np.random.default_rng(0)
    order = rng.permutation(len(smiles))
    parts = [order[:300], order[300:500], order[500:650]]
    cols = {"smiles-col": "compound", "target-cols": "activity", "task": "classification"}
    ncs = {10 + k: {"partition-id": k, "csv": write(tmp_path / f"site{k}.csv", parts[k]), "width-cap": 1.0,
                    "audit-dir": str(tmp_path / f"audit{k}"), "threads": 1, **cols} for k in range(2)}
    s = PilotSettings(algorithm="fedavg", rounds=1, partners=2, hidden=16, layers=2, hparams={"max_local_steps": 2},
                      test_csv=write(tmp_path / "test.csv", parts[2]), smiles_col="compound", target_cols="activity",
                      task="classification", out_dir=str(tmp_path / "out"), round_timeout=5, connect_timeout=5,
                      threads=1)
    summary = run_coordinator(LocalLink(ncs), s, log=lambda m: None)
    assert [(e["n_train"], e["n_valid"]) for e in summary["per_partner"]] == [(270, 30), (180, 20)]
    assert 0.0 <= summary["test"]["1.0"] <= 1.0 and summary["failures"] == 0
    assert (tmp_path / "out" / "coordinator.log").read_text().count("round 0") == 1


def test_partner_with_other_target_columns_is_refused(bace_split, tmp_path):
    import pandas as pd
    rows = pd.read_csv(_bace_csv()).head(40)
    other = tmp_path / "other.csv"
    rows.rename(columns={"Class": "active"})[["smiles", "active"]].to_csv(other, index=False)
    extra = {9: {"partition-id": 2, "csv": str(other), "smiles-col": "smiles", "target-cols": "active",
                 "task": "classification", "audit-dir": str(tmp_path / "other")}}
    local_run(tiny(rounds=1), bace_split, tmp_path / "out", extra=extra)
    nodes = {e["node_id"]: e for e in json.loads((tmp_path / "out" / "nodes.json").read_text())}
    assert nodes[9]["status"] == "refused"
    assert "its target columns are ['active'], the federation's are ['Class']" in nodes[9]["reason"]


def _bace_csv():
    from fedmol.data.sources import resolve_file
    from fedmol.data.registry import get_info
    return resolve_file(get_info("bace"), progress=False)[0]


def test_parity_when_an_earlier_round_is_reported(bace_split, tmp_path, monkeypatch):
    """Both drivers put the same earlier round's model back (HeteroFL: with its static-BN statistics)."""
    from fedmol.fl import driver, selection

    class FirstRoundWins(selection.RoundSelector):
        def observe(self, rnd, valid, algo):
            return super().observe(rnd, {k: 1.0 - rnd for k in valid}, algo)

    monkeypatch.setattr(driver, "RoundSelector", FirstRoundWins)
    cfg = tiny(algorithm="heterofl", devices="tiered", rounds=3)
    h = run_federated(cfg, tmp_path / "harness", progress=False)
    p, _ = local_run(cfg, bace_split, tmp_path / "pilot")
    assert h["selected_round"] == p["selected_round"] == 0 and h["test"] != h["test_last"]
    assert_parity(h, p)
    assert p["test_last"] == pytest.approx(h["test_last"], abs=1e-4)
    assert (tmp_path / "pilot" / "test_predictions.csv").read_text() == \
        (tmp_path / "harness" / "test_predictions.csv").read_text()


def _own_csv_sites(tmp_path, caps=(1.0, 0.5)):
    """Two sites with their own BACE CSVs (and width caps), and the rows left for a test CSV."""
    import numpy as np

    from fedmol.data.dataset import load_dataset

    ds = load_dataset("bace", progress=False)
    smiles, y = ds.smiles, ds.labels[:, 0]

    def write(path, rows):
        path.write_text("compound,activity\n" + "".join(f"{smiles[i]},{int(y[i])}\n" for i in rows))
        return str(path)

    order = np.random.default_rng(0).permutation(len(smiles))
    parts = [order[:300], order[300:500], order[500:650]]
    cols = {"smiles-col": "compound", "target-cols": "activity", "task": "classification"}
    ncs = {10 + k: {"partition-id": k, "csv": write(tmp_path / f"site{k}.csv", parts[k]), "width-cap": caps[k],
                    "audit-dir": str(tmp_path / f"audit{k}"), "threads": 1, **cols} for k in range(2)}
    return ncs, (lambda: write(tmp_path / "test.csv", parts[2]))


def test_pilot_without_a_test_set_is_scored_by_the_partners(tmp_path):
    """No molecule at the coordinator: every evaluated round, the partners score the model at each
    width their device can run on their own validation molecules; the n_valid-weighted mean ranks
    the rounds (best-valid), and only scores leave the partners."""
    ncs, _ = _own_csv_sites(tmp_path)
    s = PilotSettings(algorithm="fjord", rounds=3, partners=2, hidden=16, layers=2, hparams={"max_local_steps": 2},
                      smiles_col="compound", target_cols="activity", task="classification", select="best-valid",
                      out_dir=str(tmp_path / "out"), round_timeout=5, connect_timeout=5, threads=1)
    summary = run_coordinator(LocalLink(ncs), s, log=lambda m: None)
    out = tmp_path / "out"
    assert summary["test"] == {} and summary["test_source"].startswith("none")
    assert not (out / "test_predictions.csv").exists() and (out / "model.safetensors").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert not [k for k in rows[0] if k.startswith("test_")]
    sent = [json.loads(x) for x in (out / "sent.jsonl").read_text().splitlines()]
    widths = ["1.0", "0.5"]  # fjord serves the widths of the caps present; width 1 only partner 0 can run
    for r in rows:
        asked = [e for e in sent if e["kind"] == "validate" and e["round"] == int(r["round"])]
        assert sorted(e["partner"] for e in asked) == [0, 0, 1]  # partner 1 (cap 1/2) is never sent width 1
        for w, who in (("1.0", [0]), ("0.5", [0, 1])):
            mine = [e["metrics"] for e in asked if e["width"] == float(w)]
            assert [e["partner"] for e in asked if e["width"] == float(w)] == who
            expect = sum(m["n_valid"] * m["valid"] for m in mine) / sum(m["n_valid"] for m in mine)
            assert float(r[f"valid_rocauc@{w}"]) == pytest.approx(expect, abs=1e-9)
    means = [sum(float(r[f"valid_rocauc@{w}"]) for w in widths) / 2 for r in rows]
    assert summary["selected_round"] == means.index(max(means))
    assert [e["partner"] for e in summary["per_partner"]] == [0, 1] and all(
        math.isnan(e["test"]) for e in summary["per_partner"])


def test_pilot_with_a_test_csv_can_select_by_the_partners_validation(tmp_path):
    ncs, test_csv = _own_csv_sites(tmp_path, caps=(1.0, 1.0))
    s = PilotSettings(algorithm="fedavg", rounds=2, partners=2, hidden=16, layers=2, hparams={"max_local_steps": 2},
                      test_csv=test_csv(), smiles_col="compound", target_cols="activity", task="classification",
                      select="best-valid", out_dir=str(tmp_path / "out"), round_timeout=5, connect_timeout=5, threads=1)
    summary = run_coordinator(LocalLink(ncs), s, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv")))
    assert {"test_rocauc@1.0", "valid_rocauc@1.0"} <= set(rows[0])
    best = max(range(2), key=lambda i: (float(rows[i]["valid_rocauc@1.0"]), -i))
    assert summary["selected_round"] == best
    assert summary["test"]["1.0"] == pytest.approx(float(rows[best]["test_rocauc@1.0"]))
    with pytest.raises(FedmolError, match="run-config select must be 'best-valid' or 'last', got 'best'"):
        PilotSettings.from_run_config({**s.to_run_config(), "select": "best"})
    with pytest.raises(FedmolError, match="the coordinator needs the federation's task"):
        PilotSettings.from_run_config({"out-dir": str(tmp_path), "test-csv": "t.csv"})


class NewcomerLink(LocalLink):
    """After round 0's training a new node 201 connects with partner 1's node config (changed by
    ``tweak``); with ``restart`` partner 1's node 101 is gone from then on (its machine restarted)."""

    restart, tweak = True, {}

    def exchange(self, kind, sends, group, timeout):
        from fedmol.pilot.records import TRAIN

        out = super().exchange(kind, sends, group, timeout)
        if kind == TRAIN and group == "0":
            self.node_configs[201] = {**self.node_configs[101], **self.tweak}
            if self.restart:
                self.dead.add(101)
        return out

    def node_ids(self):
        return [n for n in super().node_ids() if n not in self.dead]


def test_a_restarted_site_rejoins_under_a_new_node_id(bace_split, tmp_path):
    cfg = tiny(rounds=3)
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    pilot, _ = local_run(cfg, bace_split, tmp_path / "pilot", link_cls=NewcomerLink)
    assert pilot["node_events"] == [{"round": 1, "node_id": 201, "status": "rejoined", "partition_id": 1,
                                     "replaces": 101}]
    assert_parity(harness, pilot)  # partner 1 missed nothing: the same run as in-process
    assert json.loads((tmp_path / "pilot" / "nodes.json").read_text())[-1]["status"] == "rejoined"


class IntruderLink(NewcomerLink):
    restart = False


class OtherDataLink(NewcomerLink):
    tweak = {"width-cap": 0.5}


@pytest.mark.parametrize("link_cls,reason", [
    (IntruderLink, "partition-id 1 is served by node 101, which is still connected"),
    (OtherDataLink, "width-cap 0.5, partner 1 had"),
])
def test_a_newcomer_cannot_take_a_partners_place(link_cls, reason, bace_split, tmp_path):
    pilot, _ = local_run(tiny(rounds=2), bace_split, tmp_path, link_cls=link_cls)
    (event,) = pilot["node_events"]
    assert event["node_id"] == 201 and event["status"] == "refused" and reason in event["reason"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    lost = link_cls is OtherDataLink  # partner 1's own node is gone: its round-1 update is missing
    assert rows[1]["partner_ids"] == ("0" if lost else "0;1")
