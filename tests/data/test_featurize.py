"""fedmol.data.featurize: OGB-identical features, error reasons, and the flat parallel bulk path."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ogb.utils import smiles2graph
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from rdkit import Chem

from fedmol.data import featurize as F
from fedmol.data.featurize import (
    ATOM_FEATURE_DIMS,
    BOND_FEATURE_DIMS,
    FEATURIZER_VERSION,
    InvalidSmiles,
    featurize_smiles,
    smiles_to_graph,
)

DATA_DIR = Path(os.environ["FEDMOL_DATA_DIR"])  # its default: tests/conftest.py


def _read_smiles(name: str) -> list[str]:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} not found: set FEDMOL_DATA_DIR to the shared MoleculeNet folder", pytrace=False)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [row["smiles"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def bbbp() -> list[str]:
    return _read_smiles("BBBP.csv")


@pytest.fixture(scope="module")
def real_sample(bbbp) -> list[str]:
    """~300 real SMILES (150 BBBP + 150 Tox21, fixed seed) that RDKit accepts."""
    rng = random.Random(0)
    tox21 = _read_smiles("tox21.csv")
    picked = rng.sample(bbbp, 150) + rng.sample(tox21, 150)
    with F.rdBase.BlockLogs():
        sample = [s for s in picked if Chem.MolFromSmiles(s) is not None]
    assert len(sample) >= 290
    # the sample must exercise the stereo / charge / aromatic code paths
    assert sum("@" in s for s in sample) > 20 and sum("/" in s or "\\" in s for s in sample) > 5
    assert sum("+" in s for s in sample) > 5 and sum(s != s.upper() for s in sample) > 100
    return sample


def assert_same_as_ogb(smiles: str, graph: dict) -> None:
    ref = smiles2graph(smiles)
    for key, ref_key in (("x", "node_feat"), ("edge_index", "edge_index"), ("edge_attr", "edge_feat")):
        assert graph[key].dtype == np.int64, key
        np.testing.assert_array_equal(graph[key], ref[ref_key], err_msg=f"{key} differs for {smiles}")
        assert graph[key].shape == ref[ref_key].shape, key
    assert graph["num_nodes"] == ref["num_nodes"]


# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------
def test_feature_dims_and_version():
    assert ATOM_FEATURE_DIMS == get_atom_feature_dims() == [119, 5, 12, 12, 10, 6, 6, 2, 2]
    assert BOND_FEATURE_DIMS == get_bond_feature_dims() == [5, 6, 2]
    assert FEATURIZER_VERSION == "ogb-1.3.6-v1"


# --------------------------------------------------------------------------------------------
# equality with ogb.utils.smiles2graph
# --------------------------------------------------------------------------------------------
def test_identical_to_ogb_on_real_molecules(real_sample):
    for s in real_sample:
        assert_same_as_ogb(s, smiles_to_graph(s))


def test_bulk_identical_to_ogb_on_real_molecules(real_sample, force_pool):
    feats = featurize_smiles(real_sample, n_jobs=2, progress=False)
    assert feats.valid.all()
    for i, s in enumerate(real_sample):
        assert_same_as_ogb(s, feats.graph(i))


@pytest.mark.parametrize(
    "smiles",
    [
        "C",  # single atom, no bonds
        "[Na+].[Cl-]",  # ions, no bonds, two fragments
        "C[N+](C)(C)C",  # cation
        "CC(=O)[O-]",  # anion
        "CN(=O)=O",  # nitro: sanitization charge-separates it
        "[CH3]",  # radical
        "C[CH2]",
        "[C]",  # 4 radical electrons
        "[O]",
        "c1ccccc1O",  # aromatic
        "c1cc[nH]c1",
        "c1ccc2ccccc2c1",
        "C[C@H](N)C(=O)O",  # tetrahedral chirality
        "N[C@@H](C)C(=O)O",
        "F/C=C/F",  # E double bond
        "F/C=C\\F",  # Z double bond
        "Cl[C@H](/C=C/C)Br",  # OGB's own docstring example: chirality + stereo
        "C1CC[C@H]2CCCC[C@@H]2C1",  # rings + stereo
        "[2H]C([2H])([2H])O",  # isotopic hydrogens stay as atoms
        "[H][H]",
        "*C",  # dummy atom (Z=0) -> atomic_num misc bucket
        "[U+7]",  # formal charge outside -5..5 -> misc
        "[CH4+6]",
        "C[Pt@SP1](Cl)(Cl)N",  # square-planar chirality -> chirality misc
        "C[S@TB1](F)(F)(F)F",  # trigonal-bipyramidal chirality, SP3D hybridization
        "N->[Pt]",  # dative bond -> bond type misc
        "C1C[N+]23CCC[N+]4(C1)CC[S-]1[Fe+2]24([SH+]CC3)[S-]2CC[N+]34CCC[N+]5(CCC3)CC[SH+][Fe+2]1254",
        "  CCO  ",  # padding is ignored
    ],
)
def test_identical_to_ogb_on_edge_cases(smiles):
    assert_same_as_ogb(smiles, smiles_to_graph(smiles))


def test_single_atom_has_empty_edge_arrays():
    g = smiles_to_graph("C")
    assert g["x"].shape == (1, 9) and g["num_nodes"] == 1
    assert g["edge_index"].shape == (2, 0) and g["edge_index"].dtype == np.int64
    assert g["edge_attr"].shape == (0, 3) and g["edge_attr"].dtype == np.int64
    # C: atomic_num 6 -> 5, CHI_UNSPECIFIED, degree 4, charge 0 -> 5, 4 H, 0 radicals, SP3 -> 2
    assert g["x"].tolist() == [[5, 0, 4, 5, 4, 0, 2, 0, 0]]


def test_ogb_docstring_example_values():
    """The numbers printed in OGB's own source comments, independent of OGB at run time."""
    g = smiles_to_graph("Cl[C@H](/C=C/C)Br")
    assert g["x"][1].tolist() == [5, 2, 4, 5, 1, 0, 2, 0, 0]  # chiral carbon, CHI_TETRAHEDRAL_CCW
    # bond 2 (the double bond, STEREOE): directed edges 4 and 5
    assert g["edge_attr"][4].tolist() == g["edge_attr"][5].tolist() == [1, 2, 0]


def test_edges_both_directions_in_bond_order():
    g = smiles_to_graph("OCC=N")
    assert g["edge_index"].tolist() == [[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]
    assert g["edge_attr"][:, 0].tolist() == [0, 0, 0, 0, 1, 1]  # single, single, double


@pytest.mark.parametrize(
    "smiles, column, misc",
    [
        ("*C", 0, 118),  # atomic number 0 (dummy atom)
        ("[U+7]", 3, 11),  # formal charge +7
        ("C[Pt@SP1](Cl)(Cl)N", 1, 4),  # CHI_SQUAREPLANAR
        ("[H][H]", 6, 5),  # S hybridization
    ],
)
def test_out_of_vocabulary_values_use_the_misc_bucket(smiles, column, misc):
    x = smiles_to_graph(smiles)["x"]
    assert misc == ATOM_FEATURE_DIMS[column] - 1
    assert misc in x[:, column].tolist()


def test_dative_bond_uses_bond_type_misc_bucket():
    assert smiles_to_graph("N->[Pt]")["edge_attr"][:, 0].tolist() == [4, 4]


# --------------------------------------------------------------------------------------------
# invalid input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "smiles, expected",
    [
        ("C1CC", "unclosed ring"),
        ("N(C)(C)(C)(C)C", "valence"),
        ("CC(", "syntax error"),
        ("c1cccc1", "kekulize"),
    ],
)
def test_rdkit_failures_carry_rdkit_message(smiles, expected):
    with pytest.raises(InvalidSmiles) as info:
        smiles_to_graph(smiles)
    reason = info.value.reason
    assert reason.startswith("RDKit could not parse: ")
    assert expected in reason.lower()
    assert "\n" not in reason and "[" not in reason[:25]  # one line, no RDKit timestamps
    assert str(info.value) == reason and isinstance(info.value, ValueError)


def test_valence_reason_is_rdkits_text():
    with pytest.raises(InvalidSmiles) as info:
        smiles_to_graph("N(C)(C)(C)(C)C")
    assert info.value.reason == (
        "RDKit could not parse: Explicit valence for atom # 0 N, 5, is greater than permitted"
    )


@pytest.mark.parametrize("smiles", ["", "   ", "\t\n", None, float("nan"), np.nan, np.float32("nan"), pd.NA])
def test_empty_smiles(smiles):
    with pytest.raises(InvalidSmiles, match="^empty SMILES$"):
        smiles_to_graph(smiles)


@pytest.mark.parametrize("value", [42, b"CCO", ["CCO"]])
def test_non_string_is_rejected(value):
    with pytest.raises(InvalidSmiles, match=r"^empty SMILES \(not a string: "):
        smiles_to_graph(value)


def test_zero_atom_molecule_is_rejected(monkeypatch):
    """No SMILES string reaches this with current RDKit (''-> 'empty SMILES'); the guard must hold."""
    monkeypatch.setattr(F.Chem, "MolFromSmiles", lambda *args, **kwargs: Chem.Mol())
    with pytest.raises(InvalidSmiles, match="^no atoms$"):
        smiles_to_graph("C")
    feats = featurize_smiles(["C"], n_jobs=1, progress=False)
    assert feats.reasons == ["no atoms"] and feats.num_nodes.tolist() == [0]


def test_rdkit_spam_is_silenced_and_logging_restored(capfd):
    from rdkit import RDLogger

    RDLogger.EnableLog("rdApp.error")  # the caller's setting (other libraries may have changed it)
    capfd.readouterr()
    feats = featurize_smiles(["C1CC", "N(C)(C)(C)(C)C", "CCO"], n_jobs=1, progress=False)
    with pytest.raises(InvalidSmiles):
        smiles_to_graph("C1CC")
    assert feats.valid.tolist() == [False, False, True]
    assert capfd.readouterr().err == ""
    # the caller's RDKit logging is left as it was (BlockLogs is scoped, not a global switch)
    Chem.MolFromSmiles("C1CC")
    assert "unclosed ring" in capfd.readouterr().err


def test_clean_rdkit_log_drops_timestamps_caret_and_duplicates():
    log = (
        "[12:06:53] SMILES Parse Error: syntax error while parsing: CC(\n"
        "[12:06:53] SMILES Parse Error: check for mistakes around position 3:\n"
        "[12:06:53] CC(\n"
        "[12:06:53] ~~^\n"
        "[12:06:53] SMILES Parse Error: Failed parsing SMILES 'CC(' for input: 'CC('\n"
    )
    assert F._clean_rdkit_log(log) == "syntax error while parsing: CC(; check for mistakes around position 3"


# --------------------------------------------------------------------------------------------
# bulk path
# --------------------------------------------------------------------------------------------
@pytest.fixture
def force_pool(monkeypatch):
    """Use the process pool even for a few hundred SMILES (normally in-process below 1,000)."""
    monkeypatch.setattr(F, "_MIN_POOL_ROWS", 0)
    calls = []
    real = F._pool_context

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(F, "_pool_context", spy)
    return calls


INVALID = {3: "C1CC", 50: "N(C)(C)(C)(C)C", 51: "", 120: None, 200: float("nan"), 299: "CC("}


@pytest.fixture(scope="module")
def mixed(real_sample) -> list:
    rows = list(real_sample[:300])
    for i, s in INVALID.items():
        rows.insert(i, s)
    return rows


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_bulk_equals_per_molecule(mixed, n_jobs, force_pool):
    feats = featurize_smiles(mixed, n_jobs=n_jobs, progress=False)
    assert len(force_pool) == (n_jobs > 1)  # n_jobs=2 really went through the pool
    n = len(mixed)
    assert len(feats) == n
    assert feats.x.dtype == feats.edge_index.dtype == feats.edge_attr.dtype == np.int64
    assert feats.num_nodes.shape == feats.num_edges.shape == feats.valid.shape == (n,)
    assert feats.valid.dtype == bool and len(feats.reasons) == n
    assert feats.x.shape == (feats.num_nodes.sum(), 9)
    assert feats.edge_index.shape == (2, feats.num_edges.sum())
    assert feats.edge_attr.shape == (feats.num_edges.sum(), 3)

    node_ptr, edge_ptr = feats.node_ptr, feats.edge_ptr
    for i, s in enumerate(mixed):
        if i in INVALID:
            assert not feats.valid[i]
            assert feats.num_nodes[i] == 0 and feats.num_edges[i] == 0
            with pytest.raises(InvalidSmiles) as info:
                smiles_to_graph(s)
            assert feats.reasons[i] == info.value.reason
            continue
        assert feats.valid[i] and feats.reasons[i] is None
        g = smiles_to_graph(s)
        x = feats.x[node_ptr[i] : node_ptr[i + 1]]
        ei = feats.edge_index[:, edge_ptr[i] : edge_ptr[i + 1]]
        ea = feats.edge_attr[edge_ptr[i] : edge_ptr[i + 1]]
        np.testing.assert_array_equal(x, g["x"])
        np.testing.assert_array_equal(ei, g["edge_index"])  # LOCAL node indices
        np.testing.assert_array_equal(ea, g["edge_attr"])
    assert feats.reasons[51] == feats.reasons[120] == feats.reasons[200] == "empty SMILES"
    assert "valence" in feats.reasons[50]


def test_bulk_results_do_not_depend_on_n_jobs(mixed, force_pool):
    one = featurize_smiles(mixed, n_jobs=1, progress=False)
    two = featurize_smiles(mixed, n_jobs=2, progress=False)
    assert len(force_pool) == 1 and F._chunk_size(len(mixed), 2) < len(mixed)  # pool, several chunks
    for name in ("x", "edge_index", "edge_attr", "num_nodes", "num_edges", "valid"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    assert one.reasons == two.reasons


def test_bulk_preserves_order(real_sample, force_pool):
    rows = real_sample[:200]
    forward = featurize_smiles(rows, n_jobs=2, progress=False)
    backward = featurize_smiles(rows[::-1], n_jobs=2, progress=False)
    np.testing.assert_array_equal(forward.num_nodes, backward.num_nodes[::-1])
    for i in (0, 57, 199):
        np.testing.assert_array_equal(forward.graph(i)["x"], backward.graph(199 - i)["x"])
        assert forward.graph(i)["num_nodes"] == smiles_to_graph(rows[i])["num_nodes"]


def test_graph_accessor_raises_for_invalid_rows():
    feats = featurize_smiles(["CCO", "C1CC"], n_jobs=1, progress=False)
    assert feats.graph(0)["x"].shape == (3, 9)
    with pytest.raises(InvalidSmiles, match="unclosed ring"):
        feats.graph(1)


def test_bulk_empty_input():
    feats = featurize_smiles([], progress=False)
    assert len(feats) == 0 and feats.reasons == []
    assert feats.x.shape == (0, 9) and feats.edge_index.shape == (2, 0) and feats.edge_attr.shape == (0, 3)
    assert feats.node_ptr.tolist() == [0]


def test_bulk_all_invalid_and_bondless():
    feats = featurize_smiles(["", "C", "[Na+].[Cl-]"], n_jobs=1, progress=False)
    assert feats.valid.tolist() == [False, True, True]
    assert feats.num_nodes.tolist() == [0, 1, 2] and feats.num_edges.tolist() == [0, 0, 0]
    assert feats.edge_index.shape == (2, 0)


def test_small_inputs_skip_the_pool(real_sample, monkeypatch):
    monkeypatch.setattr(F, "_pool_context", lambda: pytest.fail("no pool expected below 1,000 SMILES"))
    feats = featurize_smiles(real_sample, n_jobs=2, progress=False)
    assert feats.valid.all() and len(feats) == len(real_sample)


def test_bulk_rejects_bad_n_jobs():
    with pytest.raises(ValueError, match="n_jobs"):
        featurize_smiles(["C"], n_jobs=0)


def test_bbbp_invalid_count_is_11(bbbp):
    assert len(bbbp) == 2050
    feats = featurize_smiles(bbbp, n_jobs=2, progress=False)  # >= 1,000 rows: the real pool path
    invalid = np.flatnonzero(~feats.valid)
    assert len(invalid) == 11, [(int(i), bbbp[i], feats.reasons[i]) for i in invalid]
    assert all(feats.reasons[i].startswith("RDKit could not parse: ") for i in invalid)
    assert all(feats.num_nodes[i] == 0 and feats.num_edges[i] == 0 for i in invalid)
