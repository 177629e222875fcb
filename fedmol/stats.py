"""Whether a difference between two methods is more than seed noise: a paired test over seeds.

Two methods run with the same seeds share the split, the start weights and the partners' devices,
so their per-seed results are paired. A difference is called significant when a paired t-test
over the seeds gives a two-sided p-value under :data:`SIGNIFICANCE`; otherwise the two are a tie.
With 3 seeds the t-test (2 degrees of freedom) is the only paired test that can reach p < 0.05
(a sign test or Wilcoxon's signed-rank test of 3 pairs cannot go below p = 0.25).
"""

from __future__ import annotations

import numpy as np

#: two-sided p-value under which a paired per-seed difference is called significant (else: a tie)
SIGNIFICANCE = 0.05


def paired_pvalue(a, b) -> float:
    """Two-sided p-value of a paired t-test of per-seed values ``a`` vs ``b`` (pairs with a NaN
    dropped); NaN with fewer than 2 pairs; 1.0 when every pair is equal, 0.0 when every pair
    differs by the same non-zero amount (no spread)."""
    from scipy.stats import ttest_rel

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    d = x[ok] - y[ok]
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # no spread: the t statistic is 0/0 or +-inf
        return 1.0 if abs(d[0]) <= 1e-12 else 0.0
    return float(ttest_rel(x[ok], y[ok]).pvalue)


def tie_labels(seed_values: list[dict], higher_is_better: bool = True) -> list[str]:
    """For methods given as ``{seed: value}`` dicts: ``"best"`` for the best mean, ``"tie"`` for a
    method not different from it (:func:`paired_pvalue` >= :data:`SIGNIFICANCE`), ``"worse"`` for
    one that is, ``""`` where no test is possible (fewer than 2 shared seeds)."""
    means = [np.nanmean(list(v.values())) if v and np.isfinite(list(v.values())).any() else np.nan
             for v in seed_values]
    if not seed_values or np.isnan(means).all():
        return [""] * len(seed_values)
    best = int(np.nanargmax(means) if higher_is_better else np.nanargmin(means))
    out = []
    for i, v in enumerate(seed_values):
        if i == best:
            out.append("best")
            continue
        seeds = sorted(set(v) & set(seed_values[best]))
        p = paired_pvalue([seed_values[best][s] for s in seeds], [v[s] for s in seeds])
        out.append("" if not np.isfinite(p) else "tie" if p >= SIGNIFICANCE else "worse")
    return out
