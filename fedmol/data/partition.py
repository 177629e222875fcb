"""Heterogeneous scaffold partitioning: simulated pharma partners with disjoint chemistry.

This module is the contract of every fedmol split file. Everything here is a pure function of
arrays (no I/O); the same inputs give bit-identical outputs on every machine.

Notation
========
``n`` molecules, identified by their positions ``0..n-1``; ``scaffolds[i]`` is the Bemis-Murcko
scaffold SMILES of molecule ``i`` (``""`` for acyclic ones, see :mod:`fedmol.data.scaffold`);
``y`` is a float ``(n, T)`` label matrix with ``NaN`` for a missing label (a 1-D ``y`` is read as
``(n, 1)``); ``K`` partners; Dirichlet concentration ``alpha``; integer ``seed``.

Algorithm ``fedmol-scaffold-dirichlet/2``
=========================================
1. **Scaffold groups.** Molecules sharing a scaffold string form a group. Groups are ordered by
   size descending, then scaffold string ascending (Python ``str`` order, i.e. code points). Inside
   a group molecules are kept in ascending position. "Group order" below always means this order.

2. **Global test set** (depends only on ``scaffolds`` and ``test_fraction``; never on ``K``,
   ``alpha``, ``seed``, ``y``). Let ``cap = n * (1 - test_fraction)``. Walk the groups in group
   order with a running *pool* size ``P = 0``: a group of size ``s`` joins the pool if
   ``P + s <= cap + 1e-9`` (then ``P += s``), otherwise it goes to the test set, and the walk
   continues (a later, smaller group may still join the pool). This is the classic deterministic
   scaffold split (largest groups to training, the rarest scaffolds to test), so every split of a
   dataset shares one test set, comparable across ``K`` and ``alpha``. No partner holds a test
   scaffold. :func:`scaffold_split` uses the very same rule for its test part.

3. **Group types.** Every pool group ``g`` gets a type ``t(g) = (c(g), l(g))``:

   * *Chemistry cluster* ``c(g)``: k-means on the Morgan fingerprints (radius 2, 1024 bits,
     :func:`fedmol.data.scaffold.scaffold_fingerprints`; all-zero for ``""``) of the pool groups'
     scaffolds, one point per group, in group order, as a sparse CSR ``float32`` matrix;
     scikit-learn ``KMeans`` with ``n_init=1, random_state=0``, default ``init`` (k-means++),
     ``max_iter`` and ``tol``, Lloyd algorithm. The number of
     clusters is ``n_clusters`` if given, else ``max(2 * K, 8)`` (about two clusters per
     partner, so that at small ``alpha`` each partner can own distinct chemistry), and is then
     capped by the number of pool groups and by the number of distinct fingerprints (the value
     used is recorded in ``params["n_clusters"]``; ``1`` skips k-means). Cluster labels are
     renumbered ``0, 1, ...`` in order of first appearance in group order. The clustering does not
     depend on ``seed`` or ``alpha``.
   * *Label stratum* ``l(g)``, computed from pool labels only (test labels are never read):

     - classification (labels must be 0/1/NaN): ``l = 1`` if the group's fraction of positive
       entries over all its labelled ``(molecule, task)`` entries is ``>=`` the pool's positive
       rate over all labelled entries, else ``0``;
     - regression: each task is standardized with the pool's NaN-aware mean and standard
       deviation (a standard deviation of 0 or NaN counts as 1); a molecule's value is the mean
       of its standardized labels; a group's value is the mean of its labelled molecules' values;
       ``l`` is the group value's tertile bin ``0/1/2`` against the cut points
       ``numpy.quantile(values of all labelled pool molecules, [1/3, 2/3])`` (bin = number of cut
       points ``<=`` the value);
     - a group with no labels gets ``l = 0``.

   Type index ``t = c * S + l`` with ``S = 2`` strata (classification) or ``3`` (regression).

4. **Dealing the pool to partners** (no group is ever split). ``rng =
   numpy.random.default_rng(seed)`` is the only randomness. First ``perm = rng.permutation(K)``
   (drawn even when ``quantity_skew == 0``). The partner-size prior is ``q_k ∝ r_k ** -s`` with
   ``r = perm + 1`` (ranks ``1..K`` shuffled by the seed; ``s = quantity_skew >= 0``; ``s = 0``
   is uniform ``1/K``; ``s > 0`` gives a few large partners and many small ones), normalized to
   sum 1. Then, for draw ``d = 1, 2, ..., 100`` (``MAX_DRAWS``):

   a. draw every partner's *label preference* ``pi_k = rng.dirichlet(alpha * ones(S))``
      (one call with ``size=K``: a ``K x S`` matrix); then for every type present in the pool,
      in ascending type index, with ``t = c * S + l``: if cluster ``c`` has no chemistry share
      yet in this draw, draw ``P_c = rng.dirichlet(alpha * K * q)``; the type's proportions are
      ``p_t ∝ P_c * pi[:, l]`` (element-wise over partners, normalized to sum 1). The cluster
      share ``P_c`` concentrates chemistry; the preference ``pi`` is shared by all of a
      partner's clusters, so a small ``alpha`` also gives each partner a consistently skewed
      label balance. (If the product is all zero or non-finite, ``p_t = P_c``; if that too is
      degenerate, one-hot on ``rng.choice(K, p=q)``.)
   b. with ``size_t`` the molecules of type ``t``, targets ``p_t,k * size_t`` and running counts
      ``a_t,k = 0``, walk the pool groups in group order: group ``g`` of type ``t`` goes to the
      partner with the largest deficit ``p_t,k * size_t - a_t,k`` (ties: lowest ``k``), then
      ``a_t,k += |g|``;
   c. the draw is *feasible* if every partner holds ``>= min_partner_size`` (default
      ``DEFAULT_MIN_PARTNER_SIZE = 10``) molecules and
      ``>= 2`` groups (``MIN_GROUPS_PER_PARTNER``: one for train, one for valid). The first
      feasible draw is the partition; otherwise draw again from the same ``rng`` stream. After
      100 infeasible draws :class:`PartitionError` is raised.

   Large ``alpha``: ``p_t ≈ q`` for every type, partners look alike. Small ``alpha``: every type
   lands on one or few partners, so each partner owns distinct chemistry with a skewed label
   balance.

5. **Partner train/valid** (deterministic, by scaffold). Let ``m`` be the partner's molecules
   and ``vcap = m * valid_fraction``. Walk the partner's groups in *reverse* group order (rarest
   first) with a running valid size ``V = 0``: a group of size ``s`` goes to valid if
   ``V + s <= vcap + 1e-9`` (then ``V += s``), else it stays in train, and the walk continues.
   If valid is then empty, the partner's last group in group order (its rarest) goes to valid.
   Train and valid are thus both non-empty and scaffold-disjoint. (Filling valid from the rare
   end, rather than filling train from the large end like step 2, keeps a partner with few
   groups from losing a huge group to validation.)

6. **Output.** :class:`Partition` with one :class:`PartnerSplit` per partner (``train`` and
   ``valid``: sorted ``int64`` positions), the sorted ``test`` positions, ``params`` (every
   input and derived constant, JSON-serializable) and ``clusters`` (per-molecule chemistry
   cluster, ``-1`` for test molecules). Every molecule is in exactly one of: a partner's train, a
   partner's valid, the test set.

Input validation (all raise :class:`PartitionError`, a :class:`fedmol.errors.DataError` and a
:class:`ValueError`): ``alpha`` finite and ``> 0``; ``K`` an integer ``>= 1``; ``K <=`` number of
pool groups ("more partners (K) than scaffold groups (G)") and ``2K <=`` number of pool groups;
``0 <= test_fraction < 1``; ``0 < valid_fraction < 1``; ``quantity_skew`` finite and ``>= 0``;
``n_clusters`` an integer ``>= 1``; ``min_partner_size`` an integer ``>= 1`` (default 10);
``K * min_partner_size <=`` pool molecules; ``seed`` an integer ``>= 0``; classification labels
in ``{0, 1, NaN}``; ``y`` finite or NaN with ``len(y) == len(scaffolds)``.

Notes on behaviour
==================
* A small ``alpha`` skews both chemistry (each chemistry cluster lands on one or two partners)
  and labels (each partner's preference over label strata is shared across its clusters).
  Version 1 of this algorithm drew an independent Dirichlet per (cluster, stratum) type, which
  let a partner's label balance average out over its clusters; version 2 adds the shared
  preference.
* Very large scaffold groups (benzene, the acyclic ``""`` group) cannot be split, so even at
  large ``alpha`` the partners receiving them are larger than the others.
* The k-means clustering is memoized per (pool scaffolds, cluster count): partitions of the same
  dataset and ``K`` for other ``alpha``/``seed`` values skip it.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedmol.errors import DataError
from fedmol.jsonio import jsonable

__all__ = [
    "ALGORITHM",
    "DEFAULT_MIN_PARTNER_SIZE",
    "MAX_DRAWS",
    "MIN_GROUPS_PER_PARTNER",
    "Partition",
    "PartitionError",
    "PartnerSplit",
    "default_n_clusters",
    "heterogeneity_report",
    "report_table",
    "scaffold_groups",
    "scaffold_partition",
    "scaffold_split",
    "test_groups_mask",
]

ALGORITHM = "fedmol-scaffold-dirichlet/2"
#: Dirichlet draws tried before giving up on an infeasible configuration.
MAX_DRAWS = 100
#: Every partner needs one scaffold group for train and one for valid.
MIN_GROUPS_PER_PARTNER = 2
#: Default minimum number of molecules per partner (train + valid).
DEFAULT_MIN_PARTNER_SIZE = 10
#: Slack on fraction caps so that e.g. 0.9 * 100 admits exactly 90 molecules.
_EPS = 1e-9
FINGERPRINT_BITS = 1024
KMEANS_RANDOM_STATE = 0
KMEANS_N_INIT = 1
#: Quantile bins per task for the regression label histograms of :func:`heterogeneity_report`.
REPORT_REGRESSION_BINS = 10

TaskType = Literal["classification", "regression"]


class PartitionError(DataError, ValueError):
    """The requested partition is impossible or its parameters are invalid.

    A :class:`fedmol.errors.DataError` (the CLI shows its message without a traceback) and a
    :class:`ValueError`.
    """


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise PartitionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = int(value)
        ok = v == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or v < minimum:
        raise PartitionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


@dataclass(frozen=True)
class PartnerSplit:
    """One partner's molecules: sorted ``int64`` positions into the dataset."""

    train: np.ndarray
    valid: np.ndarray

    @property
    def size(self) -> int:
        return int(len(self.train) + len(self.valid))


@dataclass(frozen=True)
class Partition:
    """The output of :func:`scaffold_partition`."""

    partners: list[PartnerSplit]
    test: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    #: Per-molecule chemistry cluster (``-1`` for test molecules); ``None`` if unknown.
    clusters: np.ndarray | None = None

    @property
    def n_partners(self) -> int:
        return len(self.partners)

    def owner(self, n: int | None = None) -> np.ndarray:
        """Per-molecule partner index (``-1`` for test molecules)."""
        if n is None:
            n = int(sum(p.size for p in self.partners) + len(self.test))
        out = np.full(n, -1, dtype=np.int64)
        for k, p in enumerate(self.partners):
            out[p.train] = k
            out[p.valid] = k
        return out


# --------------------------------------------------------------------------------------------
# Groups and the global test set
# --------------------------------------------------------------------------------------------


def scaffold_groups(scaffolds: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Scaffold groups in group order (size descending, then scaffold ascending).

    Returns ``(names, members)``: the scaffold string of each group and its molecule positions
    (sorted ascending ``int64``).
    """
    names = [str(s) for s in scaffolds]
    if not names:
        return [], []
    uniq, inverse, counts = np.unique(np.asarray(names, dtype=object), return_inverse=True, return_counts=True)
    # np.unique sorts the strings ascending; order groups by (-count, string rank).
    order = np.lexsort((np.arange(len(uniq)), -counts))
    by_group = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    members = [by_group[bounds[u] : bounds[u + 1]].astype(np.int64) for u in order]
    return [str(uniq[u]) for u in order], members


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PartitionError(f"{name} must be a number, got {value!r}") from None
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (math.isfinite(v) and lo_ok and v < 1):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise PartitionError(f"{name} must be in {rng}, got {value!r}")
    return v


def _test_mask_from_sizes(sizes: Sequence[int], n: int, test_fraction: float) -> np.ndarray:
    cap = n * (1.0 - test_fraction)
    pool = 0
    is_test = np.zeros(len(sizes), dtype=bool)
    for g, s in enumerate(sizes):
        if pool + s <= cap + _EPS:
            pool += s
        else:
            is_test[g] = True
    return is_test


def test_groups_mask(scaffolds: Sequence[str], test_fraction: float = 0.1) -> np.ndarray:
    """Per-molecule boolean mask of the global test set (step 2 of the module docstring)."""
    tf = _check_fraction("test_fraction", test_fraction, allow_zero=True)
    _, members = scaffold_groups(scaffolds)
    n = len(scaffolds)
    is_test = _test_mask_from_sizes([len(m) for m in members], n, tf)
    mask = np.zeros(n, dtype=bool)
    for g in np.flatnonzero(is_test):
        mask[members[g]] = True
    return mask


test_groups_mask.__test__ = False  # not a pytest test despite the name


def scaffold_split(
    scaffolds: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centralized deterministic scaffold split ``(train_idx, valid_idx, test_idx)``.

    ``fractions = (train, valid, test)`` must be finite, ``>= 0``, sum to 1 (within ``1e-6``),
    with ``train > 0`` and ``test < 1``. The test part is chosen exactly as the federated test set
    (module docstring, step 2, with ``test_fraction = fractions[2]``), so it equals
    ``scaffold_partition(..., test_fraction=fractions[2]).test``. The remaining groups, in group
    order, go to train while the train size stays ``<= n * fractions[0] (+1e-9)``, otherwise to
    valid (the walk continues). Outputs are sorted ``int64`` positions.
    """
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise PartitionError(f"fractions must be three numbers, got {fractions!r}") from None
    if len(fr) != 3 or not all(math.isfinite(f) and f >= 0 for f in fr):
        raise PartitionError(f"fractions must be three finite numbers >= 0, got {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise PartitionError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fr):g})")
    if fr[0] <= 0:
        raise PartitionError(f"the train fraction must be > 0, got {fractions!r}")
    tf = _check_fraction("test fraction", fr[2], allow_zero=True)
    _, members = scaffold_groups(scaffolds)
    n = len(scaffolds)
    sizes = [len(m) for m in members]
    is_test = _test_mask_from_sizes(sizes, n, tf)
    train_cap = n * fr[0]
    n_train = 0
    parts: tuple[list, list, list] = ([], [], [])
    for g, m in enumerate(members):
        if is_test[g]:
            parts[2].append(m)
        elif n_train + len(m) <= train_cap + _EPS:
            n_train += len(m)
            parts[0].append(m)
        else:
            parts[1].append(m)
    return tuple(_sorted_concat(p) for p in parts)  # type: ignore[return-value]


def hu2020_scaffold_split(
    scaffolds: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic scaffold split of Hu et al. 2020 ("Strategies for Pre-training GNNs",
    their ``splitters.scaffold_split``; OGB's ogbg-mol* splits are the same), for comparing with
    the literature. Pass scaffolds computed *with* chirality, as they do
    (``murcko_scaffolds(..., include_chirality=True)``).

    Groups are ordered by (size, smallest member position), both descending -- so among groups of
    equal size the ones that come *later* in the file go first -- and dealt in that order: a group
    goes to train if train stays ``<= n * fractions[0]``, else to valid if train + valid stays
    ``<= n * (fractions[0] + fractions[1])``, else to test. Unlike :func:`scaffold_split` (ties by
    scaffold string), the test set here is decided by file order among the many singleton
    scaffolds; on BBBP that turns a test set with 89% positives into one with 53% (an ECFP4
    random forest scores 0.80 ROC-AUC on fedmol's and 0.68 on this one).
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or abs(sum(fr) - 1.0) > 1e-6 or min(fr) < 0 or fr[0] <= 0:
        raise PartitionError(f"fractions must be three numbers >= 0 summing to 1 with train > 0, got {fractions!r}")
    groups: dict[str, list[int]] = {}
    for i, sc in enumerate(scaffolds):
        groups.setdefault(str(sc), []).append(i)
    ordered = sorted(groups.values(), key=lambda m: (len(m), m[0]), reverse=True)
    n = len(scaffolds)
    train_cut, valid_cut = fr[0] * n, (fr[0] + fr[1]) * n
    parts: tuple[list, list, list] = ([], [], [])
    n_train = n_valid = 0
    for m in ordered:
        if n_train + len(m) <= train_cut:
            parts[0].append(np.asarray(m))
            n_train += len(m)
        elif n_train + n_valid + len(m) <= valid_cut:
            parts[1].append(np.asarray(m))
            n_valid += len(m)
        else:
            parts[2].append(np.asarray(m))
    return tuple(_sorted_concat(p) for p in parts)  # type: ignore[return-value]


def _sorted_concat(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(arrays)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Group types: chemistry clusters and label strata
# --------------------------------------------------------------------------------------------


def default_n_clusters(n_partners: int) -> int:
    """Default number of chemistry clusters before capping: ``max(2 * K, 8)``."""
    return max(2 * int(n_partners), 8)


def _cluster_groups(group_scaffolds: Sequence[str], n_clusters: int) -> tuple[np.ndarray, int]:
    """Chemistry cluster of each group (in the given order) and the cluster count actually used.

    Memoized (the clustering depends only on these two arguments, so every alpha/seed of a
    dataset and K reuses it).
    """
    labels, k = _cluster_groups_cached(tuple(str(s) for s in group_scaffolds), int(n_clusters))
    return labels.copy(), k


@functools.lru_cache(maxsize=16)
def _cluster_groups_cached(group_scaffolds: tuple[str, ...], n_clusters: int) -> tuple[np.ndarray, int]:
    from fedmol.data.scaffold import scaffold_fingerprints

    G = len(group_scaffolds)
    if G == 0:
        return np.zeros(0, dtype=np.int64), 0
    fps = scaffold_fingerprints(group_scaffolds, n_bits=FINGERPRINT_BITS)
    packed = np.packbits(fps, axis=1)
    n_distinct = len(np.unique(packed, axis=0))
    k = max(1, min(int(n_clusters), G, n_distinct))
    if k == 1:
        return np.zeros(G, dtype=np.int64), 1
    import scipy.sparse
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(
            n_clusters=k,
            n_init=KMEANS_N_INIT,
            random_state=KMEANS_RANDOM_STATE,
            algorithm="lloyd",
        )
        raw = km.fit_predict(scipy.sparse.csr_matrix(fps, dtype=np.float32))
    # Renumber by first appearance so the labels do not depend on k-means' internal numbering.
    _, first = np.unique(raw, return_index=True)
    rank = np.empty(raw.max() + 1, dtype=np.int64)
    rank[raw[np.sort(first)]] = np.arange(len(first))
    labels = rank[raw]
    return labels, int(labels.max() + 1)


def _label_strata(
    members: list[np.ndarray], y: np.ndarray, pool: np.ndarray, task_type: str
) -> tuple[np.ndarray, int]:
    """Label stratum of each pool group (``members`` are the pool groups) and the stratum count."""
    G = len(members)
    strata = np.zeros(G, dtype=np.int64)
    yp = y[pool]
    if task_type == "classification":
        labelled = ~np.isnan(yp)
        n_lab = int(labelled.sum())
        if n_lab == 0:
            return strata, 2
        rate = float(np.nansum(yp)) / n_lab
        for g, m in enumerate(members):
            yg = y[m]
            cnt = int((~np.isnan(yg)).sum())
            if cnt and float(np.nansum(yg)) / cnt >= rate:
                strata[g] = 1
        return strata, 2
    # regression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(yp, axis=0)
        sd = np.nanstd(yp, axis=0)
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        mu = np.where(np.isfinite(mu), mu, 0.0)
        z = (y - mu) / sd
        mol_value = np.nanmean(z, axis=1)  # NaN where a molecule has no labels
    pool_values = mol_value[pool]
    pool_values = pool_values[~np.isnan(pool_values)]
    if len(pool_values) == 0:
        return strata, 3
    cuts = np.quantile(pool_values, [1.0 / 3.0, 2.0 / 3.0])
    for g, m in enumerate(members):
        v = mol_value[m]
        v = v[~np.isnan(v)]
        if len(v):
            strata[g] = int(np.searchsorted(cuts, float(v.mean()), side="right"))
    return strata, 3


# --------------------------------------------------------------------------------------------
# The partitioner
# --------------------------------------------------------------------------------------------


def _as_label_matrix(y: Any, n: int, task_type: str) -> np.ndarray:
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise PartitionError("y must be a numeric array (NaN for missing labels)") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise PartitionError(
            f"y must have shape (n_molecules, n_tasks) with n_molecules = {n} "
            f"(one row per scaffold), got shape {np.shape(y)}"
        )
    if np.isinf(arr).any():
        raise PartitionError("y contains infinite values; use NaN for missing labels")
    if task_type == "classification":
        vals = arr[~np.isnan(arr)]
        if len(vals) and not np.isin(vals, (0.0, 1.0)).all():
            bad = np.unique(vals[~np.isin(vals, (0.0, 1.0))])[:5]
            raise PartitionError(
                f"classification labels must be 0, 1 or NaN, found {bad.tolist()}"
            )
    return arr


def _partner_prior(perm: np.ndarray, quantity_skew: float) -> np.ndarray:
    q = (perm.astype(np.float64) + 1.0) ** (-quantity_skew)
    return q / q.sum()


def _deal(
    group_type: np.ndarray,
    group_size: np.ndarray,
    type_size: np.ndarray,
    present_types: np.ndarray,
    conc: np.ndarray,
    q: np.ndarray,
    rng: np.random.Generator,
    n_strata: int,
    alpha: float,
) -> np.ndarray:
    """One Dirichlet draw + greedy dealing (step 4a-b); returns the owner of each pool group."""
    K = len(conc)
    pref = rng.dirichlet(np.full(n_strata, alpha), size=K)  # [K, S] each partner's label preference
    deficit = np.zeros((len(type_size), K), dtype=np.float64)
    chem: dict[int, np.ndarray] = {}
    for t in present_types:
        c, stratum = divmod(int(t), n_strata)
        if c not in chem:
            chem[c] = rng.dirichlet(conc)
        p = chem[c] * pref[:, stratum]
        if not (np.all(np.isfinite(p)) and p.sum() > 0):
            p = chem[c] if np.all(np.isfinite(chem[c])) and chem[c].sum() > 0 else np.zeros(K)
            if p.sum() <= 0:
                p = np.zeros(K)
                p[int(rng.choice(K, p=q))] = 1.0
        deficit[t] = p / p.sum() * type_size[t]
    owner = np.empty(len(group_type), dtype=np.int64)
    for g in range(len(group_type)):
        row = deficit[group_type[g]]
        k = int(np.argmax(row))
        row[k] -= group_size[g]
        owner[g] = k
    return owner


def _split_partner(members: list[np.ndarray], valid_fraction: float) -> PartnerSplit:
    """Step 5: ``members`` are the partner's groups in group order."""
    m = sum(len(x) for x in members)
    vcap = m * valid_fraction
    in_valid = [False] * len(members)
    v = 0
    for g in range(len(members) - 1, -1, -1):
        s = len(members[g])
        if v + s <= vcap + _EPS:
            v += s
            in_valid[g] = True
    if not any(in_valid):
        in_valid[-1] = True
    train = _sorted_concat([x for x, iv in zip(members, in_valid) if not iv])
    valid = _sorted_concat([x for x, iv in zip(members, in_valid) if iv])
    return PartnerSplit(train=train, valid=valid)


def scaffold_partition(
    scaffolds: Sequence[str],
    y: np.ndarray,
    task_type: TaskType,
    n_partners: int,
    alpha: float,
    seed: int,
    *,
    quantity_skew: float = 0.0,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    n_clusters: int | None = None,
    min_partner_size: int = DEFAULT_MIN_PARTNER_SIZE,
) -> Partition:
    """Deal a dataset's scaffold groups to ``n_partners`` simulated partners.

    See the module docstring for the exact algorithm. ``alpha`` is the Dirichlet concentration
    (small: heterogeneous partners, large: alike); ``quantity_skew`` skews partner sizes.

    Raises:
        PartitionError: invalid parameters, or no feasible draw in ``MAX_DRAWS`` tries.
    """
    n = len(scaffolds)
    if task_type not in ("classification", "regression"):
        raise PartitionError(
            f"task_type must be 'classification' or 'regression', got {task_type!r}"
        )
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise PartitionError(f"alpha must be > 0, got {alpha!r}") from None
    if not (math.isfinite(a) and a > 0):
        raise PartitionError(f"alpha must be > 0 (and finite), got {alpha!r}")
    K = _as_int("the number of partners K", n_partners, 1)
    try:
        s_skew = float(quantity_skew)
    except (TypeError, ValueError):
        raise PartitionError(f"quantity_skew must be >= 0, got {quantity_skew!r}") from None
    if not (math.isfinite(s_skew) and s_skew >= 0):
        raise PartitionError(f"quantity_skew must be >= 0 (and finite), got {quantity_skew!r}")
    tf = _check_fraction("test_fraction", test_fraction, allow_zero=True)
    vf = _check_fraction("valid_fraction", valid_fraction, allow_zero=False)
    if n_clusters is not None:
        n_clusters = _as_int("n_clusters", n_clusters, 1)
    min_size = _as_int("min_partner_size", min_partner_size, 1)
    seed_int = _as_int("seed", seed, 0)
    if n == 0:
        raise PartitionError("cannot partition an empty dataset")
    y_arr = _as_label_matrix(y, n, task_type)

    names, members = scaffold_groups(scaffolds)
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    is_test = _test_mask_from_sizes(sizes.tolist(), n, tf)
    pool_g = np.flatnonzero(~is_test)
    G = len(pool_g)
    pool_members = [members[g] for g in pool_g]
    pool_sizes = sizes[pool_g]
    n_pool = int(pool_sizes.sum())
    test = _sorted_concat([members[g] for g in np.flatnonzero(is_test)])

    if K > G:
        raise PartitionError(
            f"more partners ({K}) than scaffold groups ({G}) outside the test set: "
            "lower --partners"
        )
    if MIN_GROUPS_PER_PARTNER * K > G:
        raise PartitionError(
            f"each partner needs at least {MIN_GROUPS_PER_PARTNER} scaffold groups (train and "
            f"valid), so {K} partners need {MIN_GROUPS_PER_PARTNER * K}, but only {G} scaffold "
            "groups lie outside the test set: lower --partners"
        )
    if K * min_size > n_pool:
        raise PartitionError(
            f"{K} partners x {min_size} molecules (min_partner_size) exceed the {n_pool} "
            "molecules outside the test set: lower --partners"
        )

    # Step 3: group types.
    k_req = default_n_clusters(K) if n_clusters is None else int(n_clusters)
    clusters, k_used = _cluster_groups([names[g] for g in pool_g], k_req)
    pool = np.sort(np.concatenate(pool_members))
    strata, n_strata = _label_strata(pool_members, y_arr, pool, task_type)
    group_type = clusters * n_strata + strata
    n_types = max(k_used, 1) * n_strata
    type_size = np.bincount(group_type, weights=pool_sizes, minlength=n_types).astype(np.float64)
    present = np.flatnonzero(np.bincount(group_type, minlength=n_types) > 0)

    # Step 4: Dirichlet draws and greedy dealing.
    rng = np.random.default_rng(seed_int)
    perm = rng.permutation(K)
    q = _partner_prior(perm, s_skew)
    conc = a * K * q
    best: tuple[int, int, int] | None = None  # (min molecules, min groups, draw)
    owner = None
    draws = 0
    for draws in range(1, MAX_DRAWS + 1):
        cand = _deal(group_type, pool_sizes, type_size, present, conc, q, rng, n_strata, a)
        mol_k = np.bincount(cand, weights=pool_sizes, minlength=K)
        grp_k = np.bincount(cand, minlength=K)
        if mol_k.min() >= min_size and grp_k.min() >= MIN_GROUPS_PER_PARTNER:
            owner = cand
            break
        score = (int(mol_k.min()), int(grp_k.min()), draws)
        if best is None or score[:2] > best[:2]:
            best = score
    if owner is None:
        assert best is not None
        raise PartitionError(
            f"cannot deal {n_pool} molecules in {G} scaffold groups to {K} partners with "
            f"alpha={alpha:g}"
            + (f", quantity_skew={s_skew:g}" if s_skew > 0 else "")
            + f": in {MAX_DRAWS} Dirichlet draws some partner always got fewer than "
            f"{min_size} molecules or {MIN_GROUPS_PER_PARTNER} scaffold groups (best draw: "
            f"smallest partner {best[0]} molecules, {best[1]} groups); lower --partners or "
            "raise --alpha"
        )

    # Step 5: per-partner train/valid.
    partners = []
    for k in range(K):
        mine = [pool_members[i] for i in np.flatnonzero(owner == k)]
        partners.append(_split_partner(mine, vf))

    mol_cluster = np.full(n, -1, dtype=np.int64)
    for i, m in enumerate(pool_members):
        mol_cluster[m] = clusters[i]

    params: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "task_type": task_type,
        "n_partners": K,
        "alpha": a,
        "seed": seed_int,
        "quantity_skew": s_skew,
        "test_fraction": tf,
        "valid_fraction": vf,
        "n_clusters_requested": None if n_clusters is None else int(n_clusters),
        "n_clusters": int(k_used),
        "n_strata": int(n_strata),
        "min_partner_size": min_size,
        "min_groups_per_partner": MIN_GROUPS_PER_PARTNER,
        "max_draws": MAX_DRAWS,
        "draws": int(draws),
        "partner_prior": [round(float(v), 6) for v in q],
        "n_molecules": int(n),
        "n_scaffold_groups": int(len(members)),
        "n_pool_groups": int(G),
        "n_test_groups": int(is_test.sum()),
        "fingerprint": {"type": "morgan", "radius": 2, "n_bits": FINGERPRINT_BITS},
        "kmeans": {"n_init": KMEANS_N_INIT, "random_state": KMEANS_RANDOM_STATE},
    }
    return Partition(partners=partners, test=test, params=params, clusters=mol_cluster)


# --------------------------------------------------------------------------------------------
# Heterogeneity report
# --------------------------------------------------------------------------------------------


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalized here)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, min(1.0, 0.5 * kl(p) + 0.5 * kl(q)))


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 6)


def _label_summary(y: np.ndarray, idx: np.ndarray) -> list[float | None]:
    out: list[float | None] = []
    for t in range(y.shape[1]):
        v = y[idx, t]
        v = v[~np.isnan(v)]
        out.append(_r(float(v.mean())) if len(v) else None)
    return out


def _mean_offdiag(mat: list[list[float | None]]) -> float | None:
    vals = [
        mat[i][j] for i in range(len(mat)) for j in range(i + 1, len(mat)) if mat[i][j] is not None
    ]
    return _r(float(np.mean(vals))) if vals else None


def heterogeneity_report(
    partition: Partition, scaffolds: Sequence[str], y: np.ndarray, task_type: TaskType
) -> dict[str, Any]:
    """How different the partners are; a JSON-serializable dict (floats rounded to 6 digits).

    Keys:

    * ``partners``: per partner ``n_train``, ``n_valid``, ``n_scaffolds`` (distinct scaffolds in
      train + valid), ``positive_rate`` (classification) or ``target_mean`` (regression): a list
      over tasks computed on the partner's *training* labels (``None`` where a task has no label),
      and ``mean_divergence``: mean label divergence to the other partners.
    * ``test``: ``n``, ``n_scaffolds`` and the same per-task list for the test set.
    * ``pairwise_divergence``: K x K Jensen-Shannon divergences (base 2, in [0, 1]) between the
      partners' training-label distributions. Classification: per task, the Bernoulli
      distributions of the two partners' labels; regression: per task, histograms over
      ``REPORT_REGRESSION_BINS = 10`` bins whose edges are the task's deciles over all labelled
      molecules of the dataset. Averaged over the tasks where both partners have labels
      (``None`` if there is none; diagonal 0).
    * ``mean_pairwise_divergence``: mean over partner pairs ``i < j`` (``None`` for one partner).
    * ``chemistry_pairwise_divergence`` / ``chemistry_divergence``: the same for the partners'
      histograms of chemistry clusters over their training molecules (the clusters of
      :func:`scaffold_partition`, recomputed from ``scaffolds`` and ``params["n_clusters"]`` if the
      partition does not carry them).
    * ``params``: ``partition.params``.
    """
    n = len(scaffolds)
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    if y_arr.shape[0] != n:
        raise PartitionError(f"y has {y_arr.shape[0]} rows but there are {n} scaffolds")
    if task_type not in ("classification", "regression"):
        raise PartitionError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
    K = partition.n_partners
    T = y_arr.shape[1]
    scaf = np.asarray([str(s) for s in scaffolds], dtype=object)
    stat_key = "positive_rate" if task_type == "classification" else "target_mean"

    # Per-partner per-task label histograms (None where no label).
    hists: list[list[np.ndarray | None]] = []
    edges = []
    if task_type == "regression":
        for t in range(T):
            col = y_arr[:, t]
            col = col[~np.isnan(col)]
            qs = np.linspace(0, 1, REPORT_REGRESSION_BINS + 1)[1:-1]
            edges.append(np.quantile(col, qs) if len(col) else np.zeros(0))
    for p in partition.partners:
        row: list[np.ndarray | None] = []
        for t in range(T):
            v = y_arr[p.train, t]
            v = v[~np.isnan(v)]
            if len(v) == 0:
                row.append(None)
            elif task_type == "classification":
                pos = float((v > 0.5).sum())
                row.append(np.array([len(v) - pos, pos]))
            else:
                b = np.searchsorted(edges[t], v, side="right")
                row.append(np.bincount(b, minlength=REPORT_REGRESSION_BINS).astype(np.float64))
        hists.append(row)

    div: list[list[float | None]] = [[0.0] * K for _ in range(K)]
    for i in range(K):
        for j in range(i + 1, K):
            vals = [
                _js(hists[i][t], hists[j][t])  # type: ignore[arg-type]
                for t in range(T)
                if hists[i][t] is not None and hists[j][t] is not None
            ]
            d = _r(float(np.mean(vals))) if vals else None
            div[i][j] = div[j][i] = d

    # Chemistry clusters.
    clusters = partition.clusters
    if clusters is None or len(clusters) != n:
        clusters = np.full(n, -1, dtype=np.int64)
        test_set = set(partition.test.tolist())
        names, members = scaffold_groups(scaffolds)
        pool_groups = [(nm, m) for nm, m in zip(names, members) if int(m[0]) not in test_set]
        k_req = int(partition.params.get("n_clusters") or default_n_clusters(K))
        labels, _ = _cluster_groups([nm for nm, _ in pool_groups], k_req)
        for lab, (_, m) in zip(labels, pool_groups):
            clusters[m] = lab
    n_cl = int(max(clusters.max(), 0)) + 1
    chem_h = [np.bincount(clusters[p.train][clusters[p.train] >= 0], minlength=n_cl) for p in partition.partners]
    chem: list[list[float | None]] = [[0.0] * K for _ in range(K)]
    for i in range(K):
        for j in range(i + 1, K):
            d = _js(chem_h[i], chem_h[j]) if chem_h[i].sum() and chem_h[j].sum() else None
            chem[i][j] = chem[j][i] = _r(d) if d is not None else None

    partners = []
    for i, p in enumerate(partition.partners):
        others = [div[i][j] for j in range(K) if j != i and div[i][j] is not None]
        idx = np.concatenate([p.train, p.valid])
        partners.append(
            {
                "partner": i,
                "n_train": int(len(p.train)),
                "n_valid": int(len(p.valid)),
                "n_scaffolds": int(len(set(scaf[idx].tolist()))),
                stat_key: _label_summary(y_arr, p.train),
                "mean_divergence": _r(float(np.mean(others))) if others else None,
            }
        )
    test = partition.test
    return {
        "task_type": task_type,
        "n_partners": K,
        "n_tasks": T,
        "partners": partners,
        "test": {
            "n": int(len(test)),
            "n_scaffolds": int(len(set(scaf[test].tolist()))),
            stat_key: _label_summary(y_arr, test),
        },
        "pairwise_divergence": div,
        "mean_pairwise_divergence": _mean_offdiag(div),
        "chemistry_pairwise_divergence": chem,
        "chemistry_divergence": _mean_offdiag(chem),
        "params": jsonable(partition.params),
    }


def single_class_warnings(partition: Partition, y: np.ndarray, task_type: TaskType) -> list[str]:
    """Where ROC-AUC is undefined because of the split (classification only; ``[]`` for
    regression): one line per partner and task whose validation set holds one class or no label,
    e.g. "partner 3: validation set has one class (all 1) for task 0: ROC-AUC undefined there",
    one per partner whose validation set is empty, and the same for the global test set. Not part
    of the report (split files, and their hashes, do not change)."""
    from fedmol.evaluate import label_classes

    if task_type != "classification":
        return []
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim == 1:
        y_arr = y_arr[:, None]
    sets = [(f"partner {k}: validation set", p.valid) for k, p in enumerate(partition.partners)]
    out = []
    for what, idx in sets + [("test set", partition.test)]:
        if len(idx) == 0:
            out.append(f"{what} is empty: ROC-AUC undefined there")
            continue
        for t in range(y_arr.shape[1]):
            classes = label_classes(y_arr[idx, t])
            if len(classes) < 2:
                has = f"one class (all {classes[0]})" if classes else "no labelled molecules"
                out.append(f"{what} has {has} for task {t}: ROC-AUC undefined there")
    return out


def report_table(report: dict[str, Any]):
    """A rich table of a :func:`heterogeneity_report`: one row per partner plus the test set."""
    from rich.table import Table

    regression = report.get("task_type") == "regression"
    key = "target_mean" if regression else "positive_rate"
    n_tasks = int(report.get("n_tasks", 1))
    label = "target mean" if regression else "positive rate"
    if n_tasks > 1:
        label += f" (mean of {n_tasks} tasks)"

    def summary(vals: list[float | None]) -> str:
        v = [x for x in vals if x is not None]
        return f"{np.mean(v):.3f}" if v else "-"

    title = f"{report.get('n_partners')} partners"
    if report.get("mean_pairwise_divergence") is not None:
        title += f" - mean label JS divergence {report['mean_pairwise_divergence']:.3f}"
    if report.get("chemistry_divergence") is not None:
        title += f", chemistry JS divergence {report['chemistry_divergence']:.3f}"
    table = Table(title=title)
    table.add_column("partner")
    table.add_column("train", justify="right")
    table.add_column("valid", justify="right")
    table.add_column("scaffolds", justify="right")
    table.add_column(label, justify="right")
    table.add_column("mean divergence to others", justify="right")
    for p in report["partners"]:
        md = p.get("mean_divergence")
        table.add_row(
            str(p["partner"]),
            str(p["n_train"]),
            str(p["n_valid"]),
            str(p["n_scaffolds"]),
            summary(p[key]),
            "-" if md is None else f"{md:.3f}",
        )
    t = report["test"]
    table.add_row("test", str(t["n"]), "-", str(t["n_scaffolds"]), summary(t[key]), "-", style="dim")
    return table
