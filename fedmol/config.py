"""The run configuration, declared once: every setting of a federated run, its type, bounds,
default and help text.

:class:`FederationConfig` holds what every transport shares (algorithm, rounds, backbone,
devices, selection, ...). :class:`RunConfig` adds what only the in-process harness and
flower-sim decide (the dataset and its on-the-fly split, a partner's own CSV, private heads);
:class:`fedmol.pilot.config.PilotSettings` adds what a Flower pilot's coordinator needs instead;
:class:`fedmol.leaderboard.schema.RunSettings` reads a submitted run's ``config.json`` as
untrusted input (strict types, narrower bounds). The CLI takes its defaults and help from here
(:func:`fedmol.cli_common.run_option`). :meth:`FederationConfig.checked` turns a bad value from
user input into one :class:`~fedmol.errors.FedmolError` line naming the setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from fedmol.errors import FedmolError, requirement
from fedmol.fl.registry import ALGORITHMS

MAX_PARTNERS = 10_000
MAX_ROUNDS = 100_000
MAX_HIDDEN = 4096
MAX_LAYERS = 32
MAX_SEED = 2**63 - 1
MAX_TEXT = 4096

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr, None]
#: an algorithm hyperparameter's value (checked against the algorithm's own schema when it is built)
HParam = Union[Scalar, list[Scalar]]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
#: the bounded settings, shared with the pilot TOML's sections (:mod:`fedmol.pilot.plan`)
Partners = Annotated[int, Field(ge=1, le=MAX_PARTNERS)]
Rounds = Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, json_schema_extra={"requirement": "an integer in [0, 2**63 - 1]"})]
Hidden = Annotated[int, Field(ge=1, le=MAX_HIDDEN)]
Layers = Annotated[int, Field(ge=1, le=MAX_LAYERS)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
EvalEvery = Annotated[int, Field(ge=1)]
Selection = Literal["best-valid", "last"]


def dashed(name: str) -> str:
    """A setting's name as the command line and a Flower run config spell it: ``eval_every`` -> ``eval-every``."""
    return name.replace("_", "-")


def _opt(default, help: str, **bounds):
    return Field(default, description=help, **bounds)


class FederationConfig(BaseModel):
    """The settings every transport shares: in-process, flower-sim and Flower pilots."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    algorithm: Text = _opt("fedavg", " | ".join(ALGORITHMS))
    split: Optional[Text] = _opt(None, "A frozen split file (overrides --dataset/--partners/--alpha).")
    partners: Partners = _opt(8, "Partners (in a pilot: the sites the coordinator waits for).")
    devices: Text = _opt("homogeneous", "homogeneous | tiered | pharma | FILE.toml (width caps, speed, availability).")
    rounds: Rounds = _opt(20, "Communication rounds (with --patience: the cap).")
    seed: Seed = _opt(0, "Seeds every generator of the run.")
    clients_per_round: Optional[int] = _opt(None, "Partners sampled per round (default: all).", ge=1,
                                            le=MAX_PARTNERS)
    model: Text = _opt("gin", "gin | gine | gcn | sage | gat | mlp (fingerprint MLP)")
    hidden: Hidden = _opt(300, "Hidden units per layer at width 1.")
    layers: Layers = _opt(5, "Message-passing (or hidden) layers.")
    dropout: Dropout = _opt(0.5, "Dropout probability.")
    eval_every: EvalEvery = _opt(1, "Score the global model every this many rounds.")
    select: Selection = _opt(
        "best-valid", "Which round's global model is reported: best-valid (the evaluated round with the best "
        "pooled validation score, as the references' early stopping) | last.")
    patience: Optional[int] = _opt(None, "Stop after this many evaluated rounds without a better pooled validation "
                                   "score (--rounds is then the cap).", ge=1)
    faulty_links: Prob = _opt(0.0, "P(an upload is truncated at a random narrower width), every partner.")
    lossy_links: Prob = _opt(0.0, "P(an upload is lost), every partner.")
    hparams: dict[str, HParam] = _opt({}, "Algorithm hyperparameters (fedmol algorithms NAME lists them).",
                                      json_schema_extra={"requirement": "a table of numbers, strings, booleans or "
                                                                        "lists of them"})
    data_dir: Optional[Text] = _opt(None, "Folder holding the dataset files (else $FEDMOL_DATA_DIR).")
    smiles_col: Optional[Text] = _opt(None, "SMILES column of a partner's own CSV.")
    target_cols: Optional[Text] = _opt(None, "Comma-separated label columns of a partner's own CSV.")
    task: Optional[Text] = _opt(None, "classification | regression (for a partner's own CSV).")

    @classmethod
    def checked(cls, settings: dict[str, Any], label: Callable[[str], str] = "run setting {}".format):
        """A config from user input: a bad value is one :class:`~fedmol.errors.FedmolError` line
        naming the setting as ``label(name)`` (the CLI: ``--name``)."""
        try:
            return cls(**settings)
        except ValidationError as e:
            raise FedmolError(problem(cls, e, label)) from None

    def shared(self) -> dict[str, Any]:
        """The settings every transport shares, as a dict: how a run becomes a pilot and back."""
        return self.model_dump(include=set(FederationConfig.model_fields))

    def replace(self, **changes: Any):
        """A copy with ``changes``, validated like a new config."""
        return type(self).checked({**self.model_dump(), **changes})


class RunConfig(FederationConfig):
    """One federated run of the harness (in-process or flower-sim): ``fedmol run``, suites, leaderboard."""

    dataset: Optional[Text] = _opt("b3db_classification", "Registry dataset name.")
    alpha: Optional[float] = _opt(1.0, "Dirichlet concentration of the scaffold deal (small: heterogeneous).", gt=0)
    quantity_skew: float = _opt(0.0, "Skew of the partners' sizes (0: equal expected sizes).", ge=0)
    csv: Optional[Text] = _opt(None, "Your own CSV/TSV instead of a registry dataset.")
    task_split: Optional[Literal["disjoint", "overlap"]] = _opt(
        None, "Deal the dataset's tasks too: disjoint (each task held by one partner) | overlap (by "
        "--holders-per-task partners); a partner sees only its tasks' labels (docs/task_splits.md).")
    holders_per_task: Optional[int] = _opt(None, "With --task-split overlap: partners per task (default 2).", ge=1,
                                           le=MAX_PARTNERS)
    target_aware: bool = _opt(False, "With --task-split: send every molecule to a partner that holds one of its "
                              "labelled tasks (sparse multi-assay tables such as moleculeace).")
    heads: Literal["shared", "private"] = _opt(
        "shared", "shared (one task head, federated) | private (each partner keeps its own head; the trunk is "
        "federated; docs/private_heads.md).")


def problem(model: type[BaseModel], e: ValidationError, label: Callable[[str], str]) -> str:
    """The first problem of ``e`` in one line: the setting, what it must be and what it was."""
    first = e.errors()[0]
    key = ".".join(map(str, first["loc"][:1]))
    field = model.model_fields.get(key)
    if first["type"] == "extra_forbidden":
        return f"unknown {label(key)}; known: {', '.join(model.model_fields)}"
    if field is None:
        return f"{label(key or '(all)')}: {first['msg']}"
    return f"{label(key)} must be {requirement(field)}, got {first.get('input')!r}"
