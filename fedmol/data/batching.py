"""Mini-batches cut straight out of an in-memory dataset's stored tensors.

torch_geometric's ``DataLoader`` rebuilds every molecule of a mini-batch with ``separate()`` (one
``Data`` per graph) and then joins them again with ``Batch.from_data_list`` (``collate``); for small
molecules this is a large share of a training step. :func:`slice_batch` builds the same
``Batch`` for a list of dataset positions directly from ``dataset._data`` and ``dataset.slices``:
one gather per attribute, ``edge_index`` raised by the cumulated node counts, ``batch``/``ptr``,
and the ``_slice_dict``/``_inc_dict``/``_num_graphs`` that ``Batch.from_data_list`` sets.
:class:`SliceLoader` is a ``torch.utils.data.DataLoader`` whose fetcher asks for whole batches
(``__getitems__``), so its sampling (shuffle, generator, ``drop_last``, the seed it draws per
epoch) and ``len()`` are the DataLoader's own: the same batches in the same order as before.

Datasets this cannot serve exactly (plain lists of ``Data``, transforms, subclasses of ``Data``,
attributes of other kinds) are left to the PyG loader: :func:`fast_path_ok` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, InMemoryDataset
from torch_geometric.data.storage import N_KEYS

__all__ = ["fast_path_ok", "slice_batch", "SliceLoader"]


def _tensor_ok(ds: InMemoryDataset, key: str, value: Tensor) -> bool:
    """Plain tensors that ``collate`` concatenates along one dimension (no 0-dim, sparse, nested,
    ``Index``/``EdgeIndex``) and that ``separate`` slices by ``ds.slices[key]``."""
    if type(value) is not Tensor or value.is_sparse or value.dim() == 0:
        return False
    return ds._data.__cat_dim__(key, value) is not None and len(ds.slices[key]) == len(ds.slices["x"])


def fast_path_ok(ds) -> bool:
    """True when :func:`slice_batch` reproduces PyG's batches of ``ds`` exactly: an
    ``InMemoryDataset`` of plain ``Data`` (PyG's own ``__inc__``/``__cat_dim__``), no transform,
    node features ``x`` as its first node-level key, every attribute a plain tensor or a list with
    one entry per molecule, and no key PyG treats specially (``batch``, ``ptr``, ``num_nodes``)."""
    if not isinstance(ds, InMemoryDataset) or ds.transform is not None or type(ds._data) is not Data:
        return False
    slices, keys = ds.slices, [key for key, _ in ds._data]  # in storage order, as separate() keeps them
    if not slices or "x" not in slices or set(keys) != set(slices):
        return False
    if next((k for k in keys if k in N_KEYS), None) != "x" or any("batch" in k or k in ("ptr", "num_nodes")
                                                                      for k in keys):
        return False
    n = len(slices["x"]) - 1
    for key in keys:
        value = ds._data[key]
        if isinstance(value, list):
            if len(value) != n or not torch.equal(slices[key], torch.arange(n + 1)):
                return False
        elif not (isinstance(value, Tensor) and _tensor_ok(ds, key, value)):
            return False
    return True


def _exclusive_cumsum(sizes: Tensor) -> Tensor:
    """``[0, s0, s0+s1, ...]`` (PyG's ``torch_geometric.utils.cumsum``)."""
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])


def _gather_index(bounds: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """(positions along the stored dimension of the graphs ``pos``, in order; their sizes)."""
    starts, sizes = bounds[pos], bounds[pos + 1] - bounds[pos]
    if bool((sizes == 1).all()):  # one row per molecule (labels, row numbers): no ranges to expand
        return starts, sizes
    offsets = _exclusive_cumsum(sizes)
    gather = torch.arange(int(offsets[-1])) + torch.repeat_interleave(starts - offsets[:-1], sizes)
    return gather, sizes


def _positions(ds, idx: Sequence[int]) -> Tensor:
    """Storage positions of dataset positions ``idx`` (through a subset's index view, as
    ``InMemoryDataset.__getitem__`` maps them)."""
    if ds._indices is None:
        return torch.as_tensor(idx, dtype=torch.long)
    view = ds.indices()
    return torch.tensor([int(view[i]) for i in idx], dtype=torch.long)


def _slice_tensor(ds, key: str, pos: Tensor, node_incs: Tensor, cache: dict) -> tuple[Tensor, Tensor, Tensor]:
    """(batched value, slices, incs) of one tensor attribute, as ``collate``'s ``_collate`` makes them."""
    value, bounds = ds._data[key], ds.slices[key]
    got = cache.get(id(bounds))
    if got is None:
        got = cache[id(bounds)] = _gather_index(bounds.long(), pos)
    gather, sizes = got
    cat_dim = ds._data.__cat_dim__(key, value)
    out = value.index_select(cat_dim, gather)
    if ds._data.__inc__(key, value) == 0:  # PyG's Data.__inc__: "index" keys rise by num_nodes, others by 0
        return out, _exclusive_cumsum(sizes), torch.zeros(len(pos), dtype=torch.long)
    if int(node_incs[-1]) != 0:
        out = out + torch.repeat_interleave(node_incs, sizes)
    return out, _exclusive_cumsum(sizes), node_incs


def slice_batch(ds, idx: Sequence[int]) -> Batch:
    """``Batch.from_data_list([ds[i] for i in idx])``, built from ``ds``'s storage (``ds`` must pass
    :func:`fast_path_ok`): equal attribute by attribute, ``batch``, ``ptr``, ``_slice_dict`` and
    ``_inc_dict`` included."""
    pos = _positions(ds, idx)
    cache: dict = {}
    nodes = _gather_index(ds.slices["x"].long(), pos)[1]
    node_incs = _exclusive_cumsum(nodes[:-1])
    out = Batch(_base_cls=Data)
    slice_dict, inc_dict = {}, {}
    for key, value in ds._data:
        if isinstance(value, list):
            out[key] = [value[i] for i in pos.tolist()]
            slice_dict[key], inc_dict[key] = torch.arange(len(pos) + 1), None
        else:
            out[key], slice_dict[key], inc_dict[key] = _slice_tensor(ds, key, pos, node_incs, cache)
    out.batch = torch.repeat_interleave(torch.arange(len(pos)), nodes)
    out.ptr = _exclusive_cumsum(nodes)
    out._num_graphs, out._slice_dict, out._inc_dict = len(pos), slice_dict, inc_dict
    return out


class _Batches(torch.utils.data.Dataset):
    """A dataset view whose ``__getitems__`` returns one ready batch (what the DataLoader's fetcher
    asks for when it is defined), so no molecule is ever built on its own."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, idx: list[int]) -> Batch:
        return slice_batch(self.dataset, idx)


def _as_is(batch: Batch) -> Batch:
    return batch


class SliceLoader(torch.utils.data.DataLoader):
    """``torch_geometric.loader.DataLoader(dataset, batch_size, shuffle, generator=..., drop_last=...)``
    with batches from :func:`slice_batch`: same sampler, same random draws, same batches."""

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False):
        if not fast_path_ok(dataset):
            raise ValueError("SliceLoader needs an InMemoryDataset of plain Data (see fast_path_ok)")
        super().__init__(_Batches(dataset), batch_size=batch_size, shuffle=shuffle, generator=generator,
                         drop_last=drop_last, collate_fn=_as_is)
        self.source = dataset
