"""MoleculeACE's 30 ChEMBL targets as one multi-assay regression table (issue 18, item 2).

Source: the wheel of the PyPI package ``MoleculeACE`` 3.0.0 (van Tilborg et al., J Chem Inf Model
2022; MIT licence), which ships one CSV per target (``MoleculeACE/Data/benchmark_data/
CHEMBL<id>_<Ki|EC50>.csv``: ``smiles``, ``exp_mean [nM]``, ``y`` = -log10 of the nM value, ``cliff_mol``,
``split``). fedmol reads the wheel as a zip archive -- it never installs or imports the package (its
requirements pull ``rdkit-pypi`` and a ChEMBL web client) -- and pins its sha256 in the registry.

The table: one row per distinct SMILES string (as MoleculeACE wrote it), one column per target named
after its file (``CHEMBL1862_Ki``), the label in molar units, pKi / pEC50 = 9 + ``y``
(= -log10 of the molar value); a molecule measured on several targets has several labels, every
other cell is empty. MoleculeACE's own random train/test split and activity-cliff flags are not used:
fedmol deals molecules by scaffold like every other dataset.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from fedmol.errors import DataError

MEMBER = re.compile(r"^MoleculeACE/Data/benchmark_data/(CHEMBL\d+_(?:Ki|EC50))\.csv$")
MAX_MEMBER_BYTES = 8 << 20  # the largest target file is 0.3 MB: anything far larger is not this package


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(".whl")


def _target_frames(path: Path) -> dict[str, pd.DataFrame]:
    """Each target's CSV out of the wheel (only the members named like MoleculeACE's target files)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable wheel (zip archive): {e}") from e
    frames = {}
    with archive:
        for member in archive.infolist():
            m = MEMBER.match(member.filename)
            if not m:
                continue
            if member.file_size > MAX_MEMBER_BYTES:
                raise DataError(f"{path}: {member.filename} is {member.file_size} bytes, more than a MoleculeACE "
                                "target file can be: not the MoleculeACE wheel")
            frame = pd.read_csv(io.BytesIO(archive.read(member)), dtype={"smiles": str})
            missing = {"smiles", "y"} - set(frame.columns)
            if missing:
                raise DataError(f"{path}: {member.filename} has no column(s) {sorted(missing)}")
            frames[m.group(1)] = frame
    if not frames:
        raise DataError(f"{path} holds no MoleculeACE target file (MoleculeACE/Data/benchmark_data/CHEMBL*.csv)")
    return frames


def table_text(path: str | Path, targets: tuple[str, ...] | None = None) -> str:
    """The wide table (``smiles`` + one pK column per target) as CSV text, rows in order of first
    appearance over the targets in name order. ``targets``: the columns expected (default: every
    target file in the archive); a missing one is an error."""
    frames = _target_frames(Path(path))
    names = tuple(targets) if targets is not None else tuple(sorted(frames))
    missing = [t for t in names if t not in frames]
    if missing:
        raise DataError(f"{path}: target file(s) {missing} not in the archive; found {sorted(frames)}")
    long = []
    for t in names:
        f = frames[t]
        if f["smiles"].duplicated().any():
            dup = f.loc[f["smiles"].duplicated(), "smiles"].iloc[0]
            raise DataError(f"{path}: target {t} lists {dup!r} twice")
        try:
            pk = 9.0 + pd.to_numeric(f["y"], errors="raise").to_numpy(np.float64)
        except ValueError as e:
            raise DataError(f"{path}: target {t} has a label that is not a number ({e})") from e
        long.append(pd.DataFrame({"smiles": f["smiles"].str.strip(), "target": t, "pk": pk}))
    rows = pd.concat(long, ignore_index=True)
    wide = rows.pivot(index="smiles", columns="target", values="pk")
    order = pd.unique(rows["smiles"])
    wide = wide.reindex(index=order, columns=list(names)).reset_index()
    return wide.to_csv(index=False, float_format="%.6f")
