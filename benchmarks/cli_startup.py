"""CLI start-up time: ``fedmol ... --help`` with eager imports (before) vs lazy imports (after).

    python benchmarks/cli_startup.py [--before REV] [--repeat N] [--out FILE]

Side by side in one run, each help command is timed ``--repeat`` times (default 5) in fresh
subprocesses, the two versions interleaved (before, after, before, after, ...) so that a load spike
hits both alike:

* ``before`` -- the package as of ``--before`` (default ``e0aaf1b``, the last commit whose
  ``fedmol.leaderboard`` imported torch_geometric, RDKit, torch and scikit-learn at import time),
  exported with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``;
* ``after``  -- this checkout's ``fedmol/`` (the working tree), the same way;
* ``python`` -- a plain ``python -c pass``: the floor every command pays.

Both versions are started the same way, ``python -c "from fedmol.cli import main; main()" ARGS
--help``; the installed console script (``fedmol --help``, this checkout) is timed too. Each
command's median wall time is reported with the before/after ratio and each version's ratio to the
bare interpreter; ``python -X importtime -c "import fedmol.cli"`` gives the import's own cumulative
time and its largest contributors. The load average and core count are printed and recorded (the
project's machine has 2 shared cores). Results go to ``benchmarks/results/cli_startup.json``.
The target (issue 22, item 1): every help command under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
HEAVY = ("torch", "torch_geometric", "rdkit", "pandas", "sklearn", "matplotlib", "flwr", "opacus", "lightgbm",
         "scipy")
COMMANDS = [[], ["run"], ["bench"], ["train"], ["featurize"], ["split", "make"], ["leaderboard"],
            ["leaderboard", "verify"], ["pilot"], ["pilot", "demo"]]
MAIN = "from fedmol.cli import main; main()"


def _export(rev: str, into: Path) -> Path:
    """``fedmol/`` as of ``rev``, unpacked under ``into`` (read-only use of git: no checkout)."""
    into.mkdir(parents=True, exist_ok=True)
    tar = into / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "fedmol"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "src", filter="data")
    return into / "src"


def _env(path: Path | None) -> dict:
    env = dict(os.environ, COLUMNS="100")
    if path is not None:
        env["PYTHONPATH"] = str(path) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _time(argv: list[str], env: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, r.returncode


def _where(env: dict) -> str:
    """Which fedmol a version's subprocess imports (a check that PYTHONPATH wins over the editable install)."""
    return subprocess.run([sys.executable, "-c", "import fedmol; print(fedmol.__file__)"], env=env,
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True).stdout.strip()


def _importtime(env: dict) -> dict:
    """``python -X importtime -c 'import fedmol.cli'``: the import's cumulative seconds, the heavy
    libraries it loaded and its five largest top-level contributors."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        f"import fedmol.cli, sys; print([m for m in {HEAVY!r} if m in sys.modules])"],
                       env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if cumulative.strip().isdigit():
            rows.append((name.rstrip(), int(cumulative) / 1e6))
    end = next(i for i, (n, _) in enumerate(rows) if n == " fedmol.cli")  # a parent follows its children
    start = max((i for i, (n, _) in enumerate(rows[:end]) if len(n) - len(n.lstrip()) == 1), default=-1) + 1
    children = [(n.strip(), s) for n, s in rows[start:end] if len(n) - len(n.lstrip()) == 3]
    total, top = rows[end][1], sorted(children, key=lambda x: -x[1])[:5]
    return dict(import_fedmol_cli_s=round(total, 4), heavy_loaded=json.loads(r.stdout.strip().replace("'", '"')),
                largest=[dict(module=n, cumulative_s=round(s, 4)) for n, s in top])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="e0aaf1b", help="git revision of the eager-import version")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli_startup.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    try:
        envs = {"before": _env(_export(args.before, tmp)), "after": _env(REPO)}
        where = {k: _where(e) for k, e in envs.items()}
        assert where["before"].startswith(str(tmp)) and where["after"] == str(REPO / "fedmol" / "__init__.py"), where
        load = os.getloadavg()
        print(f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              f"before = {args.before}, after = working tree; median of {args.repeat}")

        py = [_time([sys.executable, "-c", "pass"], envs["after"])[0] for _ in range(args.repeat)]
        python_s = statistics.median(py)
        script = shutil.which("fedmol")
        rows = []
        for cmd in COMMANDS:
            times = {"before": [], "after": []}
            codes = {"before": set(), "after": set()}
            for _ in range(args.repeat):
                for version, env in envs.items():
                    s, rc = _time([sys.executable, "-c", MAIN, *cmd, "--help"], env)
                    times[version].append(s)
                    codes[version].add(rc)
            row = dict(command=" ".join(["fedmol", *cmd, "--help"]),
                       before_s=round(statistics.median(times["before"]), 4),
                       after_s=round(statistics.median(times["after"]), 4),
                       before_runs=[round(t, 4) for t in times["before"]],
                       after_runs=[round(t, 4) for t in times["after"]],
                       exit_codes=dict(before=sorted(codes["before"]), after=sorted(codes["after"])))
            if script and not cmd:  # the installed entry point, as users type it
                runs = [_time([script, "--help"], envs["after"]) for _ in range(args.repeat)]
                row["after_console_script_s"] = round(statistics.median(s for s, _ in runs), 4)
            row["speedup"] = round(row["before_s"] / row["after_s"], 2)
            row["before_vs_python"] = round(row["before_s"] / python_s, 2)
            row["after_vs_python"] = round(row["after_s"] / python_s, 2)
            row["after_under_target"] = row["after_s"] < TARGET_S
            rows.append(row)
            print(f"  {row['command']:<40} before {row['before_s']:6.2f} s  after {row['after_s']:5.2f} s  "
                  f"x{row['speedup']:<6} (python -c pass x{row['before_vs_python']} -> x{row['after_vs_python']})"
                  + (f"  [console script {row['after_console_script_s']:.2f} s]" if "after_console_script_s" in row
                     else ""), flush=True)

        imports = {k: _importtime(e) for k, e in envs.items()}
        for k, v in imports.items():
            print(f"  import fedmol.cli ({k}): {v['import_fedmol_cli_s']:.3f} s, heavy libraries loaded: "
                  f"{', '.join(v['heavy_loaded']) or 'none'}; largest: "
                  + ", ".join(f"{m['module']} {m['cumulative_s']:.2f} s" for m in v["largest"][:3]))
        result = dict(
            machine=dict(node=platform.node(), cores=os.cpu_count(), load_average=[round(x, 2) for x in load],
                         load_average_after=[round(x, 2) for x in os.getloadavg()], python=platform.python_version()),
            before=args.before, after="working tree", repeat=args.repeat, target_s=TARGET_S,
            python_pass_s=round(python_s, 4), commands=rows, import_fedmol_cli=imports,
            all_after_under_target=all(r["after_under_target"] for r in rows))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"python -c pass {python_s:.3f} s; every help command under {TARGET_S} s after: "
              f"{result['all_after_under_target']} -> {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
