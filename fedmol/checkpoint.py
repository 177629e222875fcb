"""Resumable training: everything :func:`fedmol.training.fit` needs to continue an interrupted run
exactly where it stopped, after the last finished epoch.

A checkpoint is one file in a folder, ``state.safetensors``, replaced atomically after every epoch
(a crash mid-write keeps the previous epoch's state whole):

* its tensors: the model (``model.*``), the best epoch's weights so far (``best.*``), the
  optimizer's per-parameter state (``opt.<param index>.<name>``) and the random generators' states
  (``rng.torch``, ``rng.loader``: the data loader's shuffling generator, ``rng.cuda.<i>``);
* its metadata entry ``fedmol.checkpoint``, a JSON object with the rest: the run's ``fingerprint``
  (what it trains: a resumed run must be the same run), the finished ``epoch``, ``best``,
  ``best_epoch``, ``history``, ``elapsed`` seconds, the optimizer's param groups and scalar state,
  and Python's and NumPy's generator states.

Nothing is unpickled: a checkpoint folder can be read back safely. Resuming restores every random
generator, so a resumed run is bit-identical to an uninterrupted one on the same device
(``tests/test_checkpoint.py``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedmol.atomic import atomic_path
from fedmol.errors import FedmolError
from fedmol.safetensors_io import save_safetensors

STATE, KEY = "state.safetensors", "fedmol.checkpoint"


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The optimizer's state dict as (tensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, dict(param_groups=sd["param_groups"], scalars=scalars)


def _optimizer_join(tensors: dict, meta: dict, device: torch.device) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v if name == "step" else v.to(device)
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return dict(state=state, param_groups=meta["param_groups"])


def save(folder: Path, *, fingerprint: dict, epoch: int, model, best_state: dict | None, best: float,
         best_epoch: int, history: list, elapsed: float, optimizer: torch.optim.Optimizer,
         loader_generator: torch.Generator | None) -> None:
    """Write the state after ``epoch`` finished (one atomic file replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in (best_state or {}).items()})
    opt_tensors, opt_meta = _optimizer_split(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if loader_generator is not None:
        tensors["rng.loader"] = loader_generator.get_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, *np_rest = np.random.get_state()
    meta = dict(fingerprint=fingerprint, epoch=epoch, best=best, best_epoch=best_epoch, history=history,
                elapsed=elapsed, optimizer=opt_meta, python_rng=[py_version, list(py_internal), py_gauss],
                numpy_rng=[np_name, np_keys.tolist(), *np_rest])
    with atomic_path(folder / STATE) as tmp:
        save_safetensors(tensors, tmp, metadata={KEY: json.dumps(meta)})


def read_meta(folder: Path) -> dict | None:
    """The JSON part of the checkpoint in ``folder`` (``None`` when there is none)."""
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(KEY)
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (truncated or corrupt file)
        raise _damaged(path, e) from None
    if text is None:
        raise FedmolError(f"{path} is not a fedmol training checkpoint")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _damaged(path, e) from None
    missing = [k for k in ("fingerprint", "epoch", "best", "best_epoch", "history", "elapsed", "optimizer",
                           "python_rng", "numpy_rng") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise _damaged(path, f"its metadata lacks {', '.join(missing)}")
    return meta


def _damaged(path: Path, why) -> FedmolError:
    return FedmolError(f"{path} is a damaged training checkpoint (truncated or corrupt: {' '.join(str(why).split())}): "
                       f"delete {path.parent} to train this run again from the start")


def load(folder: Path, fingerprint: dict, model, optimizer: torch.optim.Optimizer,
         loader_generator: torch.Generator | None) -> dict | None:
    """Restore a checkpoint into ``model``, ``optimizer`` and the random generators.

    Returns ``{"epoch", "best", "best_epoch", "best_state", "history", "elapsed"}``, or ``None``
    when ``folder`` holds none. A checkpoint of a different run (another fingerprint) is an error.
    """
    meta = read_meta(folder)
    if meta is None:
        return None
    fingerprint = json.loads(json.dumps(fingerprint))  # compared as stored: tuples become lists
    if meta["fingerprint"] != fingerprint:
        diff = sorted(k for k in set(meta["fingerprint"]) | set(fingerprint)
                      if meta["fingerprint"].get(k) != fingerprint.get(k))
        raise FedmolError(f"{folder} holds the checkpoint of a different run (differs in: {', '.join(diff)}): "
                          "remove it or write this run elsewhere")
    try:
        tensors = load_file(str(folder / STATE))
    except Exception as e:  # noqa: BLE001 - safetensors' own error type (truncated or corrupt file)
        raise _damaged(Path(folder) / STATE, e) from None
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_optimizer_join(tensors, meta["optimizer"], device))
    best_state = {k[len("best."):]: v.to(device) for k, v in tensors.items() if k.startswith("best.")} or None
    torch.set_rng_state(tensors["rng.torch"])
    if loader_generator is not None:
        loader_generator.set_state(tensors["rng.loader"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return dict(epoch=meta["epoch"], best=meta["best"], best_epoch=meta["best_epoch"], best_state=best_state,
                history=meta["history"], elapsed=meta["elapsed"])
