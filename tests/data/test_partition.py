"""Tests for fedmol.data.partition: the heterogeneous scaffold partitioner and scaffold split."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, RDLogger

from fedmol.data.heterogeneity import heterogeneity_report, report_table
from fedmol.data.partition import (
    MAX_DRAWS,
    hu2020_scaffold_split,
    Partition,
    PartitionError,
    scaffold_groups,
    scaffold_partition,
    scaffold_split,
    test_groups_mask,
)
from fedmol.data.scaffold import murcko_scaffolds
from fedmol.errors import DataError

RDLogger.DisableLog("rdApp.*")

DATA_DIR = Path(os.environ["FEDMOL_DATA_DIR"])  # its default: tests/conftest.py

# name -> (file, smiles column, label columns, task type)
DATASETS = {
    "bbbp": ("BBBP.csv", "smiles", ["p_np"], "classification"),
    "bace": ("bace.csv", "smiles", ["Class"], "classification"),
    "esol": ("delaney-processed.csv", "smiles", ["measured log solubility in mols per litre"], "regression"),
}


@functools.lru_cache(maxsize=None)
def load(name: str) -> tuple[tuple[str, ...], np.ndarray, str]:
    """(scaffolds, y, task_type) of a shared MoleculeNet CSV, unparseable SMILES dropped."""
    file, smiles_col, label_cols, task_type = DATASETS[name]
    path = DATA_DIR / file
    if not path.exists():
        pytest.fail(f"{path} not found: set FEDMOL_DATA_DIR to the shared MoleculeNet folder", pytrace=False)
    import pandas as pd

    df = pd.read_csv(path)
    keep = np.array([Chem.MolFromSmiles(str(s)) is not None for s in df[smiles_col]])
    df = df[keep]
    scaffolds = tuple(murcko_scaffolds(df[smiles_col].astype(str).tolist()))
    y = df[label_cols].to_numpy(dtype=np.float64)
    y.setflags(write=False)
    return scaffolds, y, task_type


@functools.lru_cache(maxsize=None)
def part(name: str, k: int, alpha: float, seed: int, **kw) -> Partition:
    scaffolds, y, task_type = load(name)
    return scaffold_partition(scaffolds, y, task_type, k, alpha, seed, **kw)


@functools.lru_cache(maxsize=None)
def report(name: str, k: int, alpha: float, seed: int) -> dict:
    scaffolds, y, task_type = load(name)
    return heterogeneity_report(part(name, k, alpha, seed), scaffolds, y, task_type)


def test_bbbp_fixture_drops_unparseable_smiles() -> None:
    scaffolds, y, _ = load("bbbp")
    assert 2030 <= len(scaffolds) <= 2045  # 2050 rows, ~11 unparseable
    assert y.shape == (len(scaffolds), 1)
    assert set(np.unique(y)) == {0.0, 1.0}


# ------------------------------------------------------------------------------------------
# Structural invariants
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_partition_invariants(name: str, k: int, alpha: float) -> None:
    scaffolds, y, _ = load(name)
    scaf = np.asarray(scaffolds, dtype=object)
    n = len(scaffolds)
    p = part(name, k, alpha, 0)
    assert p.n_partners == k == len(p.partners)

    arrays = [p.test] + [a for s in p.partners for a in (s.train, s.valid)]
    for a in arrays:
        assert a.dtype == np.int64
        assert (np.diff(a) > 0).all()  # sorted, no duplicates
    # Every molecule exactly once.
    everything = np.concatenate(arrays)
    assert len(everything) == n
    assert (np.sort(everything) == np.arange(n)).all()

    test_scaffolds = set(scaf[p.test])
    seen: set[str] = set()
    for s in p.partners:
        train_s, valid_s = set(scaf[s.train]), set(scaf[s.valid])
        assert len(s.train) > 0 and len(s.valid) > 0
        assert not train_s & valid_s, "train/valid of a partner share a scaffold"
        mine = train_s | valid_s
        assert not mine & test_scaffolds, "a partner holds a test scaffold"
        assert not mine & seen, "two partners share a scaffold"
        seen |= mine
        assert s.size >= p.params["min_partner_size"]
        assert len(mine) >= 2
        # Valid holds the partner's rarest groups filling <= valid_fraction, or, if none fits,
        # exactly the partner's rarest group.
        if len(s.valid) > 0.1 * s.size + 1e-9:
            names, members = scaffold_groups(scaf[np.concatenate([s.train, s.valid])])
            assert valid_s == {names[-1]}
    owner = p.owner(n)
    assert (owner[p.test] == -1).all()
    for i, s in enumerate(p.partners):
        assert (owner[s.train] == i).all() and (owner[s.valid] == i).all()
    # Cluster labels: -1 exactly on the test set.
    assert p.clusters is not None
    assert (p.clusters[p.test] == -1).all()
    assert (np.delete(p.clusters, p.test) >= 0).all()
    assert p.clusters.max() < p.params["n_clusters"]


@pytest.mark.parametrize("name", ["bbbp", "esol", "bace"])
def test_test_set_is_about_test_fraction_of_rare_scaffolds(name: str) -> None:
    scaffolds, _, _ = load(name)
    n = len(scaffolds)
    p = part(name, 4, 1.0, 0)
    assert 0.1 * n <= len(p.test) <= 0.12 * n
    names, members = scaffold_groups(scaffolds)
    sizes = {nm: len(m) for nm, m in zip(names, members)}
    test_sizes = [sizes[s] for s in set(np.asarray(scaffolds, dtype=object)[p.test])]
    # The largest groups are never test (largest scaffolds go to training).
    assert names[0] not in set(np.asarray(scaffolds, dtype=object)[p.test])
    assert np.median(test_sizes) == 1


# ------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------


def _same(a: Partition, b: Partition) -> bool:
    if not np.array_equal(a.test, b.test) or len(a.partners) != len(b.partners):
        return False
    return all(
        np.array_equal(x.train, y.train) and np.array_equal(x.valid, y.valid)
        for x, y in zip(a.partners, b.partners)
    )


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_same_seed_same_partition(name: str, seed: int) -> None:
    scaffolds, y, task_type = load(name)
    a = scaffold_partition(list(scaffolds), y, task_type, 4, 1.0, seed)
    b = scaffold_partition(list(scaffolds), y.copy(), task_type, 4, 1.0, seed)
    assert _same(a, b)
    assert a.params == b.params
    assert np.array_equal(a.clusters, b.clusters)


@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_different_seed_different_partition(name: str) -> None:
    a, b, c = (part(name, 4, 1.0, s) for s in (0, 1, 2))
    assert not _same(a, b) and not _same(a, c) and not _same(b, c)


# ------------------------------------------------------------------------------------------
# Heterogeneity: alpha controls how different the partners are
# ------------------------------------------------------------------------------------------

SEEDS = range(5)


@pytest.mark.parametrize(
    ("name", "label_margin", "chem_margin"),
    [("bbbp", 0.02, 0.3), ("esol", 0.05, 0.1)],
)
def test_small_alpha_is_more_heterogeneous(name: str, label_margin: float, chem_margin: float) -> None:
    # Averaged over seeds: per seed, label skew at small alpha depends on which label strata
    # happen to land together, so single draws are noisy; chemistry skew is reliable.
    def mean(alpha: float, key: str) -> float:
        return float(np.mean([report(name, 4, alpha, s)[key] for s in SEEDS]))

    lab_small, lab_large = mean(0.1, "mean_pairwise_divergence"), mean(100.0, "mean_pairwise_divergence")
    chem_small, chem_large = mean(0.1, "chemistry_divergence"), mean(100.0, "chemistry_divergence")
    assert lab_small > lab_large + label_margin, (lab_small, lab_large)
    assert lab_small > 2 * lab_large
    assert chem_small > chem_large + chem_margin, (chem_small, chem_large)
    assert chem_small > 2 * chem_large
    # Chemistry skew holds seed by seed.
    for s in SEEDS:
        assert report(name, 4, 0.1, s)["chemistry_divergence"] > report(name, 4, 100.0, s)["chemistry_divergence"]


def test_large_alpha_partners_look_alike_bbbp() -> None:
    r = report("bbbp", 4, 100.0, 0)
    rates = [p["positive_rate"][0] for p in r["partners"]]
    assert max(rates) - min(rates) < 0.1
    assert r["mean_pairwise_divergence"] < 0.01
    assert r["chemistry_divergence"] < 0.1


# ------------------------------------------------------------------------------------------
# The global test set
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("alpha", [0.1, 100.0])
@pytest.mark.parametrize("k", [2, 8])
@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_test_set_independent_of_k_alpha_seed(name: str, k: int, alpha: float, seed: int) -> None:
    scaffolds, _, _ = load(name)
    reference = part(name, 4, 1.0, 0).test
    assert np.array_equal(part(name, k, alpha, seed).test, reference)
    assert np.array_equal(np.flatnonzero(test_groups_mask(scaffolds, 0.1)), reference)


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.1, 0.2), (0.6, 0.25, 0.15), (0.9, 0.0, 0.1)])
@pytest.mark.parametrize("name", ["bbbp", "esol", "bace"])
def test_scaffold_split_test_equals_federated_test(name: str, fractions: tuple[float, float, float]) -> None:
    scaffolds, y, task_type = load(name)
    train, valid, test = scaffold_split(scaffolds, fractions)
    fed = scaffold_partition(scaffolds, y, task_type, 2, 1.0, 0, test_fraction=fractions[2])
    assert np.array_equal(test, fed.test)

    n = len(scaffolds)
    assert (np.sort(np.concatenate([train, valid, test])) == np.arange(n)).all()
    scaf = np.asarray(scaffolds, dtype=object)
    parts = [set(scaf[a]) for a in (train, valid, test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert len(train) <= fractions[0] * n + 1e-9
    assert len(train) + len(valid) <= (1 - fractions[2]) * n + 1e-9
    assert len(test) >= fractions[2] * n - 1e-9
    assert len(train) >= (fractions[0] - 0.03) * n
    if fractions[1] == 0:
        assert len(valid) == 0


def test_scaffold_split_classic_convention_synthetic() -> None:
    # Groups (in group order): A x5, B x3, C x1, D x1 -> n = 10, 80/10/10.
    scaffolds = ["A"] * 5 + ["D"] + ["B"] * 3 + ["C"]
    train, valid, test = scaffold_split(scaffolds, (0.8, 0.1, 0.1))
    assert train.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]  # A, B: the largest groups
    assert valid.tolist() == [9]  # C (ties broken by scaffold string: C before D)
    assert test.tolist() == [5]  # D: the last group
    # A group too big for what is left skips to test; later small groups still fill train.
    scaffolds = ["A"] * 6 + ["B"] * 3 + ["C"]
    train, valid, test = scaffold_split(scaffolds, (0.7, 0.2, 0.1))
    assert train.tolist() == list(range(6))
    assert valid.tolist() == [6, 7, 8]
    assert test.tolist() == [9]


@pytest.mark.parametrize(
    "fractions",
    [(0.8, 0.1), (0.8, 0.3, 0.1), (-0.1, 0.6, 0.5), (0.0, 0.5, 0.5), (0.5, 0.0, float("nan")), (0.0, 0.0, 1.0)],
)
def test_scaffold_split_rejects_bad_fractions(fractions) -> None:
    with pytest.raises(PartitionError, match="fraction"):
        scaffold_split(["A", "B", "C"], fractions)


# ------------------------------------------------------------------------------------------
# Quantity skew
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("skew", [0.0, 1.5])
def test_quantity_skew(skew: float, seed: int) -> None:
    p = part("bbbp", 4, 100.0, seed, quantity_skew=skew)
    sizes = np.array([s.size for s in p.partners])
    ratio = sizes.max() / sizes.min()
    if skew == 0:
        assert ratio < 1.6, sizes
    else:
        assert ratio > 4, sizes
        # The prior is a seeded permutation of (k+1)^-1.5: the largest partner has the largest
        # prior weight.
        prior = np.array(p.params["partner_prior"])
        assert int(np.argmax(sizes)) == int(np.argmax(prior))
        assert sorted(prior.round(4).tolist()) == sorted(
            ((np.arange(4) + 1.0) ** -1.5 / ((np.arange(4) + 1.0) ** -1.5).sum()).round(4).tolist()
        )


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0, 0.0, -1, float("nan"), float("inf"), "abc"])
def test_bad_alpha(alpha) -> None:
    scaffolds, y, task_type = load("bbbp")
    with pytest.raises(PartitionError, match=r"alpha must be > 0"):
        scaffold_partition(scaffolds, y, task_type, 4, alpha, 0)


def test_partition_error_is_a_data_error_and_a_value_error() -> None:
    assert issubclass(PartitionError, DataError)
    assert issubclass(PartitionError, ValueError)


@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_more_partners_than_groups(name: str) -> None:
    scaffolds, y, task_type = load(name)
    n_pool_groups = len(set(np.delete(np.asarray(scaffolds, dtype=object), part(name, 4, 1.0, 0).test)))
    with pytest.raises(PartitionError, match=rf"more partners \({n_pool_groups + 1}\) than scaffold groups \({n_pool_groups}\)"):
        scaffold_partition(scaffolds, y, task_type, n_pool_groups + 1, 1.0, 0)
    with pytest.raises(PartitionError, match=r"at least 2 scaffold groups"):
        scaffold_partition(scaffolds, y, task_type, n_pool_groups // 2 + 1, 1.0, 0, min_partner_size=1)


@pytest.mark.parametrize(("name", "k"), [("bbbp", 64), ("esol", 32)])
def test_infeasible_tiny_alpha_many_partners(name: str, k: int) -> None:
    scaffolds, y, task_type = load(name)
    with pytest.raises(PartitionError, match=rf"cannot deal \d+ molecules in \d+ scaffold groups to {k} partners with alpha=0.01: .*{MAX_DRAWS} Dirichlet draws.*lower --partners or raise --alpha"):
        scaffold_partition(scaffolds, y, task_type, k, 0.01, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_partners": 0}, "K must be an integer >= 1"),
        ({"n_partners": 2.5}, "K must be an integer >= 1"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"test_fraction must be in \[0, 1\)"),
        ({"valid_fraction": 0.0}, r"valid_fraction must be in \(0, 1\)"),
        ({"valid_fraction": 1.2}, r"valid_fraction must be in \(0, 1\)"),
        ({"quantity_skew": -1.0}, "quantity_skew must be >= 0"),
        ({"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        ({"min_partner_size": 0}, "min_partner_size must be an integer >= 1"),
        ({"min_partner_size": 10_000}, "exceed the .* molecules outside the test set"),
        ({"task_type": "ranking"}, "task_type must be"),
        ({"seed": -3}, "seed must be an integer >= 0"),
    ],
)
def test_invalid_parameters(kwargs: dict, match: str) -> None:
    scaffolds, y, task_type = load("esol")
    args = {"scaffolds": scaffolds, "y": y, "task_type": task_type, "n_partners": 4, "alpha": 1.0, "seed": 0}
    args.update(kwargs)
    with pytest.raises(PartitionError, match=match):
        scaffold_partition(**args)


def test_invalid_labels() -> None:
    scaffolds, y, _ = load("esol")
    with pytest.raises(PartitionError, match="classification labels must be 0, 1 or NaN"):
        scaffold_partition(scaffolds, y, "classification", 4, 1.0, 0)
    with pytest.raises(PartitionError, match="shape"):
        scaffold_partition(scaffolds, y[:-1], "regression", 4, 1.0, 0)


# ------------------------------------------------------------------------------------------
# Parameters, label strata, multi-task and missing labels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_clusters", [1, 3, 20])
def test_n_clusters_parameter(n_clusters: int) -> None:
    p = part("bbbp", 4, 1.0, 0, n_clusters=n_clusters)
    assert p.params["n_clusters"] == n_clusters
    assert p.params["n_clusters_requested"] == n_clusters
    assert set(np.unique(p.clusters[p.clusters >= 0])) == set(range(n_clusters))
    assert part("bbbp", 4, 1.0, 0).params["n_clusters"] == 8  # default max(2K, 8)
    assert part("bbbp", 8, 1.0, 0).params["n_clusters"] == 16


def test_params_are_json_and_complete() -> None:
    p = part("esol", 4, 0.5, 3, quantity_skew=0.5)
    params = json.loads(json.dumps(p.params))
    for key, value in {
        "algorithm": "fedmol-scaffold-dirichlet/2",
        "task_type": "regression",
        "n_partners": 4,
        "alpha": 0.5,
        "seed": 3,
        "quantity_skew": 0.5,
        "test_fraction": 0.1,
        "valid_fraction": 0.1,
        "n_strata": 3,
        "min_groups_per_partner": 2,
    }.items():
        assert params[key] == value
    assert 1 <= params["draws"] <= MAX_DRAWS
    assert math.isclose(sum(params["partner_prior"]), 1.0, abs_tol=1e-5)


def test_small_alpha_separates_label_strata_synthetic() -> None:
    # 200 singleton scaffolds (real ring systems), one chemistry cluster, half positive: at tiny
    # alpha each stratum goes (almost) entirely to one partner; at huge alpha both partners get
    # the global rate.
    rings = [f"C1CC{'C' * i}C1" for i in range(1, 201)]  # 200 distinct cycloalkanes
    y = np.array([[float(i % 2)] for i in range(200)])
    for seed in range(3):
        small = scaffold_partition(rings, y, "classification", 2, 0.01, seed, test_fraction=0.0, n_clusters=1, min_partner_size=5)
        rates = sorted(float(y[np.concatenate([s.train, s.valid])].mean()) for s in small.partners)
        assert rates[0] < 0.2 and rates[1] > 0.8, rates
    large = scaffold_partition(rings, y, "classification", 2, 1e4, 0, test_fraction=0.0, n_clusters=1)
    rates = [float(y[np.concatenate([s.train, s.valid])].mean()) for s in large.partners]
    assert all(abs(r - 0.5) < 0.05 for r in rates), rates


def test_multitask_with_missing_labels() -> None:
    scaffolds, y, _ = load("bbbp")
    rng = np.random.default_rng(0)
    y2 = np.column_stack([y[:, 0], rng.integers(0, 2, len(y)).astype(float), np.full(len(y), np.nan)])
    y2[rng.random(len(y)) < 0.3, 1] = np.nan
    p = scaffold_partition(scaffolds, y2, "classification", 4, 1.0, 0)
    r = heterogeneity_report(p, scaffolds, y2, "classification")
    assert r["n_tasks"] == 3
    for partner in r["partners"]:
        assert len(partner["positive_rate"]) == 3
        assert partner["positive_rate"][2] is None  # no labels at all
        assert 0 <= partner["positive_rate"][0] <= 1 and 0 <= partner["positive_rate"][1] <= 1
    json.dumps(r)


# ------------------------------------------------------------------------------------------
# Heterogeneity report
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 100.0])
@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_report_structure(name: str, alpha: float) -> None:
    scaffolds, y, task_type = load(name)
    p = part(name, 4, alpha, 0)
    r = report(name, 4, alpha, 0)
    text = json.dumps(r, allow_nan=False)  # plain JSON, no NaN
    assert json.loads(text) == r
    key = "positive_rate" if task_type == "classification" else "target_mean"
    scaf = np.asarray(scaffolds, dtype=object)
    for i, (entry, s) in enumerate(zip(r["partners"], p.partners)):
        assert entry["partner"] == i
        assert entry["n_train"] == len(s.train) and entry["n_valid"] == len(s.valid)
        assert entry["n_scaffolds"] == len(set(scaf[s.train]) | set(scaf[s.valid]))
        assert entry[key][0] == pytest.approx(float(np.nanmean(y[s.train, 0])), abs=1e-6)
    assert r["test"]["n"] == len(p.test)
    assert r["test"][key][0] == pytest.approx(float(np.nanmean(y[p.test, 0])), abs=1e-6)
    for matrix in (r["pairwise_divergence"], r["chemistry_pairwise_divergence"]):
        m = np.array(matrix, dtype=float)
        assert m.shape == (4, 4)
        assert np.allclose(m, m.T) and np.allclose(np.diag(m), 0)
        assert (m >= 0).all() and (m <= 1).all()
    iu = np.triu_indices(4, 1)
    assert r["mean_pairwise_divergence"] == pytest.approx(np.array(r["pairwise_divergence"])[iu].mean(), abs=1e-5)
    assert r["chemistry_divergence"] == pytest.approx(np.array(r["chemistry_pairwise_divergence"])[iu].mean(), abs=1e-5)


def _manual(train_sets: list[list[int]], n: int) -> Partition:
    from fedmol.data.partition import PartnerSplit

    partners = [PartnerSplit(train=np.array(t, dtype=np.int64), valid=np.zeros(0, dtype=np.int64)) for t in train_sets]
    used = {i for t in train_sets for i in t}
    test = np.array([i for i in range(n) if i not in used], dtype=np.int64)
    return Partition(partners=partners, test=test, params={"n_clusters": 2})


def _h2(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize(
    ("rate_a", "rate_b"), [(0.0, 1.0), (0.5, 0.0), (0.25, 0.75), (0.5, 0.5)]
)
def test_report_bernoulli_js_values(rate_a: float, rate_b: float) -> None:
    rings = [f"C1CC{'C' * i}C1" for i in range(1, 17)]  # 16 distinct scaffolds
    y = np.full((16, 1), np.nan)
    y[:8, 0] = [1.0 if i < rate_a * 8 else 0.0 for i in range(8)]
    y[8:, 0] = [1.0 if i < rate_b * 8 else 0.0 for i in range(8)]
    p = _manual([list(range(8)), list(range(8, 16))], 16)
    r = heterogeneity_report(p, rings, y, "classification")
    m = (rate_a + rate_b) / 2
    expected = _h2(m) - (_h2(rate_a) + _h2(rate_b)) / 2
    assert r["pairwise_divergence"][0][1] == pytest.approx(expected, abs=1e-6)
    assert r["mean_pairwise_divergence"] == pytest.approx(expected, abs=1e-6)
    assert [e["positive_rate"] for e in r["partners"]] == [[rate_a], [rate_b]]
    assert r["test"]["n"] == 0 and r["test"]["positive_rate"] == [None]


def test_report_regression_histograms() -> None:
    rings = [f"C1CC{'C' * i}C1" for i in range(1, 41)]
    y = np.arange(40, dtype=float)[:, None]
    # Low half vs high half: the decile histograms do not overlap -> JS = 1.
    r = heterogeneity_report(_manual([list(range(20)), list(range(20, 40))], 40), rings, y, "regression")
    assert r["pairwise_divergence"][0][1] == pytest.approx(1.0)
    assert [e["target_mean"] for e in r["partners"]] == [[9.5], [29.5]]
    # Interleaved: identical histograms -> 0.
    r = heterogeneity_report(_manual([list(range(0, 40, 2)), list(range(1, 40, 2))], 40), rings, y, "regression")
    assert r["pairwise_divergence"][0][1] == pytest.approx(0.0, abs=1e-6)


def test_report_recomputes_clusters_when_missing() -> None:
    scaffolds, y, task_type = load("esol")
    p = part("esol", 4, 0.1, 0)
    bare = Partition(partners=p.partners, test=p.test, params=p.params)
    assert heterogeneity_report(bare, scaffolds, y, task_type) == report("esol", 4, 0.1, 0)


@pytest.mark.parametrize("name", ["bbbp", "esol"])
def test_report_table_renders(name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = report_table(report(name, 4, 1.0, 0))
    assert isinstance(table, Table)
    assert table.row_count == 5  # 4 partners + test
    console = Console(record=True, width=140)
    console.print(table)
    text = console.export_text()
    assert "test" in text and "partner" in text
    assert ("positive rate" if name == "bbbp" else "target mean") in text
    assert str(report(name, 4, 1.0, 0)["partners"][0]["n_train"]) in text


def test_single_partner() -> None:
    scaffolds, y, task_type = load("bbbp")
    p = part("bbbp", 1, 1.0, 0)
    assert p.partners[0].size + len(p.test) == len(scaffolds)
    r = heterogeneity_report(p, scaffolds, y, task_type)
    assert r["pairwise_divergence"] == [[0.0]]
    assert r["mean_pairwise_divergence"] is None and r["partners"][0]["mean_divergence"] is None
    assert report_table(r).row_count == 2


# --------------------------------------------------------------------------- Hu et al. 2020's splitter
def test_hu2020_split_on_a_hand_made_example():
    # groups: A x4 (first at 0), B x2 (first at 1), singletons C@4, D@6, E@7, F@9; n = 10, cuts 6 and 8
    sc = ["A", "B", "B", "A", "C", "A", "D", "E", "A", "F"]
    tr, va, te = hu2020_scaffold_split(sc, (0.6, 0.2, 0.2))
    # A, B fill train (6); singletons go latest-first: F, E to valid (8); D, C to test
    assert tr.tolist() == [0, 1, 2, 3, 5, 8] and va.tolist() == [7, 9] and te.tolist() == [4, 6]
    ftr, fva, fte = scaffold_split(sc, (0.6, 0.2, 0.2))  # fedmol's ties by scaffold string: other singletons
    assert fte.tolist() != te.tolist()


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.3, 0.2)])
def test_hu2020_split_partitions_whole_groups(fractions):
    rng = np.random.default_rng(0)
    sc = [f"s{int(x)}" for x in rng.zipf(1.6, 300) % 60]
    parts = hu2020_scaffold_split(sc, fractions)
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    owner = {}
    for k, part in enumerate(parts):
        for i in part:
            assert owner.setdefault(sc[i], k) == k  # a scaffold never straddles two parts
    # train never passes its cut; a group went to valid only if train + valid then fitted the second cut
    # (train may still grow afterwards with small groups, as in Hu et al.'s code)
    assert len(parts[0]) <= fractions[0] * 300 and len(parts[1]) <= (fractions[0] + fractions[1]) * 300


def test_hu2020_split_rejects_bad_fractions():
    with pytest.raises(PartitionError, match="fractions"):
        hu2020_scaffold_split(["a", "b"], (0.5, 0.5, 0.5))


def test_scaffolds_with_chirality():
    smi = ["C1C[C@H](c2ccccc2)OC1", "CCO"]
    assert murcko_scaffolds(smi, n_jobs=1, include_chirality=True) == ["c1ccc([C@H]2CCCO2)cc1", ""]
    assert murcko_scaffolds(smi, n_jobs=1) == ["c1ccc(C2CCCO2)cc1", ""]


def test_single_class_warnings_name_the_partner_set_and_task() -> None:
    from fedmol.data.heterogeneity import single_class_warnings
    from fedmol.data.partition import PartnerSplit

    y = np.array([[0, 1], [1, 1], [1, np.nan], [1, np.nan], [0, 0], [1, 1], [0, 1]], dtype=float)
    part = Partition(partners=[PartnerSplit(np.array([0]), np.array([1, 2])),   # task 0 all 1; task 1 one label (1)
                               PartnerSplit(np.array([3]), np.array([], dtype=np.int64)),  # empty validation set
                               PartnerSplit(np.array([2]), np.array([4, 5]))],  # both classes in both tasks
                     test=np.array([5, 6]))  # task 1 all 1
    assert single_class_warnings(part, y, "classification") == [
        "partner 0: validation set has one class (all 1) for task 0: ROC-AUC undefined there",
        "partner 0: validation set has one class (all 1) for task 1: ROC-AUC undefined there",
        "partner 1: validation set is empty: ROC-AUC undefined there",
        "test set has one class (all 1) for task 1: ROC-AUC undefined there",
    ]
    y[2, 1] = np.nan
    y[1, 1] = np.nan
    assert single_class_warnings(part, y, "classification")[1] == \
        "partner 0: validation set has no labelled molecules for task 1: ROC-AUC undefined there"
    assert single_class_warnings(part, y, "regression") == []
