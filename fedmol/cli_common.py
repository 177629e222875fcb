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
