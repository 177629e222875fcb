"""Issue 19 (5): `fedmol bench` skips a run folder only when it is whole; a corrupt summary.json, a
missing or truncated model.safetensors makes it run again (and --report-only leaves it out)."""

import io
import json
import shutil

import pytest
from rich.console import Console

from fedmol.fl import bench

SUITE = """
name = "whole"
datasets = ["bace"]
alphas = [1.0]
devices = ["tiered"]
algorithms = ["fedavg"]
seeds = [0]
references = ["local-only"]
reference_models = ["gnn"]

[run]
partners = 2
rounds = 1
hidden = 8
layers = 2

[hparams]
max_local_steps = 1

[reference]
min_epochs = 1
"""


def quiet():
    buf = io.StringIO()
    return Console(file=buf, width=250), buf


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    suite = tmp / "whole.toml"
    suite.write_text(SUITE)
    console, _ = quiet()
    res = bench.run_suite(suite, tmp / "out", progress=False, console=console, show_table=False)
    assert res["ran"] == 2
    return suite, tmp / "out"


def _damage(run, how):
    if how == "corrupt summary":
        (run / "summary.json").write_text('{"dataset": "bace", "test": {"1.0": 0.7')
    elif how == "summary without scores":
        (run / "summary.json").write_text(json.dumps({"dataset": "bace"}))
    elif how == "no weights":
        (run / "model.safetensors").unlink()
    else:
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how,why", [("corrupt summary", "summary.json unreadable"),
                                     ("summary without scores", "summary.json holds no run summary"),
                                     ("no weights", "model.safetensors missing"),
                                     ("truncated weights", "model.safetensors unreadable")])
def test_a_run_folder_that_is_not_whole_runs_again(finished, tmp_path, how, why):
    suite, out = finished
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    run = out2 / "runs" / "bace" / "tiered" / "a1" / "fedavg" / "s0"
    _damage(run, how)
    console, buf = quiet()
    res = bench.run_suite(suite, out2, progress=False, console=console, report_only=True, show_table=False)
    assert res["ran"] == 0 and res["missing"] == 1 and f"fedavg/s0 (not whole: {why}: left out)" in buf.getvalue()
    console, buf = quiet()
    res = bench.run_suite(suite, out2, progress=False, console=console, show_table=False)
    assert res["ran"] == 1 and res["skipped"] == 1
    assert f"fedavg/s0 (not whole: {why}: running again)" in buf.getvalue()
    assert json.loads((run / "summary.json").read_text()) == json.loads(
        (out / "runs" / "bace" / "tiered" / "a1" / "fedavg" / "s0" / "summary.json").read_text()) | {
        "seconds": json.loads((run / "summary.json").read_text())["seconds"]}
    assert bench.damage(next(j for j in bench.plan(bench.load_suite(suite), out2, None, None, True)
                             if j.kind != "reference")) is None
