"""Batches cut from the stored tensors (fedmol.data.batching) equal torch_geometric's, batch by batch."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from fedmol.data.batching import SliceLoader, fast_path_ok, slice_batch
from fedmol.data.dataset import load_dataset
from fedmol.data.fingerprints import FingerprintSpec, attach_fingerprints
from fedmol.models import build
from fedmol.training import make_loader, seed_everything, train_epoch

SPECS = {"bace": FingerprintSpec(1, 64, True), "tox21": FingerprintSpec(0, 32, False)}
SPEC_MLP = SPECS["bace"]


_LOADED: dict = {}


def loaded(name: str):
    """(graphs only, graphs + fingerprints) of one dataset, loaded once per test session."""
    if name not in _LOADED:
        _LOADED[name] = (load_dataset(name, progress=False),
                         attach_fingerprints(load_dataset(name, progress=False), SPECS[name]))
    return _LOADED[name]


@pytest.fixture(params=["bace", "tox21"])
def full(request, data_dir):
    return loaded(request.param)


def subset(ds, n=203, seed=1):
    """An unsorted subset of ``n`` molecules (an index view: positions map through ``ds._indices``)."""
    return ds.index_select(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n])


def pyg_loader(ds, batch_size, shuffle, seed, drop_last):
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN labels included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def assert_same_batch(got: Batch, want: Batch) -> None:
    assert type(got) is type(want) and list(got.keys()) == list(want.keys())
    for key in want.keys():
        a, b = got[key], want[key]
        if isinstance(b, torch.Tensor):
            assert same(a, b), key
        else:
            assert a == b, key
    assert got.num_graphs == want.num_graphs
    for mine, theirs in ((got._slice_dict, want._slice_dict), (got._inc_dict, want._inc_dict)):
        assert mine.keys() == theirs.keys()
        for key, v in theirs.items():
            assert (mine[key] is None) if v is None else torch.equal(mine[key], v), key


@pytest.mark.parametrize("fingerprints", [False, True], ids=["graphs", "fingerprints"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["random", "sequential"])
@pytest.mark.parametrize("drop_last", [False, True], ids=["keep_last", "drop_last"])
def test_loader_batches_equal_pyg(full, fingerprints, shuffle, drop_last):
    """Two epochs of one loader: same batches, same order, same len(); the global RNG (drawn from by
    the DataLoader's per-epoch seed when it has no generator) ends in the same state."""
    ds = subset(full[int(fingerprints)])
    ours, theirs = make_loader(ds, 32, shuffle=shuffle, seed=7, drop_last=drop_last), pyg_loader(ds, 32, shuffle, 7,
                                                                                                drop_last)
    assert isinstance(ours, SliceLoader) and len(ours) == len(theirs) == (6 if drop_last else 7)
    torch.manual_seed(3)
    got = [b for _ in range(2) for b in ours]
    state = torch.get_rng_state()
    torch.manual_seed(3)
    want = [b for _ in range(2) for b in theirs]
    assert torch.equal(state, torch.get_rng_state())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same_batch(g, w)


def test_subset_of_subset_and_single_graph(full):
    ds = subset(subset(full[1], 400, seed=2), 50, seed=3)
    assert fast_path_ok(ds)
    for idx in ([0], [49, 0, 17, 17], list(range(50))):
        assert_same_batch(slice_batch(ds, idx), Batch.from_data_list([ds[i] for i in idx]))
    assert_same_batch(slice_batch(full[0], [5, 2]), Batch.from_data_list([full[0][5], full[0][2]]))


def test_public_pool_batches_equal_pyg(data_dir):
    """FedDF's public pool (an InMemoryDataset with mol_id, no labels) takes the new path too."""
    from fedmol.fl.public_pool import PublicPool

    pool = PublicPool.from_smiles(loaded("bace")[0].smiles[:40])
    assert isinstance(make_loader(pool, 16), SliceLoader)
    for got, want in zip(make_loader(pool, 16), DataLoader(pool, batch_size=16), strict=True):
        assert_same_batch(got, want)


def test_other_datasets_use_pyg(full):
    """Plain lists of Data and datasets with a transform keep PyG's loader."""
    graphs = [full[0][i] for i in range(10)]
    assert not fast_path_ok(graphs)
    assert type(make_loader(graphs, 4)) is DataLoader
    with_transform = subset(full[0])
    with_transform.transform = lambda d: d
    assert not fast_path_ok(with_transform) and type(make_loader(with_transform, 4)) is DataLoader
    assert len(list(make_loader(graphs, 4))) == 3


def train_twice(name, ds, loader_fn):
    seed_everything(0)
    extra = dict(fp_radius=SPEC_MLP.radius, fp_bits=SPEC_MLP.bits, fp_counts=SPEC_MLP.counts) if name == "mlp" else {}
    model = build(name, ds.num_tasks, hidden=16, layers=2, dropout=0.1, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = loader_fn(ds, 16, True, 5, False)
    losses = [train_epoch(model, loader, opt)["loss"] for _ in range(2)]
    return model.state_dict(), losses


@pytest.mark.parametrize("model", ["gin", "mlp"])
def test_training_bit_identical(data_dir, model):
    """Two epochs of a tiny model on BACE: the same weights (bit for bit) and losses with either loader."""
    ds = subset(loaded("bace")[1], 120)
    ours = train_twice(model, ds, lambda *a: make_loader(a[0], a[1], shuffle=a[2], seed=a[3], drop_last=a[4]))
    theirs = train_twice(model, ds, pyg_loader)
    assert ours[1] == theirs[1]
    assert ours[0].keys() == theirs[0].keys()
    assert all(same(ours[0][k], theirs[0][k]) for k in theirs[0])
