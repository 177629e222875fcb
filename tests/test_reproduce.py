"""Committed numbers come out of HEAD: one run of the quick suite against
``benchmarks/results/quick/results_per_seed.csv``, one shipped leaderboard submission re-run with
``fedmol leaderboard verify --rerun 1``. When code changes a result these fail until the committed
files are regenerated (``fedmol bench quick --out benchmarks/results/quick``,
``python leaderboard/make_quick_submissions.py``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmol.fl import bench
from fedmol.numerics import rerun_tolerance

REPO = Path(__file__).resolve().parents[1]
#: on the CPU kind that made the committed numbers (benchmarks/results/quick/numerics.json), single-threaded,
#: agreement is to float noise; elsewhere to fedmol.numerics.CROSS_MACHINE_TOL
TOL = 1e-6


def test_one_quick_run_reproduces_its_committed_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    suite = bench.load_suite("quick")
    jobs = [j for j in bench.plan(suite, tmp_path, algorithms=["fjord"], references=False) if j.alpha == 100.0]
    assert len(jobs) == 1
    summary = bench.run_job(jobs[0], suite, progress=False)
    committed = pd.read_csv(REPO / "benchmarks" / "results" / "quick" / "results_per_seed.csv")
    row = committed[(committed["method"] == "fjord") & (committed["alpha"] == 100.0) & (committed["seed"] == 0)]
    assert len(row) == 1
    row = row.iloc[0]
    widths = [c for c in committed.columns if c.startswith("test@") and c != "test@partner"
              and not math.isnan(row[c])]
    assert widths, "the committed row has no per-width scores"
    recorded = json.loads((REPO / "benchmarks" / "results" / "quick" / "numerics.json").read_text())["numerics"]
    tol, same = rerun_tolerance(recorded, TOL)  # another CPU kind: last-bit differences grow in training
    for c in widths:
        assert summary["test"][c.split("@")[1]] == pytest.approx(row[c], abs=tol), (
            f"{c}: rerun {summary['test'][c.split('@')[1]]} vs committed {row[c]} (tolerance {tol:g}, "
            f"{'same' if same else 'another'} CPU kind): regenerate benchmarks/results/quick")
    mb = (summary["bytes_up"] + summary["bytes_down"]) / 1e6
    # the bytes count each reply's metrics as JSON: a loss that differs in its last bits on another CPU
    # kind prints with another number of digits (a few bytes a message), the tensors' bytes never move
    assert mb == pytest.approx(row["mb"], abs=1e-9 if same else 1e-4)


def test_a_shipped_submission_reruns_to_its_claims(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedmol.leaderboard", "verify",
                          str(REPO / "leaderboard" / "submissions" / "fedavg.zip"), "--rerun", "1", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["status"] == "ranked" and report["track"] == "quick"
    reruns = [(r["test"], r["rerun"]) for r in report["runs"] if r.get("rerun")]
    assert len(reruns) == 1
    claimed, rerun = reruns[0]
    assert rerun["test"] == pytest.approx(claimed, abs=rerun["tolerance"])


def test_the_readme_quick_output_is_the_committed_results():
    """The quick-start output pasted in the README shows the committed quick results (per-partner column)."""
    text = (REPO / "README.md").read_text().split("What a fresh clone prints at the end", 1)[1]
    block = text.split("```text", 1)[1].split("```", 1)[0]
    table = pd.read_csv(REPO / "benchmarks" / "results" / "quick" / "results.csv")
    alphas, checked, alpha = iter(sorted(table["alpha"].unique())), 0, None
    methods = sorted(table["method"].unique(), key=len, reverse=True)  # "ensemble (gnn)" before "gnn"-like prefixes
    for line in block.splitlines():
        if line.startswith("b3db_classification, test rocauc"):
            alpha = next(alphas)
        method = next((m for m in methods if line.startswith(f" {m} ")), None)
        if method is None:
            continue
        row = table[(table["method"] == method) & (table["alpha"] == alpha)].iloc[0]
        shown = line[len(method) + 2:].split()
        partner = shown[0] if math.isnan(row["test@1.0_mean"]) else shown[1]
        assert partner == f"{row['test@partner_mean']:.3f}", (alpha, method, line)
        checked += 1
    assert checked == len(table)


def _script_on_results(script: str, suite: str, tmp_path: Path, *extra: str) -> Path:
    """Run ``benchmarks/<script>`` (with ``extra`` arguments) on a copy of a suite's committed tables in
    ``tmp_path``; returns the committed results folder."""
    src = REPO / "benchmarks" / "results" / suite
    for name in ("results_per_seed.csv", "partner_gains.csv"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--results", str(tmp_path), *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return src


def test_federation_targets_reproduce_from_the_committed_results(tmp_path):
    """benchmarks/federation_targets.py on the committed federation results writes the committed
    targets.json and targets.md; one number checked by hand from partner_gains.csv."""
    src = _script_on_results("federation_targets.py", "federation", tmp_path)
    assert json.loads((tmp_path / "targets.json").read_text()) == json.loads((src / "targets.json").read_text())
    assert (tmp_path / "targets.md").read_text() == (src / "targets.md").read_text()
    gains = pd.read_csv(src / "partner_gains.csv")
    pairs = gains[(gains["dataset"] == "b3db_classification") & (gains["alpha"] == 100.0)
                  & (gains["devices"] == "tiered") & (gains["method"] == "fjord")]
    setting = next(r for r in json.loads((src / "targets.json").read_text())["settings"]
                   if r["dataset"] == "b3db_classification" and r["alpha"] == 100.0 and r["devices"] == "tiered")
    assert setting["best_federated"] == "fjord" and setting["pairs"] == len(pairs) == 24
    assert setting["beat_best_local"] == pytest.approx(float((pairs["gain_test_vs_best_local"] > 0).mean()))


def test_trees_vs_neural_reproduces_from_the_committed_results(tmp_path):
    """benchmarks/trees_vs_neural.py on the committed federation_moleculenet results writes the committed
    trees_vs_neural.json and .md; one paired comparison checked by hand from partner_gains.csv."""
    from scipy.stats import wilcoxon

    src = _script_on_results("trees_vs_neural.py", "federation_moleculenet", tmp_path)
    got = json.loads((tmp_path / "trees_vs_neural.json").read_text())
    assert got == json.loads((src / "trees_vs_neural.json").read_text())
    assert (tmp_path / "trees_vs_neural.md").read_text() == (src / "trees_vs_neural.md").read_text()
    row = next(r for r in got["settings"] if r["dataset"] == "bace" and r["alpha"] == 1.0)
    gains = pd.read_csv(src / "partner_gains.csv")
    pick = lambda m: gains[(gains["dataset"] == "bace") & (gains["alpha"] == 1.0) & (gains["method"] == m)]  # noqa: E731
    a = pick(row["neural"]).set_index(["seed", "partner"])["fed_test"]
    b = pick(row["trees"]).set_index(["seed", "partner"])["fed_test"]
    d = (a - b).dropna()
    c = row["neural_vs_trees"]
    assert c["pairs"] == len(d) == 16 and c["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert c["p"] == pytest.approx(wilcoxon(d.to_numpy()).pvalue, abs=1e-12) and c["verdict"] == "first"


def test_trees_against_another_suites_neural_rows_reproduce(tmp_path):
    """federation_trees' comparison reads the federation suite's committed neural rows (``--neural``)."""
    src = _script_on_results("trees_vs_neural.py", "federation_trees", tmp_path, "--neural",
                             "benchmarks/results/federation")
    assert json.loads((tmp_path / "trees_vs_neural.json").read_text()) == \
        json.loads((src / "trees_vs_neural.json").read_text())
    assert (tmp_path / "trees_vs_neural.md").read_text() == (src / "trees_vs_neural.md").read_text()


@pytest.mark.parametrize("suite,dataset", [("federation_tasks", "tox21"), ("federation_tasks_gin", "tox21"),
                                           ("federation_tasks_moleculeace", "moleculeace"),
                                           ("federation_tasks_moleculeace_gin", "moleculeace"),
                                           ("federation_tasks_patience", "tox21"),
                                           ("federation_tasks_gin_patience", "tox21"),
                                           ("federation_tasks_gin_patience20", "tox21"),
                                           ("federation_tasks_overlap", "tox21"),
                                           ("federation_tasks_overlap_patience", "tox21"),
                                           ("federation_tasks_overlap2", "tox21")])
def test_task_targets_reproduce_from_the_committed_results(tmp_path, suite, dataset):
    """benchmarks/task_targets.py on a task suite's committed results writes the committed targets.json
    and targets.md; the chosen method's share of partners beating their local model checked by hand
    from partner_gains.csv."""
    src = REPO / "benchmarks" / "results" / suite
    if (src / "task_gains.csv").is_file():  # a suite with one local family has no best local to compare tasks with
        (tmp_path / "task_gains.csv").write_bytes((src / "task_gains.csv").read_bytes())
    _script_on_results("task_targets.py", suite, tmp_path)
    got = json.loads((tmp_path / "targets.json").read_text())
    assert got == json.loads((src / "targets.json").read_text())
    assert (tmp_path / "targets.md").read_text() == (src / "targets.md").read_text()
    row = next(r for r in got["datasets"] if r["dataset"] == dataset)
    chosen = next(m for m in row["methods"] if m["method"] == row["best_federated"])
    gains = pd.read_csv(src / "partner_gains.csv")
    pairs = gains[(gains["dataset"] == dataset) & (gains["method"] == row["best_federated"])]
    assert chosen["pairs_vs_local"] == len(pairs) == 8 * chosen["seeds"]
    assert chosen["share_vs_local"] == pytest.approx(float((pairs["gain_test"].fillna(-1) > 0).mean()))
    if dataset == "tox21":
        assert row["target_met"] == (chosen["share_vs_local"] >= 0.8)
