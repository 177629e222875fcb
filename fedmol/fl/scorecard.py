"""MELLODDY's scorecard: what a federated model is worth to each partner.

MELLODDY scored every partner's federated model against that partner's single-partner baseline,
trained and selected the same way, in three ways (Heyndrickx et al., J Chem Inf Model 2023;
melloddy/performance_evaluation): for a score ``f`` of the federated model and ``b`` of the baseline,

* **absolute**: ``s * (f - b)``, with ``s = +1`` for a higher-is-better metric (ROC-AUC, PR-AUC) and
  ``-1`` for a lower-is-better one (RMSE, MAE): positive always means the federated model is better;
* **relative**: the absolute delta over ``|b|``;
* **improve-to-perfect**: ``(f - b) / (perfect - b)``, the share of the baseline's distance to a
  perfect score that federation removed (perfect: 1 for AUCs, 0 for errors; signed so that positive
  is better for both).

Per setting it adds the **share of partners improved** (absolute delta > 0; a partner whose device
runs no served width -- ``served`` false, see ``docs/protocol.md`` -- has no federated model and
counts as not improved) and the **share of the local-to-centralized gap closed**,
``(f - local) / (central - local)`` on the mean over partners. Partners with an undefined score on
either side have undefined deltas and are left out of the means (and counted in ``n_undefined``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedmol.evaluate import HIGHER_IS_BETTER

#: the score of a perfect model, per metric (what improve-to-perfect measures the distance to)
PERFECT = {"rocauc": 1.0, "prauc": 1.0, "ap": 1.0, "acc": 1.0, "rmse": 0.0, "mae": 0.0}


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def deltas(fed: float, base: float, metric: str) -> dict[str, float]:
    """``{"abs", "rel", "itp"}`` of a federated score ``fed`` against a baseline ``base`` (NaN where
    undefined: a NaN score, a zero baseline for ``rel``, a perfect baseline for ``itp``)."""
    f, b = _num(fed), _num(base)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    d = sign * (f - b)
    room = PERFECT[metric] - b
    return {"abs": d,
            "rel": d / abs(b) if math.isfinite(d) and b != 0 else math.nan,
            "itp": (f - b) / room if math.isfinite(d) and room != 0 else math.nan}


def gap_closed(fed: float, local: float, central: float) -> float:
    """Share of the local-to-centralized gap a federated score closes: ``(fed - local) / (central -
    local)`` (1: as good as pooling the data, 0: as good as training alone; NaN without a gap)."""
    f, lo, c = _num(fed), _num(local), _num(central)
    return (f - lo) / (c - lo) if c != lo and all(map(math.isfinite, (f, lo, c))) else math.nan


def partner_scorecard(fed_partners: Iterable[Mapping], base_partners: Iterable[Mapping], metric: str,
                      where: str = "test") -> dict[str, Any]:
    """Per partner, :func:`deltas` of the federated ``per_partner`` entries against a baseline's
    (matched by ``partner``), and their summary: mean ``abs`` / ``rel`` / ``itp`` over the partners
    with defined deltas, ``improved`` (share of all partners with ``abs > 0``; an unserved partner
    counts as not improved), ``n``, ``n_undefined``, ``n_unserved``."""
    base = {int(p["partner"]): p for p in base_partners}
    rows = []
    for p in fed_partners:
        pid = int(p["partner"])
        served = p.get("served", True) is not False
        d = deltas(p.get(where) if served else math.nan, base.get(pid, {}).get(where), metric)
        rows.append(dict(partner=pid, served=served, fed=_num(p.get(where)), base=_num(base.get(pid, {}).get(where)),
                         **d))
    defined = [r for r in rows if math.isfinite(r["abs"])]
    out: dict[str, Any] = {k: (sum(r[k] for r in defined if math.isfinite(r[k])) /
                               max(1, sum(math.isfinite(r[k]) for r in defined)))
                           if any(math.isfinite(r[k]) for r in defined) else math.nan
                           for k in ("abs", "rel", "itp")}
    n_unserved = sum(1 for r in rows if not r["served"])
    scored = len(defined) + n_unserved  # an unserved partner is a partner federation did not improve
    out.update(improved=sum(r["abs"] > 0 for r in defined) / scored if scored else math.nan, n=len(rows),
               n_undefined=len(rows) - len(defined) - n_unserved, n_unserved=n_unserved, per_partner=rows)
    return out


def task_scorecard(fed_partners: Iterable[Mapping], base_partners: Iterable[Mapping], metric: str) -> dict[str, Any]:
    """MELLODDY's per-task view: :func:`deltas` per partner and task of the ``test_by_task`` scores of
    the federated ``per_partner`` entries against a baseline's (matched by ``partner``; a baseline
    chosen per partner, e.g. its best local family, is used for every task of that partner). Summary
    like :func:`partner_scorecard` over partner x task pairs: mean ``abs`` / ``itp``, ``improved``
    (share of the pairs with ``abs > 0``; an unserved partner's tasks count as not improved), ``n``
    (pairs with a score on both sides or unserved), ``per_task`` rows. ``n`` is 0 without task scores."""
    base = {int(p["partner"]): p.get("test_by_task") for p in base_partners}
    rows = []
    for p in fed_partners:
        pid, served = int(p["partner"]), p.get("served", True) is not False
        b = base.get(pid)
        if b is None or (served and p.get("test_by_task") is None):
            continue
        f = p.get("test_by_task") if served else [math.nan] * len(b)
        for t, (ft, bt) in enumerate(zip(f, b)):
            d = deltas(ft, bt, metric)
            rows.append(dict(partner=pid, task=t, served=served, fed=_num(ft), base=_num(bt), **d))
    counted = [r for r in rows if math.isfinite(r["abs"]) or (not r["served"] and math.isfinite(r["base"]))]
    mean = {k: (sum(r[k] for r in counted if math.isfinite(r[k])) / n if (n := sum(math.isfinite(r[k])
            for r in counted)) else math.nan) for k in ("abs", "itp")}
    improved = sum(r["abs"] > 0 for r in counted) / len(counted) if counted else math.nan
    return dict(**mean, improved=improved, n=len(counted), per_task=rows)
