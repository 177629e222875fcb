"""Hand-made molecular graphs with chosen labels, for the algorithm tests of this folder."""

from __future__ import annotations

import math

import torch
from torch_geometric.data import Data

from fedmol.data.featurize import smiles_to_graph

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "[NH3+]CC(=O)[O-]",
          "C1CC2CCC1C2", "ClC(Cl)(Cl)Br", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "O=C1CCCN1", "c1ccc2c(c1)ccc1ccccc12",
          "CC#N", "OCC(O)CO", "CCN(CC)CC", "c1ccncc1", "CC(=O)OC1=CC=CC=C1C(=O)O", "NCCc1ccc(O)c(O)c1"]


def graphs(ys: list[list[float]], offset: int = 0) -> list[Data]:
    """One graph per label row, molecules taken in turn from :data:`SMILES` starting at ``offset``."""
    out = []
    for i, y in enumerate(ys):
        g = smiles_to_graph(SMILES[(i + offset) % len(SMILES)])
        out.append(Data(x=torch.as_tensor(g["x"]), edge_index=torch.as_tensor(g["edge_index"]),
                        edge_attr=torch.as_tensor(g["edge_attr"]), y=torch.tensor([y], dtype=torch.float32)))
    return out


def binary_labels(n: int, tasks: int, seed: int = 0, missing: tuple[int, ...] = ()) -> list[list[float]]:
    """Seeded random 0/1 labels; the tasks in ``missing`` are NaN throughout."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, tasks, generator=gen) < 0.5).float()
    for t in missing:
        y[:, t] = math.nan
    return y.tolist()


class GraphList(list):
    """A list of graphs with the ``labels`` matrix a :class:`~fedmol.data.dataset.MoleculeDataset` has."""

    @property
    def labels(self):
        return torch.cat([g.y for g in self]).numpy()


def dataset(ys: list[list[float]], offset: int = 0) -> GraphList:
    return GraphList(graphs(ys, offset))
