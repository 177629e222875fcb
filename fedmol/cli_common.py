"""What every fedmol command-line module shares: user errors as one line, and ``--hp`` parsing."""

from __future__ import annotations

import functools
import json

import typer
from rich.console import Console

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
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
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
