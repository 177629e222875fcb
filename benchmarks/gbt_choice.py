"""Which gradient-boosted trees library for the ``gbt-ecfp4`` reference: XGBoost, LightGBM or CatBoost, measured.

On fedmol's canonical scaffold splits (the quick suite's ``data_splits/b3db_classification/K4-a0.1-s0.json``,
and ``K4-a1-s0`` of BBBP and BACE), each candidate is fitted on ECFP4 (radius 2, 2048 bits, the
forest's fingerprints: :func:`fedmol.fl.references.fingerprints`) per partner on its own training
molecules (**local**) and on the pooled training molecules (**centralized**), and scored by
ROC-AUC on the validation molecules (the partner's own; the pooled ones for centralized) and on the
global test set (held-out scaffolds), with the wall seconds of fit + predict on one thread.

Every candidate gets the same fixed defaults, chosen before the measurement and never tuned on the
test set: learning rate 0.05, trees of depth <= 6 (LightGBM: 31 leaves, its default, with
``max_depth`` 6), row subsampling 0.8, feature subsampling 0.5, the library's default L2 and
minimum leaf size, seeded, one thread, deterministic settings. Two stopping rules per library:

* ``fixed``: 300 trees, no validation set used;
* ``early``: at most 1000 trees, **early stopping on the validation set** (the partner's own
  molecules for local models, the pooled validation molecules for centralized ones) by log loss,
  patience 50 trees; the model keeps its best iteration. A partner whose validation set is empty
  falls back to ``fixed``.

The scikit-learn random forest of the ``rf-ecfp4`` reference (200 trees, balanced classes) is
measured beside them for context. Rule for the choice (fixed before the measurement): the best mean
*validation* ROC-AUC of the ``fixed`` fits (local and centralized, the three splits); a library
within ``TIE`` of it that is faster (total seconds) wins; then ``early`` for that library only if it
beats its ``fixed`` fits on validation by more than ``TIE`` (an early-stopped model's validation
score is optimistic: the validation set chose its length). The size of the install is noted.

Usage: ``python benchmarks/gbt_choice.py [--quick]`` (``--quick``: the B3DB split only); writes
``benchmarks/results/gbt_choice.json``; measured 2026-12-02: 105 s on one thread of a shared 2-core
machine (B3DB already featurized).

Result: the three libraries' mean validation ROC-AUC of the fixed-length fits tie (XGBoost 0.722,
LightGBM 0.723, CatBoost 0.722; the forest 0.752); LightGBM fits fastest (4.9 s for every fit
against 12.5 s and 23.6 s) and installs 12 MB (XGBoost 728 MB with its NCCL wheel, CatBoost
330 MB): **LightGBM, fixed 300 trees** (its early-stopped fits: 0.725, within the tie). Needs ``pip install xgboost lightgbm catboost`` (only the
chosen one is a fedmol dependency).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import warnings

import numpy as np

warnings.filterwarnings("ignore", message=".*eval_set.*is deprecated")  # lightgbm 4.7's sklearn API
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FEDMOL_DATA_DIR", str(ROOT.parent / "shared" / "datasets" / "moleculenet"))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from fedmol.evaluate import Evaluator  # noqa: E402
from fedmol.config import RunConfig
from fedmol.fl.harness import build_federation  # noqa: E402
from fedmol.fl.references import Forest, fingerprints, labels_of, pooled_train  # noqa: E402
from fedmol.jsonio import write_json  # noqa: E402

SPLITS = ("data_splits/b3db_classification/K4-a0.1-s0.json", "data_splits/bbbp/K4-a1-s0.json",
          "data_splits/bace/K4-a1-s0.json")
LIBRARIES = ("xgboost", "lightgbm", "catboost")
MODES = ("fixed", "early")
LR, DEPTH, SUBSAMPLE, COLSAMPLE = 0.05, 6, 0.8, 0.5
FIXED_TREES, MAX_TREES, PATIENCE = 300, 1000, 50
TIE = 0.005
RULE = (f"library: the best mean validation ROC-AUC of the fixed-length fits (local and centralized, every split); a "
        f"library within {TIE} of it that is faster (total seconds) wins; early stopping only if it beats that library's "
        f"fixed fits on validation by more than {TIE} (its validation score is optimistic: validation chose its length)")
OUT = ROOT / "benchmarks" / "results" / "gbt_choice.json"


def fit_predict(lib: str, mode: str, X, y, Xv, yv, Xs: list, seed: int) -> tuple[list, int]:
    """Fit one binary classifier; ``(predicted P(class 1) on each of Xs, trees used)``."""
    early = mode == "early" and len(yv) > 0
    n = MAX_TREES if early else FIXED_TREES
    if lib == "xgboost":
        import xgboost as xgb

        m = xgb.XGBClassifier(n_estimators=n, learning_rate=LR, max_depth=DEPTH, subsample=SUBSAMPLE,
                              colsample_bytree=COLSAMPLE, tree_method="hist", n_jobs=1, random_state=seed,
                              eval_metric="logloss", early_stopping_rounds=PATIENCE if early else None)
        m.fit(X, y, eval_set=[(Xv, yv)] if early else None, verbose=False)
        trees = m.best_iteration + 1 if early else n
        return [m.predict_proba(x, iteration_range=(0, trees))[:, 1] for x in Xs], trees
    if lib == "lightgbm":
        import lightgbm as lgb

        m = lgb.LGBMClassifier(n_estimators=n, learning_rate=LR, max_depth=DEPTH, num_leaves=31, subsample=SUBSAMPLE,
                               subsample_freq=1, colsample_bytree=COLSAMPLE, n_jobs=1, random_state=seed,
                               deterministic=True, force_row_wise=True, verbose=-1)
        cb = [lgb.early_stopping(PATIENCE, verbose=False)] if early else None
        m.fit(X.astype(np.float32), y, eval_set=[(Xv.astype(np.float32), yv)] if early else None,
              eval_metric="binary_logloss", callbacks=cb)
        trees = m.best_iteration_ if early and m.best_iteration_ else n
        return [m.predict_proba(x.astype(np.float32), num_iteration=trees)[:, 1] for x in Xs], trees
    if lib == "catboost":
        from catboost import CatBoostClassifier

        m = CatBoostClassifier(iterations=n, learning_rate=LR, depth=DEPTH, subsample=SUBSAMPLE, bootstrap_type="Bernoulli",
                               rsm=COLSAMPLE, thread_count=1, random_seed=seed, verbose=0, allow_writing_files=False,
                               loss_function="Logloss", od_type="Iter" if early else None,
                               od_wait=PATIENCE if early else None, use_best_model=early)
        m.fit(X, y, eval_set=(Xv, yv) if early else None)
        return [m.predict_proba(x)[:, 1] for x in Xs], int(m.tree_count_)
    if lib == "rf":
        f = Forest("classification", seed, n_jobs=1).fit(X, y.reshape(-1, 1).astype(float))
        return [f.predict(x)[:, 0] for x in Xs], f.n_estimators
    raise ValueError(lib)


def auc(ev: Evaluator, y, p) -> float:
    if len(y) == 0:
        return float("nan")
    return ev.eval({"y_true": np.asarray(y, float).reshape(-1, 1), "y_pred": np.asarray(p).reshape(-1, 1)})["rocauc"]


def xy(ds):
    return fingerprints(ds), labels_of(ds)[:, 0]


def measure(split: str, candidates: list[tuple[str, str]]) -> list[dict]:
    fed = build_federation(RunConfig(split=str(ROOT / split), devices="homogeneous"), progress=False)
    ev = Evaluator(fed.dataset.task_type, fed.dataset.num_tasks)
    Xt, yt = xy(fed.test)
    fits = [(f"partner {d.pid}", d.train, d.valid, 1000 + d.pid) for d in fed.local]
    fits.append(("centralized", pooled_train(fed), fed.valid, 0))
    rows = []
    for lib, mode in candidates:
        for who, train, valid, seed in fits:
            X, y = xy(train)
            Xv, yv = xy(valid)
            t0 = time.perf_counter()
            (pv, pt), trees = fit_predict(lib, mode, X, y.astype(int), Xv, yv.astype(int), [Xv, Xt], seed)
            sec = time.perf_counter() - t0
            rows.append(dict(split=split, library=lib, mode=mode, fit=who, n_train=len(y), n_valid=len(yv),
                             trees=trees, valid=auc(ev, yv, pv), test=auc(ev, yt, pt), seconds=round(sec, 2)))
            r = rows[-1]
            print(f"{Path(split).parent.name:20s} {lib:8s} {mode:5s} {who:11s} n={r['n_train']:5d} trees={trees:4d} "
                  f"valid {r['valid']:.3f} test {r['test']:.3f} {sec:6.1f} s", flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["library"], r["mode"]) for r in rows):
        sel = [r for r in rows if (r["library"], r["mode"]) == key]
        loc = [r for r in sel if r["fit"] != "centralized"]
        cen = [r for r in sel if r["fit"] == "centralized"]

        def m(rs, k):
            v = [r[k] for r in rs if np.isfinite(r[k])]
            return round(statistics.fmean(v), 4) if v else None

        out.append(dict(library=key[0], mode=key[1], valid=m(sel, "valid"), test=m(sel, "test"),
                        local_valid=m(loc, "valid"), local_test=m(loc, "test"), central_valid=m(cen, "valid"),
                        central_test=m(cen, "test"), seconds=round(sum(r["seconds"] for r in sel), 1)))
    return out


def choose(summary: list[dict]) -> dict:
    """The rule (:data:`RULE`): among the ``fixed`` fits the library; then ``early`` for that library
    only if it beats ``fixed`` on validation by more than ``TIE`` (its validation score is optimistic:
    the validation set chose its length)."""
    fixed = [s for s in summary if s["library"] != "rf" and s["mode"] == "fixed"]
    best = max(fixed, key=lambda s: s["valid"])
    near = [s for s in fixed if s["valid"] >= best["valid"] - TIE]
    pick = min(near, key=lambda s: s["seconds"])
    early = next(s for s in summary if s["library"] == pick["library"] and s["mode"] == "early")
    mode = "early" if early["valid"] > pick["valid"] + TIE else "fixed"
    return dict(library=pick["library"], mode=mode, best_valid=best["library"])


def install_mb(dist: str) -> float:
    """Megabytes installed by ``dist`` and the requirements it pulls that fedmol does not already need."""
    import re
    from importlib import metadata

    have = {"numpy", "scipy", "pandas", "scikit-learn", "matplotlib", "typing-extensions"}
    todo, seen, total = [dist], set(), 0
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen or key in have:
            continue
        seen.add(key)
        try:
            d = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total += sum(f.size or 0 for f in d.files or [])
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in d.requires or [] if "extra ==" not in r]
    return round(total / 1e6, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the B3DB split only")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    import catboost
    import lightgbm
    import sklearn
    import xgboost

    versions = dict(xgboost=xgboost.__version__, lightgbm=lightgbm.__version__, catboost=catboost.__version__,
                    sklearn=sklearn.__version__)
    installed = {lib: install_mb(lib) for lib in LIBRARIES}
    print("installed MB (with the requirements fedmol does not already need):", installed)
    candidates = [(lib, mode) for lib in LIBRARIES for mode in MODES] + [("rf", "fixed")]
    t0 = time.perf_counter()
    rows = [r for split in (SPLITS[:1] if args.quick else SPLITS) for r in measure(split, candidates)]
    summary = summarize(rows)
    print(f"\n{'library':9s} {'mode':6s} {'valid':>6s} {'test':>6s} {'loc val':>7s} {'loc test':>8s} "
          f"{'cen val':>7s} {'cen test':>8s} {'seconds':>8s}")
    for s in summary:
        print(f"{s['library']:9s} {s['mode']:6s} {s['valid']:6.3f} {s['test']:6.3f} {s['local_valid']:7.3f} "
              f"{s['local_test']:8.3f} {s['central_valid']:7.3f} {s['central_test']:8.3f} {s['seconds']:8.1f}")
    choice = choose(summary)
    print(f"\nchoice ({RULE}): {choice['library']} ({choice['mode']})")
    write_json(args.out, dict(rule=RULE, splits=list(SPLITS[:1] if args.quick else SPLITS),
                              settings=dict(lr=LR, depth=DEPTH, subsample=SUBSAMPLE, colsample=COLSAMPLE,
                                            fixed_trees=FIXED_TREES, max_trees=MAX_TREES, patience=PATIENCE,
                                            threads=1, fingerprint="ECFP4 2048 bits"),
                              versions=versions, install_mb=installed, machine=dict(python=platform.python_version(), cpu=platform.machine(),
                                                              cores=os.cpu_count()),
                              seconds=round(time.perf_counter() - t0, 1), choice=choice, summary=summary, rows=rows))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
