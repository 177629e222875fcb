"""Packing run folders (made by :func:`fedmol.fl.harness.run_federated`) into a submission archive.

One submission = one method on one track: the runs of every required seed (and split), with the
same algorithm, hyperparameters and settings apart from the seed. The archive holds
``manifest.json`` (:class:`fedmol.leaderboard.schema.Manifest`) and, per run, the final global
weights (the run's ``model.safetensors``, copied byte for byte) and its test-set predictions
(``test_predictions.csv``). Runs must use a frozen split file of ``data_splits/`` (matched by its
content sha256); a run made with ``--dataset`` (its split made on the fly) is refused before
anything is packed, with the frozen file to rerun it with. Runs that match no track are packed all
the same, marked ``unranked`` with the reasons. A FedDF run's ``config.json`` also holds its public
pool's report (``public_pool``): it follows from the rest of the config and is not packed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import fedmol
from fedmol.data.featurize import FEATURIZER_VERSION
from fedmol.data.splits import read_split
from fedmol.errors import FedmolError
from fedmol.jsonio import to_json
from fedmol.leaderboard.schema import SCHEMA_VERSION, Manifest, ResolvedConfig, RoundRecord, utc_today
from fedmol.leaderboard.tracks import load_tracks, match_track

REPO = Path(fedmol.__file__).resolve().parents[1]
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same runs and date give the same archive


def default_splits_dir() -> Path:
    return REPO / "data_splits"


def git_commit(repo: Path = REPO) -> tuple[str, bool | None]:
    """``(git rev-parse HEAD or "unknown", whether tracked files differ from it or None)``."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown", None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def frozen_split_index(splits_dir: Path) -> dict[str, str]:
    """``{sha256: path relative to splits_dir}`` of the frozen split files."""
    out = {}
    for p in sorted(splits_dir.glob("*/*.json")):
        try:
            sha = json.loads(p.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(sha, str):
            out.setdefault(sha, p.relative_to(splits_dir).as_posix())
    return out


def frozen_split_hint(run: dict, splits_dir: Path) -> str:
    """The frozen split file of ``run``'s dataset, partners, alpha and quantity skew, as shown to a
    user (``data_splits/<dataset>/<file>.json``); else the dataset's folder and why no file fits."""
    dataset = str(run["dataset"])
    shown = Path(splits_dir.name) if Path(splits_dir) == default_splits_dir() else Path(splits_dir)
    for p in sorted((Path(splits_dir) / dataset).glob("*.json")):
        try:
            spec = json.loads(p.read_text())["spec"]
            same = (spec["partners"] == run.get("partners") and float(spec["alpha"]) == float(run.get("alpha"))
                    and float(spec["quantity_skew"]) == float(run.get("quantity_skew") or 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same:
            return (shown / dataset / p.name).as_posix()
    return (f"{(shown / dataset).as_posix()}/<file>.json (none there has {run.get('partners')} partners, alpha "
            f"{run.get('alpha')} and quantity skew {run.get('quantity_skew') or 0.0})")


def shared_settings(config: dict) -> dict:
    """What every run of one submission must share: the config without seed- and split-bound parts."""
    run = {k: v for k, v in config["run"].items() if k not in ("seed", "split", "data_dir", "dataset")}
    return dict(run=run, algorithm=config["algorithm"], model=config["model"], widths=config["widths"],
                sent=config["sent"])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FedmolError(f"cannot read {path}: {e}") from e


def _rounds(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise FedmolError(f"cannot read {path}: {e}") from e
    out = []
    for r in rows:
        try:
            out.append(RoundRecord(round=int(r["round"]), participants=int(r["participants"]),
                                   failures=int(r["failures"]), failure_reasons=r.get("failure_reasons") or "",
                                   truncated=int(r.get("truncated") or 0), truncations=r.get("truncations") or "",
                                   bytes_up=int(r["bytes_up"]), bytes_down=int(r["bytes_down"])).model_dump())
        except (KeyError, ValueError, ValidationError) as e:
            raise FedmolError(f"{path}: unexpected metrics row: {e}") from e
    return out


def _partner_claim(p: dict) -> dict:
    """A partner's entry as the manifest holds it: the fields the verifier checks (a run's extra per-partner
    scores, PR-AUC or per-task, are left out: nothing verifies them), an undefined validation score None."""
    from fedmol.leaderboard.schema import PartnerResult

    out = {k: p[k] for k in PartnerResult.model_fields if k in p}
    out["valid"] = p["valid"] if _finite(p.get("valid")) else None
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite_map(d: dict, what: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FedmolError(f"{what}: metric at width {k} is {v!r}: only finite metrics can be submitted")
        out[str(k)] = float(v)
    return out


def _validated(schema: type[BaseModel], doc: Any, what: str) -> dict:
    """``doc`` read by ``schema`` as a plain dict; else a :class:`FedmolError` ``what: where: problem``
    (the first problem)."""
    try:
        return schema.model_validate(doc).model_dump()
    except ValidationError as e:
        first = e.errors()[0]
        raise FedmolError(f"{what}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from e


def read_run(run_dir: Path, splits_dir: Path, index: dict[str, str]) -> dict:
    """One run folder as a manifest run entry (without id/paths) plus its two files' bytes."""
    run_dir = Path(run_dir)
    need = ["config.json", "summary.json", "metrics.csv", "model.safetensors", "test_predictions.csv"]
    missing = [n for n in need if not (run_dir / n).is_file()]
    if missing:
        raise FedmolError(f"{run_dir} is not a complete run folder of fedmol.fl.harness.run_federated: "
                          f"missing {', '.join(missing)}")
    config = _read_json(run_dir / "config.json")
    run = config.get("run") if isinstance(config, dict) else None
    if isinstance(run, dict) and run.get("dataset") and not run.get("split") and not run.get("csv"):
        raise FedmolError(f"run {run_dir} was made with --dataset {run['dataset']} (a split made on the fly); "
                          f"leaderboard tracks need a frozen split: rerun with --split "
                          f"{frozen_split_hint(run, splits_dir)}")
    # FedDF's public-pool report (fedmol.fl.public_pool) follows from the rest of the config; not packed
    config = {k: v for k, v in config.items() if k != "public_pool"} if isinstance(config, dict) else config
    config = _validated(ResolvedConfig, config, f"{run_dir}/config.json does not fit the leaderboard schema "
                        f"{SCHEMA_VERSION}")
    summary = _read_json(run_dir / "summary.json")
    sha = config["split"]["sha256"]
    rel = index.get(sha)
    if rel is None:
        raise FedmolError(f"{run_dir}: its split (sha256 {sha[:12]}...) is not one of the frozen split files in "
                          f"{splits_dir}: leaderboard runs must use a frozen split, "
                          "e.g. RunConfig(split='data_splits/b3db_classification/K4-a0.1-s0.json')")
    read_split(splits_dir / rel)  # validates the frozen file and its hash
    weights = (run_dir / "model.safetensors").read_bytes()
    preds = (run_dir / "test_predictions.csv").read_bytes()
    entry = dict(
        seed=int(config["run"]["seed"]), split=rel, config=config,
        test=_finite_map(summary["test"], f"{run_dir} test"), valid=_finite_map(summary["valid"], f"{run_dir} valid"),
        per_partner=[_partner_claim(p) for p in summary["per_partner"]],
        bytes_up=int(summary["bytes_up"]), bytes_down=int(summary["bytes_down"]),
        failures=int(summary["failures"]), rounds=_rounds(run_dir / "metrics.csv"), seconds=float(summary["seconds"]),
    )
    return dict(entry=entry, summary=summary, weights=weights, predictions=preds, dir=run_dir)


def _check_one_configuration(runs: list[dict]) -> None:
    """One run per seed and split, all with the settings of the first (:func:`shared_settings`)."""
    keys = [(r["entry"]["split"], r["entry"]["seed"]) for r in runs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise FedmolError(f"two runs with split {dup[0][0]} and seed {dup[0][1]}: one run per seed and split")
    first = runs[0]
    shared = shared_settings(first["entry"]["config"])
    for r in runs[1:]:
        other = shared_settings(r["entry"]["config"])
        if other != shared:
            diff = sorted(k for k in set(shared) | set(other) if shared.get(k) != other.get(k))
            raise FedmolError(f"{r['dir']} differs from {first['dir']} in {', '.join(diff)}: a submission is one "
                              "method with one configuration, run with different seeds")


def submit(run_dirs: list[str | Path], name: str, out: str | Path, *, track: str | None = None,
           tracks_file: str | Path | None = None, splits_dir: str | Path | None = None,
           created: str | None = None) -> dict:
    """Pack ``run_dirs`` into the archive ``out``, dated ``created`` (``YYYY-MM-DD``, default: today in
    UTC); returns the manifest (a dict)."""
    if not run_dirs:
        raise FedmolError("give at least one run folder")
    splits_dir = Path(splits_dir) if splits_dir is not None else default_splits_dir()
    index = frozen_split_index(splits_dir)
    runs = [read_run(Path(d), splits_dir, index) for d in run_dirs]
    runs.sort(key=lambda r: (r["entry"]["split"], r["entry"]["seed"]))
    _check_one_configuration(runs)
    first = runs[0]
    tracks = load_tracks(tracks_file)
    matched, reasons = match_track(tracks, [r["entry"] for r in runs], track)
    commit, dirty = git_commit()
    cfg0 = first["entry"]["config"]
    summary0 = first["summary"]
    entries = []
    files: dict[str, bytes] = {}
    for i, r in enumerate(runs):
        rid = f"{i:02d}"
        wpath, ppath = f"runs/{rid}/model.safetensors", f"runs/{rid}/test_predictions.csv"
        files[wpath], files[ppath] = r["weights"], r["predictions"]
        entries.append(dict(id=rid, **r["entry"],
                            weights=dict(path=wpath, sha256=_sha(r["weights"]), bytes=len(r["weights"])),
                            predictions=dict(path=ppath, sha256=_sha(r["predictions"]),
                                             bytes=len(r["predictions"]))))
    manifest = dict(
        schema_version=SCHEMA_VERSION, name=name, created=created or utc_today(), track=matched,
        status="ranked" if matched is not None and not reasons else "unranked", unranked_reasons=reasons,
        algorithm=cfg0["algorithm"]["name"], dataset=summary0["dataset"], task_type=cfg0["model"]["task_type"],
        metric=summary0["metric"],
        provenance=dict(fedmol=fedmol.__version__, commit=commit, commit_dirty=dirty,
                        python=platform.python_version(), torch=cfg0["versions"]["torch"],
                        rdkit=cfg0["versions"]["rdkit"], featurizer=FEATURIZER_VERSION,
                        numerics=cfg0["versions"].get("numerics")),
        splits=[dict(path=s, sha256=next(k for k, v in index.items() if v == s))
                for s in sorted({e["split"] for e in entries})],
        hparams=cfg0["algorithm"]["hparams"], seeds=sorted({e["seed"] for e in entries}), runs=entries,
    )
    manifest = _validated(Manifest, manifest, "the manifest does not validate")
    files["manifest.json"] = (to_json(manifest, indent=1) + "\n").encode()
    write_zip(Path(out), files)
    return manifest


def write_zip(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as a deflated zip with fixed timestamps and modes, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in ["manifest.json"] + sorted(n for n in files if n != "manifest.json"):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, files[name])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
