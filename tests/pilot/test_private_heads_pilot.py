"""Private heads over the pilot's link (``heads = "private"``, docs/private_heads.md,
fedmol/pilot/heads.py): the coordinator and the site code in this process (:class:`LocalLink`,
every message through the wire conversion). Each site keeps its head on its disk, the
coordinator's scores come from the sites, and they equal ``fedmol run --heads private``; sites
may hold different target columns (the same task type)."""

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fedmol.errors import FedmolError
from fedmol.fl.algorithm import initial_model
from fedmol.fl.harness import run_federated
from fedmol.pilot import site
from fedmol.pilot.config import PilotSettings
from fedmol.pilot.coordinator import LocalLink, run_coordinator
from fedmol.pilot.records import TRAIN, VALIDATE

from pilot_common import assert_no_head_uploaded, assert_parity, tiny
from test_local import local_run

TASK_SPLIT = str(Path(__file__).resolve().parents[2] / "data_splits" / "tox21" / "tasks" / "K4-a1-s0-disjoint.json")
SIDER_COLS = {0: ["Hepatobiliary disorders", "Eye disorders"],
              1: ["Hepatobiliary disorders", "Metabolism and nutrition disorders", "Social circumstances"]}


class ForgetfulLink(LocalLink):
    """A fresh process per message, as Flower may run a ClientApp: the sites' in-memory data (and
    so any head held there) is dropped before every message; after each training exchange the
    bytes of every site's current head file are recorded."""

    def __init__(self, node_configs, run_id=None):
        super().__init__(node_configs, run_id)
        self.head_files: list[dict[int, bytes | None]] = []
        self.round_heads: list[dict[int, list[str]]] = []  # after each validate exchange: every site's round heads

    def exchange(self, kind, sends, group, timeout):
        site._CACHE.clear()
        out = super().exchange(kind, sends, group, timeout)
        if kind == TRAIN:
            files = {n: heads_folder(nc) / f"run-{self.run_id}.safetensors" for n, nc in self.node_configs.items()}
            self.head_files.append({n: f.read_bytes() if f.is_file() else None for n, f in files.items()})
        if kind == VALIDATE:
            self.round_heads.append({n: sorted(p.name for p in heads_folder(nc).glob("*-r*.safetensors"))
                                     for n, nc in self.node_configs.items()})
        return out


def heads_folder(node_config):
    return site.state_dir(node_config) / "heads"


@pytest.fixture
def first_round_wins(monkeypatch):
    """Both drivers select round 0 (not the last), so its trunk comes back with round 0's heads."""
    from fedmol.fl import driver, selection

    class FirstRoundWins(selection.RoundSelector):
        def observe(self, rnd, valid, algo):
            return super().observe(rnd, {k: 1.0 - rnd for k in valid}, algo)

    monkeypatch.setattr(driver, "RoundSelector", FirstRoundWins)


@pytest.mark.parametrize("case", ["fedavg", "heterofl-tiered", "fjord-task-split", "fedavg-head-steps",
                                  "fedavg-drops"])
def test_link_private_heads_equal_in_process(case, bace_split, tmp_path, first_round_wins):
    """The scores equal (bit for bit in metrics.csv): FedAvg, a nested algorithm with its queries, a
    task split (each site labelled and scored on its own tasks), FedRep's head phase (``head_steps``:
    every site refits its head on each trunk it trains from or scores), and simulated drop-outs
    (``p_drop``: a dropped site is not sent its training message, so it trains no head, as in-process)."""
    drops = tmp_path / "drops.toml"
    drops.write_text("[[tier]]\nshare = 1\nmax_width = 1.0\np_drop = 0.5\n")
    kw, split = {"fedavg": ({}, bace_split),
                 "fedavg-drops": (dict(devices=str(drops)), bace_split),
                 "heterofl-tiered": (dict(algorithm="heterofl", devices="tiered"), bace_split),
                 "fjord-task-split": (dict(algorithm="fjord", devices="tiered", split=TASK_SPLIT, hidden=8, rounds=2),
                                      TASK_SPLIT),
                 "fedavg-head-steps": (dict(hparams={**tiny().hparams, "head_steps": 3}), bace_split)}[case]
    cfg = tiny(**{"heads": "private", "rounds": 3, **kw})
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    pilot, link = local_run(cfg, split, tmp_path / "pilot", link_cls=ForgetfulLink)
    assert harness["selected_round"] == pilot["selected_round"] == 0 and harness["test"] != harness["test_last"]
    assert_parity(harness, pilot, private_heads=True)
    assert pilot["heads"] == "private" and pilot["valid_kind"].startswith("mean over the partners")
    assert json.loads((tmp_path / "pilot" / "config.json").read_text())["run"]["heads"] == "private"
    rows = list(csv.DictReader(open(tmp_path / "pilot" / "metrics.csv")))
    assert [r["valid_rocauc@1.0"] for r in rows] == [str(r["valid_rocauc@1.0"]) for r in harness["history"]]
    if case == "fedavg-drops":
        assert 0 < sum(int(r["failures"]) for r in rows) < 2 * len(rows)
        assert [r["failure_reasons"] for r in rows] == [r["failure_reasons"] for r in harness["history"]]
    if case == "fjord-task-split":  # each partner scored on its own tasks only
        for entry in pilot["per_partner"]:
            assert sum(math.isfinite(v) for v in entry["test_by_task"]) == 3


def test_the_head_stays_at_its_site_on_its_disk(bace_split, tmp_path, first_round_wins):
    """Kept between messages on the site's disk; of the round heads only those that can still be selected
    stay (this round's and the best so far: round 0), and after the report the selected round's alone."""
    pilot, link = local_run(tiny(heads="private", rounds=3), bace_split, tmp_path, link_cls=ForgetfulLink)
    assert_no_head_uploaded([tmp_path / f"site{k}" / "audit.jsonl" for k in (0, 1)], tmp_path / "sent.jsonl")
    start = initial_model(json.loads((tmp_path / "config.json").read_text())["model"], 0).head.state_dict()
    name = f"run-{link.run_id}-r{{}}.safetensors".format
    for node, nc in link.node_configs.items():
        assert [heads[node] for heads in link.round_heads] == [  # after 3 evaluations, then after the report
            [name(0)], [name(0), name(1)], [name(0), name(2)], [name(0)]]
        after = [files[node] for files in link.head_files]
        assert None not in after and after[0] != after[1]  # kept between messages, changed by training
        folder = heads_folder(nc)
        assert sorted(p.name for p in folder.iterdir()) == [name(0), f"run-{link.run_id}.safetensors"]
        kept = load_file(str(folder / name(0)))
        assert not torch.equal(kept["weight"], start["weight"])
        assert torch.equal(kept["weight"], load_file_bytes(after[0])["weight"])  # round 0's head: after its training
        assert (folder / f"run-{link.run_id}.safetensors").read_bytes() == after[2]
    assert all(math.isfinite(e["test"]) and math.isfinite(e["valid"]) for e in pilot["per_partner"])


def load_file_bytes(data: bytes) -> dict:
    from safetensors.torch import load
    return load(data)


# -- sites with their own CSVs and their own target columns ----------------------------------------
def sider_sites(tmp_path, data_dir, task_of_third=None) -> dict:
    """Node configs of two sites with SIDER CSVs of their own columns (2 and 3), and optionally a
    third on the first's CSV read as ``task_of_third``."""
    df = pd.read_csv(data_dir / "sider.csv")
    ncs = {}
    for k, cols in SIDER_COLS.items():
        path = tmp_path / f"site{k}.csv"
        df.iloc[150 * k:150 * (k + 1)][["smiles", *cols]].to_csv(path, index=False)
        ncs[10 + k] = {"partition-id": k, "csv": str(path), "smiles-col": "smiles", "target-cols": ",".join(cols),
                       "task": "classification", "audit-dir": str(tmp_path / f"audit{k}"), "threads": 1}
    if task_of_third:
        ncs[12] = {**ncs[10], "partition-id": 2, "task": task_of_third, "audit-dir": str(tmp_path / "audit2")}
    return ncs


def sider_settings(tmp_path, heads: str, partners: int) -> PilotSettings:
    return PilotSettings(algorithm="fedavg", rounds=2, partners=partners, hidden=16, layers=2,
                         hparams={"max_local_steps": 2}, smiles_col="smiles", target_cols=",".join(SIDER_COLS[0]),
                         task="classification", out_dir=str(tmp_path / "out"), round_timeout=5, connect_timeout=5,
                         threads=1, heads=heads)


def test_sites_with_other_target_columns_run_with_private_heads(tmp_path, data_dir):
    ncs = sider_sites(tmp_path, data_dir, task_of_third="regression")
    link = LocalLink(ncs)
    summary = run_coordinator(link, sider_settings(tmp_path, "private", 3), log=lambda m: None)
    out = tmp_path / "out"
    nodes = {e["node_id"]: e for e in json.loads((out / "nodes.json").read_text())}
    assert nodes[10]["status"] == nodes[11]["status"] == "accepted"
    assert nodes[12]["status"] == "refused" and nodes[12]["reason"] == (
        "partner 2: its data is regression, the federation's is classification: private heads need one task type "
        "at every site")
    assert summary["partners"] == 2 and summary["failures"] == 0 and summary["heads"] == "private"
    for node, n_tasks in ((10, 2), (11, 3)):  # each head predicts its site's own columns
        head = load_file(str(heads_folder(ncs[node]) / f"run-{link.run_id}.safetensors"))
        assert head["weight"].shape == (n_tasks, 16) and head["bias"].shape == (n_tasks,)
    assert_no_head_uploaded([tmp_path / f"audit{k}" / "audit.jsonl" for k in (0, 1)], out / "sent.jsonl")
    # no test set anywhere: the summary says so, and no test number is made up
    written = json.loads((out / "summary.json").read_text())
    assert written["test"] == {} and written["test_source"].startswith("none: with private heads")
    assert all(e["test"] is None and math.isfinite(e["valid"]) for e in written["per_partner"])
    assert math.isfinite(written["valid"]["1.0"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert not [k for k in rows[0] if k.startswith("test_")] and all(r["valid_rocauc@1.0"] for r in rows)


def test_sites_with_other_target_columns_are_refused_with_shared_heads(tmp_path, data_dir):
    summary = run_coordinator(LocalLink(sider_sites(tmp_path, data_dir)), sider_settings(tmp_path, "shared", 2),
                              log=lambda m: None)
    nodes = {e["node_id"]: e for e in json.loads((tmp_path / "out" / "nodes.json").read_text())}
    assert nodes[10]["status"] == "accepted" and summary["partners"] == 1
    assert nodes[11]["status"] == "refused" and nodes[11]["reason"] == (
        "partner 1: its data is classification with 3 task(s), the federation trains classification with 2 task(s)")


# -- settings --------------------------------------------------------------------------------------
def test_private_heads_settings(tmp_path):
    s = sider_settings(tmp_path, "private", 2)
    assert s.to_run_config()["heads"] == "private" and PilotSettings.from_run_config(s.to_run_config()) == s
    with pytest.raises(FedmolError, match="run-config heads must be 'shared' or 'private', got 'mine'"):
        PilotSettings.from_run_config({**s.to_run_config(), "heads": "mine"})
    bad = s.replace(test_csv=str(tmp_path / "test.csv"))
    with pytest.raises(FedmolError, match="^run-config test-csv: a private-heads run cannot use the coordinator's"):
        run_coordinator(LocalLink({}), bad, log=lambda m: None)


def test_pilot_plan_takes_heads(tmp_path):
    from federations import pilot_toml
    from fedmol.pilot.plan import load_plan

    plan = load_plan(pilot_toml(tmp_path / "p.toml", None, heads="private"))
    assert plan.settings(tmp_path / "out").heads == "private"
    assert load_plan(pilot_toml(tmp_path / "s.toml", None)).settings(tmp_path / "out").heads == "shared"
    (tmp_path / "t.csv").write_text("smiles,p_np\nCCO,1\n")
    with pytest.raises(FedmolError, match=r"\[dataset\] test_csv: a private-heads run cannot use"):
        load_plan(pilot_toml(tmp_path / "t.toml", tmp_path / "t.csv", heads="private"))
    with pytest.raises(FedmolError, match="fedgen: private heads are not supported"):
        load_plan(pilot_toml(tmp_path / "g.toml", None, heads="private", algorithm="fedgen"))
