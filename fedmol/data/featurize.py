"""SMILES -> integer graph features, identical to OGB's ``smiles2graph``, fast and parallel.

Every model embeds the same 9 atom and 3 bond categorical features as OGB 1.3.6
(``ogb.utils.smiles2graph``), computed here without importing OGB or PyG: a value outside a
vocabulary maps to the last ("misc") index, unknown bond stereo too (where OGB would crash);
edges run both directions in RDKit bond order. Design decisions, the measured speed and why the hot
loop is shaped as it is: ``docs/featurize.md``.

* :func:`smiles_to_graph` -- one molecule -> ``{"x", "edge_index", "edge_attr", "num_nodes"}``,
  raising :class:`InvalidSmiles` with a one-line reason (empty, no atoms, whitespace inside the
  SMILES, or RDKit's own parse message) instead of ever returning an empty graph.
* :func:`featurize_smiles` -- a column of SMILES -> one :class:`Featurized` of flat int64 arrays;
  a bad row gets ``valid=False`` and its reason (row ``i`` of the output is row ``i`` of the
  input); in a forked worker pool above ``_MIN_POOL_ROWS`` molecules, with a rich progress bar.

``FEATURIZER_VERSION`` goes into dataset cache keys and split files: bump it whenever any feature,
vocabulary, edge order or validity rule changes, so stale caches are never reused.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import re
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from rdkit import Chem, rdBase

__all__ = [
    "ATOM_FEATURE_DIMS",
    "ATOM_FEATURE_NAMES",
    "BOND_FEATURE_DIMS",
    "BOND_FEATURE_NAMES",
    "FEATURIZER_VERSION",
    "Featurized",
    "InvalidSmiles",
    "featurize_smiles",
    "smiles_to_graph",
]

FEATURIZER_VERSION = "ogb-1.3.6-v1"

# --------------------------------------------------------------------------------------------
# Vocabularies (same lists, same order as OGB 1.3.6; the last entry is the "misc" bucket,
# except for the two boolean features and bond stereo, see the module docstring).
# --------------------------------------------------------------------------------------------
_ATOMIC_NUMS = list(range(1, 119))  # + misc
_CHIRALITY = ["CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW", "CHI_OTHER"]  # + misc
_DEGREES = list(range(0, 11))  # + misc
_FORMAL_CHARGES = list(range(-5, 6))  # + misc
_NUM_HS = list(range(0, 9))  # + misc
_RADICALS = list(range(0, 5))  # + misc
_HYBRIDIZATION = ["SP", "SP2", "SP3", "SP3D", "SP3D2"]  # + misc
_BOND_TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC"]  # + misc
_BOND_STEREO = ["STEREONONE", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS", "STEREOANY"]

ATOM_FEATURE_NAMES = (
    "atomic_num",
    "chirality",
    "degree",
    "formal_charge",
    "num_h",
    "num_radical_e",
    "hybridization",
    "is_aromatic",
    "is_in_ring",
)
BOND_FEATURE_NAMES = ("bond_type", "bond_stereo", "is_conjugated")

#: Vocabulary size of each atom feature (== ``ogb.utils.features.get_atom_feature_dims()``).
ATOM_FEATURE_DIMS = [
    len(_ATOMIC_NUMS) + 1,
    len(_CHIRALITY) + 1,
    len(_DEGREES) + 1,
    len(_FORMAL_CHARGES) + 1,
    len(_NUM_HS) + 1,
    len(_RADICALS) + 1,
    len(_HYBRIDIZATION) + 1,
    2,
    2,
]
#: Vocabulary size of each bond feature (== ``ogb.utils.features.get_bond_feature_dims()``).
BOND_FEATURE_DIMS = [len(_BOND_TYPES) + 1, len(_BOND_STEREO), 2]

_N_ATOM_FEATURES = len(ATOM_FEATURE_DIMS)
assert max(ATOM_FEATURE_DIMS + BOND_FEATURE_DIMS) <= 256  # indices cross processes as uint8
_N_BOND_FEATURES = len(BOND_FEATURE_DIMS)


def _enum_map(enum_type, names: list[str], default: int) -> dict:
    """{RDKit enum value: vocabulary index}, by name; every other enum value -> ``default``."""
    index = {name: i for i, name in enumerate(names)}
    return {value: index.get(str(value), default) for value in enum_type.values.values()}


# Enum-valued features are mapped in the hot loop with ``dict.get(enum, misc)``; integer-valued
# features (atomic number, degree, charge, H count, radicals) are stored raw and bucketed in numpy
# once per chunk with ``_bucket`` (value range [lo, hi] -> value - lo, anything else -> misc).
_CHI_IDX = _enum_map(Chem.ChiralType, _CHIRALITY, len(_CHIRALITY))
_CHI_MISC = len(_CHIRALITY)
_HYB_IDX = _enum_map(Chem.HybridizationType, _HYBRIDIZATION, len(_HYBRIDIZATION))
_HYB_MISC = len(_HYBRIDIZATION)
_BT_IDX = _enum_map(Chem.BondType, _BOND_TYPES, len(_BOND_TYPES))
_BT_MISC = len(_BOND_TYPES)
_ST_IDX = _enum_map(Chem.BondStereo, _BOND_STEREO, len(_BOND_STEREO) - 1)
_ST_MISC = len(_BOND_STEREO) - 1  # no misc entry in OGB: unknown -> last index (STEREOANY)


def _bucket(values: np.ndarray, vocabulary: list[int]) -> np.ndarray:
    """Integer values -> index in a contiguous integer ``vocabulary``; outside -> misc (last)."""
    lo, hi = vocabulary[0], vocabulary[-1]
    assert vocabulary == list(range(lo, hi + 1))
    return np.where((values >= lo) & (values <= hi), values - lo, len(vocabulary))


# --------------------------------------------------------------------------------------------
# Errors and parsing
# --------------------------------------------------------------------------------------------
class InvalidSmiles(ValueError):
    """A SMILES that cannot become a graph. ``reason`` is a one-line, human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_EMPTY = "empty SMILES"
_NO_ATOMS = "no atoms"
_MAX_REASON = 300
_TIMESTAMP = re.compile(r"^\s*\[\d{2}:\d{2}:\d{2}\]\s?")
_CARET_HEADER = re.compile(r"check for mistakes around position \d+:?\s*$")
_HAS_CAPTURE = hasattr(rdBase, "CaptureErrorLog")


def _clean_rdkit_log(text: str) -> str:
    """RDKit's multi-line error log -> one line: no timestamps, caret diagram or duplicates."""
    lines: list[str] = []
    skip = 0
    for raw in text.splitlines():
        line = _TIMESTAMP.sub("", raw).strip()
        if skip:  # the echoed SMILES and the "~~^" marker under a "check for mistakes" line
            skip -= 1
            continue
        if not line:
            continue
        if line.startswith("SMILES Parse Error:"):
            line = line[len("SMILES Parse Error:") :].strip()
        if _CARET_HEADER.search(line):
            skip = 2
            line = line.rstrip(": ")
        if line not in lines:
            lines.append(line)
    # "Failed parsing SMILES 'x' for input: 'x'" adds nothing when a specific cause is present.
    specific = [ln for ln in lines if not ln.startswith("Failed parsing SMILES")]
    return "; ".join(specific or lines)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _failure_reason(smiles: str) -> str:
    """Why RDKit rejects ``smiles`` (slow path, only called after MolFromSmiles returned None)."""
    message = ""
    with rdBase.BlockLogs():
        if _HAS_CAPTURE:
            with rdBase.CaptureErrorLog() as capture:
                try:
                    Chem.MolFromSmiles(smiles)
                except Exception as exc:  # noqa: BLE001 - RDKit may raise instead of logging
                    message = str(exc)
            message = message or _clean_rdkit_log(capture.messages)
        if not message:  # old RDKit, or nothing was logged: ask the sanitizer directly
            try:
                mol = Chem.MolFromSmiles(smiles, sanitize=False)
                if mol is None:
                    message = "SMILES syntax error"
                else:
                    Chem.SanitizeMol(mol)
            except Exception as exc:  # noqa: BLE001
                message = str(exc)
    return "RDKit could not parse: " + _one_line(message or "unknown RDKit error")


_WHITESPACE = re.compile(r"\s+")


def _is_cxsmiles_tail(tail: str) -> bool:
    """Whether what follows the first blank of a SMILES is one CXSMILES extension ``|...|`` and nothing else."""
    return len(tail) >= 2 and tail[0] == "|" and tail[-1] == "|" and _WHITESPACE.search(tail) is None


def _is_missing(value) -> bool:
    """None, NaN (float or numpy) or pandas' NA/NaT: an empty CSV cell."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # pd.NA: "boolean value of NA is ambiguous"
        return True


def _parse(smiles) -> tuple[Chem.Mol, str]:
    """SMILES -> (sanitized molecule with >= 1 atom, stripped SMILES), else :class:`InvalidSmiles`.

    Callers on the hot path wrap this in ``rdBase.BlockLogs()``.
    """
    if not isinstance(smiles, str):
        if _is_missing(smiles):
            raise InvalidSmiles(_EMPTY)
        raise InvalidSmiles(f"{_EMPTY} (not a string: {type(smiles).__name__})")
    smiles = smiles.strip()
    if not smiles:
        raise InvalidSmiles(_EMPTY)
    inner = _WHITESPACE.search(smiles)
    if inner is not None and not _is_cxsmiles_tail(smiles[inner.end():]):
        head = smiles[: inner.start()]
        raise InvalidSmiles(f"whitespace inside the SMILES (after '{_one_line(head)[:60]}'): RDKit would read "
                            "only the part before it and take the rest as a name")
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception as exc:  # noqa: BLE001 - RDKit raising instead of returning None
        raise InvalidSmiles("RDKit could not parse: " + _one_line(str(exc))) from None
    if mol is None:
        raise InvalidSmiles(_failure_reason(smiles))
    if mol.GetNumAtoms() == 0:
        raise InvalidSmiles(_NO_ATOMS)
    return mol, smiles


# --------------------------------------------------------------------------------------------
# The hot loop
# --------------------------------------------------------------------------------------------
# Raw per-atom record written by the hot loop (8 ints) and per-bond record (5 ints).
_RAW_ATOM = 8  # Z, chirality idx, total H, formal charge, radicals, hybridization idx, arom, n_rings
_RAW_BOND = 5  # begin atom, end atom, bond type idx, stereo idx, conjugated


def _raw_mol(mol, smiles: str, atoms_ext, bonds_ext) -> tuple[int, int]:
    """Append one molecule's raw atom and bond records to flat lists; return (n_atoms, n_bonds).

    ``smiles`` is the (stripped) string ``mol`` was parsed from; it only gates the two stereo
    accessors (see "Speed" in the module docstring). Atom indices are local (0-based).
    """
    n_atoms = mol.GetNumAtoms()
    n_bonds = mol.GetNumBonds()
    cxsmiles = "|" in smiles
    # Chiral tags come only from '@' tokens (or CXSMILES extensions); bond stereo only from
    # '/' '\\' bond directions (or CXSMILES). Otherwise they are CHI_UNSPECIFIED / STEREONONE.
    has_chirality = cxsmiles or "@" in smiles
    has_bond_stereo = cxsmiles or "/" in smiles or "\\" in smiles

    bt_get = _BT_IDX.get
    st_get = _ST_IDX.get
    get_bond = mol.GetBondWithIdx
    st = 0  # STEREONONE
    for k in range(n_bonds):
        bond = get_bond(k)
        if has_bond_stereo:
            st = st_get(bond.GetStereo(), _ST_MISC)
        bonds_ext(
            (
                bond.GetBeginAtomIdx(),
                bond.GetEndAtomIdx(),
                bt_get(bond.GetBondType(), _BT_MISC),
                st,
                bond.GetIsConjugated(),
            )
        )

    num_atom_rings = mol.GetRingInfo().NumAtomRings  # > 0 <=> atom.IsInRing(), no atom wrapper
    chi_get = _CHI_IDX.get
    hyb_get = _HYB_IDX.get
    get_atom = mol.GetAtomWithIdx
    chi = 0  # CHI_UNSPECIFIED
    for k in range(n_atoms):
        atom = get_atom(k)
        if has_chirality:
            chi = chi_get(atom.GetChiralTag(), _CHI_MISC)
        atoms_ext(
            (
                atom.GetAtomicNum(),
                chi,
                atom.GetTotalNumHs(),
                atom.GetFormalCharge(),
                atom.GetNumRadicalElectrons(),
                hyb_get(atom.GetHybridization(), _HYB_MISC),
                atom.GetIsAromatic(),
                num_atom_rings(k),
            )
        )
    return n_atoms, n_bonds


def _featurize_chunk(smiles: Sequence) -> tuple:
    """Featurize a contiguous chunk; returns compact arrays (cheap to send between processes).

    Returns ``(x, edge_index, edge_attr, num_nodes, num_edges, reasons)`` for the chunk, where
    ``reasons`` is a ``{position_in_chunk: reason}`` dict holding only the invalid rows.
    """
    atoms: list[int] = []
    bonds: list[int] = []
    atoms_ext, bonds_ext = atoms.extend, bonds.extend
    num_nodes = [0] * len(smiles)
    num_bonds = [0] * len(smiles)
    reasons: dict[int, str] = {}
    parse = _parse
    raw = _raw_mol
    with rdBase.BlockLogs():
        for pos, s in enumerate(smiles):
            try:
                mol, s = parse(s)
            except InvalidSmiles as exc:
                reasons[pos] = exc.reason
                continue
            num_nodes[pos], num_bonds[pos] = raw(mol, s, atoms_ext, bonds_ext)

    # Vectorised second half: vocabularies, total degree and both edge directions, per chunk.
    a = np.array(atoms, dtype=np.int64).reshape(-1, _RAW_ATOM)
    b = np.array(bonds, dtype=np.int64).reshape(-1, _RAW_BOND)
    nn = np.array(num_nodes, dtype=np.int64)
    nb = np.array(num_bonds, dtype=np.int64)
    total_atoms = a.shape[0]

    # Degree (number of bonds at an atom) = GetDegree(); total degree = degree + total H count,
    # which is RDKit's definition of GetTotalDegree().
    node_offset = np.repeat(np.cumsum(nn) - nn, nb)  # first atom of each bond's molecule
    degree = np.bincount(b[:, 0] + node_offset, minlength=total_atoms)
    degree += np.bincount(b[:, 1] + node_offset, minlength=total_atoms)

    x = np.empty((total_atoms, _N_ATOM_FEATURES), dtype=np.int64)
    x[:, 0] = _bucket(a[:, 0], _ATOMIC_NUMS)
    x[:, 1] = a[:, 1]
    x[:, 2] = _bucket(degree + a[:, 2], _DEGREES)
    x[:, 3] = _bucket(a[:, 3], _FORMAL_CHARGES)
    x[:, 4] = _bucket(a[:, 2], _NUM_HS)
    x[:, 5] = _bucket(a[:, 4], _RADICALS)
    x[:, 6] = a[:, 5]
    x[:, 7] = a[:, 6]
    x[:, 8] = a[:, 7] > 0

    # OGB edge order: for each bond (in RDKit order) i->j, then j->i; same features on both.
    edge_index = np.empty((2, 2 * b.shape[0]), dtype=np.int64)
    edge_index[0, 0::2] = b[:, 0]
    edge_index[0, 1::2] = b[:, 1]
    edge_index[1, 0::2] = b[:, 1]
    edge_index[1, 1::2] = b[:, 0]
    edge_attr = np.repeat(b[:, 2:], 2, axis=0)
    return x, edge_index, edge_attr, nn, 2 * nb, reasons


def _featurize_chunk_for_ipc(smiles: Sequence) -> tuple:
    """:func:`_featurize_chunk` with the arrays narrowed for the trip back to the parent.

    Every feature index is < 256 (uint8) and node indices and counts fit int32, so a chunk
    pickles ~5x smaller than as int64; :func:`_assemble` widens back to int64 in one pass.
    """
    x, edge_index, edge_attr, nn, ne, reasons = _featurize_chunk(smiles)
    return (
        x.astype(np.uint8),
        edge_index.astype(np.int32),
        edge_attr.astype(np.uint8),
        nn.astype(np.int32),
        ne.astype(np.int32),
        reasons,
    )


def smiles_to_graph(smiles: str) -> dict:
    """One SMILES -> OGB-identical graph.

    Returns ``{"x": int64 [n_atoms, 9], "edge_index": int64 [2, E], "edge_attr": int64 [E, 3],
    "num_nodes": int}`` with ``E = 2 * n_bonds``. Raises :class:`InvalidSmiles` (never returns an
    empty graph). Same code path as :func:`featurize_smiles`, so the two always agree.
    """
    x, edge_index, edge_attr, nn, _, reasons = _featurize_chunk([smiles])
    if reasons:
        raise InvalidSmiles(reasons[0])
    return {"x": x, "edge_index": edge_index, "edge_attr": edge_attr, "num_nodes": int(nn[0])}


# --------------------------------------------------------------------------------------------
# Bulk path
# --------------------------------------------------------------------------------------------
@dataclass
class Featurized:
    """Flat features of a list of SMILES (row ``i`` = input ``i``; invalid rows have 0 atoms).

    Molecule ``i`` owns atoms ``node_ptr[i]:node_ptr[i+1]`` of ``x`` and edges
    ``edge_ptr[i]:edge_ptr[i+1]`` of ``edge_index``/``edge_attr``; ``edge_index`` holds LOCAL
    (per-molecule, 0-based) node indices.
    """

    x: np.ndarray  # (total_atoms, 9) int64
    edge_index: np.ndarray  # (2, total_edges) int64, local node indices
    edge_attr: np.ndarray  # (total_edges, 3) int64
    num_nodes: np.ndarray  # (n,) int64
    num_edges: np.ndarray  # (n,) int64, directed edges (2 per bond)
    valid: np.ndarray  # (n,) bool
    reasons: list = field(default_factory=list)  # list[str | None], None when valid

    def __len__(self) -> int:
        return int(self.num_nodes.shape[0])

    @property
    def node_ptr(self) -> np.ndarray:
        """(n+1,) offsets of each molecule's atoms in ``x``."""
        return np.concatenate([[0], np.cumsum(self.num_nodes)]).astype(np.int64)

    @property
    def edge_ptr(self) -> np.ndarray:
        """(n+1,) offsets of each molecule's edges in ``edge_index``/``edge_attr``."""
        return np.concatenate([[0], np.cumsum(self.num_edges)]).astype(np.int64)

    def graph(self, i: int) -> dict:
        """Molecule ``i`` as the dict :func:`smiles_to_graph` returns (views, not copies)."""
        if not self.valid[i]:
            raise InvalidSmiles(self.reasons[i])
        n0, n1 = (int(v) for v in self.node_ptr[i : i + 2])
        e0, e1 = (int(v) for v in self.edge_ptr[i : i + 2])
        return {
            "x": self.x[n0:n1],
            "edge_index": self.edge_index[:, e0:e1],
            "edge_attr": self.edge_attr[e0:e1],
            "num_nodes": n1 - n0,
        }


#: Below this many SMILES featurize in-process: a pool costs more than it saves. Measured with
#: ``benchmarks/featurize_pool_crossover.py`` (HIV rows, a forced 2-worker pool vs 1 core, torch
#: imported; ``benchmarks/results/featurize_pool_crossover.json``) on the shared 2-core VM, 6 runs:
#: the crossover follows the load, not the size. In the one run where the pool got 1.4-1.8 cores,
#: one-core/pool was 0.83 (best of 5) / 1.14 (median) at 250 rows, 1.02 / 1.15 at 1,000, 1.50 / 1.33
#: at 2,000; in the five where another session held a core (the pool got ~1.0 core in the three
#: runs that recorded it) the median ratios were 0.64-0.76 at 250, 0.79-0.97 at 1,000 and
#: 0.93-1.13 at 8,000. Forking and tearing down the workers costs ~0.05-0.08 s, 1,000 molecules take
#: ~0.4-0.5 s on a core: 1,000 (the earlier estimate) is kept, about break-even on free cores and a
#: small loss on a busy machine.
_MIN_POOL_ROWS = 1000


def _chunk_size(n: int, n_jobs: int) -> int:
    return max(64, min(2048, math.ceil(n / (16 * n_jobs))))


def _pool_context():
    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context()


def featurize_smiles(
    smiles: Sequence[str],
    n_jobs: int | None = None,
    progress: bool = True,
    desc: str = "featurizing",
) -> Featurized:
    """Featurize many SMILES in parallel into flat arrays (see :class:`Featurized`).

    ``n_jobs``: worker processes (default: the free cores, :func:`fedmol.cores.free_cores`; 1 =
    in-process, no pool).
    Invalid SMILES never raise: their row has ``valid=False``, 0 atoms/edges and a reason.
    """
    smiles = list(smiles)
    n = len(smiles)
    if n_jobs is None:
        from fedmol.cores import free_cores

        n_jobs = free_cores()[1]
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 or None, got {n_jobs}")
    n_jobs = min(n_jobs, max(1, n))
    size = _chunk_size(n, n_jobs)
    chunks = [smiles[i : i + size] for i in range(0, n, size)]
    in_process = (
        n_jobs == 1 or n < _MIN_POOL_ROWS or len(chunks) <= 1 or mp.current_process().daemon
    )

    results = []
    if in_process:
        with _progress_bar(progress) as bar:
            task = bar.add_task(desc, total=n)
            for chunk in chunks:
                results.append(_featurize_chunk(chunk))
                bar.advance(task, len(chunk))
    else:
        # The pool is forked BEFORE the progress bar exists: a shown rich bar starts a refresh
        # thread, and forking while another thread may hold a lock is how fork deadlocks happen.
        with _pool_context().Pool(processes=min(n_jobs, len(chunks))) as pool, _progress_bar(progress) as bar:
            task = bar.add_task(desc, total=n)
            for chunk, result in zip(chunks, pool.imap(_featurize_chunk_for_ipc, chunks)):
                results.append(result)
                bar.advance(task, len(chunk))
    return _assemble(results, n)


def _progress_bar(progress: bool):
    """A rich progress bar over molecules on stderr, shown only when ``progress`` and stderr is a
    terminal (not started: ``with`` starts it)."""
    from rich.console import Console  # local imports: keep `import fedmol` light
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("mol"),
                    TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not (progress and sys.stderr.isatty()))


def _assemble(results: list[tuple], n: int) -> Featurized:
    if not results:
        empty = np.zeros(0, dtype=np.int64)
        return Featurized(
            x=np.zeros((0, _N_ATOM_FEATURES), dtype=np.int64),
            edge_index=np.zeros((2, 0), dtype=np.int64),
            edge_attr=np.zeros((0, _N_BOND_FEATURES), dtype=np.int64),
            num_nodes=empty,
            num_edges=empty.copy(),
            valid=np.zeros(0, dtype=bool),
            reasons=[],
        )
    xs, edge_indices, edge_attrs, nns, nes, reason_maps = zip(*results)
    reasons: list[str | None] = [None] * n
    offset = 0
    for nn, chunk_reasons in zip(nns, reason_maps):
        for pos, reason in chunk_reasons.items():
            reasons[offset + pos] = reason
        offset += len(nn)
    valid = np.fromiter((r is None for r in reasons), dtype=bool, count=n)
    return Featurized(
        x=np.concatenate(xs).astype(np.int64, copy=False),
        edge_index=np.concatenate(edge_indices, axis=1).astype(np.int64, copy=False),
        edge_attr=np.concatenate(edge_attrs).astype(np.int64, copy=False),
        num_nodes=np.concatenate(nns).astype(np.int64, copy=False),
        num_edges=np.concatenate(nes).astype(np.int64, copy=False),
        valid=valid,
        reasons=reasons,
    )
