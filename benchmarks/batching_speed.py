"""Batches cut from the stored tensors vs torch_geometric's per-graph batching (issue 22, item 3), side by side.

``fedmol.training.make_loader`` now cuts an in-memory dataset's mini-batches straight from its stored
tensors (:mod:`fedmol.data.batching`); before, torch_geometric's ``DataLoader`` rebuilt every molecule
(``separate()``) and joined them again (``collate``). Both paths run here in one process, interleaved
(old, new, old, new, ...), so a busy machine slows both alike; the ratios are what count:

* loader only: batches/s of five shuffled epochs (batch 32) of BBBP's graphs and of BBBP with the
  ``mlp`` backbone's fingerprints attached;
* one training epoch (``fedmol.training.train_epoch``, batch 32): a GIN 64 x 3 on the graphs and the
  fingerprint MLP 300 x 2 (the federation suite's trunk) on the fingerprints;
* one FjORD run of the fingerprint MLP (``run_federated``, 8 tiered partners, 20 local steps), wall
  time with the old vs the new ``make_loader``; its results must be equal.

The old path is PyG's loader, forced by making ``fedmol.training.fast_path_ok`` say no.
``os.getloadavg()`` is printed and recorded around every part.

    python benchmarks/batching_speed.py [--dataset bbbp] [--repeats 5] [--rounds 3] [--threads 1]

Writes ``benchmarks/results/batching_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

import fedmol.training as training
from fedmol.data.dataset import load_dataset
from fedmol.data.fingerprints import attach_fingerprints
from fedmol.jsonio import write_json
from fedmol.models import build

OUT = Path(__file__).resolve().parent / "results" / "batching_speed.json"
PATHS = ("old", "new")


@contextlib.contextmanager
def loader_path(which: str):
    """``make_loader`` as before (PyG's DataLoader: ``which="old"``) or as now (``"new"``)."""
    keep = training.fast_path_ok
    if which == "old":
        training.fast_path_ok = lambda ds: False
    try:
        yield
    finally:
        training.fast_path_ok = keep


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(repeats: int, measure) -> dict:
    """``measure(which) -> (batches, seconds)`` run ``repeats`` times per path, alternating; the
    median batches/s of each path and their ratio."""
    rates = {p: [] for p in PATHS}
    for which in PATHS:  # warm-up, not timed
        with loader_path(which):
            measure(which)
    for _ in range(repeats):
        for which in PATHS:
            with loader_path(which):
                n, sec = measure(which)
            rates[which].append(n / sec)
    old, new = (statistics.median(rates[p]) for p in PATHS)
    return dict(old_batches_per_s=old, new_batches_per_s=new, ratio=new / old, load=load(),
                runs={p: [round(r, 2) for r in rates[p]] for p in PATHS})


def loader_only(ds, batch_size: int, epochs: int = 5):
    """``epochs`` shuffled epochs of the loader alone (one is too short to time on a busy machine)."""
    def measure(which):
        t0 = time.perf_counter()
        n = sum(1 for seed in range(epochs) for _ in training.make_loader(ds, batch_size, shuffle=True, seed=seed))
        return n, time.perf_counter() - t0
    return measure


def training_epoch(ds, batch_size: int, name: str, **kw):
    """One epoch of ``train_epoch`` on a fresh model (same seed for both paths)."""
    def measure(which):
        training.seed_everything(0)
        model = build(name, ds.num_tasks, **kw)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = training.make_loader(ds, batch_size, shuffle=True, seed=0)
        t0 = time.perf_counter()
        steps = training.train_epoch(model, loader, opt)["steps"]
        return steps, time.perf_counter() - t0
    return measure


def fjord_runs(dataset: str, rounds: int, repeats: int) -> dict:
    """Wall time of a short FjORD MLP run, old vs new ``make_loader`` (alternating), and whether the
    two give the same results."""
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    cfg = RunConfig(algorithm="fjord", dataset=dataset, partners=8, devices="tiered", rounds=rounds, model="mlp",
                    hidden=300, layers=2, hparams={"max_local_steps": 20, "batch_size": 32, "lr": 1e-3})
    secs, results = {p: [] for p in PATHS}, {}
    run_federated(cfg.replace(rounds=1), None, progress=False)  # warm-up (split, caches), not timed
    for _ in range(repeats):
        for which in PATHS:
            with loader_path(which):
                t0 = time.perf_counter()
                s = run_federated(cfg, None, progress=False)
                secs[which].append(time.perf_counter() - t0)
            results[which] = json.dumps(dict(test=s["test"], valid=s["valid"], per_partner=[
                (p["test"], p["valid"]) for p in s["per_partner"]]))  # NaN written as NaN: equal text
    old, new = (statistics.median(secs[p]) for p in PATHS)
    return dict(config=dict(algorithm="fjord", dataset=dataset, partners=8, devices="tiered", rounds=rounds,
                            model="mlp 300 x 2", max_local_steps=20, batch_size=32),
                old_seconds=old, new_seconds=new, speedup=old / new, same_results=results["old"] == results["new"],
                load=load(), runs={p: [round(x, 2) for x in secs[p]] for p in PATHS})


def report(label: str, rec: dict) -> None:
    if "ratio" in rec:
        print(f"{label:<34} old {rec['old_batches_per_s']:8.1f}  new {rec['new_batches_per_s']:8.1f} batches/s"
              f"  ratio {rec['ratio']:.2f}x  load {rec['load']}")
    else:
        print(f"{label:<34} old {rec['old_seconds']:8.1f}  new {rec['new_seconds']:8.1f} s"
              f"  speedup {rec['speedup']:.2f}x  same results: {rec['same_results']}  load {rec['load']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="bbbp")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of each epoch measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run-repeats", type=int, default=2, help="interleaved repeats of the FjORD run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"load at start {load()} on {os.cpu_count()} cores, torch threads {a.threads}")
    graphs = load_dataset(a.dataset, progress=False)
    fps = attach_fingerprints(load_dataset(a.dataset, progress=False))
    parts = {
        "loader only, graphs (GIN input)": interleaved(a.repeats, loader_only(graphs, 32)),
        "loader only, graphs + fingerprints": interleaved(a.repeats, loader_only(fps, 32)),
        "train epoch, GIN 64 x 3": interleaved(a.repeats, training_epoch(graphs, 32, "gin", hidden=64, layers=3)),
        "train epoch, MLP 300 x 2": interleaved(a.repeats, training_epoch(fps, 32, "mlp", hidden=300, layers=2)),
    }
    for label, rec in parts.items():
        report(label, rec)
    parts[f"run_federated fjord mlp, {a.rounds} rounds"] = run = fjord_runs(a.dataset, a.rounds, a.run_repeats)
    report(f"run_federated fjord mlp, {a.rounds} rounds", run)
    write_json(OUT, dict(dataset=a.dataset, molecules=len(graphs), batch_size=32, threads=a.threads,
                         cores=os.cpu_count(), torch=torch.__version__, note=a.note, results=parts))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
