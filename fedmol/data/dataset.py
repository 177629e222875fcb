"""Load a registry dataset or a partner's CSV as torch-geometric graphs, cached.

``load_dataset(name_or_csv, ...)`` reads the table, featurizes every SMILES with the OGB-compatible
featurizer (parallel, progress bar), and returns a :class:`MoleculeDataset`, an
``InMemoryDataset`` whose items are ``Data(x, edge_index, edge_attr, y[1, T] with NaN for missing
labels, smiles, row)``. ``row`` is the 0-based data row of the source table (header excluded):
split files, reports and submissions all speak in these row numbers, never in dataset positions.

Invalid or empty SMILES are never dropped silently: the dataset holds only valid molecules, and
``dataset.report`` counts the rows, valid, invalid (each with row, SMILES and reason, also written
to ``invalid_rows.csv`` beside the cache) and duplicated SMILES (exact text repeats of an earlier
valid row's SMILES). A regression label that is not a finite number (``inf``, ``1e400``, beyond
float32) makes its row invalid (listed with the reason, counted in ``invalid_labels`` too). Labels
that are not numbers, classification labels that are not 0/1, a target column without any label,
duplicate column names and files that are not UTF-8 text tables are an error (one line that names
the rows, columns or what the file is).

Processed tensors are cached under ``$FEDMOL_CACHE_DIR/processed/`` (safetensors + JSON, nothing
pickled), keyed by the source file's sha256, the featurizer version, the RDKit version and (for
CSVs) the column choice. A cached reload does no RDKit work.
"""

from __future__ import annotations

import csv as csvlib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rdkit
import torch
from safetensors.torch import load_file, save_file
from torch_geometric.data import Data, InMemoryDataset

from fedmol.atomic import atomic_path
from fedmol.data import moleculeace
from fedmol.data.featurize import FEATURIZER_VERSION, featurize_smiles
from fedmol.data.registry import DatasetInfo, csv_info, get_info
from fedmol.data.sources import cache_dir, resolve_file
from fedmol.errors import DataError

CACHE_FORMAT = 2  # 2: internal whitespace and non-finite labels make a row invalid


@dataclass
class FeaturizationReport:
    rows: int
    valid: int
    invalid: int
    duplicates: int
    unlabeled: int
    invalid_rows: list[dict] = field(default_factory=list)
    #: of the invalid rows, those with a label that is not a finite number (``inf``, ``1e400``)
    invalid_labels: int = 0

    def to_dict(self) -> dict:
        return dict(rows=self.rows, valid=self.valid, invalid=self.invalid, duplicates=self.duplicates,
                    unlabeled=self.unlabeled, invalid_rows=self.invalid_rows, invalid_labels=self.invalid_labels)


def _reason_kind(reason: str) -> str:
    """The kind of an invalid row's reason, for a summary: ``"RDKit could not parse"``, ``"empty SMILES"``,
    ``"whitespace inside the SMILES"``, ``"label 'y' is not a finite number"``, ..."""
    return reason.split(": ")[0].split(" (")[0]


class NoValidMolecule(DataError):
    """Every row of a table is invalid. ``invalid_rows`` lists each with its reason (also written to
    ``listed`` when there is one); the message counts the rows per kind of reason."""

    def __init__(self, path, invalid_rows: list[dict], listed: Path | None = None):
        self.path, self.invalid_rows, self.listed = path, invalid_rows, listed
        kinds: dict[str, int] = {}
        for r in invalid_rows:
            kinds[_reason_kind(r["reason"])] = kinds.get(_reason_kind(r["reason"]), 0) + 1
        summary = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        first = invalid_rows[0] if invalid_rows else None
        where = (f"; every row with its reason: {listed}" if listed
                 else f"; first: row {first['row']}: {first['reason']}" if first else "")
        super().__init__(f"{path}: no valid molecule in {len(invalid_rows)} rows ({summary}){where}")

    def listed_in(self, listed: Path) -> "NoValidMolecule":
        return NoValidMolecule(self.path, self.invalid_rows, listed)


class MoleculeDataset(InMemoryDataset):
    """Valid molecules of one source table, as graphs. Not built directly: use :func:`load_dataset`."""

    def __init__(self, info: DatasetInfo, data: Data, slices: dict, smiles: list[str], report: FeaturizationReport,
                 source_sha256: str, source_path: str, cache_path: str | None = None):
        super().__init__(root=None, log=False)
        self._data, self.slices = data, slices
        self.info = info
        self._smiles = smiles
        self.report = report
        self.source_sha256 = source_sha256
        self.source_path = source_path
        self.cache_path = cache_path
        self._row_to_pos = {int(r): i for i, r in enumerate(data.row.tolist())}

    # -- facts -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def task_type(self) -> str:
        return self.info.task_type

    @property
    def num_tasks(self) -> int:
        return self.info.num_tasks

    def _subset(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._indices is None else t[torch.as_tensor(list(self.indices()), dtype=torch.long)]

    @property
    def rows(self) -> np.ndarray:
        """Source row number of every molecule, in dataset order (of this subset, if it is one)."""
        return self._subset(self._data.row).numpy()

    def duplicated_smiles(self) -> list[dict]:
        """``[{smiles, rows}]``: each SMILES text that more than one molecule holds, with their source
        rows (0-based data rows, as invalid rows are numbered), in order of first appearance."""
        rows: dict[str, list[int]] = {}
        for s, r in zip(self.smiles, self.rows):
            rows.setdefault(s, []).append(int(r))
        return [dict(smiles=s, rows=r) for s, r in rows.items() if len(r) > 1]

    @property
    def labels(self) -> np.ndarray:
        """Labels, shape (n, num_tasks), NaN where missing (of this subset, if it is one)."""
        return self._subset(self._data.y).numpy()

    @property
    def smiles(self) -> list[str]:
        if self._indices is None:
            return self._smiles
        return [self._smiles[i] for i in self.indices()]

    def positions(self, rows) -> np.ndarray:
        """Positions in the full dataset of the given source rows; an error names rows that are not
        valid molecules. (Use on the full dataset: :meth:`select_rows` indexes the full dataset.)"""
        rows = [int(r) for r in rows]
        missing = [r for r in rows if r not in self._row_to_pos]
        if missing:
            raise DataError(f"{len(missing)} row(s) of {self.name} are not valid molecules of this dataset "
                            f"(first: {missing[:5]}); the split does not match this data")
        return np.fromiter((self._row_to_pos[r] for r in rows), dtype=np.int64, count=len(rows))

    def select_rows(self, rows) -> "MoleculeDataset":
        """The subset holding exactly these source rows, in the given order."""
        return self.index_select(torch.as_tensor(self.positions(rows)))

    def __repr__(self) -> str:
        return f"MoleculeDataset({self.name}, {len(self)} molecules, {self.num_tasks} tasks, {self.task_type})"


# -- reading the table ---------------------------------------------------------------------------
#: Signatures of files that are not text tables (what a partner may export by mistake).
_NOT_TEXT = ((b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
             (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one)", "unpack it, or export the sheet as CSV"),
             (b"BZh", "bzip2-compressed", "decompress it first (bunzip2)"),
             (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
             (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
             (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"))
#: Largest magnitude a label may have: labels are stored as float32.
_MAX_LABEL = float(np.finfo(np.float32).max)


def _table_text(path: Path, kind: str) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); a compressed, binary or non-UTF-8 file
    is a one-line :class:`DataError` that says what it is and what to do."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError as e:
        raise DataError(f"{path} is a directory, not a {kind} file") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    for magic, what, fix in _NOT_TEXT:
        if data.startswith(magic):
            raise DataError(f"{path} is {what}, not a plain {kind} table: {fix}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (line {line}: byte {data[e.start:e.start + 1]!r}): save it as "
                        "UTF-8 (in Excel: CSV UTF-8)") from e
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path} holds a NUL byte (line {line}): it is a binary file, not a {kind} table")
    return text


def _header(text: str, sep: str) -> list[str]:
    """The header's column names exactly as written (pandas renames a repeated name ``a`` to ``a.1``)."""
    head = pd.read_csv(io.StringIO(text), sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                       na_values=[], quoting=csvlib.QUOTE_MINIMAL)
    return [str(c) for c in head.iloc[0].tolist()] if len(head) else []


def _read_frame(info: DatasetInfo, path: Path) -> pd.DataFrame:
    kind = "TSV" if info.sep == "\t" else "CSV"
    text = moleculeace.table_text(path, info.tasks) if moleculeace.is_archive(info.file) else _table_text(path, kind)
    try:
        names = _header(text, info.sep)
        df = pd.read_csv(io.StringIO(text), sep=info.sep, dtype=str, keep_default_na=False, na_values=[],
                         quoting=csvlib.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise DataError(f"could not read {path} as a {kind} table: {' '.join(str(e).split())}") from e
    counts: dict[str, int] = {}
    for n in names:
        if n.strip():
            counts[n] = counts.get(n, 0) + 1
    dups = [n for n, c in counts.items() if c > 1]
    if dups:
        raise DataError(f"{path}: duplicate column name(s) {dups} in the header: rename them so that every "
                        "column has its own name")
    if not isinstance(df.index, pd.RangeIndex):
        raise DataError(f"{path}: the data rows have more fields than the header has names ({len(names)}): "
                        "give every column a name")
    return df


def _columns_hint(cols: list[str], sep: str) -> str:
    """Why the wanted columns may be missing: one column whose name holds another delimiter."""
    if len(cols) == 1:
        for other, label in ((";", "';'"), ("\t", "tabs"), (",", "','"), ("|", "'|'")):
            if other != sep and other in cols[0]:
                expected = "tabs" if sep == "\t" else repr(sep)
                return (f" (the file seems separated by {label}; fedmol reads {expected} in a "
                        f"{'.tsv/.tab' if sep == chr(9) else '.csv'} file)")
    return ""


def read_table(info: DatasetInfo, path: Path) -> tuple[list, np.ndarray]:
    """Return (SMILES per row, labels float32 (rows, tasks) with NaN) from the source file."""
    smiles, y, _ = read_table_checked(info, path)
    return smiles, y


def read_table_checked(info: DatasetInfo, path: Path) -> tuple[list, np.ndarray, dict[int, str]]:
    """:func:`read_table` plus ``{row: reason}`` for rows whose label is not a finite number
    (``inf``, ``-inf``, ``1e400``, beyond float32): such a row is invalid, never trained on."""
    df = _read_frame(info, path)
    cols = list(df.columns)
    if info.smiles_col not in df.columns:
        raise DataError(f"{path}: no SMILES column {info.smiles_col!r}; columns found: {cols}"
                        + _columns_hint(cols, info.sep))
    missing = [t for t in info.tasks if t not in df.columns]
    if missing:
        raise DataError(f"{path}: target column(s) {missing} not found; columns found: {cols}"
                        + _columns_hint(cols, info.sep))
    if len(df) == 0:
        raise DataError(f"{path} has a header but no rows")
    smiles = [s.strip() for s in df[info.smiles_col].tolist()]
    y = np.full((len(df), info.num_tasks), np.nan, dtype=np.float32)
    label_reasons: dict[int, str] = {}
    empty: list[str] = []
    for j, task in enumerate(info.tasks):
        raw = df[task].str.strip()
        if info.label_map:
            vals = raw.map(lambda v: info.label_map.get(v, v))
        else:
            vals = raw
        num = pd.to_numeric(vals.replace("", np.nan), errors="coerce")
        bad = num.isna() & (raw != "") & (raw.str.lower() != "nan")
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            ex = ", ".join(f"row {r}: {raw.iloc[r]!r}" for r in rows[:5])
            raise DataError(f"{path}: column {task!r} has {len(rows)} value(s) that are not numbers ({ex})")
        arr = num.to_numpy(dtype=np.float64, copy=True)
        if info.task_type == "classification":
            notbin = ~np.isnan(arr) & ~np.isin(arr, (0.0, 1.0))
            if notbin.any():
                rows = np.flatnonzero(notbin)
                ex = ", ".join(f"row {r}: {raw.iloc[r]!r}" for r in rows[:5])
                raise DataError(f"{path}: classification column {task!r} must hold 0/1 (or be empty); "
                                f"{len(rows)} row(s) do not ({ex})")
        with np.errstate(invalid="ignore"):
            nonfinite = ~np.isnan(arr) & ~(np.abs(arr) <= _MAX_LABEL)
        for r in np.flatnonzero(nonfinite):
            what = "is not a finite number" if not np.isfinite(arr[r]) else "is beyond the float32 range (3.4e38)"
            why = f"label {task!r} {what}: {raw.iloc[r]!r}"
            label_reasons[int(r)] = f"{label_reasons[int(r)]}; {why}" if int(r) in label_reasons else why
        if np.isnan(arr).all():
            empty.append(task)
        arr[nonfinite] = np.nan
        y[:, j] = arr
    if empty:
        raise DataError(f"{path}: target column(s) {empty} hold no label in any row: nothing to train or "
                        "evaluate on (check --target-cols)")
    return smiles, y, label_reasons


# -- cache ---------------------------------------------------------------------------------------
def _cache_key(info: DatasetInfo, sha: str) -> str:
    cols = json.dumps([info.smiles_col, list(info.tasks), info.task_type, info.label_map], sort_keys=True)
    h = hashlib.sha256(f"{sha}|{FEATURIZER_VERSION}|{rdkit.__version__}|{CACHE_FORMAT}|{cols}".encode()).hexdigest()
    stem = info.name.replace(":", "_").replace("/", "_")
    return f"{stem}-{h[:20]}"


def _save(folder: Path, data: Data, num_nodes, num_edges, smiles, report, info, sha, source_path):
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(format=CACHE_FORMAT, featurizer=FEATURIZER_VERSION, rdkit=rdkit.__version__, source_sha256=sha,
                source_path=str(source_path), info=info.to_dict(), smiles=smiles, report=report.to_dict())
    # both files written before either is replaced; graphs first (the inner block ends first)
    with atomic_path(folder / "meta.json") as meta_tmp, atomic_path(folder / "graphs.safetensors") as graphs_tmp:
        save_file({"x": data.x, "edge_index": data.edge_index, "edge_attr": data.edge_attr, "y": data.y,
                   "row": data.row, "num_nodes": num_nodes, "num_edges": num_edges}, str(graphs_tmp))
        meta_tmp.write_text(json.dumps(meta))
    write_invalid_csv(folder / "invalid_rows.csv", report.invalid_rows)


def write_invalid_csv(path: Path, invalid_rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csvlib.DictWriter(f, fieldnames=["row", "smiles", "reason"])
        w.writeheader()
        w.writerows(invalid_rows)


def _build(info, tensors, smiles, report, sha, source_path, cache_path) -> MoleculeDataset:
    nn, ne = tensors["num_nodes"], tensors["num_edges"]
    n = len(smiles)
    z = torch.zeros(1, dtype=torch.long)
    node_ptr = torch.cat([z, nn.cumsum(0)])
    edge_ptr = torch.cat([z, ne.cumsum(0)])
    one = torch.arange(n + 1)
    data = Data(x=tensors["x"], edge_index=tensors["edge_index"], edge_attr=tensors["edge_attr"],
                y=tensors["y"], row=tensors["row"], smiles=smiles)
    slices = {"x": node_ptr, "edge_index": edge_ptr, "edge_attr": edge_ptr, "y": one, "row": one, "smiles": one}
    return MoleculeDataset(info, data, slices, smiles, report, sha, str(source_path), cache_path)


def load_dataset(name_or_csv: str | None = None, *, csv: str | Path | None = None, smiles_col: str | None = None,
                 target_cols: str | list[str] | None = None, task: str | None = None,
                 data_dir: str | Path | None = None, n_jobs: int | None = None, progress: bool = True,
                 use_cache: bool = True, fingerprints=None) -> MoleculeDataset:
    """A registry dataset by name, or a CSV (``csv=``, ``smiles_col=``, ``target_cols=``, ``task=``).

    ``name_or_csv`` may also be a path to a CSV file, in which case the column arguments are required.
    ``fingerprints``: a :class:`fedmol.data.fingerprints.FingerprintSpec` (or an ``mlp`` model config):
    every molecule also carries that fingerprint, cached beside the graphs (``attach_fingerprints``).
    """
    if fingerprints is not None:
        from fedmol.data.fingerprints import attach_fingerprints
        return attach_fingerprints(load_dataset(name_or_csv, csv=csv, smiles_col=smiles_col, target_cols=target_cols,
                                                task=task, data_dir=data_dir, n_jobs=n_jobs, progress=progress,
                                                use_cache=use_cache), fingerprints)
    info = resolve_info(name_or_csv, csv=csv, smiles_col=smiles_col, target_cols=target_cols, task=task)
    path, sha = resolve_file(info, data_dir, progress=progress)
    folder = cache_dir() / "processed" / _cache_key(info, sha)
    cached = _load_cached(info, folder, sha, path) if use_cache else None
    if cached is not None:
        return cached
    all_smiles, y, label_reasons = read_table_checked(info, path)
    feats = featurize_smiles(all_smiles, n_jobs=n_jobs, progress=progress, desc=f"featurizing {info.name}")
    rows = _row_validity(all_smiles, feats.reasons, label_reasons)
    valid_idx = rows.valid_idx
    if valid_idx.size == 0:
        raise NoValidMolecule(path, rows.invalid_rows, _list_invalid_rows(folder, rows.invalid_rows) if use_cache
                              else None)
    unlabeled_tasks = [t for j, t in enumerate(info.tasks) if np.isnan(y[valid_idx, j]).all()]
    if unlabeled_tasks:
        raise DataError(f"{path}: target column(s) {unlabeled_tasks} hold no label on any valid molecule "
                        f"(only on the {len(rows.invalid_rows)} invalid row(s)): nothing to train or evaluate on")
    smiles = [all_smiles[i] for i in valid_idx]
    yv = y[valid_idx]
    report = FeaturizationReport(rows=len(all_smiles), valid=int(valid_idx.size), invalid=len(rows.invalid_rows),
                                 duplicates=len(smiles) - len(set(smiles)),
                                 unlabeled=int(np.isnan(yv).all(axis=1).sum()),
                                 invalid_rows=rows.invalid_rows, invalid_labels=len(label_reasons))
    tensors = _graph_tensors(feats, yv, valid_idx)
    cache_path = _save_tensors(folder, tensors, smiles, report, info, sha, path) if use_cache else None
    return _build(info, tensors, smiles, report, sha, path, cache_path)


def _load_cached(info: DatasetInfo, folder: Path, sha: str, path: Path) -> MoleculeDataset | None:
    """The dataset cached in ``folder``, or None when it is absent or damaged (then it is rebuilt)."""
    if not ((folder / "meta.json").is_file() and (folder / "graphs.safetensors").is_file()):
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        tensors = load_file(str(folder / "graphs.safetensors"))
        report = FeaturizationReport(**meta["report"])
        return _build(info, tensors, meta["smiles"], report, sha, path, str(folder))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


@dataclass
class _RowValidity:
    #: positions of the rows with a valid molecule and finite labels, ascending
    valid_idx: np.ndarray
    #: ``{"row", "smiles", "reason"}`` of every other row
    invalid_rows: list[dict]


def _row_validity(all_smiles: list, mol_reasons, label_reasons: dict[int, str]) -> _RowValidity:
    """Which rows are valid: a non-finite label makes the row invalid, molecule or not."""
    reasons = list(mol_reasons)
    for i, why in label_reasons.items():
        reasons[i] = why if reasons[i] is None else f"{reasons[i]}; {why}"
    valid = np.fromiter((r is None for r in reasons), dtype=bool, count=len(reasons))
    invalid_rows = [{"row": int(i), "smiles": "" if not isinstance(all_smiles[i], str) else all_smiles[i],
                     "reason": reasons[i]} for i in np.flatnonzero(~valid)]
    return _RowValidity(np.flatnonzero(valid), invalid_rows)


def _list_invalid_rows(folder: Path, invalid_rows: list[dict]) -> Path | None:
    """``invalid_rows.csv`` written in the cache folder, or None when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_invalid_csv(folder / "invalid_rows.csv", invalid_rows)
        return folder / "invalid_rows.csv"
    except OSError:
        return None


def _graph_tensors(feats, yv: np.ndarray, valid_idx: np.ndarray) -> dict[str, torch.Tensor]:
    """The valid molecules' graphs, labels and rows as the tensors cached and loaded by :func:`_build`."""
    return {
        "x": torch.from_numpy(np.ascontiguousarray(feats.x, dtype=np.int64)),
        "edge_index": torch.from_numpy(np.ascontiguousarray(feats.edge_index, dtype=np.int64)),
        "edge_attr": torch.from_numpy(np.ascontiguousarray(feats.edge_attr, dtype=np.int64)),
        "y": torch.from_numpy(yv),
        "row": torch.from_numpy(valid_idx.astype(np.int64)),
        "num_nodes": torch.from_numpy(np.asarray(feats.num_nodes, dtype=np.int64)[valid_idx]),
        "num_edges": torch.from_numpy(np.asarray(feats.num_edges, dtype=np.int64)[valid_idx]),
    }


def _save_tensors(folder: Path, tensors: dict, smiles, report, info, sha, path) -> str | None:
    """The cache folder once ``tensors`` are saved in it; None for a read-only cache (still usable, just not cached)."""
    try:
        data = Data(**{k: tensors[k] for k in ("x", "edge_index", "edge_attr", "y", "row")})
        _save(folder, data, tensors["num_nodes"], tensors["num_edges"], smiles, report, info, sha, path)
        return str(folder)
    except OSError:
        return None


def resolve_info(name_or_csv: str | None = None, *, csv=None, smiles_col=None, target_cols=None,
                 task=None) -> DatasetInfo:
    """The registry row for a name, or a row describing a user CSV."""
    if csv is None and name_or_csv and (name_or_csv.lower().endswith((".csv", ".tsv")) or os.sep in name_or_csv):
        csv = name_or_csv
    if csv is not None:
        missing = [opt for opt, v in (("--smiles-col", smiles_col), ("--target-cols", target_cols),
                                      ("--task", task)) if not v]
        if missing:
            raise DataError(f"a CSV needs {', '.join(missing)} as well (e.g. --csv {csv} --smiles-col smiles "
                            "--target-cols y --task classification)")
        return csv_info(csv, smiles_col, target_cols, task)
    if not name_or_csv:
        raise DataError("name a dataset (see `fedmol datasets`) or pass --csv FILE --smiles-col COL "
                        "--target-cols A,B --task classification|regression")
    return get_info(name_or_csv)
