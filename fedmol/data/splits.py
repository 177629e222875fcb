"""Frozen split files: make, write, read, verify.

A split file is the canonical, checkable record of how one dataset was dealt to K simulated
partners (the algorithm is :mod:`fedmol.data.partition`). It is JSON:

``format``
    ``"fedmol-split/1"``.
``spec``
    everything needed to rebuild it: ``dataset``, ``source_sha256``, ``featurizer_version``,
    ``rdkit_version``, ``partners`` (K), ``alpha``, ``seed``, ``quantity_skew``, ``test_fraction``,
    ``valid_fraction``, ``method``; for a user CSV also ``csv`` (file name and column choice).
``partners``
    a list of ``{"train": [...], "valid": [...]}``, and ``test``: ``[...]`` -- all as 0-based data
    row numbers of the source table (never dataset positions: invalid rows simply never appear).
``report``
    the heterogeneity report (sizes, scaffolds, label balance, pairwise divergences).
``sha256``
    sha256 of the canonical JSON (sorted keys, no spaces) of every other field.

A split file is untrusted input (it may come with a leaderboard submission or from a partner):
:func:`read_split` validates its structure with pydantic and checks its hash before use.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import rdkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedmol.data.dataset import MoleculeDataset, load_dataset
from fedmol.data.featurize import FEATURIZER_VERSION
from fedmol.data.partition import (ALGORITHM, Partition, PartnerSplit, heterogeneity_report, scaffold_partition,
                                   single_class_warnings)
from fedmol.data.scaffold import murcko_scaffolds
from fedmol.errors import DataError
from fedmol.jsonio import to_json, write_json

FORMAT = "fedmol-split/1"
METHOD = ALGORITHM
MAX_SPLIT_BYTES = 64 << 20


# -- schema (untrusted input) ----------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartnerRows(_Strict):
    train: list[int]
    valid: list[int]


class SplitSpec(_Strict):
    dataset: str
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    featurizer_version: str
    rdkit_version: str
    partners: int = Field(ge=1)
    alpha: float = Field(gt=0)
    seed: int
    quantity_skew: float = Field(ge=0)
    test_fraction: float = Field(gt=0, lt=1)
    valid_fraction: float = Field(gt=0, lt=1)
    method: str
    csv: dict[str, Any] | None = None


class SplitFile(_Strict):
    format: str
    spec: SplitSpec
    partners: list[PartnerRows]
    test: list[int]
    report: dict[str, Any]
    sha256: str


# -- hashing and files -----------------------------------------------------------------------------
def content_sha256(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dumps(obj: dict) -> str:
    """Readable JSON with every list of plain values on one line (keeps split files small)."""
    text = to_json(obj, indent=1)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + ",".join(p.strip() for p in m.group(1).split(",")) + "]"
                  if m.group(1).strip() else "[]", text)


def write_split(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = dict(obj, sha256=content_sha256(obj))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(obj) + "\n")
    tmp.replace(path)
    return path


def read_split(path: str | Path) -> dict:
    """Read and validate a split file; a broken, tampered or foreign file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    if path.stat().st_size > MAX_SPLIT_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes is too large for a split file")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to be a fedmol split file") from None
    try:
        SplitFile.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(f"{path} is not a fedmol split file: {where}: {first['msg']} ({e.error_count()} problem(s))") from e
    if obj["format"] != FORMAT:
        raise DataError(f"{path}: unsupported split format {obj['format']!r} (this fedmol reads {FORMAT!r})")
    if content_sha256(obj) != obj["sha256"]:
        raise DataError(f"{path}: content sha256 does not match the recorded one: the file was edited or corrupted")
    groups = [p["train"] for p in obj["partners"]] + [p["valid"] for p in obj["partners"]] + [obj["test"]]
    flat = [r for g in groups for r in g]
    if len(flat) != len(set(flat)):
        raise DataError(f"{path}: a row appears in more than one partner/part of the split")
    if any(r < 0 for r in flat):
        raise DataError(f"{path}: negative row numbers")
    return obj


# -- making ----------------------------------------------------------------------------------------
def dataset_scaffolds(ds: MoleculeDataset, progress: bool = True) -> list[str]:
    """Bemis-Murcko scaffolds of every molecule of ``ds`` (cached beside the processed data)."""
    cache = Path(ds.cache_path) / "scaffolds.json" if ds.cache_path else None
    if cache is not None and cache.is_file():
        try:
            scaffolds = json.loads(cache.read_text())
            if isinstance(scaffolds, list) and len(scaffolds) == len(ds):
                return scaffolds
        except (OSError, json.JSONDecodeError):
            pass
    scaffolds = murcko_scaffolds(ds.smiles, progress=progress)
    if cache is not None:
        try:
            write_json(cache, scaffolds, indent=None)
        except OSError:
            pass
    return scaffolds


def make_split(ds: MoleculeDataset, partners: int, alpha: float, seed: int = 0, quantity_skew: float = 0.0,
               test_fraction: float = 0.1, valid_fraction: float = 0.1, progress: bool = True) -> dict:
    """Deal ``ds`` to ``partners`` simulated partners by scaffold; return the split file's content."""
    scaffolds = dataset_scaffolds(ds, progress=progress)
    y = ds.labels
    part = scaffold_partition(scaffolds, y, ds.task_type, n_partners=partners, alpha=alpha, seed=seed,
                               quantity_skew=quantity_skew, test_fraction=test_fraction,
                               valid_fraction=valid_fraction)
    rows = ds.rows
    spec = dict(dataset=ds.name, source_sha256=ds.source_sha256, featurizer_version=FEATURIZER_VERSION,
                rdkit_version=rdkit.__version__, partners=int(partners), alpha=float(alpha), seed=int(seed),
                quantity_skew=float(quantity_skew), test_fraction=float(test_fraction),
                valid_fraction=float(valid_fraction), method=METHOD)
    if ds.info.is_custom:
        spec["csv"] = dict(file=Path(ds.info.file).name, smiles_col=ds.info.smiles_col,
                           target_cols=list(ds.info.tasks), task=ds.task_type)
    return dict(
        format=FORMAT,
        spec=spec,
        partners=[dict(train=_rows(rows, p.train), valid=_rows(rows, p.valid)) for p in part.partners],
        test=_rows(rows, part.test),
        report=heterogeneity_report(part, scaffolds, y, ds.task_type),
    )


def _rows(rows: np.ndarray, positions) -> list[int]:
    return sorted(int(r) for r in rows[np.asarray(positions, dtype=np.int64)])


def class_warnings(split: dict, ds: MoleculeDataset) -> list[str]:
    """The lines of :func:`fedmol.data.partition.single_class_warnings` for a split file's content
    and the dataset it was made from (``[]`` for regression): partners' validation sets and the
    global test set where a classification task has one class only, so ROC-AUC is undefined there."""
    pos = ds.positions
    part = Partition(partners=[PartnerSplit(pos(p["train"]), pos(p["valid"])) for p in split["partners"]],
                     test=pos(split["test"]))
    return single_class_warnings(part, ds.labels, ds.task_type)


def dataset_for_split(split: dict, data_dir=None, csv=None, progress: bool = True) -> MoleculeDataset:
    """Load the dataset a split was made from, checking it is the same file (sha256)."""
    spec = split["spec"]
    if spec.get("csv"):
        if csv is None:
            raise DataError(f"this split was made from a CSV ({spec['csv']['file']}): pass it with --csv")
        c = spec["csv"]
        ds = load_dataset(csv=csv, smiles_col=c["smiles_col"], target_cols=c["target_cols"], task=c["task"],
                          progress=progress)
    else:
        ds = load_dataset(spec["dataset"], data_dir=data_dir, progress=progress)
    if ds.source_sha256 != spec["source_sha256"]:
        raise DataError(f"the split was made from {spec['dataset']} with sha256 {spec['source_sha256']}, "
                        f"but the file found has {ds.source_sha256}")
    return ds


def verify_split(path: str | Path, data_dir=None, csv=None, progress: bool = True) -> tuple[list[str], list[str]]:
    """Check the file's own hash, its source file's hash, and that rebuilding from the spec gives
    the same content. Return ``(problems, notes)``: it verifies when ``problems`` is empty."""
    split = read_split(path)
    spec = split["spec"]
    problems, notes = [], []
    if spec["method"] != METHOD:
        return [f"method {spec['method']!r} is not this fedmol's {METHOD!r}"], notes
    if spec["featurizer_version"] != FEATURIZER_VERSION:
        notes.append(f"made with featurizer {spec['featurizer_version']}, this fedmol has {FEATURIZER_VERSION}")
    if spec["rdkit_version"] != rdkit.__version__:
        notes.append(f"made with RDKit {spec['rdkit_version']}, rebuilt with {rdkit.__version__}")
    ds = dataset_for_split(split, data_dir, csv, progress)
    rebuilt = make_split(ds, spec["partners"], spec["alpha"], spec["seed"], spec["quantity_skew"],
                         spec["test_fraction"], spec["valid_fraction"], progress=progress)
    for key in ("partners", "test", "report"):
        if json.dumps(rebuilt[key], sort_keys=True) != json.dumps(split[key], sort_keys=True):
            problems.append(f"rebuilding from the spec gives a different {key!r}")
    return problems, notes


# -- the canonical set -------------------------------------------------------------------------------
CANONICAL_PARTNERS = (4, 8, 16)
CANONICAL_ALPHAS = (0.1, 1.0, 100.0)


def canonical_name(dataset: str, partners: int, alpha: float, seed: int = 0) -> str:
    """``<dataset>/K<K>-a<alpha>-s<seed>.json``, e.g. ``bbbp/K4-a0.1-s0.json``."""
    return f"{dataset}/K{partners}-a{alpha:g}-s{seed}.json"


def make_canonical(out_dir: str | Path, datasets=None, partners=CANONICAL_PARTNERS, alphas=CANONICAL_ALPHAS,
                   seed: int = 0, data_dir=None, progress: bool = True) -> list[dict]:
    """(Re)build the canonical split files under ``out_dir``; return one record per combination,
    with ``error`` set where a combination is infeasible (e.g. too few scaffold groups)."""
    from fedmol.data.registry import DATASETS

    out_dir = Path(out_dir)
    records = []
    for name in datasets or list(DATASETS):
        ds = load_dataset(name, data_dir=data_dir, progress=progress)
        for k in partners:
            for a in alphas:
                rel = canonical_name(name, k, a, seed)
                rec = dict(dataset=name, partners=k, alpha=a, seed=seed, file=rel)
                try:
                    obj = make_split(ds, k, a, seed, progress=progress)
                    write_split(obj, out_dir / rel)
                    rec["sha256"] = read_split(out_dir / rel)["sha256"]
                    rec["mean_pairwise_divergence"] = obj["report"].get("mean_pairwise_divergence")
                except DataError as e:
                    rec["error"] = str(e)
                records.append(rec)
    return records
