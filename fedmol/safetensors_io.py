"""Canonical safetensors files: the same tensors and metadata always give the same bytes.

``safetensors.torch.save_file`` lays the tensor data out deterministically (sorted by dtype, then
name) but writes the JSON header's ``__metadata__`` dict in a random (hash) order, so two
identical runs write ``model.safetensors`` files that differ in their header bytes.
:func:`save_safetensors` writes the same file with the header re-serialized canonically: keys
sorted at every level (tensor entries and ``__metadata__``), no whitespace, UTF-8, padded with
spaces to a multiple of 8 bytes as the format requires. The data section and every tensor's
``data_offsets`` are those of ``safetensors.torch.save``, so the file loads with
``safetensors.torch.load_file`` / ``safe_open`` like any other.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

_ALIGN = 8  # the header length (and so the data's start) is a multiple of 8 bytes


def canonical_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file of ``tensors`` and ``metadata`` with a canonical header."""
    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file(tensors, path, metadata)``, byte-reproducible (see the module)."""
    Path(path).write_bytes(canonical_safetensors(tensors, metadata))
