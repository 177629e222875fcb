"""Device profiles: what each simulated partner's hardware and network allow.

A :class:`DeviceProfile` says the widest model a partner can train (``max_width``, a width of
:data:`fedmol.models.slicing.WIDTHS`), its relative compute speed (1 = the reference machine;
simulated client time = measured compute time / speed), the probability it is online in a round
(``p_online``), and the probability it drops out mid-round after receiving the model
(``p_drop``). Faulty links: ``p_truncate`` is the probability that an upload is cut off at a
random narrower width (the partner's bytes arrive in narrow-to-wide order, so what arrives is the
sub-model of that width), ``p_upload_loss`` the probability that the whole upload is lost.

Built-in profiles, assigned to partners deterministically from the run seed:

* ``homogeneous`` -- everyone full width, speed 1, always online, never drops.
* ``tiered`` -- equal shares of partners capped at widths 1, 1/2, 1/4, 1/8 (speed = width).
* ``pharma`` -- a few large partners (the largest quarter by training-set size, at least one) at
  full width and speed 1; the others split between widths 1/4 and 1/8 with speed 0.25 / 0.125,
  online with probability 0.9.

Custom profiles come from TOML, validated with one schema (:class:`ProfileFile`: types, ranges,
no unknown key, no NaN or infinity; a mistake is one line naming the tier and key)::

    [[tier]]            # repeated; shares are normalized
    share = 0.5
    max_width = 1.0
    speed = 1.0
    p_online = 1.0
    p_drop = 0.0
    p_truncate = 0.0    # faulty link: upload cut at a random narrower width
    p_upload_loss = 0.0 # lossy link: upload lost
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmol.errors import FedmolError, requirement
from fedmol.models.slicing import WIDTHS


@dataclass(frozen=True)
class DeviceProfile:
    max_width: float = 1.0
    speed: float = 1.0
    p_online: float = 1.0
    p_drop: float = 0.0
    p_truncate: float = 0.0
    p_upload_loss: float = 0.0

    def __post_init__(self):
        if not any(math.isclose(self.max_width, w) for w in WIDTHS):
            raise FedmolError(f"max_width {self.max_width} is not one of the widths {list(WIDTHS)}")
        if not self.speed > 0:
            raise FedmolError(f"speed must be > 0, got {self.speed}")
        for name in ("p_online", "p_drop", "p_truncate", "p_upload_loss"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise FedmolError(f"{name} must be in [0, 1], got {v}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Tier:
    share: float
    profile: DeviceProfile


BUILTIN = {
    "homogeneous": [Tier(1.0, DeviceProfile())],
    "tiered": [Tier(0.25, DeviceProfile(w, speed=w)) for w in (1.0, 0.5, 0.25, 0.125)],
}
PROFILE_NAMES = ("homogeneous", "tiered", "pharma")


def _deal(tiers: list[Tier], n: int, order: np.ndarray) -> list[DeviceProfile]:
    """Give tier t round(share_t * n) partners (largest remainders), in ``order``."""
    shares = np.array([t.share for t in tiers], dtype=float)
    shares = shares / shares.sum()
    counts = np.floor(shares * n).astype(int)
    for i in np.argsort(-(shares * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    flat = [t.profile for t, c in zip(tiers, counts) for _ in range(c)]
    out: list[DeviceProfile | None] = [None] * n
    for slot, partner in enumerate(order):
        out[int(partner)] = flat[slot]
    return out  # type: ignore[return-value]


class TierSpec(BaseModel):
    """One ``[[tier]]`` table of a device-profile TOML file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    share: float = Field(1.0, gt=0, description="relative share of partners (normalized over the tiers)")
    max_width: float = Field(1.0, description="widest model the device trains",
                             json_schema_extra={"requirement": "one of the widths " + ", ".join(map(str, WIDTHS))})
    speed: float = Field(1.0, gt=0, description="compute speed relative to the reference machine")
    p_online: float = Field(1.0, ge=0, le=1, description="P(online in a round)")
    p_drop: float = Field(0.0, ge=0, le=1, description="P(drops out mid-round)")
    p_truncate: float = Field(0.0, ge=0, le=1, description="P(upload cut at a random narrower width)")
    p_upload_loss: float = Field(0.0, ge=0, le=1, description="P(upload lost)")

    @field_validator("max_width")
    @classmethod
    def _a_width(cls, v: float) -> float:
        if not any(math.isclose(v, w) for w in WIDTHS):
            raise ValueError("not a width")
        return v


class ProfileFile(BaseModel):
    """A device-profile TOML file: one or more ``[[tier]]`` tables and nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tier: list[TierSpec] = Field(min_length=1)


def _problem(path: Path, doc: dict, e: ValidationError) -> str:
    """The first problem of a device-profile file, in one line."""
    first = e.errors()[0]
    loc = first["loc"]
    if first["type"] == "extra_forbidden":
        where = f"tier {loc[1]}: " if len(loc) > 2 else ""
        keys = sorted(TierSpec.model_fields) if len(loc) > 2 else ["tier"]
        return f"{path}: {where}unknown key {loc[-1]!r}; known: {', '.join(keys)}"
    if loc == ("tier",) or (len(loc) == 2 and first["type"] in ("model_type", "dict_type")):
        return (f"{path}: a device profile needs [[tier]] tables (each with share, max_width, ...); "
                f"got tier = {doc.get('tier')!r}")
    if len(loc) >= 3 and loc[0] == "tier" and loc[2] in TierSpec.model_fields:
        value = doc["tier"][loc[1]][loc[2]]
        return f"{path}: tier {loc[1]}: {loc[2]} must be {requirement(TierSpec.model_fields[loc[2]])}, got {value!r}"
    return f"{path}: {'.'.join(map(str, loc))}: {first['msg']}"


def load_tiers(path: str | Path) -> list[Tier]:
    """The tiers of a device-profile TOML file, validated with one schema (:class:`ProfileFile`);
    any mistake is one line naming the tier, the key, what it must be and what it is."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise FedmolError(f"cannot read device profile {path}: {e}") from e
    if "tier" not in doc:
        raise FedmolError(f"{path}: a device profile needs at least one [[tier]] table")
    try:
        spec = ProfileFile.model_validate(doc)
    except ValidationError as e:
        raise FedmolError(_problem(path, doc, e)) from None
    return [Tier(t.share, DeviceProfile(**t.model_dump(exclude={"share"}))) for t in spec.tier]


def check_profile(profile: str) -> None:
    """A one-line error unless ``profile`` names a built-in profile or a valid profile file."""
    if profile not in PROFILE_NAMES:
        _tiers(profile)


def _tiers(profile: str) -> list[Tier]:
    if profile in BUILTIN:
        return BUILTIN[profile]
    if profile.endswith(".toml") or Path(profile).is_file():
        return load_tiers(profile)
    raise FedmolError(f"unknown device profile {profile!r}; built-in: {', '.join(PROFILE_NAMES)}, "
                      "or a TOML file with [[tier]] tables")


def assign_devices(profile: str, sizes: list[int], seed: int) -> list[DeviceProfile]:
    """One :class:`DeviceProfile` per partner (``sizes`` = training-set sizes)."""
    n = len(sizes)
    rng = np.random.default_rng([seed, 7])
    if profile == "pharma":
        n_large = max(1, n // 4)
        by_size = np.argsort(-np.asarray(sizes), kind="stable")
        large = [DeviceProfile(1.0, 1.0, 1.0, 0.0)] * n_large
        small = _deal([Tier(0.5, DeviceProfile(0.25, 0.25, 0.9, 0.0)),
                       Tier(0.5, DeviceProfile(0.125, 0.125, 0.9, 0.0))], n - n_large,
                      rng.permutation(n - n_large))
        out: list[DeviceProfile | None] = [None] * n
        for i, p in enumerate(by_size):
            out[int(p)] = large[i] if i < n_large else small[i - n_large]
        return out  # type: ignore[return-value]
    return _deal(_tiers(profile), n, rng.permutation(n))
