"""The only thing that crosses between server and partner: a :class:`Message`.

A message is plain data -- named tensors (``arrays``), a JSON-able ``config`` and scalar
``metrics`` -- so the same algorithm objects run in-process, on Flower's simulation engine or over
a real network. :meth:`Message.nbytes` counts what would be sent: the bytes of the tensors
actually in the message (sliced state, not the full model) plus the UTF-8 JSON of config and
metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Message:
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def array_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.arrays.values())

    def nbytes(self) -> int:
        meta = json.dumps({"config": self.config, "metrics": self.metrics}, default=str)
        return self.array_bytes() + len(meta.encode())

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.arrays.values() if t.is_floating_point()) and all(
            math.isfinite(v) for v in self.metrics.values() if isinstance(v, float))

    def describe(self) -> list[dict]:
        """Names, shapes, dtypes and bytes of the arrays (for audit logs and configs)."""
        return [{"name": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                 "bytes": t.numel() * t.element_size()} for k, t in self.arrays.items()]
