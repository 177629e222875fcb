"""Pilot settings: the Flower app's run config, the app folder, and small TOML files.

The run config (``[tool.flwr.app.config]`` of the pilot app, overridden per run with
``flwr run APP CONNECTION --run-config run.toml``) holds everything the coordinator needs; its keys
and defaults are :data:`RUN_CONFIG_DEFAULTS`. :func:`write_app` writes the Flower app folder (a
``pyproject.toml`` whose components are fedmol's installed ServerApp and ClientApp, so the FAB that
``flwr run`` ships holds no code: every site runs the fedmol it installed, and the versions are
checked in every message).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import fedmol
from fedmol.errors import FedmolError

APP_NAME = "fedmol-pilot"
PUBLISHER = "fedmol"
#: the app folder's two entry modules: each only re-exports fedmol's installed app, so ``flwr run``
#: can check the components without importing fedmol (and torch), and every site runs its own
#: installed fedmol
ENTRY_MODULES = {"fedmol_pilot_server": "fedmol.pilot.server_app", "fedmol_pilot_client": "fedmol.pilot.client_app"}
SERVER_APP = "fedmol_pilot_server:app"
CLIENT_APP = "fedmol_pilot_client:app"

#: run-config key -> default (the types are those of the defaults; "" means unset)
RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "algorithm": "fedavg",
    "rounds": 20,
    "seed": 0,
    "partners": 2,
    "devices": "homogeneous",
    "clients-per-round": 0,
    "min-partners": 0,
    "model": "gin",
    "hidden": 300,
    "layers": 5,
    "dropout": 0.5,
    "eval-every": 1,
    "select": "last",
    "faulty-links": 0.0,
    "lossy-links": 0.0,
    "hparams": "{}",
    "split": "",
    "data-dir": "",
    "split-csv": "",
    "test-csv": "",
    "smiles-col": "",
    "target-cols": "",
    "task": "",
    "out-dir": "",
    "round-timeout": 600.0,
    "connect-timeout": 300.0,
    "threads": 0,
    "record-inbox": False,
}


@dataclass
class PilotSettings:
    """The coordinator's settings (one field per run-config key, ``-`` spelled ``_``)."""

    algorithm: str = "fedavg"
    rounds: int = 20
    seed: int = 0
    partners: int = 2
    devices: str = "homogeneous"
    clients_per_round: int = 0
    #: a round with fewer usable replies than this is not aggregated (0: no minimum, as the harness)
    min_partners: int = 0
    model: str = "gin"
    hidden: int = 300
    layers: int = 5
    dropout: float = 0.5
    eval_every: int = 1
    #: which round's model is reported (fedmol.fl.selection); without a split the partners' own
    #: validation scores decide (federated validation)
    select: str = "last"
    faulty_links: float = 0.0
    lossy_links: float = 0.0
    hparams: dict = field(default_factory=dict)
    split: str = ""
    data_dir: str = ""
    split_csv: str = ""
    test_csv: str = ""
    smiles_col: str = ""
    target_cols: str = ""
    task: str = ""
    out_dir: str = ""
    round_timeout: float = 600.0
    connect_timeout: float = 300.0
    threads: int = 0
    record_inbox: bool = False

    @classmethod
    def from_run_config(cls, run_config: dict) -> "PilotSettings":
        unknown = set(run_config) - set(RUN_CONFIG_DEFAULTS)
        if unknown:
            raise FedmolError(f"unknown pilot run-config key(s) {sorted(unknown)}; known: {sorted(RUN_CONFIG_DEFAULTS)}")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            v = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
            if key == "hparams":
                try:
                    v = json.loads(v) if isinstance(v, str) else dict(v)
                except (json.JSONDecodeError, TypeError, ValueError) as e:
                    raise FedmolError(f"run-config hparams must be a JSON object, got {v!r}") from e
                if not isinstance(v, dict):
                    raise FedmolError(f"run-config hparams must be a JSON object, got {v!r}")
            elif isinstance(RUN_CONFIG_DEFAULTS[key], bool):
                v = bool(v)
            elif isinstance(RUN_CONFIG_DEFAULTS[key], int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if not isinstance(v, int) or isinstance(v, bool):
                    raise FedmolError(f"run-config {key} must be an integer, got {v!r}")
            elif isinstance(RUN_CONFIG_DEFAULTS[key], float):
                v = float(v)
            else:
                v = str(v)
            kw[f.name] = v
        s = cls(**kw)
        if not s.out_dir:
            raise FedmolError("run-config out-dir is required: the coordinator's folder for the results")
        if not s.split and not (s.target_cols and s.task):
            raise FedmolError("the coordinator needs the federation's task: run-config split (a split file), or "
                              "target-cols and task (with test-csv and smiles-col when it holds a test set)")
        from fedmol.fl.selection import check_selection
        check_selection(s.select)
        if s.rounds < 1 or s.partners < 1:
            raise FedmolError("rounds and partners must be >= 1")
        if s.min_partners < 0:
            raise FedmolError(f"min-partners must be >= 0, got {s.min_partners}")
        if not (s.round_timeout > 0 and s.connect_timeout > 0):
            raise FedmolError("round-timeout and connect-timeout must be > 0 seconds")
        return s

    def to_run_config(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name.replace("_", "-")] = json.dumps(v) if f.name == "hparams" else v
        return out


# -- TOML ------------------------------------------------------------------------------------------
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise FedmolError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    raise FedmolError(f"cannot write {type(v).__name__} {v!r} to TOML")


def write_toml(path: str | Path, flat: dict[str, Any], header: str = "") -> Path:
    """A flat TOML file (``key = value`` lines, optional ``[table]`` header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"[{header}]"] if header else []
    lines += [f"{json.dumps(k) if not k.replace('-', '').replace('_', '').isalnum() else k} = {toml_value(v)}"
              for k, v in flat.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def app_pyproject() -> str:
    """The pilot app's ``pyproject.toml`` (what ``flwr run`` packages into a FAB)."""
    conf = "\n".join(f"{k} = {toml_value(v)}" for k, v in RUN_CONFIG_DEFAULTS.items())
    return f"""# The fedmol pilot as a Flower app. Written by `fedmol pilot app` / `fedmol pilot demo`.
# The components are fedmol's installed ServerApp and ClientApp, re-exported by two one-line
# entry modules: every site runs the fedmol it installed, and every message carries and checks
# the versions.
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{APP_NAME}"
version = "{fedmol.__version__}"
description = "fedmol federated molecular property prediction pilot (coordinator + partner sites)"
license = "MIT"
dependencies = ["fedmol=={fedmol.__version__}", "flwr>=1.42,<1.43"]

[tool.flwr.app]
publisher = "{PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{SERVER_APP}"
clientapp = "{CLIENT_APP}"

[tool.flwr.app.config]
{conf}
"""


def write_app(folder: str | Path) -> Path:
    """Write the pilot's Flower app folder (``pyproject.toml``, the two entry modules, a README)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(app_pyproject())
    for name, module in ENTRY_MODULES.items():
        (folder / f"{name}.py").write_text(
            f'"""Entry point of the fedmol pilot: fedmol\'s installed {module}.app (fedmol {fedmol.__version__})."""\n\n'
            f"from {module} import app as _app\n\napp = _app\n")
    (folder / "README.md").write_text(
        "# fedmol pilot app\n\nRun with `flwr run . <connection> --run-config run.toml`; see fedmol's docs/pilot.md.\n")
    return folder
