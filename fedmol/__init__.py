"""fedmol: a federated-learning benchmark suite for drug discovery.

Data (``fedmol.data``) -> models (``fedmol.models``) -> federated harness (``fedmol.fl``);
one shared :class:`Evaluator` scores everything. The top-level names are imported lazily, so
that light entry points (the CLI's help, Flower's app loader) do not pay for torch.
"""

__version__ = "0.1.0"

from fedmol.errors import FedmolError  # noqa: E402

__all__ = ["__version__", "FedmolError", "Evaluator", "MoleculeDataset", "load_dataset"]


def __getattr__(name):
    if name == "Evaluator":
        from fedmol.evaluate import Evaluator

        return Evaluator
    if name in ("MoleculeDataset", "load_dataset"):
        from fedmol.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'fedmol' has no attribute {name!r}")
