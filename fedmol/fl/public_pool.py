"""The server's public, *unlabeled* molecule pool for distillation-based FL (FedDF).

FedDF (Lin et al., NeurIPS 2020, Sec. 3 / Alg. 1) distils the clients' ensemble into the global
model on unlabeled data held by the server; the paper uses a *different* public dataset (e.g.
CIFAR-100 for CIFAR-10). The molecular analogue built here: SMILES of other registry datasets
than the one being federated, with every molecule that also occurs in the federated dataset
removed, featurized without labels.

What exactly is used
--------------------
* **Sources** (default :data:`DEFAULT_SOURCES`): ``rdkit_nci5k`` (the first 5,000 compounds of
  the public NCI database, shipped inside RDKit as ``Data/NCI/first_5K.smi``: always available
  offline, and the reason a pool is large even with no data folder), ``b3db_classification``, ``b3db_regression``
  (shipped by the ``qc-b3db`` package: always available offline), ``bbbp``, ``bace``,
  ``clintox``, ``sider``, ``tox21``, ``esol``, ``freesolv``, ``lipophilicity`` (MoleculeNet CSVs:
  available when ``FEDMOL_DATA_DIR`` / ``--data-dir`` / fedmol's download cache holds them; never
  downloaded here). A source that is not available locally is skipped with a logged note (and
  listed in ``pool.report["skipped"]``). ``hiv`` (41k molecules of the NCI screen) is left out of
  the default so that it does not make up ~60 % of the pool; name it in ``sources`` to use it.
  Labels of the sources are never read into the pool (only the SMILES column is used).
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

Chemical overlap, not only identity: when federating e.g. BBBP, B3DB (itself compiled partly from
the same literature) contains most BBBP molecules; the canonical-SMILES de-duplication removes
every exact overlap (measured, stereo-free canonical SMILES: of BBBP's 1,953 distinct molecules
only 232 are absent from B3DB classification, whose 7,807 rows are 4,038 distinct stereo-free
molecules), but close analogues (other salt forms, a different tautomer, a homologue) remain
in the pool. That is unlabeled *inputs* only -- no label of the federated task reaches the server
-- and is the molecular counterpart of the paper's CIFAR-100 pool sharing its image domain with
CIFAR-10. Federating B3DB itself: the pool is the other datasets; without MoleculeNet files only
``b3db_regression`` remains, and 906 of its 935 distinct molecules are also in B3DB
classification (the pool then holds 29 molecules; set ``FEDMOL_DATA_DIR`` for a useful pool).

Privacy note: de-duplication needs the federated dataset's SMILES. In the benchmark this is done
by the organiser (it already holds the whole dataset to simulate the partners) before the run,
and the server keeps only the resulting pool; in a real deployment it would be a private set
intersection on canonical-SMILES hashes, or simply skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from fedmol.errors import FedmolError

log = logging.getLogger(__name__)

#: Registry datasets used as the pool by default (minus the federated one; unavailable ones skipped).
DEFAULT_SOURCES: tuple[str, ...] = ("rdkit_nci5k", "b3db_classification", "b3db_regression", "bbbp", "bace",
                                    "clintox", "sider", "tox21", "esol", "freesolv", "lipophilicity")
#: Pool sources that are not registry datasets: name -> (description, reader)
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


def _available_smiles(name: str, data_dir) -> tuple[list[str] | None, str, str]:
    """(SMILES column, "", file sha256) of registry dataset ``name`` if its file is available
    locally, else (None, why, "")."""
    from fedmol.data.dataset import read_table
    from fedmol.data.registry import get_info
    from fedmol.data.sources import availability, resolve_file, sha256_file

    if name == NCI5K:
        from rdkit import RDConfig

        path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
        if not path.is_file():
            return None, f"{path} not found (it ships with RDKit)", ""
        lines = path.read_text().splitlines()
        return [ln.split("\t")[0].strip() for ln in lines if ln.strip()], "", sha256_file(path)
    info = get_info(name)
    if availability(info, data_dir) is None:
        where = ("its package " + info.package) if info.package else "FEDMOL_DATA_DIR / --data-dir / the cache"
        return None, f"{info.file} not found locally (looked in {where}; the pool never downloads)", ""
    path, sha = resolve_file(info, data_dir, allow_download=False, progress=False)
    smiles, _ = read_table(info, path)
    return [s if isinstance(s, str) else "" for s in smiles], "", sha


@lru_cache(maxsize=16)
def _dataset_keys(name: str, data_dir: str | None) -> tuple[frozenset, frozenset] | None:
    """(exact SMILES texts, canonical keys) of every row of registry dataset ``name``; None if unavailable.

    The canonical keys are cached on disk (``$FEDMOL_CACHE_DIR/public_pool/``, keyed by the file's
    sha256 and the RDKit version): canonicalizing HIV's 41k molecules takes ~10-20 s.
    """
    import rdkit

    from fedmol.data.sources import cache_dir

    smiles, _, sha = _available_smiles(name, data_dir)
    if smiles is None:
        return None
    texts = frozenset(s.strip() for s in smiles)
    cache = cache_dir() / "public_pool" / f"{name}-{sha[:20]}-rdkit{rdkit.__version__}-keys.json"
    try:
        return texts, frozenset(json.loads(cache.read_text())["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    keys = {canonical_key(s) for s in smiles}
    keys.discard(None)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"dataset": name, "sha256": sha, "keys": sorted(keys)}))
        os.replace(tmp, cache)
    except OSError:
        pass  # read-only cache: recomputed next time
    return texts, frozenset(keys)


def _names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().lower() for v in value.split(",") if v.strip()]
    return [str(v).strip().lower() for v in value]


def build_public_pool(exclude: str | Iterable[str] | None = None, exclude_smiles: Iterable[str] = (),
                      sources: str | Iterable[str] | None = None, size: int = DEFAULT_SIZE, seed: int = 0,
                      data_dir: str | None = None) -> PublicPool:
    """The public pool: molecules of ``sources`` minus every molecule of the ``exclude`` datasets.

    ``exclude``: registry name(s) of the federated dataset (never used as sources; all their rows'
    molecules removed; one that is not available locally is noted -- it cannot be federated then).
    ``exclude_smiles``: further SMILES to remove (e.g. a user CSV's). ``sources``: registry names
    (default :data:`DEFAULT_SOURCES`), comma-separated string or list. ``size``: at most this many
    molecules, chosen deterministically from ``seed``. See the module docstring for the rules.
    """
    from fedmol.data.registry import DATASETS

    size = int(size)
    if size < 1:
        raise FedmolError(f"public pool: size must be >= 1, got {size}")
    excl_names = _names(exclude)
    src_names = _names(sources) if sources is not None else list(DEFAULT_SOURCES)
    unknown = [n for n in excl_names + src_names if n not in DATASETS and n != NCI5K]
    if unknown:
        raise FedmolError(f"public pool: unknown dataset(s) {unknown}; known: {NCI5K}, {', '.join(DATASETS)}")
    data_dir = str(data_dir) if data_dir else None
    skipped: dict[str, str] = {}

    excl_text: set[str] = {s.strip() for s in exclude_smiles if isinstance(s, str)}
    excl_keys: set[str] = {k for k in (canonical_key(s) for s in excl_text) if k is not None}
    n_excl_given = len(excl_keys)
    for name in excl_names:
        got = _dataset_keys(name, data_dir)
        if got is None:
            log.info("public pool: excluded dataset %s is not available locally; nothing to remove for it", name)
            continue
        excl_text |= got[0]
        excl_keys |= got[1]

    cand_src: list[str] = []
    cand_row: list[int] = []
    cand_smi: list[str] = []
    used: dict[str, int] = {}
    for name in src_names:
        if name in excl_names:
            skipped[name] = "is the federated dataset"
            continue
        smiles, why, _ = _available_smiles(name, data_dir)
        if smiles is None:
            skipped[name] = why
            continue
        used[name] = len(smiles)
        cand_src += [name] * len(smiles)
        cand_row += range(len(smiles))
        cand_smi += smiles
    unavailable = [n for n in skipped if n not in excl_names]
    if unavailable:
        log.warning("public pool: source(s) %s skipped: not available locally (the pool never downloads; set "
                    "FEDMOL_DATA_DIR to the MoleculeNet folder to use them)", ", ".join(unavailable))
    if not cand_smi:
        raise FedmolError(f"public pool: no source dataset is available (wanted {src_names}; skipped: {skipped}). "
                          "Set FEDMOL_DATA_DIR to the MoleculeNet folder or install qc-b3db")

    order = np.random.default_rng([int(seed), _ORDER_SALT]).permutation(len(cand_smi))
    chosen: list[int] = []
    chosen_keys: dict[str, None] = {}  # insertion-ordered: the keys of ``chosen``
    overlap = duplicates = invalid = 0
    for i in order:
        s = cand_smi[i].strip()
        if s in excl_text:
            overlap += 1
            continue
        key = canonical_key(s)
        if key is None:
            invalid += 1
            continue
        if key in excl_keys:
            overlap += 1
            continue
        if key in chosen_keys:
            duplicates += 1
            continue
        chosen.append(int(i))
        chosen_keys[key] = None
        if len(chosen) >= size:
            break
    if not chosen:
        raise FedmolError(f"public pool: every candidate molecule of {list(used)} is in the federated data")
    report = dict(sources=used, skipped=skipped, excluded=excl_names, excluded_molecules=len(excl_keys),
                  excluded_smiles_given=n_excl_given, candidates=len(cand_smi), seen=overlap + duplicates +
                  invalid + len(chosen), removed_overlap=overlap, removed_duplicates=duplicates,
                  removed_invalid=invalid, requested=size, seed=int(seed))
    pool = PublicPool.from_smiles([cand_smi[i].strip() for i in chosen], [cand_src[i] for i in chosen],
                                  [cand_row[i] for i in chosen], report, keys=list(chosen_keys))
    pool.report["per_source"] = {n: int(sum(s == n for s in pool.sources)) for n in used}
    if len(pool) < size:
        log.warning("public pool: only %d molecules (asked for %d) remain after removing the federated data "
                    "from %s", len(pool), size, list(used))
    return pool
