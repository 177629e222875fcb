"""Folded Morgan fingerprints for the fingerprint backbone (``mlp``), computed once and cached.

A fingerprint is stored sparsely in each molecule's ``Data``: ``fp_on`` (int64 indices of the
non-zero folded bits), ``fp_vals`` (float32: 1 for bits, the count for counts), ``fp_n`` (``[1]``:
how many) and ``fp_key`` (``[1, 3]``: radius, fold size, counts), so torch_geometric's loaders
batch them and a model rebuilds the bags with ``fp_n`` (the names avoid "index": PyG would offset
them by ``num_nodes``). :func:`attach_fingerprints` adds them to a loaded dataset; they are cached
beside its graphs (the cache folder is keyed by source sha256, featurizer and RDKit versions), one
file per setting and :data:`FP_VERSION`. Nothing is computed unless asked for (GNN runs never are).

:func:`batch_fingerprints` gives a model its input from a batch: the attached fingerprints when
their ``fp_key`` matches the model's setting, else computed from ``batch.smiles`` (memoized per
process), so datasets loaded without them (pilot sites, FedDF's public pool, leaderboard
verification) work unchanged. RDKit ``rdFingerprintGenerator`` Morgan (ECFP-like, no chirality);
counts are raw counts (SparseChem/MELLODDY use radius 3 folded to 32768 bits).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FP_VERSION",
    "DEFAULTS",
    "FingerprintSpec",
    "compute_fingerprints",
    "attach_fingerprints",
    "batch_fingerprints",
    "stats",
    "ECFP4",
    "ecfp4",
    "ecfp4_of",
]

#: part of every cache file name: bump when the computation changes
FP_VERSION = "morgan-v1"
#: the ``mlp`` backbone's defaults, chosen by ``benchmarks/mlp_defaults.py`` (mean validation ROC-AUC on
#: BBBP, BACE, B3DB: 0.872, vs 0.860 at 2048 bits, 0.870 at 32768, 0.850 for SparseChem's r3/32768 bits)
DEFAULTS = dict(fp_radius=2, fp_bits=8192, fp_counts=True)
MAX_RADIUS = 6
MAX_BITS = 1 << 20

#: molecules whose fingerprint RDKit computed in this process (tests check that a cached load adds none)
stats = {"computed": 0}
_MEMO: dict[tuple[int, int, bool], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
_MEMO_MAX = 500_000


@dataclass(frozen=True)
class FingerprintSpec:
    """Radius, fold size and bits (0/1) vs counts of a folded Morgan fingerprint."""

    radius: int = DEFAULTS["fp_radius"]
    bits: int = DEFAULTS["fp_bits"]
    counts: bool = DEFAULTS["fp_counts"]

    def __post_init__(self) -> None:
        from fedmol.errors import FedmolError

        if isinstance(self.radius, bool) or not isinstance(self.radius, int) or not 0 <= self.radius <= MAX_RADIUS:
            raise FedmolError(f"fp_radius must be an integer in [0, {MAX_RADIUS}], got {self.radius!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise FedmolError(f"fp_bits must be an integer in [1, {MAX_BITS}], got {self.bits!r}")
        if not isinstance(self.counts, bool):
            raise FedmolError(f"fp_counts must be true or false, got {self.counts!r}")

    @classmethod
    def from_config(cls, config: Mapping) -> "FingerprintSpec":
        """The setting of a model config (``fp_radius``, ``fp_bits``, ``fp_counts``; defaults for absent keys)."""
        return cls(*(config.get(k, DEFAULTS[k]) for k in ("fp_radius", "fp_bits", "fp_counts")))

    @property
    def tag(self) -> str:
        return f"r{self.radius}-b{self.bits}-{'counts' if self.counts else 'bits'}"

    def key(self) -> Tensor:
        return torch.tensor([[self.radius, self.bits, int(self.counts)]], dtype=torch.long)


def _generator(spec: FingerprintSpec):
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=spec.radius, fpSize=spec.bits)


def _one(gen, spec: FingerprintSpec, smiles: str) -> tuple[np.ndarray, np.ndarray]:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) else None
    if mol is None:  # not a valid molecule of a dataset: an empty bag (zero input)
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if spec.counts:
        items = sorted(gen.GetCountFingerprint(mol).GetNonzeroElements().items())
        on = np.fromiter((k for k, _ in items), np.int64, len(items))
        return on, np.fromiter((v for _, v in items), np.float32, len(items))
    on = np.asarray(list(gen.GetFingerprint(mol).GetOnBits()), dtype=np.int64)
    return on, np.ones(len(on), np.float32)


def compute_fingerprints(smiles: Sequence[str], spec: FingerprintSpec) -> dict[str, Tensor]:
    """``{"fp_on", "fp_vals", "fp_n"}`` of every SMILES, flat (molecule i's entries are the ``fp_n[i]``
    after the first ``fp_n[:i].sum()``)."""
    from rdkit import rdBase

    gen = _generator(spec)
    ons, vals = [], []
    with rdBase.BlockLogs():
        for s in smiles:
            on, v = _one(gen, spec, s)
            ons.append(on)
            vals.append(v)
    stats["computed"] += len(ons)
    return _flat(ons, vals)


def _flat(ons: list[np.ndarray], vals: list[np.ndarray]) -> dict[str, Tensor]:
    n = np.fromiter((len(o) for o in ons), np.int64, len(ons))
    cat = (lambda xs, dt: torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, dtype=dt))
    return {"fp_on": cat(ons, torch.long), "fp_vals": cat(vals, torch.float32), "fp_n": torch.from_numpy(n)}


def _cache_file(ds, spec: FingerprintSpec) -> Path | None:
    return Path(ds.cache_path) / f"fp-{FP_VERSION}-{spec.tag}.safetensors" if ds.cache_path else None


def _load_cached(path: Path | None, n_mols: int) -> dict[str, Tensor] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path is None or not path.is_file():
        return None
    try:
        t = load_file(str(path))
        if len(t["fp_n"]) == n_mols and int(t["fp_n"].sum()) == len(t["fp_on"]) == len(t["fp_vals"]):
            return t
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError):
        pass
    return None  # damaged or stale: recomputed


def attach_fingerprints(ds, spec: FingerprintSpec | Mapping | None = None):
    """Add ``fp_on``/``fp_vals``/``fp_n``/``fp_key`` of ``spec`` to every molecule of the full dataset
    ``ds`` (in place; returns ``ds``), from its cache folder when they are there, else computed and
    written there. Call it before taking subsets (they share the storage)."""
    from safetensors.torch import save_file

    from fedmol.atomic import atomic_path

    spec = spec if isinstance(spec, FingerprintSpec) else FingerprintSpec.from_config(spec or {})
    if ds._indices is not None:
        raise ValueError("attach fingerprints to the full dataset, before taking subsets of it")
    n_mols = len(ds.slices["y"]) - 1
    path = _cache_file(ds, spec)
    t = _load_cached(path, n_mols)
    if t is None:
        t = compute_fingerprints(list(ds._smiles), spec)
        if path is not None:
            try:
                with atomic_path(path) as tmp:
                    save_file(t, str(tmp), metadata={"spec": json.dumps(spec.__dict__), "version": FP_VERSION})
            except OSError:
                pass  # read-only cache: still usable, just not cached
    data = ds._data
    data.fp_on, data.fp_vals, data.fp_n = t["fp_on"], t["fp_vals"], t["fp_n"]
    data.fp_key = spec.key().expand(n_mols, 3).clone()
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), t["fp_n"].cumsum(0)])
    one = torch.arange(n_mols + 1)
    ds.slices.update(fp_on=ptr, fp_vals=ptr, fp_n=one, fp_key=one)
    ds._data_list = None  # items cached before now lack the new fields
    ds.fingerprints = spec
    return ds


def _memoized(smiles: Sequence[str], spec: FingerprintSpec) -> dict[str, Tensor]:
    key = (spec.radius, spec.bits, spec.counts)
    memo = _MEMO.setdefault(key, {})
    missing = [s for s in dict.fromkeys(smiles) if s not in memo]
    if missing:
        if len(memo) + len(missing) > _MEMO_MAX:
            memo.clear()
        t = compute_fingerprints(missing, spec)
        ends = t["fp_n"].cumsum(0).tolist()
        on, vals = t["fp_on"].numpy(), t["fp_vals"].numpy()
        for s, start, end in zip(missing, [0] + ends[:-1], ends):
            memo[s] = (on[start:end], vals[start:end])
    got = [memo[s] for s in smiles]
    return _flat([g[0] for g in got], [g[1] for g in got])


def batch_fingerprints(batch, spec: FingerprintSpec, device: torch.device | None = None
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``(on, vals, offsets)`` of a (batched) ``Data`` for ``F.embedding_bag``: its attached fingerprints
    when they are of ``spec``, else computed from ``batch.smiles``."""
    key = getattr(batch, "fp_key", None)
    if key is not None and bool((key.view(-1, 3) == spec.key().to(key.device)).all()):
        on, vals, n = batch.fp_on, batch.fp_vals, batch.fp_n.view(-1)
    else:
        smiles = getattr(batch, "smiles", None)
        if smiles is None:
            raise ValueError("the mlp backbone needs fingerprints: the batch has neither fp_on/fp_vals/fp_n "
                             "nor smiles to compute them from")
        t = _memoized([smiles] if isinstance(smiles, str) else list(smiles), spec)
        on, vals, n = t["fp_on"], t["fp_vals"], t["fp_n"]
    if device is not None and on.device != device:
        on, vals, n = on.to(device), vals.to(device), n.to(device)
    offsets = torch.cumsum(n, 0) - n
    return on, vals, offsets


#: the tree models' input (the rf-ecfp4 / gbt-ecfp4 references, federated boosted trees): 0/1 Morgan bits
ECFP4 = dict(radius=2, bits=2048)
_ECFP4_MEMO: dict[str, np.ndarray] = {}


def ecfp4(smiles: Sequence[str], radius: int = ECFP4["radius"], n_bits: int = ECFP4["bits"]) -> np.ndarray:
    """Morgan fingerprints as a ``(n, n_bits)`` uint8 0/1 matrix (a SMILES RDKit cannot read: zeros)."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    with rdBase.BlockLogs():
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s) if isinstance(s, str) else None
            if mol is not None:
                out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def ecfp4_of(smiles: Sequence[str]) -> np.ndarray:
    """:func:`ecfp4` of ``smiles`` at the default setting; each SMILES is fingerprinted once per process."""
    todo = sorted({s for s in smiles if s not in _ECFP4_MEMO})
    if todo:
        if len(_ECFP4_MEMO) + len(todo) > _MEMO_MAX:
            _ECFP4_MEMO.clear()
        _ECFP4_MEMO.update(zip(todo, ecfp4(todo)))
    if not len(smiles):
        return np.zeros((0, ECFP4["bits"]), dtype=np.uint8)
    return np.stack([_ECFP4_MEMO[s] for s in smiles])
