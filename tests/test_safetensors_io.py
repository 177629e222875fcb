"""fedmol.safetensors_io: canonical (byte-reproducible) safetensors files."""

from __future__ import annotations

import json
import random
import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedmol.safetensors_io import canonical_safetensors, save_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"layer.0.weight": torch.randn(4, 3, generator=g), "layer.0.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(7), "emb": torch.randint(0, 9, (5, 2), generator=g),
            "half": torch.randn(3, generator=g).to(torch.bfloat16)}


META = {"config": json.dumps({"name": "gin", "hidden": 16}), "algorithm": "fedavg", "zeta": "z", "alpha": "a",
        "m": "\u00e9t\u00e9"}


def test_same_tensors_and_metadata_give_identical_bytes(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_safetensors(_tensors(), a, META)
    # the same content, dicts built in other key orders
    save_safetensors(dict(reversed(list(_tensors().items()))), b, dict(reversed(list(META.items()))))
    assert a.read_bytes() == b.read_bytes()
    for seed in range(5):  # any insertion order of the metadata and the tensors
        meta, tensors = list(META.items()), list(_tensors().items())
        random.Random(seed).shuffle(meta)
        random.Random(seed + 10).shuffle(tensors)
        assert canonical_safetensors(dict(tensors), dict(meta)) == a.read_bytes()


def test_header_sorted_padded_and_round_trips(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(_tensors(), path, META)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    text = raw[8:8 + n].decode("utf-8")
    header = json.loads(text)
    assert text.rstrip(" ") == json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(META)
    loaded = load_file(str(path))
    assert set(loaded) == set(_tensors())
    for k, v in _tensors().items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == META
    # the data section is the library's own
    from safetensors.torch import save

    lib = save(_tensors(), metadata=META)
    (m,) = struct.unpack("<Q", lib[:8])
    assert raw[8 + n:] == lib[8 + m:]


def test_without_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.arange(6.0).reshape(2, 3)}, path)
    assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8:8 + n] == b'{"w":{"data_offsets":[0,24],"dtype":"F32","shape":[2,3]}}' + b" " * 7


def test_two_identical_federated_runs_write_identical_model_files(tmp_path):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    files = []
    for name in ("a", "b"):
        cfg = RunConfig(algorithm="fedavg", dataset="bace", partners=2, rounds=1, hidden=8, layers=1,
                        hparams=dict(max_local_steps=1))
        run_federated(cfg, tmp_path / name, progress=False)
        files.append((tmp_path / name / "model.safetensors").read_bytes())
    assert files[0] == files[1]
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        assert f.metadata()["algorithm"] == "fedavg"
