"""Shared fixtures for the model tests: small real molecular batches (OGB featurization)."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from model_molecules import SMILES  # noqa: E402 - a plain module: test files import it too


def mol_graph(smiles: str, y: list[float]) -> Data:
    from ogb.utils import smiles2graph

    g = smiles2graph(smiles)
    return Data(
        x=torch.from_numpy(g["node_feat"]).long(),
        edge_index=torch.from_numpy(g["edge_index"]).long(),
        edge_attr=torch.from_numpy(g["edge_feat"]).long(),
        y=torch.tensor([y], dtype=torch.float32),
    )


def mol_graphs(num_tasks: int = 2, seed: int = 0) -> list[Data]:
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for s in SMILES:
        y = (torch.rand(num_tasks, generator=gen) < 0.5).float()
        y[torch.rand(num_tasks, generator=gen) < 0.3] = math.nan
        graphs.append(mol_graph(s, y.tolist()))
    return graphs


@pytest.fixture(scope="session")
def mol_graph_fn():
    """``mol_graph(smiles, labels) -> Data`` (OGB featurization)."""
    return mol_graph


@pytest.fixture(scope="session")
def graphs() -> list[Data]:
    """12 small molecules, 2 tasks, ~30% NaN labels."""
    return mol_graphs()


@pytest.fixture(scope="session")
def batch(graphs):
    """All 12 molecules as one batch."""
    return next(iter(DataLoader(graphs, batch_size=len(graphs))))


@pytest.fixture(scope="session")
def loader(graphs):
    """The molecules in batches of 4 (for BN statistics)."""
    return DataLoader(graphs, batch_size=4)
