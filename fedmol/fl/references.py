"""The two references that frame every federated result, on the federation's own split and partners.

* **local-only** -- each partner trains alone on its own training molecules (the floor: what a
  partner gets without federating). GNN: the run's backbone (``cfg.model``, ``hidden``, ``layers``,
  ``dropout``) built standalone at the partner's device cap ``max_width``; early stopping on the
  partner's *own* validation set; scored on the global test set and on its own validation set.
* **centralized** -- every partner's training molecules pooled (the ceiling: what the federation
  would reach if the data could be shared). GNN at width 1; early stopping on the pooled
  validation sets; scored on the global test set (and, per partner, on each partner's validation
  set, so its gain over local-only can be computed like a federated run's).

Each for two models: the GNN, and the model many pharma data scientists would use instead, a
random forest on Morgan fingerprints (ECFP4: radius 2, 2048 bits, RDKit ``rdFingerprintGenerator``;
classification: ``RandomForestClassifier(n_estimators=200, class_weight="balanced")``, one forest
per task on its labelled rows, the score is ``predict_proba`` of class 1; regression:
``RandomForestRegressor(200)``), seeded from the run seed (and the partner id).

Training protocol of the GNN references (the federated one, so that a partner's alone-vs-federated
comparison differs only in the data): the same start weights as every algorithm of the run seed
(:func:`fedmol.fl.algorithm.initial_model`; a local-only partner gets the slice of its width);
``epochs = max(min_epochs, rounds * local_epochs)`` in rounds of ``local_epochs`` epochs with Adam
rebuilt every round (as a partner rebuilds it); the validation metric is computed, and the model
may be kept, only after the rounds a federated run evaluates (every ``eval_every``-th and the
last), keeping the best (optionally stopping after ``patience`` epochs without improvement; a
partner whose validation metric is undefined, e.g. one class only, keeps its last evaluated
round). When the federation caps local work with ``max_local_steps``, a reference "epoch" is capped the same way so that it costs
what one round costs: ``max_local_steps`` mini-batches for a local-only partner and
``partners * max_local_steps`` for the pooled centralized model (the total number of optimizer
steps the federation takes per round). Optimizer and batch: Adam with the run's ``lr``,
``weight_decay``, ``batch_size``, ``clip`` (the same shared hyperparameters every algorithm's
local training uses).

Result format, like a federated run's ``summary.json``: ``dataset``, ``metric``, ``reference``
("local-only" | "centralized"), ``model`` ("gnn" | "rf-ecfp4"), ``test`` (centralized
``{"1.0": v}``; local-only ``{"mean": mean over partners, "<width>": mean over the partners whose
local model has that width}``), ``valid`` (same keys), ``per_partner`` [``{partner, width,
n_train, n_valid, test, valid}``] (``width`` is None for the forest), ``seconds``, ``seed``,
``config``.

:func:`federated_gain` compares a federated summary (or a centralized one) with a local-only one,
partner by partner (MELLODDY-style).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmol.errors import FedmolError
from fedmol.evaluate import HIGHER_IS_BETTER, Evaluator
from fedmol.fl.algorithm import Algorithm, initial_model
from fedmol.fl.harness import Federation, RunConfig, backbone_config, build_federation
from fedmol.jsonio import write_json
from fedmol.training import fit, score, width_key

REFERENCES = ("local-only", "centralized")
REFERENCE_MODELS = ("gnn", "rf-ecfp4")
FP_RADIUS = 2
FP_BITS = 2048
RF_TREES = 200

#: how a GNN reference trains and selects (recorded in its config.json), like a federated partner
PROTOCOL = ("rounds of local_epochs epochs, Adam rebuilt every round; best pooled/own validation score among "
            "the rounds a federated run evaluates (every eval_every-th and the last)")
#: the hyperparameters of the shared local training loop that the GNN references take from the run
TRAIN_KEYS = ("local_epochs", "batch_size", "lr", "weight_decay", "max_local_steps", "clip")


# ---------------------------------------------------------------------------------------------- data
def smiles_of(ds) -> list[str]:
    """SMILES of a (subset) dataset's molecules, in order."""
    return list(ds.smiles)


def labels_of(ds) -> np.ndarray:
    """Labels ``(n, num_tasks)`` of a (subset) dataset, NaN where missing."""
    return np.asarray(ds.labels, dtype=np.float64).reshape(len(ds), -1)


def rows_of(ds) -> np.ndarray:
    """Source row numbers of a (subset) dataset's molecules."""
    return np.asarray(ds.rows)


def ecfp4(smiles: list[str], radius: int = FP_RADIUS, n_bits: int = FP_BITS) -> np.ndarray:
    """Morgan fingerprints as a ``(n, n_bits)`` uint8 0/1 matrix (a SMILES RDKit cannot read: zeros)."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdFingerprintGenerator

    blocker = rdBase.BlockLogs()  # noqa: F841 - scoped silence, restored when the function returns
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


_FP_CACHE: dict[str, np.ndarray] = {}


def fingerprints(ds) -> np.ndarray:
    """ECFP4 of a (subset) dataset's molecules; each SMILES is fingerprinted once per process."""
    smiles = smiles_of(ds)
    todo = sorted({s for s in smiles if s not in _FP_CACHE})
    if todo:
        _FP_CACHE.update(zip(todo, ecfp4(todo)))
    if not smiles:
        return np.zeros((0, FP_BITS), dtype=np.uint8)
    return np.stack([_FP_CACHE[s] for s in smiles])


# -------------------------------------------------------------------------------------------- forest
class Forest:
    """One scikit-learn random forest per task, each fitted on the rows labelled for that task."""

    def __init__(self, task_type: str, seed: int = 0, n_estimators: int = RF_TREES, n_jobs: int | None = -1):
        self.task_type, self.seed, self.n_estimators, self.n_jobs = task_type, seed, n_estimators, n_jobs
        self.models: list[Any] = []

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "Forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        self.models = []
        for t in range(Y.shape[1]):
            m = ~np.isnan(Y[:, t])
            y = Y[m, t]
            if self.task_type == "classification":
                if y.size == 0 or y.min() == y.max():  # nothing to learn: predict the (prior) class rate
                    self.models.append(float(y.mean()) if y.size else 0.5)
                    continue
                rf = RandomForestClassifier(n_estimators=self.n_estimators, class_weight="balanced",
                                            random_state=self.seed, n_jobs=self.n_jobs)
            else:
                if y.size == 0:
                    self.models.append(0.0)
                    continue
                rf = RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.seed,
                                           n_jobs=self.n_jobs)
            self.models.append(rf.fit(X[m], y.astype(int) if self.task_type == "classification" else y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), len(self.models)))
        if len(X) == 0:
            return out
        for t, rf in enumerate(self.models):
            if isinstance(rf, float):
                out[:, t] = rf
            elif self.task_type == "classification":
                out[:, t] = rf.predict_proba(X)[:, list(rf.classes_).index(1)]
            else:
                out[:, t] = rf.predict(X)
        return out


def fit_forest(train, seed: int, n_jobs: int | None = -1) -> Forest:
    """A :class:`Forest` on ECFP4 of ``train`` (a dataset or subset)."""
    return Forest(train.task_type, seed, n_jobs=n_jobs).fit(fingerprints(train), labels_of(train))


def score_forest(forest: Forest, ds, evaluator: Evaluator) -> float:
    if len(ds) == 0:
        return float("nan")
    return evaluator.eval({"y_true": labels_of(ds), "y_pred": forest.predict(fingerprints(ds))})[evaluator.eval_metric]


# ----------------------------------------------------------------------------------------------- GNN
def train_settings(cfg: RunConfig) -> dict:
    """The shared local-training hyperparameters (``Algorithm.base_defaults`` updated by the run's;
    only :data:`TRAIN_KEYS`: a reference trains in one place, so e.g. differential privacy's
    ``dp_*`` settings do not apply to it)."""
    hp = {k: v for k, v in Algorithm.base_defaults.items() if k in TRAIN_KEYS}
    hp.update({k: v for k, v in (cfg.hparams or {}).items() if k in TRAIN_KEYS})
    return hp


def reference_patience(cfg: RunConfig, patience: int | None = None) -> int | None:
    """Early stopping of a GNN reference, in epochs: ``patience`` when given, else the run's own
    (``cfg.patience`` rounds of ``local_epochs`` epochs: the federated run's rule), else none."""
    if patience is not None or cfg.patience is None:
        return patience
    return int(cfg.patience) * int(train_settings(cfg)["local_epochs"])


def budget(cfg: RunConfig, min_epochs: int = 5) -> int:
    """Epochs of a GNN reference: ``max(min_epochs, rounds * local_epochs)``."""
    return max(int(min_epochs), int(cfg.rounds) * int(train_settings(cfg)["local_epochs"]))


def fit_gnn(train, valid, model_config: dict, evaluator: Evaluator, *, seed: int, epochs: int,
            hp: dict, max_steps: int | None = None, patience: int | None = None, init_seed: int | None = None,
            eval_every: int = 1) -> tuple[torch.nn.Module, dict]:
    """The run's starting weights (:func:`fedmol.fl.algorithm.initial_model` of ``init_seed``, the
    run seed: the same start as every federated algorithm) trained by :func:`fedmol.training.fit`
    under the federated protocol: rounds of ``local_epochs`` epochs, Adam rebuilt every round, the
    best validation score among the rounds a federated run evaluates (every ``eval_every``-th and
    the last); ``seed`` orders the data. Returns ``(model at its best round, {"valid", "best_epoch",
    "epochs_run"})``."""
    net = initial_model(model_config, seed if init_seed is None else init_seed)
    res = fit(net, train, valid, evaluator, seed=seed, epochs=epochs, lr=hp["lr"], weight_decay=hp["weight_decay"],
              batch_size=hp["batch_size"], clip=hp["clip"], max_steps=max_steps, patience=patience,
              round_epochs=int(hp["local_epochs"]), eval_every=eval_every)
    return net, {k: res[k] for k in ("valid", "best_epoch", "epochs_run")}


def _model_config(cfg: RunConfig, ds, width: float) -> dict:
    return dict(backbone_config(cfg.model, ds, cfg.hidden, cfg.layers, cfg.dropout), width=float(width))


def _partner_seed(seed: int, pid: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (pid + 1)) % (2**31 - 1)


# ------------------------------------------------------------------------------------------ references
def local_only(cfg: RunConfig, model: str = "gnn", out_dir: str | Path | None = None, *, fed: Federation | None = None,
               progress: bool = True, min_epochs: int = 5, patience: int | None = None,
               n_jobs: int | None = -1) -> dict:
    """Each partner alone on its own training set; scored on the global test and its own valid set."""
    return run_reference(cfg, "local-only", model, out_dir, fed=fed, progress=progress, min_epochs=min_epochs,
                         patience=patience, n_jobs=n_jobs)


def centralized(cfg: RunConfig, model: str = "gnn", out_dir: str | Path | None = None, *,
                fed: Federation | None = None, progress: bool = True, min_epochs: int = 5,
                patience: int | None = None, n_jobs: int | None = -1) -> dict:
    """All partners' training sets pooled, width 1; scored on the global test set."""
    return run_reference(cfg, "centralized", model, out_dir, fed=fed, progress=progress, min_epochs=min_epochs,
                         patience=patience, n_jobs=n_jobs)


def check_reference(reference: str, model: str) -> None:
    if reference not in REFERENCES:
        raise FedmolError(f"unknown reference {reference!r}; known: {', '.join(REFERENCES)}")
    if model not in REFERENCE_MODELS:
        raise FedmolError(f"unknown reference model {model!r}; known: {', '.join(REFERENCE_MODELS)}")


def reference_config(cfg: RunConfig, reference: str, model: str, min_epochs: int = 5,
                     patience: int | None = None) -> dict:
    """What a reference result depends on (written as ``config.json``; the benchmark's resume check)."""
    from dataclasses import asdict

    # what a reference does not depend on: the algorithm, sampling, evaluation schedule and model selection
    # of a federated run, links, data folder
    skip = {"algorithm", "data_dir", "select", "clients_per_round", "faulty_links", "lossy_links"}
    run = {k: v for k, v in asdict(cfg).items() if k not in skip}
    run["hparams"] = {k: v for k, v in (cfg.hparams or {}).items() if k in TRAIN_KEYS}
    conf = dict(reference=reference, model=model, run=run, split=split_versions())
    if model == "gnn":
        conf["train"] = dict(train_settings(cfg), epochs=budget(cfg, min_epochs),
                             patience=reference_patience(cfg, patience),
                             optimizer="adam", protocol=PROTOCOL, init="the run seed's common start weights")
    else:
        conf["forest"] = dict(fingerprint=f"morgan r={FP_RADIUS} {FP_BITS} bits (ECFP4)", trees=RF_TREES,
                              class_weight="balanced", one_forest_per_task=True)
    return json.loads(json.dumps(conf))


def split_versions() -> dict:
    """The versions a split made on the fly depends on (besides dataset, K, alpha, seed)."""
    from fedmol.data.featurize import FEATURIZER_VERSION
    from fedmol.data.splits import METHOD

    return dict(method=METHOD, featurizer_version=FEATURIZER_VERSION)


def run_reference(cfg: RunConfig, reference: str, model: str = "gnn", out_dir: str | Path | None = None, *,
                  fed: Federation | None = None, progress: bool = True, min_epochs: int = 5,
                  patience: int | None = None, n_jobs: int | None = -1) -> dict:
    """One reference on the federation of ``cfg`` (``fed``: an already built one, to share it).

    Writes ``config.json`` then ``summary.json`` (last) into ``out_dir`` when given.
    """
    check_reference(reference, model)
    t0 = time.perf_counter()
    fed = fed if fed is not None else build_federation(cfg, progress)
    ds = fed.dataset
    evaluator = Evaluator(ds.task_type, ds.num_tasks)
    metric = evaluator.eval_metric
    hp = train_settings(cfg)
    epochs = budget(cfg, min_epochs)
    patience = reference_patience(cfg, patience)
    cap = hp["max_local_steps"]
    per_partner = []
    if reference == "local-only":
        for info, data in zip(fed.infos, fed.local):
            seed = _partner_seed(cfg.seed, info.pid)
            if model == "gnn":
                width = float(info.device.max_width)
                net, _ = fit_gnn(data.train, data.valid, _model_config(cfg, ds, width), evaluator, seed=seed,
                                 epochs=epochs, hp=hp, max_steps=cap, patience=patience, init_seed=int(cfg.seed),
                                 eval_every=int(cfg.eval_every))
                test = score(net, fed.test, evaluator)[metric]
                valid = score(net, data.valid, evaluator)[metric] if len(data.valid) else float("nan")
            else:
                width = None
                forest = fit_forest(data.train, seed, n_jobs)
                test, valid = score_forest(forest, fed.test, evaluator), score_forest(forest, data.valid, evaluator)
            per_partner.append(dict(partner=info.pid, width=width, n_train=len(data.train), n_valid=len(data.valid),
                                    test=test, valid=valid))
        test = {"mean": _nanmean([p["test"] for p in per_partner])}
        valid = {"mean": _nanmean([p["valid"] for p in per_partner])}
        if model == "gnn":
            for w in sorted({p["width"] for p in per_partner}, reverse=True):
                test[width_key(w)] = _nanmean([p["test"] for p in per_partner if p["width"] == w])
                valid[width_key(w)] = _nanmean([p["valid"] for p in per_partner if p["width"] == w])
    else:
        train = pooled_train(fed)
        key = width_key(1.0)
        if model == "gnn":
            max_steps = None if cap is None else int(cap) * len(fed.infos)
            net, _ = fit_gnn(train, fed.valid, _model_config(cfg, ds, 1.0), evaluator, seed=int(cfg.seed),
                             epochs=epochs, hp=hp, max_steps=max_steps, patience=patience,
                             eval_every=int(cfg.eval_every))

            def evaluate(d):
                return score(net, d, evaluator)[metric] if len(d) else float("nan")
        else:
            forest = fit_forest(train, int(cfg.seed), n_jobs)

            def evaluate(d):
                return score_forest(forest, d, evaluator)
        t = evaluate(fed.test)
        test, valid = {key: t}, {key: evaluate(fed.valid)}
        per_partner = [dict(partner=info.pid, width=1.0 if model == "gnn" else None, n_train=len(data.train),
                            n_valid=len(data.valid), test=t, valid=evaluate(data.valid))
                       for info, data in zip(fed.infos, fed.local)]
    summary = dict(dataset=ds.name, metric=metric, reference=reference, model=model, test=test, valid=valid,
                   per_partner=per_partner, seed=cfg.seed, seconds=round(time.perf_counter() - t0, 2),
                   config=reference_config(cfg, reference, model, min_epochs, patience))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", summary["config"])
        write_json(out / "summary.json", summary)
    return summary


def pooled_train(fed: Federation):
    """Every partner's training molecules, as one dataset (source rows in ascending order)."""
    rows = sorted(int(r) for p in fed.split["partners"] for r in p["train"])
    return fed.dataset.select_rows(rows)


def _nanmean(values) -> float:
    a = np.asarray([v if v is not None else np.nan for v in values], dtype=float)
    if a.size == 0 or np.isnan(a).all():
        return float("nan")
    return float(np.nanmean(a))


# ------------------------------------------------------------------------------------- federated gain
def federated_gain(fed_summary: dict, local_summary: dict) -> dict:
    """Per-partner gain of a federated model over that partner's local-only model (MELLODDY-style).

    For partner k, on the global test set (federated: the global model at k's served width,
    ``per_partner[k]["test"]``) and on k's own validation set:

    * ``gain = s * (fed - local)`` with ``s = +1`` when the metric is higher-is-better (ROC-AUC,
      PR-AUC) and ``s = -1`` when lower is better (RMSE, MAE): a **positive gain always means the
      federated model is better** for that partner;
    * ``rel_gain = gain / |local|`` (NaN when ``local`` is 0 or NaN).

    A partner whose metric is NaN on either side (e.g. a single-class validation set) has NaN
    gains; it is left out of the means and of the shares. ``share_test`` / ``share_valid``: the
    fraction of the other partners with ``gain > 0``.

    Works for any summary with ``metric`` and ``per_partner`` (a centralized reference too).
    """
    metric = fed_summary["metric"]
    if local_summary.get("metric") != metric:
        raise FedmolError(f"cannot compare {metric} with {local_summary.get('metric')}")
    if metric not in HIGHER_IS_BETTER:
        raise FedmolError(f"unknown metric {metric!r}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    local = {int(p["partner"]): p for p in local_summary["per_partner"]}
    fed = {int(p["partner"]): p for p in fed_summary["per_partner"]}
    if set(local) != set(fed):
        raise FedmolError(f"partners differ: federated {sorted(fed)} vs local-only {sorted(local)}")
    rows = []
    for pid in sorted(fed):
        f, loc = fed[pid], local[pid]
        row: dict[str, Any] = dict(partner=pid, width=f.get("width"))
        for where in ("test", "valid"):
            a, b = _num(f.get(where)), _num(loc.get(where))
            g = sign * (a - b)
            row.update({f"fed_{where}": a, f"local_{where}": b, f"gain_{where}": g,
                        f"rel_gain_{where}": g / abs(b) if math.isfinite(g) and b != 0 else float("nan")})
        rows.append(row)
    out: dict[str, Any] = dict(metric=metric, higher_is_better=HIGHER_IS_BETTER[metric], n_partners=len(rows),
                               per_partner=rows)
    for where in ("test", "valid"):
        g = np.array([r[f"gain_{where}"] for r in rows], dtype=float)
        ok = np.isfinite(g)
        out[f"gain_{where}"] = float(g[ok].mean()) if ok.any() else float("nan")
        rel = np.array([r[f"rel_gain_{where}"] for r in rows], dtype=float)
        out[f"rel_gain_{where}"] = float(rel[np.isfinite(rel)].mean()) if np.isfinite(rel).any() else float("nan")
        out[f"share_{where}"] = float((g[ok] > 0).mean()) if ok.any() else float("nan")
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")

