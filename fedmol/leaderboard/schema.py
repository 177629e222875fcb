"""The submission manifest (``manifest.json``): a strict, versioned pydantic schema.

A manifest is untrusted input. Every model forbids extra fields and non-finite floats; every field
is required (no defaults) but those added after the first archives (absent there: ``created``,
``numerics``, ...), so an unknown or a missing field is a validation error. Sizes that decide how
much memory verification allocates (hidden width, layers, tasks, runs) are bounded.

Layout of a submission archive (nothing else is allowed in it)::

    manifest.json
    runs/00/model.safetensors       # the final global weights of run 00 (safetensors, never pickle)
    runs/00/test_predictions.csv    # its predictions on the global test set at every width
    runs/01/...

``runs[i].id`` names the folder. Width keys are :func:`fedmol.training.width_key` strings
("1.0", "0.5", ...).
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

from fedmol.config import MAX_HIDDEN, MAX_LAYERS, HParam, Prob, RunConfig, Text
from fedmol.data.splits import SplitSpec

SCHEMA_VERSION = "fedmol-submission/1"

#: bounds (verification builds the declared model, so its size must be bounded before building it)
MAX_RUNS = 64
MAX_TASKS = 1024
MAX_FP_BITS = 65536  # the mlp backbone's fingerprint fold (its input weight: fp_bits x hidden)

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
WidthKey = Annotated[str, Field(pattern=r"^(1\.0|0\.5|0\.25|0\.125|0\.0625)$")]
NonNeg = Annotated[int, Field(ge=0)]

#: a split file, relative to data_splits/: "<dataset>/<name>.json" (no other characters)
SplitPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+\.json$", max_length=200)]


def utc_today() -> str:
    """Today's date in UTC, ``YYYY-MM-DD``."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def _utc_date(value: str) -> str:
    """``value`` if it is a calendar date ``YYYY-MM-DD`` no later than tomorrow in UTC (clock skew)."""
    day = None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            day = datetime.date.fromisoformat(value)
        except ValueError:
            pass
    if day is None:
        raise ValueError(f"{value[:40]!r} is not a UTC date YYYY-MM-DD (e.g. 2026-12-03)")
    if day > datetime.date.fromisoformat(utc_today()) + datetime.timedelta(days=1):
        raise ValueError(f"{value!r} is in the future (UTC)")
    return value


#: a submission's creation day in UTC, ``YYYY-MM-DD``
UtcDate = Annotated[StrictStr, AfterValidator(_utc_date)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=False)


# -- the resolved run configuration (config.json written by fedmol.fl.harness) -------------------
#: run settings added after the first archives: absent there, and then their defaults hold
LATER_SETTINGS = {"select", "patience", "csv", "smiles_col", "target_cols", "task", "heads", "task_split",
                  "holders_per_task", "target_aware"}


class RunSettings(RunConfig):
    """:class:`fedmol.config.RunConfig` read as untrusted input: strict types, every setting present
    (but :data:`LATER_SETTINGS`), and narrower where a leaderboard run must be."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    seed: Annotated[int, Field(ge=0, lt=2**31)]
    alpha: float
    #: absent in runs made before it existed, which reported the last round
    select: Literal["best-valid", "last"] = "last"
    # a partner's own CSV is never a leaderboard run: these must be absent or null
    csv: None = None
    smiles_col: None = None
    target_cols: None = None
    task: None = None
    #: only "shared": a private-heads run has no single global model for a check to recompute
    heads: Literal["shared"] = "shared"
    #: leaderboard tracks are the scaffold deal alone: no task split
    task_split: None = None
    holders_per_task: None = None
    target_aware: Literal[False] = False

    @model_validator(mode="before")
    @classmethod
    def _every_setting(cls, data: Any) -> Any:
        if isinstance(data, dict):
            missing = [k for k in cls.model_fields if k not in data and k not in LATER_SETTINGS]
            if missing:
                raise PydanticCustomError("missing", "missing setting(s) {names}", {"names": ", ".join(missing)})
        return data


class AlgorithmInfo(Strict):
    name: StrictStr
    hparams: dict[str, HParam]
    norm: StrictStr
    scaler: StrictBool


class SentInfo(Strict):
    log: Text
    model_weights: Text
    metrics: Text
    extra: dict[str, Text]


class ModelConfig(Strict):
    """The backbone: ``fedmol.models.build(**model)``."""

    name: StrictStr
    num_tasks: Annotated[int, Field(ge=1, le=MAX_TASKS)]
    hidden: Annotated[int, Field(ge=1, le=MAX_HIDDEN)]
    layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)]
    task_type: Literal["classification", "regression"]
    dropout: Prob
    norm: StrictStr
    scaler: StrictBool
    width: float
    #: the ``mlp`` backbone's fingerprint (fedmol.data.fingerprints); absent for the GNNs, and left out of
    #: dumps when absent, so that ``build(**model.model_dump())`` rebuilds exactly the declared backbone
    fp_radius: Optional[Annotated[int, Field(ge=0, le=6)]] = None
    fp_bits: Optional[Annotated[int, Field(ge=1, le=MAX_FP_BITS)]] = None
    fp_counts: Optional[StrictBool] = None

    @model_serializer(mode="wrap")
    def _without_absent_fingerprint(self, handler):
        return {k: v for k, v in handler(self).items() if not (k.startswith("fp_") and v is None)}


class TreeModelConfig(Strict):
    """A federated boosted-trees ensemble (``fedmol.models.trees.TreeEnsemble(**model)``)."""

    name: Literal["trees"]
    num_tasks: Annotated[int, Field(ge=1, le=MAX_TASKS)]
    task_type: Literal["classification", "regression"]
    width: Literal[1.0]
    fingerprint: Text


class SplitInfo(Strict):
    spec: SplitSpec
    sha256: Sha256
    partners: Annotated[int, Field(ge=1)]
    test: NonNeg


class DeviceInfo(Strict):
    max_width: float
    speed: float
    p_online: Prob
    p_drop: Prob
    p_truncate: Prob
    p_upload_loss: Prob


class PartnerEntry(Strict):
    pid: NonNeg
    n_train: NonNeg
    n_valid: NonNeg
    device: DeviceInfo


class Numerics(Strict):
    """What decides a run's float results (:func:`fedmol.numerics.numerics`)."""
    torch: Text
    cpu_capability: Text
    arch: Text
    vendor: Text
    isa: Annotated[list[Text], Field(max_length=32)]


class Versions(Strict):
    fedmol: Text
    torch: Text
    rdkit: Text
    numerics: Numerics | None = None  # absent in runs made before it was recorded


class Privacy(Strict):
    """The differential-privacy accounting of a DP run (:func:`fedmol.fl.privacy.account`)."""

    mechanism: Text
    level: Text
    clip: Annotated[float, Field(gt=0.0)]
    noise_multiplier: Annotated[float, Field(ge=0.0)]
    delta: Prob
    epsilon: Optional[Annotated[float, Field(ge=0.0)]]  # None: no noise, no guarantee
    rounds: NonNeg
    sample_rate: Prob
    accountant: Text
    not_covered: Text


class ResolvedConfig(Strict):
    """A run's ``config.json``, as the harness writes it."""

    run: RunSettings
    algorithm: AlgorithmInfo
    sent: SentInfo
    model: Union[ModelConfig, TreeModelConfig]
    widths: list[float]
    split: SplitInfo
    partners: list[PartnerEntry]
    versions: Versions
    privacy: Optional[Privacy] = None  # null / absent: DP off


# -- results ----------------------------------------------------------------------------------------
class RoundRecord(Strict):
    """One round of ``metrics.csv``: who took part, what failed and why, bytes communicated."""

    round: NonNeg
    participants: NonNeg
    failures: NonNeg
    failure_reasons: Text
    truncated: NonNeg
    truncations: Text
    bytes_up: NonNeg
    bytes_down: NonNeg


class PartnerResult(Strict):
    partner: NonNeg
    #: None (with ``served`` false and no scores) for a partner whose device runs no served width
    width: Optional[float]
    served: bool = True
    n_train: NonNeg
    n_valid: NonNeg
    test: Optional[float]
    #: None where the partner's validation set cannot be scored (e.g. one class only)
    valid: float | None


class FileRef(Strict):
    path: Annotated[str, Field(pattern=r"^runs/[0-9]{2}/(model\.safetensors|test_predictions\.csv)$")]
    sha256: Sha256
    bytes: NonNeg


class RunEntry(Strict):
    id: Annotated[str, Field(pattern=r"^[0-9]{2}$")]
    seed: Annotated[int, Field(ge=0, lt=2**31)]
    split: SplitPath
    config: ResolvedConfig
    weights: FileRef
    predictions: FileRef
    #: test metric per width (re-scored from the shipped predictions by verification)
    test: dict[WidthKey, float]
    #: validation metric per width (pooled partner validation sets; checked by --rerun only)
    valid: dict[WidthKey, float]
    per_partner: list[PartnerResult]
    bytes_up: NonNeg
    bytes_down: NonNeg
    failures: NonNeg
    rounds: list[RoundRecord]
    seconds: Annotated[float, Field(ge=0)]


class SplitRef(Strict):
    path: SplitPath
    sha256: Sha256


class Provenance(Strict):
    fedmol: Text
    commit: Text
    commit_dirty: StrictBool | None
    python: Text
    torch: Text
    rdkit: Text
    featurizer: Text
    #: the CPU numerics the runs were made with (None: not recorded); a rerun elsewhere is held to a looser tolerance
    numerics: Numerics | None = None


class Manifest(Strict):
    schema_version: Literal["fedmol-submission/1"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._+()-]{0,79}$")]
    #: the day ``fedmol leaderboard submit`` packed it (UTC); absent in archives made before it was recorded
    created: UtcDate | None = None
    #: the track the runs were matched against (None: no track uses these splits)
    track: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")] | None
    status: Literal["ranked", "unranked"]
    unranked_reasons: list[Text]
    algorithm: StrictStr
    dataset: StrictStr
    task_type: Literal["classification", "regression"]
    metric: Literal["rocauc", "rmse"]
    provenance: Provenance
    splits: Annotated[list[SplitRef], Field(min_length=1, max_length=16)]
    hparams: dict[str, HParam]
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1, max_length=MAX_RUNS)]
    runs: Annotated[list[RunEntry], Field(min_length=1, max_length=MAX_RUNS)]


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Manifest` (for documentation and other tools)."""
    return Manifest.model_json_schema()
