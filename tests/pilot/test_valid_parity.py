"""Issue 19 (12): a Flower run on a split file (``fedmol run --backend flower-sim``, ``fedmol pilot demo``)
writes the same ``valid`` in summary.json as ``fedmol run``: the selected round's model on the pooled
validation molecules. Only the fields listed in FLOWER_ONLY differ (README, "Federated runs").
The coordinator runs in this process over :class:`LocalLink` (the same coordinator and site code as
over Flower, without its processes)."""

import json
import math

from pilot_common import tiny

from fedmol.data.splits import read_split
from fedmol.fl.harness import run_federated
from fedmol.pilot.coordinator import LocalLink, run_coordinator
from fedmol.pilot.demo import settings_for, site_configs

#: what a Flower run's summary.json adds to fedmol run's (``seconds`` differs as well)
FLOWER_ONLY = {"backend", "valid_kind", "test_source", "partners", "refused", "node_events", "validation_failures"}


def test_flower_run_on_a_split_reports_the_pooled_valid(bace_split, tmp_path):
    cfg = tiny(algorithm="fjord", devices="tiered")
    harness = run_federated(cfg, tmp_path / "harness", progress=False)
    sites = site_configs(cfg, bace_split, read_split(bace_split))
    ncs = {100 + k: {**nc, "audit-dir": str(tmp_path / f"site{k}"), "threads": 1} for k, nc in enumerate(sites)}
    s = settings_for(cfg, bace_split, tmp_path / "pilot", len(ncs), round_timeout=5, connect_timeout=5, threads=1,
                     record_inbox=False)
    run_coordinator(LocalLink(ncs), s, log=lambda m: None)
    h = json.loads((tmp_path / "harness" / "summary.json").read_text())
    p = json.loads((tmp_path / "pilot" / "summary.json").read_text())
    assert h["valid"].keys() == p["valid"].keys() and len(h["valid"]) >= 2
    assert all(math.isclose(h["valid"][w], p["valid"][w], abs_tol=1e-6) for w in h["valid"])
    assert p["valid_kind"].startswith("the selected round's model on the pooled validation molecules")
    assert set(p) - set(h) == FLOWER_ONLY and set(h) - set(p) == set()
