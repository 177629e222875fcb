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

REPO = Path(__file__).resolve().parents[1]
#: the committed numbers were made on this machine kind, single-threaded: agreement is to float noise
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
    for c in widths:
        assert summary["test"][c.split("@")[1]] == pytest.approx(row[c], abs=TOL), (
            f"{c}: rerun {summary['test'][c.split('@')[1]]} vs committed {row[c]}: regenerate benchmarks/results/quick")
    mb = (summary["bytes_up"] + summary["bytes_down"]) / 1e6
    assert mb == pytest.approx(row["mb"], abs=1e-9)


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
