"""Wall time of whole ``fedmol run`` runs at the standard suite's settings, before vs after the throughput work.

    python benchmarks/suite_run_speed.py [--before REV] [--cases A/D/ALPHA/SEED,...] [--repeats N]
                                         [--rounds R] [--out FILE]

Each case is one run of the published suite (``benchmarks/suites/standard.toml``: GIN 64 x 3, dropout
0.5, 8 partners, 20 rounds, tiered devices, eval every 4 rounds, best-valid selection, hparams
max_local_steps 20, batch_size 32, lr 1e-3, one torch thread), named ``algorithm/dataset/alpha/seed``
(default: fedavg, fjord, fedrescue and heterofl on BBBP and fjord on B3DB, alpha 1, seed 0). It is run,
side by side in one invocation, by two versions of the package:

* ``old`` -- ``fedmol/`` as of ``--before`` (default ``e0aaf1b``, before the throughput work of issue
  22), exported with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``;
* ``new`` -- this checkout's ``fedmol/`` (the working tree), the same way.

Every run is a fresh subprocess, ``python -c "from fedmol.cli import main; main()" run ...`` with the
suite's settings as options (``OMP_NUM_THREADS=1``, ``--threads 1``), each version with its own
``FEDMOL_CACHE_DIR`` and run folders, both reading ``FEDMOL_DATA_DIR`` (default
``/work/shared/datasets/moleculenet``). One untimed warm-up run per version and dataset fills its
featurization cache first. Then each case is timed ``--repeats`` times per version (default 2),
interleaved old, new, new, old, ... so that a load spike on the shared machine hits both alike; the
median wall time of each version and their ratio old/new are reported, with the load average at the
start and end of each case, the core count and the torch version. The timed wall time is the whole
command (interpreter start, imports, data loading and the run); ``summary.json``'s own ``seconds`` is
recorded beside it (``run_federated`` from building the federation on: the new version's lazy imports
fall inside it, the old one's before it, so only the wall times compare like with like).

Equal results: each run's ``summary.json`` test, valid and test_last scores by width and its per-partner
test/valid scores are compared between the versions and between repeats (largest absolute
difference; ``equal`` when every difference is <= 1e-6, and the selected round is the same).
``--rounds`` overrides the suite's 20 rounds, for smoke tests only (the result is marked ``smoke``).
Results go to ``benchmarks/results/suite_run_speed.json``; a table is printed.

The target (issue 22): the per-run wall time of the published suite's runs at least 2x lower at equal
settings and equal results.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fedmol.fl.bench import load_suite  # noqa: E402
from fedmol.jsonio import write_json  # noqa: E402  (this checkout's, whatever is installed)
from cli_startup import _export  # noqa: E402  (benchmarks/, first on sys.path when run as a script)

MAIN = "from fedmol.cli import main; main()"
SUITE = REPO / "benchmarks" / "suites" / "standard.toml"
DEFAULT_CASES = ["fedavg/bbbp/1.0/0", "fjord/bbbp/1.0/0", "fedrescue/bbbp/1.0/0", "heterofl/bbbp/1.0/0",
                 "fjord/b3db_classification/1.0/0"]
TOLERANCE = 1e-6
TARGET = 2.0
SCORE_MAPS = ("test", "valid", "test_last")
PARTNER_SCORES = ("test", "valid")


def _suite_settings(path: Path) -> dict:
    """The suite's run settings, shared hparams, torch threads and device profile (read by fedmol's own
    suite loader)."""
    suite = load_suite(path)
    assert suite.devices == ["tiered"] and suite.faulty_links[0] == 0.0, "expected the standard suite"
    return dict(run=suite.run, hparams=suite.hparams, threads=suite.threads or 1, devices=suite.devices[0])


def _env(src: Path, cache: Path, data_dir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FEDMOL_CACHE_DIR=str(cache), FEDMOL_DATA_DIR=data_dir, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               COLUMNS="120")
    return env


def _where(env: dict) -> str:
    """Which fedmol a version's subprocess imports (PYTHONPATH must win over the editable install)."""
    return subprocess.run([sys.executable, "-c", "import fedmol; print(fedmol.__file__)"], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True).stdout.strip()


def _argv(case: str, settings: dict, rounds: int | None, out: Path) -> list[str]:
    """``fedmol run`` with the suite's settings for ``case`` (options both versions accept; dropout is
    both versions' default 0.5, checked in config.json since the old CLI has no --dropout)."""
    algorithm, dataset, alpha, seed = case.split("/")
    run = settings["run"]
    assert run["dropout"] == 0.5, "the old CLI cannot set dropout: only its default 0.5 is comparable"
    argv = [sys.executable, "-c", MAIN, "run", "-A", algorithm, "-d", dataset, "-a", alpha, "-s", seed,
            "-k", str(run["partners"]), "-r", str(rounds or run["rounds"]), "--devices", settings["devices"],
            "--model", run["model"], "--hidden", str(run["hidden"]), "--layers", str(run["layers"]),
            "--eval-every", str(run["eval_every"]), "--select", run["select"], "--threads", str(settings["threads"])]
    for key, value in settings["hparams"].items():
        argv += ["--hp", f"{key}={value}"]
    return argv + ["-o", str(out)]


def _run(argv: list[str], env: dict, out: Path) -> float:
    """Run one command (its output to ``<out>.log``); wall seconds; a failure raises with the log's tail."""
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        t0 = time.perf_counter()
        rc = subprocess.run(argv, env=env, cwd=tempfile.gettempdir(), stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {' '.join(argv[3:])}\n" + "\n".join(log.read_text().splitlines()[-30:]))
    return seconds


def _settings(config: dict) -> dict:
    """The settings that decide a run's results, from its ``config.json``."""
    algorithm = config.get("algorithm", {})
    return dict(algorithm=algorithm.get("name"), norm=algorithm.get("norm"), hparams=algorithm.get("hparams", {}),
                model=config.get("model"), partners=[(p["n_train"], p["n_valid"], p["device"]["max_width"])
                                                     for p in config.get("partners", [])],
                **{k: config.get(k) for k in ("dataset", "alpha", "seed", "rounds", "devices", "eval_every", "select")})


def _read(out: Path) -> dict:
    """A run's scores (``summary.json``: by width, per partner), selected round, own seconds and settings."""
    summary = json.loads((out / "summary.json").read_text())
    return dict(scores={m: summary.get(m) for m in SCORE_MAPS},
                partners={m: [p.get(m) for p in summary.get("per_partner", [])] for m in PARTNER_SCORES},
                selected_round=summary.get("selected_round"), run_seconds=summary.get("seconds"),
                settings=_settings(json.loads((out / "config.json").read_text())))


def _gap(a, b) -> float:
    """|a - b| of two scores (None: undefined, equal only to None)."""
    if a is None or b is None:
        return 0.0 if a is b else math.inf
    return abs(float(a) - float(b))


def _diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two runs' scores (inf: different widths, partners or round)."""
    if a["selected_round"] != b["selected_round"]:
        return math.inf
    gaps = [0.0]
    for m in SCORE_MAPS:
        x, y = a["scores"][m] or {}, b["scores"][m] or {}
        if set(x) != set(y):
            return math.inf
        gaps += [_gap(x[w], y[w]) for w in x]
    for m in PARTNER_SCORES:
        if len(a["partners"][m]) != len(b["partners"][m]):
            return math.inf
        gaps += [_gap(x, y) for x, y in zip(a["partners"][m], b["partners"][m])]
    return max(gaps)


def _compare(results: dict) -> dict:
    """Largest differences between the versions (every old run vs every new run) and between repeats."""
    old, new = results["old"], results["new"]
    versions = max(_diff(o, n) for o in old for n in new)
    repeats = max([_diff(runs[0], r) for runs in (old, new) for r in runs[1:]], default=0.0)
    a, b = old[0]["settings"], new[0]["settings"]
    differ = sorted(k for k in a if k != "hparams" and a[k] != b[k])
    differ += sorted(f"hparams.{k}" for k in a["hparams"] if a["hparams"][k] != b["hparams"].get(k, "absent"))
    return dict(max_abs_diff_old_vs_new=versions, max_abs_diff_repeats=repeats,
                equal=versions <= TOLERANCE and repeats <= TOLERANCE, same_settings=not differ, settings_differ=differ,
                new_only_hparams={k: v for k, v in b["hparams"].items() if k not in a["hparams"]})


def _case(case: str, envs: dict, settings: dict, rounds: int | None, repeats: int, work: Path) -> dict:
    """Time one case ``repeats`` times per version, interleaved old, new, new, old, ...; compare the results."""
    times, results = {v: [] for v in envs}, {v: [] for v in envs}
    load_start = os.getloadavg()
    for i in range(repeats):
        for version in (list(envs) if i % 2 == 0 else list(envs)[::-1]):
            out = work / version / case.replace("/", "_") / f"r{i}"
            times[version].append(_run(_argv(case, settings, rounds, out), envs[version], out))
            results[version].append(_read(out))
            print(f"    {case} {version} repeat {i + 1}: {times[version][-1]:.1f} s "
                  f"(summary.json seconds {results[version][-1]['run_seconds']})", flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    first = {v: results[v][0] for v in envs}
    return dict(case=case, old_s=round(med["old"], 2), new_s=round(med["new"], 2),
                ratio=round(med["old"] / med["new"], 3),
                old_runs_s=[round(t, 2) for t in times["old"]], new_runs_s=[round(t, 2) for t in times["new"]],
                old_run_seconds=[r["run_seconds"] for r in results["old"]],
                new_run_seconds=[r["run_seconds"] for r in results["new"]],
                load_average_start=[round(x, 2) for x in load_start],
                load_average_end=[round(x, 2) for x in os.getloadavg()],
                **_compare(results), selected_round=dict(old=first["old"]["selected_round"],
                                                         new=first["new"]["selected_round"]),
                scores=dict(old=first["old"]["scores"], new=first["new"]["scores"]),
                settings=first["new"]["settings"])


def _warm_up(cases: list[str], envs: dict, settings: dict, work: Path) -> dict:
    """One untimed one-round run per version and dataset: fills each version's featurization cache."""
    seconds = {}
    for dataset in dict.fromkeys(c.split("/")[1] for c in cases):
        case = next(c for c in cases if c.split("/")[1] == dataset)
        for version, env in envs.items():
            out = work / "warm-up" / version / dataset
            seconds[f"{version}/{dataset}"] = round(_run(_argv(case, settings, 1, out), env, out), 2)
            print(f"  warm-up {version} {dataset}: {seconds[f'{version}/{dataset}']:.1f} s", flush=True)
    return seconds


def _commits(before: str) -> list[str]:
    """The commits since ``before`` that touched ``fedmol/`` (one line each)."""
    log = subprocess.run(["git", "-C", str(REPO), "log", "--oneline", "--no-merges", f"{before}..HEAD", "--", "fedmol"],
                         capture_output=True, text=True, check=True).stdout
    return [line[:160] for line in log.splitlines()]


def _machine() -> dict:
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fedmol"], capture_output=True,
                           text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return dict(node=platform.node(), cores=os.cpu_count(), python=platform.python_version(),
                torch=importlib.metadata.version("torch"), head=head, fedmol_dirty=bool(dirty),
                load_average=[round(x, 2) for x in os.getloadavg()])


def _print_table(rows: list[dict]) -> None:
    print(f"  {'case':<32} {'old s':>8} {'new s':>8} {'old/new':>8}  equal (max |diff| versions, repeats)")
    for r in rows:
        print(f"  {r['case']:<32} {r['old_s']:8.1f} {r['new_s']:8.1f} {r['ratio']:8.2f}  {r['equal']} "
              f"({r['max_abs_diff_old_vs_new']:.2g}, {r['max_abs_diff_repeats']:.2g})")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="e0aaf1b", help="git revision of the version before the throughput work")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help="comma-separated algorithm/dataset/alpha/seed")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case and version")
    ap.add_argument("--rounds", type=int, default=None, help="override the suite's rounds (smoke tests only)")
    ap.add_argument("--data-dir", default=os.environ.get("FEDMOL_DATA_DIR", "/work/shared/datasets/moleculenet"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "suite_run_speed.json")
    return ap.parse_args()


def main() -> None:
    args = _parse()
    cases, settings = args.cases.split(","), _suite_settings(SUITE)
    work = Path(tempfile.mkdtemp(prefix="suite-run-speed-"))
    try:
        envs = {"old": _env(_export(args.before, work / "old-src"), work / "old-cache", args.data_dir),
                "new": _env(REPO, work / "new-cache", args.data_dir)}
        where = {k: _where(e) for k, e in envs.items()}
        assert where["old"].startswith(str(work)) and where["new"] == str(REPO / "fedmol" / "__init__.py"), where
        machine = _machine()
        print(f"{machine['node']}: {machine['cores']} cores, load average {machine['load_average']}, torch "
              f"{machine['torch']}; old = {args.before}, new = working tree ({machine['head']}"
              f"{', fedmol/ modified' if machine['fedmol_dirty'] else ''}); {args.repeats} repeats"
              + (f"; SMOKE: {args.rounds} rounds" if args.rounds else ""), flush=True)
        warm = _warm_up(cases, envs, settings, work)
        rows = [_case(c, envs, settings, args.rounds, args.repeats, work) for c in cases]
        _print_table(rows)
        overall = _geomean([r["ratio"] for r in rows])
        equal = all(r["equal"] and r["same_settings"] for r in rows)
        result = dict(
            what="wall time of whole `fedmol run` runs at the standard suite's settings, old vs new",
            suite=str(SUITE.relative_to(REPO)), settings=settings, rounds_override=args.rounds,
            smoke=args.rounds is not None, before=args.before, after="working tree", repeats=args.repeats,
            order="interleaved old, new, new, old, ...", tolerance=TOLERANCE, target_ratio=TARGET, machine=machine,
            load_average_end=[round(x, 2) for x in os.getloadavg()], warm_up_s=warm, cases=rows,
            ratio_geometric_mean=round(overall, 3), all_equal=equal, target_met=equal and overall >= TARGET,
            note=("every score equal to the last digit: no commit since --before changed these runs' results"
                  if equal else "results differ: see each case's max_abs_diff_* and settings_differ, and the "
                  "commits since --before (commits_since_before) for protocol changes made on purpose"),
            commits_since_before=None if equal else _commits(args.before),
            command=" ".join(["python", "benchmarks/suite_run_speed.py", *sys.argv[1:]]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"geometric mean old/new {overall:.2f} (target {TARGET}); equal results: {equal} -> {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
