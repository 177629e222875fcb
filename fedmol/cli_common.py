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
    """Turn user errors into one line, ``<label>: <message>`` (``error``, ``rejected``, ...), and the
    error's exit code (2 for a usage error), never a traceback: every command group uses it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FedmolError as e:
            message = str(e) if e.multiline else " ".join(str(e).split())
            err.print(f"[bold red]{e.label}:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
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


#: the run settings' short flags (the long flag is the setting's name, dashed)
SHORT_FLAGS = {"algorithm": "-A", "dataset": "-d", "partners": "-k", "alpha": "-a", "rounds": "-r", "seed": "-s"}
#: other spellings of a setting's option (issue 18 spells --holders-per-task as --tasks-per-partner)
ALIASES = {"holders_per_task": "--tasks-per-partner"}


def run_option(name: str, **kw):
    """The typer option of run setting ``name`` (``--name-with-dashes``): its default and help are
    :class:`fedmol.config.RunConfig`'s, where the setting is declared."""
    from fedmol.config import RunConfig, dashed

    field = RunConfig.model_fields[name]
    flags = [f"--{dashed(name)}", *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else []),
             *([ALIASES[name]] if name in ALIASES else [])]
    return typer.Option(field.default, *flags, help=field.description, **kw)


def _cli_type(name: str):
    """What the command line parses run setting ``name`` as (a choice as text, checked by the config)."""
    import types
    from typing import Annotated, Literal, Optional, Union, get_args, get_origin

    from fedmol.config import RunConfig

    ann = RunConfig.model_fields[name].annotation
    args = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    base = next(a for a in args if a is not type(None))
    base = get_args(base)[0] if get_origin(base) is Annotated else base
    base = str if get_origin(base) is Literal else base
    return Optional[base] if type(None) in args else base


def with_run_settings(*names: str):
    """Give a command the options of run settings ``names``: the command takes them as ``**settings``
    and builds its config with :func:`run_config`; nothing about them is written in the command."""
    import inspect

    def add(fn):
        sig = inspect.signature(fn)
        keyword = inspect.Parameter.KEYWORD_ONLY
        own = [p.replace(kind=keyword) for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [inspect.Parameter(n, keyword, default=run_option(n, rich_help_panel="Run settings"),
                                   annotation=_cli_type(n)) for n in names]
        fn.__signature__ = sig.replace(parameters=added + own)
        return fn

    return add


def run_config(options: dict, **more):
    """The :class:`fedmol.config.RunConfig` of a command's options (those that are run settings;
    paths as strings), checked: a bad value is one line."""
    from pathlib import Path

    from fedmol.config import RunConfig, dashed

    given = {**options, **more}
    return RunConfig.checked({k: str(v) if isinstance(v, Path) else v for k, v in given.items()
                              if k in RunConfig.model_fields}, label=lambda key: f"--{dashed(key)}")


def check_run_inputs(algorithm: str, hparams: dict, out, devices: str, split=None) -> None:
    """What ``fedmol run`` checks before it reads any data or writes anything, each mistake one line:
    the algorithm and every hyperparameter (type and range), that ``--out`` can be a
    folder, the device profile (a TOML file's schema) and the split file."""
    from pathlib import Path

    from fedmol.fl.devices import check_profile
    from fedmol.fl.registry import get_algorithm

    get_algorithm(algorithm).check_hparams(hparams)
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
