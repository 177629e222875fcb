"""What every fedmol command-line module shares: user errors as one line, and ``--hp`` parsing."""

from __future__ import annotations

import functools
import json

import typer
from rich.console import Console
from rich.markup import escape

from fedmol.errors import FedmolError

console = Console()
err = Console(stderr=True)


def friendly(fn):
    """Turn user errors into one red line and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FedmolError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except RecursionError:  # a JSON/TOML input nested thousands deep, wherever it was read
            err.print("[bold red]error:[/] an input file is nested too deeply to be read (thousands of brackets "
                      "inside each other): it is not a fedmol file", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def parse_hparams(items: list[str]) -> dict:
    """``["lr=0.01", "hetero=min"]`` -> ``{"lr": 0.01, "hetero": "min"}`` (JSON values, else strings)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise FedmolError(f"--hp takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


#: ``fedmol run --seed``: every generator a run seeds (numpy, torch, Python) takes it, or it plus a small offset.
MAX_SEED = 2**63 - 1


def check_run_inputs(algorithm: str, hparams: dict, seed: int, out, devices: str, split=None) -> None:
    """What ``fedmol run`` checks before it reads any data or writes anything, each mistake one line:
    the algorithm and every hyperparameter (type and range), the seed, that ``--out`` can be a
    folder, the device profile (a TOML file's schema) and the split file."""
    from pathlib import Path

    from fedmol.fl.devices import check_profile
    from fedmol.fl.registry import get_algorithm

    get_algorithm(algorithm).check_hparams(hparams)
    if not 0 <= seed <= MAX_SEED:
        raise FedmolError(f"--seed must be an integer in [0, 2**63 - 1], got {seed}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise FedmolError(f"--out {out} is an existing file; a run writes a folder: name another path")
    check_profile(devices)
    if split is not None:
        from fedmol.data.splits import read_split

        read_split_safely(read_split, split)


def read_split_safely(read, path):
    """``read(path)`` for a split file, a file nested too deeply for Python's parser being a one-line error."""
    from fedmol.errors import DataError

    try:
        return read(path)
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to be a fedmol split file") from None


def results_table(title: str, summary: dict, valid_label: str = "valid"):
    """A run's ``summary.json`` as a rich table: test and valid metric per served width."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("width")
    t.add_column(f"test {summary['metric']}")
    t.add_column(f"{valid_label} {summary['metric']}")
    valid = summary.get("valid") or {}
    test = summary.get("test") or {}
    for w in list(test) + [w for w in valid if w not in test]:  # a pilot without a test set has valid only
        v, vv = test.get(w), valid.get(w) if isinstance(valid, dict) else None
        t.add_row(w, "-" if not isinstance(v, (int, float)) else f"{v:.4f}",
                  "-" if not isinstance(vv, (int, float)) else f"{vv:.4f}")
    return t
