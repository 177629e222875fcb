"""Bemis-Murcko scaffolds and scaffold fingerprints.

The scaffold of a molecule is its Bemis-Murcko framework (ring systems plus the linkers between
them, side chains stripped) written as canonical SMILES by RDKit with
``MurckoScaffold.MurckoScaffoldSmiles(mol=..., includeChirality=False)``. Acyclic molecules have
the empty scaffold ``""``; all of them form one scaffold group.

Scaffolds are what :mod:`fedmol.data.partition` groups molecules by: molecules that share a
scaffold always end up on the same side of every split.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

__all__ = ["murcko_scaffolds", "scaffold_fingerprints", "DEFAULT_CHUNK_SIZE"]

#: Molecules per work item of the process pool (and per progress-bar step).
DEFAULT_CHUNK_SIZE = 1000


def _scaffold_chunk(args: tuple[int, Sequence[str], bool]) -> list[str]:
    """Scaffolds of one chunk; ``offset`` is the position of the chunk's first SMILES."""
    offset, chunk, chirality = args
    blocker = rdBase.BlockLogs()  # noqa: F841 - scoped: the caller's RDKit log settings come back
    out: list[str] = []
    for i, smi in enumerate(chunk):
        mol = Chem.MolFromSmiles(smi) if isinstance(smi, str) else None
        if mol is None:
            raise ValueError(
                f"SMILES at index {offset + i} does not parse with RDKit: {smi!r} "
                "(drop invalid molecules before computing scaffolds)"
            )
        out.append(MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=chirality))
    return out


def _resolve_jobs(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs <= 0:
        from fedmol.cores import free_cores

        return free_cores()[1]
    return int(n_jobs)


def murcko_scaffolds(
    smiles: Sequence[str],
    n_jobs: int | None = None,
    progress: bool = False,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    include_chirality: bool = False,
) -> list[str]:
    """Bemis-Murcko scaffold SMILES of every molecule, in input order.

    Args:
        smiles: SMILES strings; all must parse with RDKit (callers pass valid molecules only).
        n_jobs: worker processes. ``None`` or ``<= 0`` means the free cores (:func:`fedmol.cores.free_cores`); ``1`` runs
            serially. Work is split into chunks of ``chunk_size`` molecules and farmed out to a
            ``fork`` process pool (serial when there is only one chunk or ``fork`` is unavailable).
        progress: show a rich progress bar (stderr) while computing.
        chunk_size: molecules per work item.
        include_chirality: keep stereo marks in the scaffold (Hu et al. 2020's splitter does;
            fedmol's partitions do not).

    Returns:
        One scaffold SMILES per molecule; ``""`` for acyclic molecules.

    Raises:
        ValueError: a SMILES does not parse; the message names its index.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    smiles = list(smiles)
    n = len(smiles)
    chunks = [(start, smiles[start : start + chunk_size], include_chirality) for start in range(0, n, chunk_size)]
    jobs = _worker_count(n_jobs, len(chunks))
    results: list[list[str]] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("Murcko scaffolds", total=n)
    try:
        for chunk, res in _scaffolds_by_chunk(chunks, jobs):
            results.append(res)
            if bar is not None:
                bar.advance(task, len(chunk[1]))
    finally:
        if bar is not None:
            bar.stop()
    return [s for chunk_result in results for s in chunk_result]


def _worker_count(n_jobs: int | None, n_chunks: int) -> int:
    """Worker processes for ``n_chunks`` chunks: at most one per chunk, and 1 without ``fork``."""
    jobs = min(_resolve_jobs(n_jobs), n_chunks)
    if jobs > 1 and "fork" not in multiprocessing.get_all_start_methods():
        jobs = 1
    return jobs


def _scaffolds_by_chunk(chunks: list[tuple[int, list[str], bool]],
                        jobs: int) -> Iterator[tuple[tuple[int, list[str], bool], list[str]]]:
    """``(chunk, its scaffolds)`` in chunk order: serially, or from a ``fork`` pool of ``jobs`` workers."""
    if jobs <= 1:
        for chunk in chunks:
            yield chunk, _scaffold_chunk(chunk)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=jobs) as pool:
        yield from zip(chunks, pool.imap(_scaffold_chunk, chunks))  # imap preserves chunk order


def scaffold_fingerprints(scaffolds: Sequence[str], n_bits: int = 1024) -> np.ndarray:
    """Morgan fingerprints (radius 2, ``n_bits`` bits) of scaffold SMILES.

    Returns a ``(len(scaffolds), n_bits)`` ``uint8`` matrix of 0/1. The empty scaffold (acyclic
    molecules), and any scaffold SMILES that RDKit cannot read at all, give an all-zero row;
    scaffolds that parse but fail sanitization (e.g. cannot be kekulized) are fingerprinted from
    a partially sanitized molecule.
    Each distinct scaffold is fingerprinted once.
    """
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    from rdkit.Chem import rdFingerprintGenerator

    blocker = rdBase.BlockLogs()  # noqa: F841 - scoped silence, restored when the function returns
    scaffolds = list(scaffolds)
    out = np.zeros((len(scaffolds), n_bits), dtype=np.uint8)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=n_bits)
    cache: dict[str, np.ndarray | None] = {}
    for i, scaf in enumerate(scaffolds):
        if not scaf:
            continue
        if scaf not in cache:
            mol = _scaffold_mol(scaf)
            cache[scaf] = None if mol is None else generator.GetFingerprintAsNumPy(mol) != 0
        fp = cache[scaf]
        if fp is not None:
            out[i] = fp
    return out


def _scaffold_mol(scaffold: str) -> Chem.Mol | None:
    """RDKit molecule of a scaffold SMILES.

    A few Murcko scaffolds of valid molecules fail RDKit sanitization on their own (typically an
    aromatic system that cannot be kekulized once its substituents are stripped); those are read
    without full sanitization (implicit valences and ring membership only), which is all a
    Morgan fingerprint needs.
    """
    mol = Chem.MolFromSmiles(scaffold)
    if mol is not None:
        return mol
    mol = Chem.MolFromSmiles(scaffold, sanitize=False)
    if mol is None:
        return None
    try:
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
    except Exception:  # pragma: no cover - defensive: an unreadable scaffold gets zeros
        return None
    return mol
