"""Benchmark tracks (``leaderboard/tracks.toml``): the settings every ranked submission shares.

A track fixes the frozen split file(s), the device profile, the rounds budget, the run settings
that decide the model's capacity and the local compute budget, and the seeds. Seeds are the same
fixed list for everybody: at least 3, ``0 .. n-1``. The board reports, per width, the mean over
seeds and the standard deviation with the track's ``std_ddof`` (1: sample standard deviation).
With several splits, a seed's score is the mean over the splits of that seed's run.

A submission whose runs do not fit any track is still accepted (verified like any other), marked
``unranked`` with the reasons, and listed apart on the board.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from fedmol.errors import FedmolError
from fedmol.leaderboard.schema import HParam, SplitPath, Strict

TRACKS_VERSION = "fedmol-tracks/1"


class Track(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
    title: str
    description: str
    dataset: str
    splits: Annotated[list[SplitPath], Field(min_length=1)]
    devices: str
    rounds: Annotated[int, Field(ge=1)]
    seeds: list[int]
    std_ddof: Literal[0, 1]
    rank_width: float
    #: RunConfig fields every run must have exactly (capacity, dropout, links)
    run: dict[str, HParam]
    #: hyperparameters every run must have exactly (the local compute budget)
    hparams: dict[str, HParam]

    @model_validator(mode="after")
    def _seeds(self):
        if len(self.seeds) < 3 or self.seeds != list(range(len(self.seeds))):
            raise ValueError(f"track {self.name}: seeds must be 0, 1, ..., n-1 with n >= 3, got {self.seeds}")
        return self


class TracksFile(Strict):
    schema_version: Literal["fedmol-tracks/1"]
    tracks: dict[str, dict[str, Any]]


def default_tracks_path() -> Path:
    import fedmol

    return Path(fedmol.__file__).resolve().parents[1] / "leaderboard" / "tracks.toml"


def load_tracks(path: str | Path | None = None) -> dict[str, Track]:
    path = Path(path) if path is not None else default_tracks_path()
    try:
        doc = tomllib.loads(path.read_text())
        parsed = TracksFile.model_validate(doc)
        return {name: Track.model_validate({"name": name, **body}) for name, body in parsed.tracks.items()}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FedmolError(f"cannot read the tracks file {path}: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FedmolError(f"{path}: invalid track definition: {where}: {first['msg']}") from e


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
    return a == b


def track_problems(track: Track, runs: list[dict]) -> list[str]:
    """Why ``runs`` do not qualify for ``track`` (empty list: they do).

    ``runs``: ``{"split": path under data_splits/, "seed": int, "config": resolved config dict}``.
    """
    problems: list[str] = []
    splits = sorted({r["split"] for r in runs})
    if splits != sorted(track.splits):
        problems.append(f"splits {splits} are not the track's {sorted(track.splits)}")
    for split in sorted(track.splits):
        seeds = sorted(r["seed"] for r in runs if r["split"] == split)
        if seeds != track.seeds:
            problems.append(f"seeds {seeds} on {split} are not the track's {track.seeds}")
    seen: set[str] = set()
    for r in runs:
        cfg = r["config"]
        run, hp = cfg["run"], cfg["algorithm"]["hparams"]
        checks = [("devices", run.get("devices"), track.devices), ("rounds", run.get("rounds"), track.rounds)]
        checks += [(k, run.get(k, "<absent>"), v) for k, v in track.run.items()]
        checks += [(f"hparams.{k}", hp.get(k, "<absent>"), v) for k, v in track.hparams.items()]
        for key, got, want in checks:
            if not _same(got, want):
                msg = f"{key} = {got!r}, the track needs {want!r}"
                if msg not in seen:
                    seen.add(msg)
                    problems.append(msg)
    return problems


def match_track(tracks: dict[str, Track], runs: list[dict],
                wanted: str | None = None) -> tuple[str | None, list[str]]:
    """``(track name or None, reasons it is unranked)``: an empty list means ranked on that track.

    ``wanted``: check against this track only. Otherwise the first track (by name) the runs
    qualify for, else the first that uses the same split files (reporting why they do not
    qualify), else None.
    """
    if wanted is not None:
        if wanted not in tracks:
            raise FedmolError(f"unknown track {wanted!r}; known: {', '.join(sorted(tracks)) or 'none'}")
        return wanted, track_problems(tracks[wanted], runs)
    splits = sorted({r["split"] for r in runs})
    candidates = [t for _, t in sorted(tracks.items()) if sorted(t.splits) == splits]
    for t in candidates:
        if not track_problems(t, runs):
            return t.name, []
    if candidates:
        return candidates[0].name, track_problems(candidates[0], runs)
    return None, [f"no track uses the split(s) {splits}"]
