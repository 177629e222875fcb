"""FedDF's server step before and after issue 22 item 4, side by side in one run, against the clients.

The standard suite's FedDF run (``benchmarks/suites/standard.toml``: GIN 64 x 3, 8 tiered partners, so four
width groups, ``distill_steps`` 50, ``pool_size`` 500, batch 128) runs for a few rounds. In every round
the server step runs ``--repeats`` times on each path, each time on a fresh copy of the server's state
(old, new, new, old, ...: a busy machine slows both alike), the two paths' students and metrics are
compared bit for bit, and the run goes on from a copy that took the new path. Per round it records:

* ``old`` / ``new``: seconds of ``FedDF.server_step`` on each path (median of the repeats), in CPU
  seconds of this process (``time.process_time``: what other processes of a busy machine disturb
  least; the ratios that count) and in wall seconds;
* ``clients``: the CPU seconds of the partners' local updates that round (wall: the harness's
  ``client_seconds``);
* the parts alone, old vs new: the teachers' outputs of the last round, and Adam updates;
* the shares of one more new-path step in the last round: training steps, their batching, the teachers'
  outputs, the held-out validations, the checkpoint copies (per group, ms per training step);
* the work: molecules through a training step per round, server (steps x batch) vs clients.

The old path is the server step as it was: one model built (and dropped) per teacher, per-tensor Adam
(``foreach`` off, the CPU default), best checkpoints kept by ``copy.deepcopy``; it is put in place of
the new one (:func:`server_path`) only inside this script. ``os.getloadavg()`` is printed and recorded.

    python benchmarks/perf_feddf_server.py [--dataset bbbp] [--alpha 1.0] [--rounds 4] [--repeats 2]

Writes ``benchmarks/results/perf_feddf_server.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fedmol.fl.feddf as feddf
from fedmol.jsonio import write_json
from fedmol.models import build
from fedmol.training import make_loader

OUT = Path(__file__).resolve().parent / "results" / "perf_feddf_server.json"
PATHS = ("old", "new")
SERVER_STEP = feddf.FedDF.server_step  # the package's own, whichever path its helpers take
CLOCK = time.process_time  # CPU seconds of this process: what the other processes of a busy machine disturb least


# ------------------------------------------------------------------------------ the old path
@torch.no_grad()
def old_teacher_outputs(model_config: dict, teachers, pool, batch_size: int = 256) -> list:
    """The teachers' outputs as before: a standalone model built, loaded, run and dropped per teacher."""
    batches = list(make_loader(pool, batch_size))
    n = int(max(int(b.mol_id.max()) for b in batches)) + 1 if batches else 0
    outs = []
    for width, state in teachers:
        model = build(**{**model_config, "width": float(width)})
        model.load_state_dict(state)
        model.eval()
        out = torch.zeros(n, model.num_tasks)
        for b in batches:
            out[b.mol_id] = model(b, width=float(width)).float()
        outs.append(out)
        del model
    return outs


def _per_tensor_adam(params, lr: float, **_):
    """The old optimizer call: Adam with torch's defaults (on the CPU, one update per tensor)."""
    return _ADAM(params, lr=lr)


_ADAM = torch.optim.Adam


@contextlib.contextmanager
def server_path(which: str):
    """``FedDF.server_step`` as before (``which="old"``) or as now (``"new"``)."""
    keep = feddf.teacher_outputs, feddf.snapshot, torch.optim.Adam
    if which == "old":
        feddf.teacher_outputs = old_teacher_outputs
        feddf.snapshot = lambda model: copy.deepcopy(model.state_dict())
        torch.optim.Adam = _per_tensor_adam
    try:
        yield
    finally:
        feddf.teacher_outputs, feddf.snapshot, torch.optim.Adam = keep


def run_server_step(algo, rnd: int, which: str) -> tuple[dict, dict, object]:
    """``({"cpu": s, "wall": s}, metrics without timings, the copy of algo that ran)``: one server step on a copy."""
    twin = copy.deepcopy(algo)
    with server_path(which):
        t0, w0 = CLOCK(), time.perf_counter()
        metrics = SERVER_STEP(twin, rnd)
        sec = dict(cpu=CLOCK() - t0, wall=time.perf_counter() - w0)
    metrics.pop("distill_seconds", None)
    return sec, metrics, twin


def same_students(a, b) -> bool:
    """The two copies' students hold the same weights and buffers, bit for bit."""
    return all(torch.equal(v, b.students[g].state_dict()[k]) for g, m in a.students.items()
               for k, v in m.state_dict().items())


# ------------------------------------------------------------------------------ the breakdown
class PartTimer:
    """Times the new path's parts through wrappers of feddf's helpers: the teachers' outputs, and per width
    group the distillation, its held-out validations, its batching and its best-checkpoint copies."""

    def __init__(self):
        self.record: dict = {}
        self.group = self.record  # where a timed part adds up: the group being distilled, else the step

    def add(self, key: str, seconds: float) -> None:
        self.group[key] = self.group.get(key, 0.0) + seconds

    def wrap(self, fn, key: str):
        def timed(*a, **kw):
            t0 = CLOCK()
            try:
                return fn(*a, **kw)
            finally:
                self.add(key, CLOCK() - t0)
        return timed

    def loader(self, fn):
        def batches(*a, **kw):
            it = iter(fn(*a, **kw))
            while True:
                t0 = CLOCK()
                batch = next(it, None)
                self.add("batching_s", CLOCK() - t0)
                if batch is None:
                    return
                yield batch
        return batches

    def distill(self, fn):
        def timed(student, width, *a, **kw):
            self.group = self.record.setdefault(repr(width), {})
            t0 = CLOCK()
            res = fn(student, width, *a, **kw)
            self.group.update(distill_s=CLOCK() - t0, steps=res["steps"])
            self.group = self.record
            return res
        return timed


@contextlib.contextmanager
def timed_parts(timer: PartTimer):
    """The new path with its parts timed by ``timer``."""
    keep = {n: getattr(feddf, n) for n in ("teacher_outputs", "distill", "make_validator", "make_loader",
                                           "snapshot")}
    timed = dict(teacher_outputs=timer.wrap(keep["teacher_outputs"], "teacher_outputs_s"),
                 distill=timer.distill(keep["distill"]), make_loader=timer.loader(keep["make_loader"]),
                 make_validator=lambda *a, **kw: timer.wrap(keep["make_validator"](*a, **kw), "validation_s"),
                 snapshot=timer.wrap(keep["snapshot"], "snapshot_s"))
    for name, fn in timed.items():
        setattr(feddf, name, fn)
    try:
        yield timer.record
    finally:
        for name, fn in keep.items():
            setattr(feddf, name, fn)


def shares(record: dict) -> dict:
    """Each part's share of the timed server step; the training steps are what distillation leaves."""
    groups = [v for v in record.values() if isinstance(v, dict)]
    parts = dict(teacher_outputs=record.get("teacher_outputs_s", 0.0),
                 validation=sum(g.get("validation_s", 0.0) for g in groups),
                 batching=sum(g.get("batching_s", 0.0) for g in groups),
                 snapshots=sum(g.get("snapshot_s", 0.0) for g in groups))
    for g in groups:
        g["training_steps_s"] = g["distill_s"] - sum(g.get(k, 0.0) for k in ("validation_s", "batching_s",
                                                                            "snapshot_s"))
        g["ms_per_step"] = 1e3 * g["training_steps_s"] / max(g["steps"], 1)
    parts["training_steps"] = sum(g["training_steps_s"] for g in groups)
    parts["rest"] = record["server_step_s"] - sum(parts.values())
    return {k: v / record["server_step_s"] for k, v in parts.items()}


def interleaved(repeats: int, measure) -> dict:
    """``measure(which) -> seconds``, ``repeats`` times per path, alternating; medians and their ratio."""
    secs = {p: [] for p in PATHS}
    for i in range(repeats):
        for which in (PATHS if i % 2 == 0 else PATHS[::-1]):
            secs[which].append(measure(which))
    old, new = (statistics.median(secs[p]) for p in PATHS)
    return dict(old_s=old, new_s=new, speedup=old / new, load=load())


def parts_side_by_side(algo, repeats: int, steps: int) -> dict:
    """The changed parts alone, old vs new: the teachers' outputs of one round, and ``steps`` Adam
    updates of each group's student (gradients fixed, so only the optimizer is timed)."""
    pool = algo.ensure_pool()

    def teachers(which):
        fn = old_teacher_outputs if which == "old" else feddf.teacher_outputs
        t0 = CLOCK()
        fn(algo.model_config, algo._teachers, pool)
        return CLOCK() - t0

    def adam(which):
        total = 0.0
        for student in algo.students.values():
            model = copy.deepcopy(student)
            gen = torch.Generator().manual_seed(0)
            for q in model.parameters():
                q.grad = 1e-3 * torch.randn(q.shape, generator=gen)
            opt = _per_tensor_adam(model.parameters(), lr=1e-3) if which == "old" else torch.optim.Adam(
                model.parameters(), lr=1e-3, foreach=True)
            t0 = CLOCK()
            for _ in range(steps):
                opt.step()
            total += CLOCK() - t0
        return total

    return {"teacher outputs": interleaved(repeats, teachers),
            f"Adam, {steps} steps per group": interleaved(repeats, adam)}


# ------------------------------------------------------------------------------ the run
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class SideBySide:
    """Stands in for ``FedDF.server_step`` during the run: both paths, timed and compared, per round."""

    def __init__(self, repeats: int, rounds: int):
        self.repeats, self.rounds, self.rows, self.breakdown, self.parts = repeats, rounds, [], {}, {}
        self.batch = self.steps = 0
        self.client_cpu = 0.0  # CPU seconds of the partners' updates so far (see client_clock)

    def step(self, algo, rnd: int) -> dict:
        algo.ensure_pool()  # built once per run, in round 0: not part of a round's step
        secs, metrics, twins = {(p, c): [] for p in PATHS for c in ("cpu", "wall")}, {}, {}
        order = list(PATHS) if rnd % 2 == 0 else list(reversed(PATHS))
        for i in range(self.repeats):
            for which in (order if i % 2 == 0 else order[::-1]):
                sec, metrics[which], twins[which] = run_server_step(algo, rnd, which)
                for clock, x in sec.items():
                    secs[which, clock].append(x)
        self.batch, self.steps = int(algo.hp["distill_batch"]), int(algo.hp["distill_steps"])
        identical = metrics["old"] == metrics["new"] and same_students(twins["old"], twins["new"])
        if rnd == self.rounds - 1:
            with timed_parts(PartTimer()) as self.breakdown:
                self.breakdown["server_step_s"] = run_server_step(algo, rnd, "new")[0]["cpu"]
            self.parts = parts_side_by_side(copy.deepcopy(algo), 6, self.steps)
        algo.__dict__.update(twins["new"].__dict__)  # the run goes on from the new path's result
        row = {f"{p}_{c}_s": statistics.median(v) for (p, c), v in secs.items()}
        row.update(round=rnd, clients_cpu_s=self.client_cpu, identical=identical, load=load(), runs={f"{p}_{c}": [round(x, 3) for x in v]
                                                                      for (p, c), v in secs.items()},
                   distill_steps={k: v for k, v in metrics["new"].items() if k.startswith("distill_steps@")})
        self.rows.append(row)
        self.client_cpu = 0.0
        print(f"round {rnd}: CPU old {row['old_cpu_s']:.2f} s  new {row['new_cpu_s']:.2f} s  ratio "
              f"{row['old_cpu_s'] / row['new_cpu_s']:.3f}x (wall {row['old_wall_s'] / row['new_wall_s']:.3f}x)  "
              f"identical {identical}  load {row['load']}", flush=True)
        return metrics["new"]


@contextlib.contextmanager
def client_clock(side: SideBySide):
    """Adds the CPU seconds of every partner's local update to ``side.client_cpu``."""
    real = feddf.FedDF.partner_update.__func__

    def timed(cls, msg, data):
        t0 = CLOCK()
        try:
            return real(cls, msg, data)
        finally:
            side.client_cpu += CLOCK() - t0

    feddf.FedDF.partner_update = classmethod(timed)
    try:
        yield
    finally:
        del feddf.FedDF.partner_update  # FedDF inherits it


def standard_config(dataset: str, alpha: float, rounds: int, data_dir: str | None):
    """The standard suite's FedDF run on ``dataset`` at ``alpha`` (tiered devices, no faulty links, seed 0)."""
    from fedmol.fl.bench import load_suite, plan

    suite = load_suite("standard")
    jobs = [j for j in plan(suite, Path(tempfile.gettempdir()), data_dir, algorithms=["feddf"], references=False)
            if j.dataset == dataset and j.alpha == alpha and j.seed == 0 and j.cfg.faulty_links == 0.0]
    return jobs[0].cfg.replace(rounds=rounds)


def summarize(side: SideBySide, history: list[dict]) -> dict:
    """Medians over the rounds, the ratios, and the work of server and clients per round."""
    rows, breakdown = side.rows, side.breakdown
    old, new = (statistics.median(r[f"{p}_cpu_s"] for r in rows) for p in PATHS)
    old_wall, new_wall = (statistics.median(r[f"{p}_wall_s"] for r in rows) for p in PATHS)
    clients = statistics.median(r["clients_cpu_s"] for r in rows)
    clients_wall = statistics.median(h["client_seconds"] for h in history)
    server_mols = statistics.median(sum(r["distill_steps"].values()) for r in rows) * side.batch
    return dict(old_server_cpu_s=old, new_server_cpu_s=new, speedup=old / new, clients_cpu_s=clients,
                old_over_clients=old / clients, new_over_clients=new / clients, old_server_wall_s=old_wall,
                new_server_wall_s=new_wall, speedup_wall=old_wall / new_wall, clients_wall_s=clients_wall,
                new_over_clients_wall=new_wall / clients_wall, identical=all(r["identical"] for r in rows), server_molecules_per_round=server_mols,
                breakdown_last_round=breakdown, shares_last_round=shares(breakdown), parts=side.parts)


def report(res: dict) -> None:
    print("shares of one new server step (CPU): " + ", ".join(f"{k} {v:.1%}"
                                                             for k, v in res["shares_last_round"].items()))
    print("per group: " + ", ".join(f"{g}: {v['steps']} steps, {v['ms_per_step']:.1f} ms/step"
                                    for g, v in res["breakdown_last_round"].items() if isinstance(v, dict)))
    for label, rec in res["parts"].items():
        print(f"{label:<28} CPU old {rec['old_s']:.3f} s  new {rec['new_s']:.3f} s  speedup {rec['speedup']:.2f}x  "
              f"load {rec['load']}")
    print(f"molecules through a training step per round: server {res['server_molecules_per_round']:.0f}, "
          f"clients {res['client_molecules_per_round']:.0f}")
    print(f"server step per round, CPU: old {res['old_server_cpu_s']:.2f} s, new {res['new_server_cpu_s']:.2f} s "
          f"(speedup {res['speedup']:.3f}x, wall {res['speedup_wall']:.3f}x; identical results: {res['identical']}); "
          f"clients {res['clients_cpu_s']:.2f} s: server/clients old {res['old_over_clients']:.1f}x, new "
          f"{res['new_over_clients']:.1f}x (wall {res['new_over_clients_wall']:.1f}x); load {load()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="bbbp")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="server steps per path and round, alternating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from fedmol.fl.harness import run_federated

    cfg = standard_config(a.dataset, a.alpha, a.rounds, os.environ.get("FEDMOL_DATA_DIR"))
    print(f"load at start {load()} on {os.cpu_count()} cores, torch threads {a.threads}")
    side = SideBySide(a.repeats, a.rounds)
    feddf.FedDF.server_step = lambda algo, rnd: side.step(algo, rnd)
    try:
        with client_clock(side):
            summary = run_federated(cfg, None, progress=False)
    finally:
        feddf.FedDF.server_step = SERVER_STEP
    res = summarize(side, summary["history"])
    res["client_molecules_per_round"] = summary["molecules_seen"] / a.rounds
    report(res)
    write_json(OUT, dict(dataset=a.dataset, alpha=a.alpha, rounds=a.rounds, repeats=a.repeats, threads=a.threads,
                         cores=os.cpu_count(), torch=torch.__version__, config=cfg.model_dump(mode="json"), note=a.note,
                         clock="CPU seconds of the process (time.process_time); *_wall_s: wall seconds",
                         load_end=load(), per_round=side.rows, results=res))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
