"""Algorithm registry: name -> class (one module per algorithm)."""

from __future__ import annotations

import importlib

from fedmol.errors import FedmolError

#: name -> "module:Class" (imported on first use)
ALGORITHMS = {
    "fedavg": "fedmol.fl.fedavg:FedAvg",
    "feddf": "fedmol.fl.feddf:FedDF",
    "heterofl": "fedmol.fl.heterofl:HeteroFL",
    "fjord": "fedmol.fl.fjord:FjORD",
    "fedgen": "fedmol.fl.fedgen:FedGen",
    "fedrescue": "fedmol.fl.fedrescue:FedResCuE",
    "gbt-bagging": "fedmol.fl.trees:TreeBagging",
    "gbt-cyclic": "fedmol.fl.trees:TreeCyclic",
}


def get_algorithm(name: str):
    key = name.strip().lower()
    if key not in ALGORITHMS:
        raise FedmolError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[key].split(":")
    return getattr(importlib.import_module(module), cls)
