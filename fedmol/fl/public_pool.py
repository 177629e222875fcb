"""The server's public, *unlabeled* molecule pool for distillation-based FL (FedDF).

FedDF (Lin et al., NeurIPS 2020, Sec. 3 / Alg. 1) distils the clients' ensemble into the global
model on unlabeled data held by the server; the paper uses a *different* public dataset (e.g.
CIFAR-100 for CIFAR-10). The molecular analogue built here: molecule sets that ship inside RDKit
(so the pool is the same on every machine, with or without a data folder) and carry no label of
any benchmark endpoint, with every molecule that also occurs in the federated dataset removed,
featurized without labels.

What exactly is used
--------------------
* **Sources** (default :data:`DEFAULT_SOURCES`, both shipped inside the RDKit package, under
  ``RDConfig.RDDataDir``; :data:`SHIPPED`): ``rdkit_nci5k`` (``NCI/first_5K.smi``: the first
  5,000 compounds of the public NCI database, 4,999 rows) and ``rdkit_wehi10k``
  (``Pains/test_data/wehi_mols.csv``: 10,000 compounds of the WEHI screening library, RDKit's
  PAINS-filter test set). Neither is a property-labelled benchmark, neither is about the blood-brain
  barrier or any other MoleculeNet/B3DB endpoint, and the default never reads a registry dataset, so
  the pool does not depend on ``FEDMOL_DATA_DIR`` / ``--data-dir``. Registry datasets can still
  be named as sources (``sources`` / FedDF's ``pool_sources``: ``bbbp``, ``bace``, ...; MoleculeNet
  files only when available locally, never downloaded here): then the pool depends on what is
  available, and on the task's domain (B3DB measures the same endpoint as BBBP). A source that is
  not available is skipped with a logged note (``report["skipped"]``). Labels of the sources are
  never read into the pool (only the SMILES column is used).
* **Excluded**: the federated dataset(s) are never a source, and every molecule of theirs (every
  row of the file, train, valid *and test* of every partner) is removed from the pool when its
  SMILES matches by exact text or by RDKit canonical SMILES *without stereochemistry* (so the same
  molecule written differently and its stereoisomers are both removed: stricter than canonical
  isomeric SMILES). Molecules repeated across sources enter the pool once (same key).
* **Size**: the candidates of all sources are put in one deterministic random order
  (``numpy.random.default_rng([seed, 7717])``) and taken in that order, skipping excluded,
  duplicate and unparseable molecules, until ``size`` molecules are kept (default 5,000; FedDF
  asks for its own ``pool_size``). Sampling is uniform over candidate molecules, so larger
  sources contribute more. The same seed and sources give the same pool, in the same order.
* **Graphs**: featurized with :func:`fedmol.data.featurize.featurize_smiles` (the OGB features
  every fedmol model uses), no ``y``; every graph carries ``mol_id`` (its position in the pool,
  to look up per-molecule distillation targets in a batch), its source dataset and source row.
* **Report** (``pool.report``; FedDF's runs write it to ``config.json`` and ``summary.json`` as
  ``public_pool``): ``sources`` (rows per source), ``source_files`` (file and sha256 of each),
  ``per_source`` (molecules of each source in the pool), ``overlap_rows`` (per source, every row
  whose molecule is in the federated data: removed), ``removed_overlap`` (their number),
  ``removed_invalid`` (rows RDKit cannot parse), ``removed_duplicates`` (repeats skipped while
  drawing), ``skipped``, ``excluded`` (with ``excluded_unavailable``: excluded datasets whose file
  is not available locally, so nothing of theirs could be removed), ``size``, ``requested``, ``seed``.

Measured (RDKit 2026.09.1, stereo-free canonical SMILES): the two default sources hold 14,882
distinct molecules (8 NCI rows unparseable, 10 molecules in both); 38 of their rows are BBBP
molecules (36 NCI, 2 WEHI) and 79 are B3DB classification molecules (74 NCI, 5 WEHI), all removed
when that dataset is federated; none is a BACE molecule. HIV (the NCI AIDS screen) shares 386.

Privacy note: de-duplication needs the federated dataset's SMILES. In the benchmark this is done
by the organiser (it already holds the whole dataset to simulate the partners) before the run,
and the server keeps only the resulting pool; in a real deployment it would be a private set
intersection on canonical-SMILES hashes, or simply skipped.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from fedmol.atomic import write_atomic
from fedmol.errors import FedmolError

log = logging.getLogger(__name__)

#: Molecule sets shipped inside RDKit: pool source name -> path under ``RDConfig.RDDataDir``
SHIPPED: dict[str, str] = {"rdkit_nci5k": "NCI/first_5K.smi", "rdkit_wehi10k": "Pains/test_data/wehi_mols.csv"}
#: The default pool sources: shipped with RDKit, outside every registry task's domain (module docstring)
DEFAULT_SOURCES: tuple[str, ...] = ("rdkit_nci5k", "rdkit_wehi10k")
NCI5K = "rdkit_nci5k"
DEFAULT_SIZE = 5000
_ORDER_SALT = 7717


def canonical_key(smiles: str) -> str | None:
    """RDKit canonical SMILES without stereochemistry (None if RDKit cannot parse ``smiles``)."""
    from rdkit import Chem, rdBase

    if not isinstance(smiles, str) or not smiles.strip():
        return None
    blocker = rdBase.BlockLogs()  # silence RDKit's parse errors; the caller's log settings are restored
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    finally:
        del blocker
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return Chem.MolToSmiles(mol, isomericSmiles=False)


class PublicPool(InMemoryDataset):
    """Unlabeled molecule graphs: ``Data(x, edge_index, edge_attr, mol_id, smiles)``.

    ``smiles``, ``sources`` (dataset name per molecule), ``rows`` (row in that dataset's file),
    ``keys`` (canonical keys) are in pool order; ``report`` says how the pool was built.
    Use :func:`build_public_pool`, or :meth:`from_smiles` for a hand-made pool.
    """

    def __init__(self, data: Data, slices: dict, smiles: list[str], sources: list[str], rows: np.ndarray,
                 keys: list[str], report: dict):
        super().__init__(root=None, log=False)
        self._data, self.slices = data, slices
        self.smiles, self.sources, self.rows, self.keys, self.report = smiles, sources, rows, keys, report

    @classmethod
    def from_smiles(cls, smiles: Sequence[str], sources: Sequence[str] | None = None,
                    rows: Sequence[int] | None = None, report: dict | None = None,
                    keys: Sequence[str] | None = None) -> "PublicPool":
        """Featurize ``smiles`` (invalid ones are dropped, with a logged note) into a pool.
        ``keys``: their canonical keys if already known (else computed)."""
        from fedmol.data.featurize import featurize_smiles

        smiles = list(smiles)
        sources = list(sources) if sources is not None else ["custom"] * len(smiles)
        rows = list(rows) if rows is not None else list(range(len(smiles)))
        feats = featurize_smiles(smiles, n_jobs=1, progress=False, desc="featurizing public pool")
        valid = np.flatnonzero(np.asarray(feats.valid, dtype=bool))
        if len(valid) < len(smiles):
            log.info("public pool: %d SMILES the featurizer rejects were dropped", len(smiles) - len(valid))
        if len(valid) == 0:
            raise FedmolError("public pool: no valid molecule to build the pool from")
        # keep the valid molecules' atoms and edges (Featurized stores invalid rows with 0 atoms/edges)
        nn_ = torch.as_tensor(np.asarray(feats.num_nodes, dtype=np.int64)[valid])
        ne_ = torch.as_tensor(np.asarray(feats.num_edges, dtype=np.int64)[valid])
        z = torch.zeros(1, dtype=torch.long)
        n = len(valid)
        data = Data(x=torch.as_tensor(np.ascontiguousarray(feats.x, dtype=np.int64)),
                    edge_index=torch.as_tensor(np.ascontiguousarray(feats.edge_index, dtype=np.int64)),
                    edge_attr=torch.as_tensor(np.ascontiguousarray(feats.edge_attr, dtype=np.int64)),
                    mol_id=torch.arange(n, dtype=torch.long), smiles=[smiles[i] for i in valid])
        edge_ptr = torch.cat([z, ne_.cumsum(0)])
        one = torch.arange(n + 1)
        slices = {"x": torch.cat([z, nn_.cumsum(0)]), "edge_index": edge_ptr, "edge_attr": edge_ptr,
                  "mol_id": one, "smiles": one}
        kept = [smiles[i] for i in valid]
        keys = [keys[i] for i in valid] if keys is not None else [canonical_key(s) or s for s in kept]
        report = dict(report or {})
        report["size"] = n
        return cls(data, slices, kept, [sources[i] for i in valid], np.asarray([rows[i] for i in valid]), keys,
                   report)

    def __repr__(self) -> str:
        return f"PublicPool({len(self)} unlabeled molecules from {sorted(set(self.sources))})"


class _Unavailable(Exception):
    """A pool source whose file is not available locally (the message says why)."""


class _Source(NamedTuple):
    smiles: tuple[str, ...]  # the SMILES column, row by row (stripped)
    keys: tuple[str | None, ...]  # canonical_key of each row (None: RDKit cannot parse it)
    sha256: str
    file: str  # where it was read: "rdkit/Data/<path>" or the registry file name


def _locate(name: str, data_dir: str | None) -> tuple[str, str, str]:
    """(path, sha256, file label) of pool source or registry dataset ``name``; raises
    :class:`_Unavailable` when its file is not available locally (nothing is downloaded)."""
    from fedmol.data.sources import sha256_file

    if name in SHIPPED:
        from rdkit import RDConfig

        path = Path(RDConfig.RDDataDir) / SHIPPED[name]
        if not path.is_file():
            raise _Unavailable(f"{path} not found (it ships with RDKit)")
        return str(path), sha256_file(path), f"rdkit/Data/{SHIPPED[name]}"
    from fedmol.data.registry import get_info
    from fedmol.data.sources import availability, resolve_file

    info = get_info(name)
    if availability(info, data_dir) is None:
        where = ("its package " + info.package) if info.package else "FEDMOL_DATA_DIR / --data-dir / the cache"
        raise _Unavailable(f"{info.file} not found locally (looked in {where}; the pool never downloads)")
    path, sha = resolve_file(info, data_dir, allow_download=False, progress=False)
    return str(path), sha, info.file


def _source(name: str, data_dir: str | None) -> _Source:
    """Pool source or excluded dataset ``name``: its SMILES and their canonical keys, row by row."""
    return _load(name, *_locate(name, data_dir))


@lru_cache(maxsize=16)
def _load(name: str, path: str, sha: str, label: str) -> _Source:
    """The file's SMILES column and canonical keys. The keys are cached on disk
    (``$FEDMOL_CACHE_DIR/public_pool/``, keyed by the file's sha256 and the RDKit version):
    canonicalizing HIV's 41k molecules takes ~10-20 s."""
    import rdkit

    from fedmol.data.sources import cache_dir

    if name in SHIPPED:
        with open(path, newline="") as f:
            if path.endswith(".csv"):
                smiles = [r[0] if r else "" for r in csv.reader(f)]
            else:
                smiles = [ln.split()[0] if ln.strip() else "" for ln in f]
    else:
        from fedmol.data.dataset import read_table
        from fedmol.data.registry import get_info

        smiles = read_table(get_info(name), Path(path))[0]
    smiles = [s.strip() if isinstance(s, str) else "" for s in smiles]
    cache = cache_dir() / "public_pool" / f"{name}-{sha[:20]}-rdkit{rdkit.__version__}-rowkeys.json"
    try:
        keys = json.loads(cache.read_text())["keys"]
        if isinstance(keys, list) and len(keys) == len(smiles):
            return _Source(tuple(smiles), tuple(keys), sha, label)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    keys = [canonical_key(s) for s in smiles]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"dataset": name, "sha256": sha, "keys": keys}))
    except OSError:
        pass  # read-only cache: recomputed next time
    return _Source(tuple(smiles), tuple(keys), sha, label)


def _names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().lower() for v in value.split(",") if v.strip()]
    return [str(v).strip().lower() for v in value]


def _checked_request(exclude, sources, size) -> tuple[int, list[str], list[str]]:
    """``(size, excluded names, source names)``; refuses a size below 1 and unknown dataset names."""
    from fedmol.data.registry import DATASETS

    size = int(size)
    if size < 1:
        raise FedmolError(f"public pool: size must be >= 1, got {size}")
    excl_names = _names(exclude)
    src_names = _names(sources) if sources is not None else list(DEFAULT_SOURCES)
    unknown = [n for n in excl_names + src_names if n not in DATASETS and n not in SHIPPED]
    if unknown:
        raise FedmolError(f"public pool: unknown dataset(s) {unknown}; known: {', '.join(SHIPPED)}, "
                          f"{', '.join(DATASETS)}")
    return size, excl_names, src_names


class _Excluded(NamedTuple):
    """The molecules the pool must not hold."""

    text: set[str]  # their SMILES as written
    keys: set[str]  # their canonical keys
    n_given: int  # canonical keys of ``exclude_smiles`` alone
    unavailable: list[str]  # excluded datasets whose file is not available locally


def _excluded_molecules(excl_names: list[str], exclude_smiles: Iterable[str], data_dir: str | None) -> _Excluded:
    """Every molecule of the excluded datasets and of ``exclude_smiles``, by text and canonical key."""
    text: set[str] = {s.strip() for s in exclude_smiles if isinstance(s, str)}
    keys: set[str] = {k for k in (canonical_key(s) for s in text) if k is not None}
    n_given = len(keys)
    missing: list[str] = []
    for name in excl_names:
        try:
            got = _source(name, data_dir)
        except _Unavailable:
            log.warning("public pool: excluded dataset %s is not available locally; nothing removed for it", name)
            missing.append(name)
            continue
        text.update(got.smiles)
        keys.update(k for k in got.keys if k is not None)
    return _Excluded(text, keys, n_given, missing)


@dataclass
class _Candidates:
    """The rows of the sources that may enter the pool, and what was left out and why."""

    rows: list[tuple[str, int, str, str]] = field(default_factory=list)  # (source, row, SMILES, key)
    used: dict[str, int] = field(default_factory=dict)  # rows per source read
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # file and sha256 per source read
    overlap_rows: dict[str, list[int]] = field(default_factory=dict)  # per source, rows of excluded molecules
    invalid: int = 0  # rows RDKit cannot parse
    skipped: dict[str, str] = field(default_factory=dict)  # source -> why it was not read


def _candidates(src_names: list[str], excl_names: list[str], excluded: _Excluded, data_dir: str | None) -> _Candidates:
    """The parseable rows of every available source whose molecule is not excluded."""
    out = _Candidates()
    for name in src_names:
        if name in excl_names:
            out.skipped[name] = "is the federated dataset"
            continue
        try:
            src = _source(name, None if name in SHIPPED else data_dir)
        except _Unavailable as e:
            out.skipped[name] = str(e)
            continue
        out.used[name] = len(src.smiles)
        out.files[name] = dict(file=src.file, sha256=src.sha256)
        overlap = out.overlap_rows[name] = []
        for row, (smi, key) in enumerate(zip(src.smiles, src.keys)):
            if key is None:
                out.invalid += 1
            elif smi in excluded.text or key in excluded.keys:
                overlap.append(row)
            else:
                out.rows.append((name, row, smi, key))
    return out


def _check_candidates(cand: _Candidates, src_names: list[str], excl_names: list[str]) -> None:
    """Log the sources not available locally; refuse a pool with no source or no candidate."""
    unavailable = {n: why for n, why in cand.skipped.items() if n not in excl_names}
    if unavailable:
        log.warning("public pool: source(s) skipped, not available locally (the pool never downloads): %s",
                    "; ".join(f"{n}: {why}" for n, why in unavailable.items()))
    if not cand.used:
        raise FedmolError(f"public pool: no source is available (wanted {src_names}; skipped: {cand.skipped})")
    if not cand.rows:
        raise FedmolError(f"public pool: every candidate molecule of {list(cand.used)} is in the federated data")


class _Draw(NamedTuple):
    """The candidates drawn into the pool."""

    chosen: list[int]  # positions in the candidate rows, in pool order
    keys: list[str]  # their canonical keys
    seen: int  # candidates looked at
    duplicates: int  # of which repeats of a molecule already drawn


def _draw_distinct(rows: list[tuple[str, int, str, str]], size: int, seed: int) -> _Draw:
    """Up to ``size`` candidates in the seeded random order, each molecule (canonical key) once."""
    order = np.random.default_rng([int(seed), _ORDER_SALT]).permutation(len(rows))
    chosen: list[int] = []
    chosen_keys: dict[str, None] = {}  # insertion-ordered: the keys of ``chosen``
    duplicates = seen = 0
    for i in order:
        seen += 1
        key = rows[i][3]
        if key in chosen_keys:
            duplicates += 1
            continue
        chosen.append(int(i))
        chosen_keys[key] = None
        if len(chosen) >= size:
            break
    return _Draw(chosen, list(chosen_keys), seen, duplicates)


def build_public_pool(exclude: str | Iterable[str] | None = None, exclude_smiles: Iterable[str] = (),
                      sources: str | Iterable[str] | None = None, size: int = DEFAULT_SIZE, seed: int = 0,
                      data_dir: str | None = None) -> PublicPool:
    """The public pool: molecules of ``sources`` minus every molecule of the ``exclude`` datasets.

    ``exclude``: registry name(s) of the federated dataset (never used as sources; all their rows'
    molecules removed; one that is not available locally is noted -- it cannot be federated then).
    ``exclude_smiles``: further SMILES to remove (e.g. a user CSV's). ``sources``: pool source
    names (default :data:`DEFAULT_SOURCES`; also any registry dataset), comma-separated string or
    list. ``size``: at most this many molecules, chosen deterministically from ``seed``.
    ``data_dir``: where registry files are looked for (the shipped sources ignore it). See the
    module docstring for the rules and ``report``.
    """
    size, excl_names, src_names = _checked_request(exclude, sources, size)
    data_dir = str(data_dir) if data_dir else None
    excluded = _excluded_molecules(excl_names, exclude_smiles, data_dir)
    cand = _candidates(src_names, excl_names, excluded, data_dir)
    _check_candidates(cand, src_names, excl_names)
    draw = _draw_distinct(cand.rows, size, seed)
    report = dict(sources=cand.used, source_files=cand.files, skipped=cand.skipped, excluded=excl_names,
                  excluded_unavailable=excluded.unavailable, excluded_molecules=len(excluded.keys),
                  excluded_smiles_given=excluded.n_given, candidates=sum(cand.used.values()),
                  removed_overlap=sum(len(r) for r in cand.overlap_rows.values()), overlap_rows=cand.overlap_rows,
                  removed_invalid=cand.invalid, seen=draw.seen, removed_duplicates=draw.duplicates,
                  requested=size, seed=int(seed))
    rows = [cand.rows[i] for i in draw.chosen]
    pool = PublicPool.from_smiles([r[2] for r in rows], [r[0] for r in rows], [r[1] for r in rows], report,
                                  keys=draw.keys)
    pool.report["per_source"] = {n: int(sum(s == n for s in pool.sources)) for n in cand.used}
    if len(pool) < size:
        log.warning("public pool: only %d molecules (asked for %d) remain after removing the federated data "
                    "from %s", len(pool), size, list(cand.used))
    return pool
