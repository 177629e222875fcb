"""Strict JSON for every file fedmol writes, and the reading side of the one convention it uses.

An undefined metric (ROC-AUC of a single-class set, a score of an empty set) is a float NaN in
memory. ``json.dumps`` would write it as the bare token ``NaN``, which is not JSON (RFC 8259) and
which strict readers (browsers, ``jq``, the leaderboard's manifest check) refuse. So every JSON
file of a run, a benchmark, a split or the leaderboard goes through :func:`to_json` /
:func:`write_json`: NaN and +-inf become ``null`` (numpy scalars and arrays become plain numbers
and lists, tuples lists), and the dump runs with ``allow_nan=False``, so a non-finite number that
slipped through is an error, never an invalid file.

Readers of results turn ``null`` back into NaN where a metric belongs (:func:`undefined_as_nan`,
:func:`read_summary`): code downstream keeps seeing floats.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from fedmol.atomic import write_atomic

#: the keys of a results summary whose values are metrics by width (``{"1.0": 0.81, ...}``)
METRIC_MAPS = ("test", "valid", "test_last")
#: the metrics of a ``per_partner`` entry
PARTNER_METRICS = ("test", "valid")
#: a metrics-row column holding a metric (``test_rocauc@1.0``, ``valid_rmse@0.5``)
_METRIC_COLUMN = re.compile(r"^(test|valid)_[a-z]+@")


def _numpy(obj: Any) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "tolist")  # an array or a scalar (numpy not imported)


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as None, numpy scalars/arrays as Python numbers/lists and
    tuples as lists (dict keys that are numpy scalars become Python ones); anything else as is."""
    if isinstance(obj, dict):
        return {(k.tolist() if _numpy(k) else k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, int):
        return int(obj)
    if _numpy(obj):
        return jsonable(obj.tolist())
    return obj


def to_json(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`jsonable(obj) <jsonable>` with ``allow_nan=False`` (``kw`` as for
    ``json.dumps``: ``indent``, ``sort_keys``, ``default``, ...)."""
    return json.dumps(jsonable(obj), allow_nan=False, **kw)


def write_json(path: str | Path, obj: Any, *, atomic: bool = True, indent: int | None = 1, **kw) -> Path:
    """Write ``obj`` as strict JSON (:func:`to_json`) and a final newline to ``path``; ``atomic``:
    through a temporary file and a rename (:func:`fedmol.atomic.write_atomic`), so a reader never
    sees half a file."""
    path = Path(path)
    text = to_json(obj, indent=indent, **kw) + "\n"
    if not atomic:
        path.write_text(text)
        return path
    return write_atomic(path, text)


def _nan(v: Any) -> Any:
    return float("nan") if v is None else v


def undefined_as_nan(obj: dict) -> dict:
    """A summary (or a metrics row) read from JSON with ``null`` metrics back as NaN, in place:
    the values of :data:`METRIC_MAPS`, the :data:`PARTNER_METRICS` of each ``per_partner`` entry,
    the columns like ``test_rocauc@1.0`` and the rows of ``history``. Other nulls (a forest's
    ``width``, ``privacy`` when off, the scores of a partner that was served no model) stay None.
    Returns ``obj``."""
    for key in METRIC_MAPS:
        if isinstance(obj.get(key), dict):
            obj[key] = {k: _nan(v) for k, v in obj[key].items()}
    for p in obj.get("per_partner") or []:
        if not isinstance(p, dict) or p.get("served") is False:  # no model served: no score, None stays
            continue
        for key in PARTNER_METRICS:
            if key in p:
                p[key] = _nan(p[key])
    for key in [k for k in obj if isinstance(k, str) and _METRIC_COLUMN.match(k)]:
        obj[key] = _nan(obj[key])
    for row in obj.get("history") or []:
        if isinstance(row, dict):
            undefined_as_nan(row)
    return obj


def read_summary(path: str | Path, history: str | Path | None = None) -> dict:
    """A results ``summary.json`` with undefined (``null``) metrics as NaN (:func:`undefined_as_nan`);
    ``history``: a JSON-lines file of per-round metrics rows (a pilot's ``progress.jsonl``), read
    into ``summary["history"]`` (empty when the file is absent)."""
    summary = json.loads(Path(path).read_text())
    if history is not None:
        history = Path(history)
        summary["history"] = [json.loads(x) for x in history.read_text().splitlines()] if history.is_file() else []
    return undefined_as_nan(summary)
