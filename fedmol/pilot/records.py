"""The wire format of a pilot: fedmol :class:`~fedmol.fl.message.Message` <-> Flower ``RecordDict``.

Everything that crosses the network between the coordinator and a partner is built here, and
nowhere else. One Flower message holds four records:

``fedmol.arrays`` (``ArrayRecord``)
    the message's named tensors, each serialized by NumPy's ``.npy`` format without pickle
    (only numeric and boolean dtypes are accepted, in both directions: a string array is refused).
``fedmol.config`` (``ConfigRecord``)
    the message's config: top-level numbers, strings and booleans as they are; anything nested
    (the model config, the hyperparameters, lists, ``None``) as a JSON string, its key listed in
    ``__json__``; the array order in ``__order__``.
``fedmol.metrics`` (``MetricRecord``)
    the message's scalar metrics.
``fedmol.pilot`` (``ConfigRecord``)
    protocol metadata, *not* part of the algorithm's message (so byte accounting matches the
    in-process harness): the sender's fedmol / featurizer / protocol versions, the message kind,
    and for replies a few facts about the partner (partition id, training-set size, width cap...).

Versions: every message carries its sender's versions; the receiver refuses a message from an
incompatible sender with an error that names both (:func:`check_compatible`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import torch

import fedmol
from fedmol.errors import FedmolError
from fedmol.fl.message import Message

ARRAYS, CONFIG, METRICS, META = "fedmol.arrays", "fedmol.config", "fedmol.metrics", "fedmol.pilot"
JSON_KEYS, ORDER_KEY = "__json__", "__order__"
PROTOCOL = "fedmol-pilot/1"

#: message kinds and the Flower message types that carry them
HELLO, TRAIN, QUERY, VALIDATE = "hello", "train", "query", "validate"
MESSAGE_TYPES = {HELLO: "query.hello", TRAIN: "train", QUERY: "query", VALIDATE: "evaluate"}

#: dtypes a tensor on the wire may have (nothing that can hold text or objects)
ALLOWED_DTYPES = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}


class PilotError(FedmolError):
    """A pilot-level failure (protocol, versions, a partner's data), shown without a traceback (with
    the tail of a process's log when there is one)."""

    multiline = True


class IncompatibleVersion(PilotError):
    """The two ends of a message run incompatible software."""


#: the modules whose code decides what a partner computes (the "code" fingerprint)
CODE_FILES = ("fl/*.py", "models/*.py", "data/featurize.py", "data/dataset.py", "training.py", "evaluate.py",
              "pilot/records.py", "pilot/site.py", "pilot/heads.py")
_CODE: list[str] = []


def code_fingerprint() -> str:
    """sha256 (16 hex digits) of the source of the modules in :data:`CODE_FILES`: two installs of
    one release agree; a development copy with other algorithm code does not."""
    if not _CODE:
        import hashlib
        from pathlib import Path

        root = Path(fedmol.__file__).resolve().parent
        h = hashlib.sha256()
        for pattern in CODE_FILES:
            for f in sorted(root.glob(pattern)):
                h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE.append(h.hexdigest()[:16])
    return _CODE[0]


def local_versions() -> dict[str, str]:
    """This process's fedmol, featurizer, protocol and code versions."""
    from fedmol.data.featurize import FEATURIZER_VERSION

    return {"fedmol-version": fedmol.__version__,
            "featurizer-version": FEATURIZER_VERSION, "protocol": PROTOCOL, "code": code_fingerprint()}


def check_compatible(theirs: dict, who: str, mine: dict | None = None) -> None:
    """Refuse a message whose sender runs another fedmol release, featurizer, protocol or code.

    The featurizer must match exactly (the model's input vocabularies depend on it); so must the
    protocol; fedmol versions must be equal (the algorithms' messages change between releases),
    and so must the code of the modules that compute (:func:`code_fingerprint`; it catches
    development copies that differ under one version number).
    """
    mine = mine or local_versions()
    problems = [f"{key} {theirs.get(key, 'unknown')!s} vs {mine[key]}" for key in
                ("fedmol-version", "featurizer-version", "protocol", "code") if str(theirs.get(key)) != mine[key]]
    if problems:
        raise IncompatibleVersion(
            f"incompatible {who}: it runs fedmol {theirs.get('fedmol-version', 'unknown')} (featurizer "
            f"{theirs.get('featurizer-version', 'unknown')}, protocol {theirs.get('protocol', 'unknown')}), this "
            f"side runs fedmol {mine['fedmol-version']} (featurizer {mine['featurizer-version']}, protocol "
            f"{mine['protocol']}); mismatched: {'; '.join(problems)}"
            + ("; the same version with different code: install the same release everywhere"
               if [p.split()[0] for p in problems] == ["code"] else ""))


# -- tensors ---------------------------------------------------------------------------------------
def _to_array(name: str, t: torch.Tensor):
    from flwr.app import Array

    a = t.detach().cpu().contiguous().numpy()
    if str(a.dtype) not in ALLOWED_DTYPES:
        raise PilotError(f"array {name!r} has dtype {a.dtype}, which may not be sent (allowed: {sorted(ALLOWED_DTYPES)})")
    return Array.from_numpy_ndarray(a)


def _from_array(name: str, arr) -> torch.Tensor:
    if str(arr.dtype) not in ALLOWED_DTYPES:
        raise PilotError(f"received array {name!r} with dtype {arr.dtype}: refused (only numeric arrays are accepted)")
    a = arr.numpy()
    if str(a.dtype) not in ALLOWED_DTYPES:
        raise PilotError(f"received array {name!r} decodes to dtype {a.dtype}: refused")
    return torch.from_numpy(np.array(a, copy=True))


# -- config ----------------------------------------------------------------------------------------
def _plain(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str)) and not (isinstance(v, int) and not isinstance(v, bool)
                                                            and not -2**63 <= v < 2**63)


def _encode_config(config: dict, order: list[str]):
    from flwr.app import ConfigRecord

    rec, nested = {}, []
    for k, v in config.items():
        if not isinstance(k, str) or k in (JSON_KEYS, ORDER_KEY):
            raise PilotError(f"config key {k!r} cannot be sent")
        if _plain(v):
            rec[k] = v
        else:
            rec[k] = json.dumps(v)
            nested.append(k)
    rec[JSON_KEYS] = json.dumps(nested)
    rec[ORDER_KEY] = json.dumps(order)
    return ConfigRecord(rec)


def _decode_config(rec) -> tuple[dict, list[str]]:
    rec = dict(rec)
    nested = set(json.loads(rec.pop(JSON_KEYS, "[]")))
    order = json.loads(rec.pop(ORDER_KEY, "[]"))
    return {k: (json.loads(v) if k in nested else v) for k, v in rec.items()}, order


# -- messages --------------------------------------------------------------------------------------
def to_record_dict(msg: Message, meta: dict) -> Any:
    """A fedmol message plus protocol metadata (``meta``: flat str/int/float/bool) as a RecordDict."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    arrays = ArrayRecord({k: _to_array(k, v) for k, v in msg.arrays.items()})
    metrics = {}
    for k, v in msg.metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PilotError(f"metric {k!r} is not a number: {v!r}")
        metrics[k] = v
    meta_rec = {**local_versions(), **meta}
    bad = [k for k, v in meta_rec.items() if not _plain(v)]
    if bad:
        raise PilotError(f"protocol metadata {bad} must be plain numbers, strings or booleans")
    return RecordDict({ARRAYS: arrays, CONFIG: _encode_config(msg.config, list(msg.arrays)),
                       METRICS: MetricRecord(metrics), META: ConfigRecord(meta_rec)})


def from_record_dict(rd) -> tuple[Message, dict]:
    """Inverse of :func:`to_record_dict`: ``(fedmol message, protocol metadata)``."""
    try:
        arrays_rec, config_rec = rd.array_records[ARRAYS], rd.config_records[CONFIG]
        metrics_rec, meta_rec = rd.metric_records[METRICS], rd.config_records[META]
    except KeyError as e:
        raise PilotError(f"not a fedmol pilot message: record {e} missing") from e
    config, order = _decode_config(config_rec)
    received = {k: _from_array(k, a) for k, a in arrays_rec.items()}
    arrays = {k: received.pop(k) for k in order if k in received}
    arrays.update(received)
    return Message(arrays=arrays, config=config, metrics=dict(metrics_rec)), dict(meta_rec)


def record_strings(rd) -> list[str]:
    """Every string in a RecordDict (record names, keys, config values, array names, dtypes) --
    what an auditor greps for leaked molecules."""
    out: list[str] = []
    for name, rec in rd.items():
        out.append(name)
        for k, v in rec.items():
            out.append(k)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out += [x for x in v if isinstance(x, str)]
            elif hasattr(v, "dtype"):
                out.append(str(v.dtype))
    return out


_REASON = re.compile(r"^<class '([^']+)'>:<'(.*)'>$", re.DOTALL)


def error_reason(reason: str | None) -> str:
    """Flower's ``"<class 'X'>:<'message'>"`` error reason as ``"message (X)"``."""
    if not reason:
        return "unknown error"
    m = _REASON.match(reason.strip())
    if not m:
        return reason.strip()
    cls, text = m.group(1), m.group(2)
    short = cls.rsplit(".", 1)[-1]
    if short in ("PilotError", "IncompatibleVersion", "PartnerDataError", "DataError", "FedmolError"):
        return text
    return f"{text} ({short})"
