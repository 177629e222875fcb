"""fedmol: a federated-learning benchmark suite for drug discovery.

Data (``fedmol.data``) -> models (``fedmol.models``) -> federated harness (``fedmol.fl``);
one shared :class:`Evaluator` scores everything.
"""

__version__ = "0.1.0"

from fedmol.errors import FedmolError  # noqa: E402
from fedmol.evaluate import Evaluator  # noqa: E402
from fedmol.data.dataset import MoleculeDataset, load_dataset  # noqa: E402

__all__ = ["__version__", "FedmolError", "Evaluator", "MoleculeDataset", "load_dataset"]
