"""The CLI starts without the heavy libraries (issue 22, item 1): ``import fedmol.cli`` and every
``--help`` load none of them, each command imports what it uses. Behaviour only: the times are
measured by ``benchmarks/cli_startup.py``, never asserted here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torch_geometric", "rdkit", "pandas", "sklearn", "matplotlib", "flwr", "scipy", "lightgbm", "opacus")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_import_fedmol_cli_loads_no_heavy_library():
    r = _python("import fedmol.cli, fedmol, fedmol.leaderboard, sys; "
                f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_help_loads_no_heavy_library():
    """Every command and sub-command of the click tree (found by walking it, so new ones are
    covered) prints its help in one process; afterwards no heavy library is loaded."""
    code = """
import json, sys
import click, typer
from fedmol.cli import app
root = typer.main.get_command(app)
def walk(cmd, path):
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from walk(sub, path + [name])
done = []
for path in walk(root, []):
    rc = root.main(path + ["--help"], prog_name="fedmol", standalone_mode=False)
    done.append([" ".join(path), rc])
print(json.dumps(dict(done=done, heavy=sorted(m for m in %r if m in sys.modules))))
""" % (HEAVY,)
    r = _python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    commands = {c for c, _ in res["done"]}
    assert {"", "run", "bench", "train", "split make", "leaderboard", "leaderboard verify", "pilot",
            "pilot demo"} <= commands
    assert all(rc == 0 for _, rc in res["done"]), res["done"]
    assert res["heavy"] == []


def test_fedmol_help_lists_the_commands():
    script = shutil.which("fedmol") or str(Path(sys.executable).parent / "fedmol")
    r = subprocess.run([script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, COLUMNS="120"))
    assert r.returncode == 0, r.stderr
    for command in ("datasets", "algorithms", "featurize", "train", "run", "bench", "split", "leaderboard", "pilot"):
        assert command in r.stdout


def test_lazy_public_names_resolve():
    import fedmol
    import fedmol.leaderboard as lb
    from fedmol.data import dataset
    from fedmol.evaluate import Evaluator
    from fedmol.leaderboard import submission, tracks, verification

    assert fedmol.Evaluator is Evaluator and fedmol.load_dataset is dataset.load_dataset
    assert lb.submit is submission.submit and lb.verify is verification.verify and lb.load_tracks is tracks.load_tracks
    assert set(lb.__all__) <= set(dir(lb))
    for name in lb.__all__:
        assert getattr(lb, name) is not None
