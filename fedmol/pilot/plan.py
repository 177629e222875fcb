"""The coordinator's pilot TOML (``fedmol pilot coordinator PILOT_TOML``): schema, checks, settings.

One file says everything the coordinator decides for a real pilot; every partner must match its
``[dataset]`` schema. Unknown keys and wrong types are refused with a one-line
:class:`~fedmol.errors.FedmolError` naming the key. Relative paths are relative to the TOML file.

.. code-block:: toml

    [pilot]
    name = "bbbp-pilot-1"        # a label for the run (letters, digits, - _ .)
    algorithm = "fedavg"         # fedavg | feddf | heterofl | fjord | fedgen | fedrescue | gbt-bagging | gbt-cyclic
    rounds = 20
    seed = 0
    partners = 3                 # partners expected: wait for them at most connect_timeout seconds
    min_partners = 2             # a round with fewer usable replies is not aggregated (model unchanged)
    round_deadline = 900         # seconds a round waits for replies
    connect_timeout = 600        # seconds to wait for the partners to connect
    select = "best-valid"        # report the round whose model the partners' validation scores rank best
                                 # ("last", the default: the model after the last round)
    heads = "private"            # each site keeps its own task head, only the trunk is federated; the
                                 # sites' target columns may then differ (same task type); no test_csv
                                 # ("shared", the default: one head, federated with the trunk)
    # clients_per_round = 0  eval_every = 1  threads = 0  out = "runs/pilot-1"

    [model]                      # optional; these are the defaults
    name = "gin"
    hidden = 300
    layers = 5
    dropout = 0.5

    [hparams]                    # optional: the algorithm's hyperparameters (as fedmol run --hp)
    max_local_steps = 50

    [dataset]                    # the schema every partner's CSV must match
    task = "classification"      # or "regression"
    target_cols = ["p_np"]       # target column names, in this order, at every partner
    test_csv = "test.csv"        # optional: the coordinator's held-out test set (never sent to anyone);
                                 # without one the partners' own validation scores are the only metric
    smiles_col = "smiles"        # its SMILES column

:meth:`PilotPlan.settings` turns it into the :class:`~fedmol.pilot.config.PilotSettings` the
ServerApp receives as its run config (one settings object for the demo and real pilots).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedmol.config import Dropout, EvalEvery, Hidden, HParam, Layers, Partners, Rounds, Seed, Selection
from fedmol.errors import FedmolError
from fedmol.pilot.config import PRIVATE_TEST_CSV, PilotSettings

Column = Annotated[str, Field(min_length=1, pattern=r"^[^,]+$")]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PilotSection(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")]
    algorithm: str
    rounds: Rounds
    seed: Seed = 0
    partners: Partners
    min_partners: Annotated[int, Field(ge=0)] = 1
    round_deadline: Seconds
    connect_timeout: Seconds = 600.0
    clients_per_round: Annotated[int, Field(ge=0)] = 0
    eval_every: EvalEvery = 1
    select: Selection = "last"
    heads: Literal["shared", "private"] = "shared"
    threads: Annotated[int, Field(ge=0)] = 0
    out: str | None = None


class ModelSection(_Strict):
    name: str = "gin"
    hidden: Hidden = 300
    layers: Layers = 5
    dropout: Dropout = 0.5


class DatasetSection(_Strict):
    task: Literal["classification", "regression"]
    target_cols: Annotated[list[Column], Field(min_length=1)]
    test_csv: Annotated[str, Field(min_length=1)] | None = None
    smiles_col: Annotated[str, Field(min_length=1)] = "smiles"


class PilotFile(_Strict):
    pilot: PilotSection
    model: ModelSection = ModelSection()
    hparams: dict[str, HParam] = {}
    dataset: DatasetSection


_SECTIONS = {"pilot": PilotSection, "model": ModelSection, "dataset": DatasetSection}


class PilotPlan:
    """A checked pilot TOML: :attr:`doc` (the parsed sections) and :attr:`path` (the file)."""

    def __init__(self, doc: PilotFile, path: Path):
        self.doc, self.path = doc, path

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return (q if q.is_absolute() else self.path.parent / q).resolve()

    @property
    def test_csv(self) -> Path | None:
        return self.resolve(self.doc.dataset.test_csv) if self.doc.dataset.test_csv else None

    def out_dir(self, out: str | Path | None) -> Path:
        if out is not None:
            return Path(out).expanduser().resolve()
        if self.doc.pilot.out:
            return self.resolve(self.doc.pilot.out)
        raise FedmolError(f"{self.path}: no output folder: give --out DIR (or out = \"...\" in [pilot])")

    def settings(self, out_dir: str | Path) -> PilotSettings:
        p, m, d = self.doc.pilot, self.doc.model, self.doc.dataset
        return PilotSettings(
            algorithm=p.algorithm, rounds=p.rounds, seed=p.seed, partners=p.partners, devices="homogeneous",
            clients_per_round=p.clients_per_round or None, min_partners=p.min_partners, model=m.name, hidden=m.hidden,
            layers=m.layers, dropout=float(m.dropout), eval_every=p.eval_every, select=p.select,
            hparams=dict(self.doc.hparams), test_csv=str(self.test_csv) if self.test_csv else None, smiles_col=d.smiles_col, target_cols=",".join(d.target_cols), task=d.task,
            out_dir=str(Path(out_dir).resolve()), round_timeout=float(p.round_deadline),
            connect_timeout=float(p.connect_timeout), threads=p.threads, heads=p.heads)


def _problem(err: dict) -> str:
    loc = [str(x) for x in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        section = _SECTIONS.get(loc[0]) if len(loc) == 2 else None
        if section is not None:
            return f"unknown key [{loc[0]}] {loc[1]}; known: {', '.join(sorted(section.model_fields))}"
        if len(loc) == 1:
            return f"unknown key [{loc[0]}]; known sections: {', '.join(sorted(PilotFile.model_fields))}"
        return f"unknown key {where}"
    if err["type"] == "missing":
        return f"{where} is required"
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) and len(repr(got)) < 80 else ""
    return f"{where}: {err['msg']}{shown}"


def _one_line(path: Path, e: ValidationError) -> str:
    problems = [_problem(err) for err in e.errors()]
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return f"{path}: " + "; ".join(problems[:3]) + more


def load_plan(path: str | Path) -> PilotPlan:
    """Read and check a pilot TOML (schema, algorithm, hyperparameters, model, test file)."""
    from fedmol.fl.registry import get_algorithm
    from fedmol.models import MODEL_NAMES

    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise FedmolError(f"cannot read the pilot file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise FedmolError(f"{path} is not valid TOML: {e}") from None
    try:
        doc = PilotFile.model_validate(raw)
    except ValidationError as e:
        raise FedmolError(_one_line(path, e)) from None
    p = doc.pilot
    if p.min_partners > p.partners:
        raise FedmolError(f"{path}: [pilot] min_partners ({p.min_partners}) is larger than partners "
                          f"({p.partners}): every round would be skipped")
    if p.clients_per_round and p.min_partners > p.clients_per_round:
        raise FedmolError(f"{path}: [pilot] min_partners ({p.min_partners}) is larger than clients_per_round "
                          f"({p.clients_per_round}): every round would be skipped")
    if doc.model.name not in MODEL_NAMES:
        raise FedmolError(f"{path}: [model] name {doc.model.name!r} is not a model; known: {', '.join(MODEL_NAMES)}")
    if len(set(doc.dataset.target_cols)) != len(doc.dataset.target_cols):
        raise FedmolError(f"{path}: [dataset] target_cols names a column twice: {doc.dataset.target_cols}")
    try:  # unknown algorithms, hyperparameters and unsupported private heads fail here, not at the ServerApp
        get_algorithm(p.algorithm)({"name": doc.model.name}, dict(doc.hparams), p.seed, p.heads)
    except FedmolError as e:
        raise FedmolError(f"{path}: {e}") from None
    if p.heads == "private" and doc.dataset.test_csv:
        raise FedmolError(f"{path}: [dataset] test_csv: {PRIVATE_TEST_CSV}")
    plan = PilotPlan(doc, path)
    if plan.test_csv is not None and not plan.test_csv.is_file():
        raise FedmolError(f"{path}: [dataset] test_csv {plan.test_csv} not found (the coordinator's held-out test "
                          "set; leave test_csv out for a pilot scored only by the partners' validation sets)")
    return plan
