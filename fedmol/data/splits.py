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

A *task split* (``make_split(..., task_split="disjoint"|"overlap")``) also deals the dataset's tasks
to the partners: the spec gets ``task_split``: ``{"mode": "disjoint"|"overlap", "holders_per_task": M}``
(disjoint: ``M = 1``) and each partner ``"tasks"``: the names of the tasks it holds, in the
dataset's column order. A partner sees labels only for its own tasks (:func:`partner_subsets`
masks the others to NaN in its train and validation sets); the global test set keeps every task.
The deal (:func:`deal_tasks`): ``rng = numpy.random.default_rng([seed, TASKS_SALT])``, ``order =
rng.permutation(T)``, ``ranks = rng.permutation(K)``; place ``j`` of ``0..T*M-1`` gives task
``order[j // M]`` to partner ``ranks[j % K]`` (round-robin, so every partner holds ``floor`` or
``ceil`` of ``T*M/K`` tasks, and a task's ``M <= K`` holders are distinct). Without a task split
neither key is written, so such files are unchanged. A *target-aware* task split (``target_aware=True``,
``"target_aware": true`` in ``task_split``) also sends every molecule to a partner holding one of its
labelled tasks (the partitioner's step 4c, docs/partition.md): for sparse multi-assay tables such as
MoleculeACE each partner then holds its own targets' compounds.
``report``
    the heterogeneity report (sizes, scaffolds, label balance, pairwise divergences).
``sha256``
    sha256 of the canonical JSON (sorted keys, no spaces) of every other field.

A split file is untrusted input (it may come with a leaderboard submission or from a partner):
:func:`read_split` validates its structure with pydantic and checks its hash before use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import rdkit
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedmol.atomic import write_atomic
from fedmol.data.dataset import MoleculeDataset, load_dataset
from fedmol.data.featurize import FEATURIZER_VERSION
from fedmol.data.heterogeneity import heterogeneity_report, single_class_warnings
from fedmol.data.partition import ALGORITHM, Partition, PartnerSplit, scaffold_partition
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
    tasks: list[str] | None = None


class TaskSplit(_Strict):
    mode: Literal["disjoint", "overlap"]
    holders_per_task: int = Field(ge=1)
    target_aware: Optional[bool] = None


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
    task_split: TaskSplit | None = None


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
    return write_atomic(path, dumps(obj) + "\n")


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
    _check_task_lists(path, obj)
    return obj


def _check_task_lists(path: Path, obj: dict) -> None:
    """A task split's file gives every partner a task list; any other file gives none."""
    held = [p.get("tasks") for p in obj["partners"]]
    if obj["spec"].get("task_split") is None:
        if any(t is not None for t in held):
            raise DataError(f"{path}: partners list tasks but the spec has no task_split")
    elif any(not t for t in held):
        raise DataError(f"{path}: the spec has a task_split but a partner lists no tasks")


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
               test_fraction: float = 0.1, valid_fraction: float = 0.1, progress: bool = True,
               task_split: str | None = None, holders_per_task: int | None = None, target_aware: bool = False) -> dict:
    """Deal ``ds`` to ``partners`` simulated partners by scaffold; return the split file's content.
    With ``task_split`` ("disjoint" | "overlap", ``holders_per_task`` partners per task, default 2
    for overlap) its tasks are dealt too (:func:`deal_tasks`); ``target_aware`` then sends every
    molecule to a partner holding one of its labelled tasks (docs/task_splits.md)."""
    held = _task_deal(ds, partners, seed, task_split, holders_per_task)  # a bad task split fails before any work
    if target_aware and held is None:
        raise DataError("--target-aware deals each molecule to a holder of its tasks: it needs --task-split")
    scaffolds = dataset_scaffolds(ds, progress=progress)
    y = ds.labels
    holders = held[2] if target_aware else None
    part = scaffold_partition(scaffolds, y, ds.task_type, n_partners=partners, alpha=alpha, seed=seed,
                               quantity_skew=quantity_skew, test_fraction=test_fraction,
                               valid_fraction=valid_fraction, holders=holders)
    rows = ds.rows
    spec = dict(dataset=ds.name, source_sha256=ds.source_sha256, featurizer_version=FEATURIZER_VERSION,
                rdkit_version=rdkit.__version__, partners=int(partners), alpha=float(alpha), seed=int(seed),
                quantity_skew=float(quantity_skew), test_fraction=float(test_fraction),
                valid_fraction=float(valid_fraction), method=METHOD)
    if ds.info.is_custom:
        spec["csv"] = dict(file=Path(ds.info.file).name, smiles_col=ds.info.smiles_col,
                           target_cols=list(ds.info.tasks), task=ds.task_type)
    deal = [dict(train=_rows(rows, p.train), valid=_rows(rows, p.valid)) for p in part.partners]
    if held is not None:
        spec["task_split"] = dict(held[0], **({"target_aware": True} if target_aware else {}))
        deal = [dict(d, tasks=t) for d, t in zip(deal, held[1])]
    return dict(format=FORMAT, spec=spec, partners=deal, test=_rows(rows, part.test),
                report=heterogeneity_report(part, scaffolds, y, ds.task_type))


# -- task splits -------------------------------------------------------------------------------------
TASK_SPLITS = ("disjoint", "overlap")
#: mixed into the split seed for the task deal (``int.from_bytes(b"tasks", "big")``)
TASKS_SALT = int.from_bytes(b"tasks", "big")


def deal_tasks(n_tasks: int, partners: int, holders_per_task: int, seed: int) -> list[list[int]]:
    """The task indices each of ``partners`` partners holds: every task held by ``holders_per_task``
    distinct partners, dealt round-robin over seeded permutations (module docstring); each list sorted."""
    rng = np.random.default_rng([int(seed), TASKS_SALT])
    order, ranks = rng.permutation(n_tasks), rng.permutation(partners)
    held: list[list[int]] = [[] for _ in range(partners)]
    for j in range(n_tasks * holders_per_task):
        held[int(ranks[j % partners])].append(int(order[j // holders_per_task]))
    return [sorted(h) for h in held]


def check_task_split(name: str, n_tasks: int, partners: int, mode: str | None,
                     holders_per_task: int | None) -> int | None:
    """The holders per task of a task split (None without one); a split that cannot be made is a
    one-line :class:`DataError` saying why."""
    if mode is None:
        if holders_per_task is not None:
            raise DataError("--holders-per-task needs --task-split overlap")
        return None
    if mode not in TASK_SPLITS:
        raise DataError(f"unknown task split {mode!r}; known: {', '.join(TASK_SPLITS)}")
    if n_tasks < 2:
        raise DataError(f"a task split deals tasks to partners, but {name} has a single task: use a multi-task "
                        "dataset (e.g. tox21, sider)")
    if mode == "disjoint":
        if holders_per_task not in (None, 1):
            raise DataError("--holders-per-task applies to --task-split overlap (disjoint: one holder per task)")
        if n_tasks < partners:
            raise DataError(f"--task-split disjoint needs at least as many tasks as partners: {name} has {n_tasks} "
                            f"tasks for {partners} partners (use --partners {n_tasks} or fewer, or --task-split overlap)")
        return 1
    m = 2 if holders_per_task is None else holders_per_task
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= partners:
        raise DataError(f"--holders-per-task must be an integer in [1, {partners}] (the partners), got {m!r}")
    if n_tasks * m < partners:
        raise DataError(f"--task-split overlap with {m} holder(s) per task gives {name}'s {n_tasks} tasks to "
                        f"{n_tasks * m} of {partners} partners: every partner needs a task "
                        f"(use --holders-per-task {math.ceil(partners / n_tasks)} or more)")
    return m


def _task_deal(ds: MoleculeDataset, partners: int, seed: int, mode: str | None,
               holders_per_task: int | None) -> tuple[dict, list[list[str]], list[list[int]]] | None:
    """The spec's ``task_split``, each partner's task names and their indices, or None without a task split."""
    m = check_task_split(ds.name, ds.num_tasks, int(partners), mode, holders_per_task)
    if m is None:
        return None
    names = list(ds.info.tasks)
    held = deal_tasks(len(names), int(partners), m, seed)
    return dict(mode=mode, holders_per_task=m), [[names[t] for t in h] for h in held], held


def split_tasks(split: dict, ds: MoleculeDataset) -> list[list[int]] | None:
    """The task indices (of ``ds``) each partner of a task split holds; None for a split without one."""
    if split["spec"].get("task_split") is None:
        return None
    index = {t: i for i, t in enumerate(ds.info.tasks)}
    unknown = sorted({t for p in split["partners"] for t in p["tasks"]} - set(index))
    if unknown:
        raise DataError(f"the split's partners hold task(s) {unknown[:5]} that {ds.name} does not have")
    return [[index[t] for t in p["tasks"]] for p in split["partners"]]


def _with_labels(subset: MoleculeDataset, y: torch.Tensor) -> MoleculeDataset:
    """``subset`` reading its labels from ``y`` (the stored label tensor, copied and edited); the graphs
    and fingerprints are shared, so the dataset and its other subsets keep their labels."""
    out, data = copy.copy(subset), copy.copy(subset._data)
    data.y = y
    out._data, out._data_list = data, None  # items cached before would carry the unmasked labels
    return out


def _not_held(held: list[int], num_tasks: int) -> list[int]:
    return [t for t in range(num_tasks) if t not in set(held)]


def mask_tasks(subset: MoleculeDataset, held: list[int]) -> MoleculeDataset:
    """``subset`` with its labels NaN outside the task indices ``held``."""
    y = subset._data.y.clone()
    y[:, _not_held(held, y.shape[1])] = float("nan")
    return _with_labels(subset, y)


def pooled_subset(split: dict, ds: MoleculeDataset, part: str) -> MoleculeDataset:
    """Every partner's ``part`` (``"train"`` or ``"valid"``) molecules as one dataset, source rows in
    ascending order; in a task split each molecule is labelled only on its own partner's tasks, so a
    pooled model (the centralized reference) or a pooled validation score sees what the partners hold
    together, never a label no partner has."""
    pooled = ds.select_rows(sorted(int(r) for p in split["partners"] for r in p[part]))
    tasks = split_tasks(split, ds)
    if tasks is None:
        return pooled
    y = pooled._data.y.clone()
    for k, p in enumerate(split["partners"]):
        positions = torch.as_tensor(ds.positions(p[part]), dtype=torch.long)
        others = torch.as_tensor(_not_held(tasks[k], y.shape[1]), dtype=torch.long)
        if len(positions) and len(others):
            y[positions.unsqueeze(1), others] = float("nan")
    return _with_labels(pooled, y)


def partner_subsets(split: dict, ds: MoleculeDataset) -> list[tuple[MoleculeDataset, MoleculeDataset]]:
    """Each partner's ``(train, valid)`` subsets of ``ds``; in a task split, labelled only on the
    partner's own tasks."""
    tasks = split_tasks(split, ds)
    out = []
    for k, p in enumerate(split["partners"]):
        train, valid = ds.select_rows(p["train"]), ds.select_rows(p["valid"])
        if tasks is not None:
            train, valid = mask_tasks(train, tasks[k]), mask_tasks(valid, tasks[k])
        out.append((train, valid))
    return out


def _rows(rows: np.ndarray, positions) -> list[int]:
    return sorted(int(r) for r in rows[np.asarray(positions, dtype=np.int64)])


def class_warnings(split: dict, ds: MoleculeDataset) -> list[str]:
    """The lines of :func:`fedmol.data.heterogeneity.single_class_warnings` for a split file's content
    and the dataset it was made from (``[]`` for regression): partners' validation sets and the
    global test set where a classification task has one class only, so ROC-AUC is undefined there
    (in a task split, a partner's lines for the tasks it holds only)."""
    pos = ds.positions
    part = Partition(partners=[PartnerSplit(pos(p["train"]), pos(p["valid"])) for p in split["partners"]],
                     test=pos(split["test"]))
    lines = single_class_warnings(part, ds.labels, ds.task_type)
    tasks = split_tasks(split, ds)
    if tasks is None:
        return lines
    held = [re.match(r"partner (\d+): .* for task (\d+):", line) for line in lines]  # a task split: a partner's
    return [line for line, m in zip(lines, held) if m is None or int(m[2]) in tasks[int(m[1])]]  # own tasks only


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
    ts = spec.get("task_split") or {}
    rebuilt = make_split(ds, spec["partners"], spec["alpha"], spec["seed"], spec["quantity_skew"],
                         spec["test_fraction"], spec["valid_fraction"], progress=progress,
                         task_split=ts.get("mode"), holders_per_task=ts.get("holders_per_task"),
                         target_aware=bool(ts.get("target_aware", False)))
    for key in ("partners", "test", "report"):
        if json.dumps(rebuilt[key], sort_keys=True) != json.dumps(split[key], sort_keys=True):
            problems.append(f"rebuilding from the spec gives a different {key!r}")
    return problems, notes


# -- the canonical set -------------------------------------------------------------------------------
CANONICAL_PARTNERS = (4, 8, 16)
CANONICAL_ALPHAS = (0.1, 1.0, 100.0)


TASK_CANONICAL_PARTNERS = (4, 8)
TASK_CANONICAL_ALPHAS = (1.0,)
TASK_CANONICAL_DATASETS = ("tox21", "sider")
#: the index of the canonical task splits (beside ``index.json``, which lists the scaffold-only ones)
TASK_INDEX = "tasks_index.json"


def canonical_name(dataset: str, partners: int, alpha: float, seed: int = 0, task_split: str | None = None) -> str:
    """``<dataset>/K<K>-a<alpha>-s<seed>.json``, e.g. ``bbbp/K4-a0.1-s0.json``; a task split (disjoint,
    or overlap with 2 holders per task) in ``<dataset>/tasks/``: ``tox21/tasks/K8-a1-s0-disjoint.json``."""
    stem = f"K{partners}-a{alpha:g}-s{seed}"
    if task_split is None:
        return f"{dataset}/{stem}.json"
    return f"{dataset}/tasks/{stem}-{'disjoint' if task_split == 'disjoint' else 'overlap2'}.json"


def make_canonical(out_dir: str | Path, datasets=None, partners=None, alphas=None, seed: int = 0, data_dir=None,
                   progress: bool = True, task_split: str | None = None) -> list[dict]:
    """(Re)build the canonical split files under ``out_dir``; return one record per combination,
    with ``error`` set where a combination is infeasible (e.g. too few scaffold groups). With
    ``task_split`` the canonical task splits (Tox21 and SIDER, K 4 and 8, alpha 1 by default)."""
    from fedmol.data.registry import DATASETS

    tasks = task_split is not None
    datasets = datasets or (TASK_CANONICAL_DATASETS if tasks else list(DATASETS))
    partners = partners or (TASK_CANONICAL_PARTNERS if tasks else CANONICAL_PARTNERS)
    alphas = alphas or (TASK_CANONICAL_ALPHAS if tasks else CANONICAL_ALPHAS)
    records = []
    for name in datasets:
        ds = load_dataset(name, data_dir=data_dir, progress=progress)
        for k in partners:
            for a in alphas:
                records.append(_canonical_one(Path(out_dir), ds, k, a, seed, task_split, progress))
    return records


def _canonical_one(out_dir: Path, ds: MoleculeDataset, k: int, a: float, seed: int, task_split: str | None,
                   progress: bool) -> dict:
    rel = canonical_name(ds.name, k, a, seed, task_split)
    rec = dict(dataset=ds.name, partners=k, alpha=a, seed=seed, file=rel)
    if task_split is not None:
        rec["task_split"] = task_split
    try:
        obj = make_split(ds, k, a, seed, progress=progress, task_split=task_split)
        write_split(obj, out_dir / rel)
        rec["sha256"] = read_split(out_dir / rel)["sha256"]
        rec["mean_pairwise_divergence"] = obj["report"].get("mean_pairwise_divergence")
    except DataError as e:
        rec["error"] = str(e)
    return rec
