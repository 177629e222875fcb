"""Pilot settings: the Flower app's run config, the app folder, and small TOML files.

The run config (``[tool.flwr.app.config]`` of the pilot app, overridden per run with
``flwr run APP CONNECTION --run-config run.toml``) holds everything the coordinator needs; its keys
and defaults are :func:`run_config_defaults` (:class:`PilotSettings`). :func:`write_app` writes the Flower app folder (a
``pyproject.toml`` whose components are fedmol's installed ServerApp and ClientApp, so the FAB that
``flwr run`` ships holds no code: every site runs the fedmol it installed, and the versions are
checked in every message).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import tomli_w
from pydantic import Field

import fedmol
from fedmol.config import MAX_PARTNERS, FederationConfig, Text, dashed
from fedmol.errors import FedmolError

APP_NAME = "fedmol-pilot"
PUBLISHER = "fedmol"
#: the app folder's two entry modules: each only re-exports fedmol's installed app, so ``flwr run``
#: can check the components without importing fedmol (and torch), and every site runs its own
#: installed fedmol
ENTRY_MODULES = {"fedmol_pilot_server": "fedmol.pilot.server_app", "fedmol_pilot_client": "fedmol.pilot.client_app"}
SERVER_APP = "fedmol_pilot_server:app"
CLIENT_APP = "fedmol_pilot_client:app"
#: why a coordinator's test CSV and private heads exclude each other
PRIVATE_TEST_CSV = ("a private-heads run cannot use the coordinator's test set: the coordinator never holds a "
                    "partner's head, so it cannot score a partner's model (leave the test set out)")

class PilotSettings(FederationConfig):
    """The coordinator's settings: the run settings every transport shares, and the pilot's own.
    Its run config (the Flower app's, and ``run.toml``) has one key per field, ``-`` for ``_``."""

    #: a round with fewer usable replies than this is not aggregated (0: no minimum, as the harness)
    min_partners: int = Field(0, ge=0, le=MAX_PARTNERS)
    #: the federation's dataset file when the split file names a partner's own CSV
    split_csv: Optional[Text] = None
    #: the coordinator's held-out test set (never sent to anyone)
    test_csv: Optional[Text] = None
    out_dir: Optional[Text] = None
    round_timeout: float = Field(600.0, gt=0)
    connect_timeout: float = Field(300.0, gt=0)
    threads: int = Field(0, ge=0)
    record_inbox: bool = False
    #: shared (one head, federated) | private (each site keeps its own task head: fedmol.pilot.heads)
    heads: Literal["shared", "private"] = "shared"

    @classmethod
    def from_run_config(cls, run_config: dict) -> "PilotSettings":
        """Settings from a Flower run config (``run.toml``); "" and 0 stand for unset (TOML has no null)."""
        keys = run_config_defaults()
        unknown = set(run_config) - set(keys)
        if unknown:
            raise FedmolError(f"unknown pilot run-config key(s) {sorted(unknown)}; known: {sorted(keys)}")
        kw = {key.replace("-", "_"): value for key, value in run_config.items()}
        if isinstance(kw.get("hparams"), str):
            try:
                kw["hparams"] = json.loads(kw["hparams"])
            except json.JSONDecodeError as e:
                raise FedmolError(f"run-config hparams must be a JSON object, got {kw['hparams']!r}") from e
        kw = {k: None if v in ("", 0) and _nullable(k) else v for k, v in kw.items()}
        s = cls.checked(kw, label=lambda key: f"run-config {dashed(key)}")
        if not s.out_dir:
            raise FedmolError("run-config out-dir is required: the coordinator's folder for the results")
        if not s.split and not (s.target_cols and s.task):
            raise FedmolError("the coordinator needs the federation's task: run-config split (a split file), or "
                              "target-cols and task (with test-csv and smiles-col when it holds a test set)")
        return s

    def to_run_config(self) -> dict:
        return {dashed(key): _blank(key) if v is None else json.dumps(v) if key == "hparams" else v
                for key, v in self.model_dump().items()}


def _nullable(key: str) -> bool:
    return PilotSettings.model_fields[key].default is None


def _blank(key: str):
    """A setting's "unset" in TOML: 0 for a count (``Optional[int]``), "" for a text."""
    return 0 if int in get_args(PilotSettings.model_fields[key].annotation) else ""


def run_config_defaults() -> dict[str, Any]:
    """Run-config key -> default (the Flower app's ``[tool.flwr.app.config]``)."""
    return PilotSettings().to_run_config()


# -- TOML ------------------------------------------------------------------------------------------
def toml_text(flat: dict[str, Any], header: str = "") -> str:
    """``key = value`` lines of ``flat`` (bools, ints, finite floats, strings, paths), under a
    ``[header]`` table when given (dots nest: ``superlink.pilot``), written by ``tomli_w``."""
    values = {}
    for k, v in flat.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FedmolError(f"cannot write {v} to TOML")
        if not isinstance(v, (bool, int, float, str, Path)):
            raise FedmolError(f"cannot write {type(v).__name__} {v!r} to TOML")
        values[k] = str(v) if isinstance(v, Path) else v
    for name in reversed(header.split(".") if header else []):
        values = {name: values}
    return tomli_w.dumps(values)


def write_toml(path: str | Path, flat: dict[str, Any], header: str = "") -> Path:
    """A flat TOML file (:func:`toml_text`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(flat, header))
    return path


def app_pyproject() -> str:
    """The pilot app's ``pyproject.toml`` (what ``flwr run`` packages into a FAB)."""
    conf = toml_text(run_config_defaults()).rstrip("\n")
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
