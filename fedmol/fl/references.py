"""The references that frame every federated result, on the federation's own split and partners
(the full protocol, result format and the choice of LightGBM: ``docs/references.md``):

* **local-only** -- each partner trains alone (the floor); :func:`local_model` is the one code path
  of local-only and ensemble;
* **centralized** -- every partner's training molecules pooled (the ceiling);
* **ensemble** -- the one-shot federation: the partners' local models averaged, weighted by
  training-set size (trees average probabilities, the GNN logits, as FedDF's AVGLOGITS teacher).

Each for the run's backbone and two fingerprint models on ECFP4 (radius 2, 2048 bits):
``rf-ecfp4`` (scikit-learn random forest, 200 trees) and ``gbt-ecfp4`` (LightGBM, fixed defaults,
no early stopping, deterministic). The neural references train exactly like the federation (same
start weights, epochs = rounds x local epochs, validation only at evaluated rounds, the same
optimizer and local-step cap), so a partner's alone-vs-federated comparison differs only in the
data. :func:`federated_gain` compares partner by partner (MELLODDY-style); :func:`best_local` picks
each partner's best local family on its own validation molecules (never test).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmol.data.fingerprints import ECFP4, ecfp4_of
from fedmol.errors import FedmolError
from fedmol.evaluate import HIGHER_IS_BETTER, Evaluator
from fedmol.fl.algorithm import Algorithm, centre_head, initial_model
from fedmol.config import RunConfig
from fedmol.fl.harness import Federation, build_federation, secondary_scores
from fedmol.fl.setup import backbone_config
from fedmol.jsonio import write_json
from fedmol.training import fit, predict, score, width_key

REFERENCES = ("local-only", "centralized", "ensemble")
REFERENCE_MODELS = ("gnn", "rf-ecfp4", "gbt-ecfp4")
TREE_MODELS = ("rf-ecfp4", "gbt-ecfp4")
#: per-partner scores beside the main metric (classification: PR-AUC beside ROC-AUC; higher is better)
SECONDARY_KEYS = ("test_prauc",)
#: the run settings of the neural backbone, which a tree reference does not depend on
BACKBONE_KEYS = {"model", "hidden", "layers", "dropout", "norm", "fp_radius", "fp_bits", "fp_counts"}
#: what a suite runs when it names no references / reference models
DEFAULT_REFERENCES = ("local-only", "centralized")
DEFAULT_REFERENCE_MODELS = ("gnn", "rf-ecfp4")
FP_RADIUS, FP_BITS = ECFP4["radius"], ECFP4["bits"]
RF_TREES = 200
#: LightGBM's settings of ``gbt-ecfp4`` (benchmarks/gbt_choice.py measured them against XGBoost and CatBoost)
GBT_PARAMS = dict(n_estimators=300, learning_rate=0.05, max_depth=6, num_leaves=31, subsample=0.8, subsample_freq=1,
                  colsample_bytree=0.5, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1)
#: best local: when a partner's validation score is undefined for every family, the practitioner's default
BEST_LOCAL_FALLBACK = ("rf-ecfp4", "gbt-ecfp4", "mlp", "gnn")
#: how an ensemble averages (recorded in its config.json)
ENSEMBLE_RULE = ("average of the partners' local-only models' outputs (trees: probabilities, GNN: logits as FedDF's "
                 "AVGLOGITS; regression: values), weighted per task by the member's training molecules labelled "
                 "for the task (n_train for a single task); a partner runs the members its device can run")

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


def fingerprints(ds) -> np.ndarray:
    """ECFP4 of a (subset) dataset's molecules (:func:`fedmol.data.fingerprints.ecfp4_of`)."""
    return ecfp4_of(smiles_of(ds))


# --------------------------------------------------------------------------------------------- trees
class TaskTrees:
    """One tree model per task, each fitted on the rows labelled for that task (a task whose labelled
    rows hold one class, or none, predicts the class rate / 0). Subclasses say which estimator."""

    def __init__(self, task_type: str, seed: int = 0):
        self.task_type, self.seed = task_type, seed
        self.models: list[Any] = []

    def estimator(self):
        raise NotImplementedError

    def fit(self, X: np.ndarray, Y: np.ndarray) -> "TaskTrees":
        Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
        self.models = []
        for t in range(Y.shape[1]):
            m = ~np.isnan(Y[:, t])
            y = Y[m, t]
            if self.task_type == "classification":
                if y.size == 0 or y.min() == y.max():  # nothing to learn: predict the (prior) class rate
                    self.models.append(float(y.mean()) if y.size else 0.5)
                    continue
                y = y.astype(int)
            elif y.size == 0:
                self.models.append(0.0)
                continue
            self.models.append(self.estimator().fit(self._x(X[m]), y))
        return self

    def _x(self, X: np.ndarray) -> np.ndarray:
        return X

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probability of class 1 per task (regression: the value), ``(n, num_tasks)``."""
        out = np.zeros((len(X), len(self.models)))
        if len(X) == 0:
            return out
        for t, est in enumerate(self.models):
            if isinstance(est, float):
                out[:, t] = est
            elif self.task_type == "classification":
                out[:, t] = est.predict_proba(self._x(X))[:, list(est.classes_).index(1)]
            else:
                out[:, t] = est.predict(self._x(X))
        return out


class Forest(TaskTrees):
    """One scikit-learn random forest per task, each fitted on the rows labelled for that task."""

    def __init__(self, task_type: str, seed: int = 0, n_estimators: int = RF_TREES, n_jobs: int | None = -1):
        super().__init__(task_type, seed)
        self.n_estimators, self.n_jobs = n_estimators, n_jobs

    def estimator(self):
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        if self.task_type == "classification":
            return RandomForestClassifier(n_estimators=self.n_estimators, class_weight="balanced",
                                          random_state=self.seed, n_jobs=self.n_jobs)
        return RandomForestRegressor(n_estimators=self.n_estimators, random_state=self.seed, n_jobs=self.n_jobs)

    def nbytes(self) -> int:
        """The node arrays a forest predicts with (children, feature, threshold, value) of every tree."""
        return sum(a.nbytes for est in self.models if not isinstance(est, float) for tree in est.estimators_
                   for a in (tree.tree_.children_left, tree.tree_.children_right, tree.tree_.feature,
                             tree.tree_.threshold, tree.tree_.value))


class Boosted(TaskTrees):
    """One LightGBM gradient-boosted trees model per task (:data:`GBT_PARAMS`, one thread,
    deterministic), each fitted on the rows labelled for that task. Never pickled: :meth:`nbytes`
    and any saved copy use LightGBM's own text format (``booster_.model_to_string()``)."""

    def __init__(self, task_type: str, seed: int = 0, **params):
        super().__init__(task_type, seed)
        self.params = {**GBT_PARAMS, **params}

    def estimator(self):
        import lightgbm as lgb

        cls = lgb.LGBMClassifier if self.task_type == "classification" else lgb.LGBMRegressor
        return cls(random_state=self.seed, **self.params)

    def _x(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float32)

    def nbytes(self) -> int:
        return sum(len(est.booster_.model_to_string().encode()) for est in self.models if not isinstance(est, float))


def fit_forest(train, seed: int, n_jobs: int | None = -1) -> Forest:
    """A :class:`Forest` on ECFP4 of ``train`` (a dataset or subset)."""
    return Forest(train.task_type, seed, n_jobs=n_jobs).fit(fingerprints(train), labels_of(train))


def fit_boosted(train, seed: int) -> Boosted:
    """A :class:`Boosted` (LightGBM) on ECFP4 of ``train`` (a dataset or subset)."""
    return Boosted(train.task_type, seed).fit(fingerprints(train), labels_of(train))


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
            eval_every: int = 1, private_head: bool = False) -> tuple[torch.nn.Module, dict]:
    """The run's starting weights (:func:`fedmol.fl.algorithm.initial_model` of ``init_seed``, the
    run seed: the same start as every federated algorithm) trained by :func:`fedmol.training.fit`
    under the federated protocol: rounds of ``local_epochs`` epochs, Adam rebuilt every round, the
    best validation score among the rounds a federated run evaluates (every ``eval_every``-th and
    the last); ``seed`` orders the data. Returns ``(model at its best round, {"valid", "best_epoch",
    "epochs_run"})``. ``private_head`` (a reference of a private-heads run): the head starts centred on
    ``train``'s labels, as a partner's own head does (:func:`fedmol.fl.algorithm.centre_head`)."""
    net = initial_model(model_config, seed if init_seed is None else init_seed)
    if private_head:
        centre_head(net.head, labels_of(train), model_config["task_type"])
    res = fit(net, train, valid, evaluator, seed=seed, epochs=epochs, lr=hp["lr"], weight_decay=hp["weight_decay"],
              batch_size=hp["batch_size"], clip=hp["clip"], max_steps=max_steps, patience=patience,
              round_epochs=int(hp["local_epochs"]), eval_every=eval_every)
    return net, {k: res[k] for k in ("valid", "best_epoch", "epochs_run")}


def _model_config(cfg: RunConfig, ds, width: float) -> dict:
    return dict(backbone_config(cfg.model, ds, cfg.hidden, cfg.layers, cfg.dropout), width=float(width))


def _partner_seed(seed: int, pid: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (pid + 1)) % (2**31 - 1)


# ------------------------------------------------------------------------------------- trained models
@dataclass
class Fitted:
    """One trained reference model: ``family`` ("gnn" | "rf-ecfp4" | "gbt-ecfp4"), ``model`` (a torch
    module, a :class:`Forest`, a :class:`Boosted`), ``width`` (the GNN's width; None for trees),
    ``n_labelled`` (its training molecules labelled per task: an ensemble member's weights)."""

    family: str
    model: Any
    width: float | None
    n_train: int
    n_labelled: np.ndarray

    def outputs(self, ds) -> np.ndarray:
        """What an ensemble averages, ``(n, num_tasks)``: the GNN's logits (regression: values), the
        trees' probabilities of class 1 (regression: values)."""
        if self.family == "gnn":
            return predict(self.model, ds)[1].astype(np.float64)
        return self.model.predict(fingerprints(ds))

    def score(self, ds, evaluator: Evaluator) -> float:
        """The evaluator's metric on ``ds`` (NaN on an empty set)."""
        return self.scores(ds, evaluator)[evaluator.eval_metric]

    def scores(self, ds, evaluator: Evaluator) -> dict:
        """Every metric of the evaluator on ``ds`` (main one NaN on an empty set)."""
        if len(ds) == 0:
            return {evaluator.eval_metric: float("nan")}
        if self.family == "gnn":
            return score(self.model, ds, evaluator)
        return evaluator.eval({"y_true": labels_of(ds), "y_pred": self.outputs(ds)})

    def nbytes(self) -> int:
        """Bytes to send the model once: the GNN's tensors (parameters and buffers, as a federated
        message counts them), the trees' :meth:`Forest.nbytes` / :meth:`Boosted.nbytes`."""
        if self.family == "gnn":
            return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return int(self.model.nbytes())


def fit_model(cfg: RunConfig, fed: Federation, model: str, train, valid, *, seed: int, width: float = 1.0,
              init_seed: int | None = None, max_steps: int | None = None, min_epochs: int = 5,
              patience: int | None = None, n_jobs: int | None = -1) -> Fitted:
    """A reference model of family ``model`` trained on ``train`` (the GNN: built at ``width`` from the
    start weights of ``init_seed``, selected on ``valid``; the trees ignore ``valid``)."""
    ds = fed.dataset
    n_labelled = (~np.isnan(labels_of(train))).sum(axis=0)
    if model == "gnn":
        net, _ = fit_gnn(train, valid, _model_config(cfg, ds, width), Evaluator(ds.task_type, ds.num_tasks),
                         seed=seed, epochs=budget(cfg, min_epochs), hp=train_settings(cfg), max_steps=max_steps,
                         patience=patience, init_seed=init_seed, eval_every=int(cfg.eval_every),
                         private_head=cfg.heads == "private")
        return Fitted(model, net, float(width), len(train), n_labelled)
    trees = fit_forest(train, seed, n_jobs) if model == "rf-ecfp4" else fit_boosted(train, seed)
    return Fitted(model, trees, None, len(train), n_labelled)


def local_model(cfg: RunConfig, fed: Federation, pid: int, model: str, *, min_epochs: int = 5,
                patience: int | None = None, n_jobs: int | None = -1) -> Fitted:
    """Partner ``pid``'s local-only model: its own training molecules, the GNN at its device cap
    (the run seed's start weights) selected on its own validation molecules; seeded from the run
    seed and the partner id. The one function the local-only and ensemble references train with."""
    info, data = fed.infos[pid], fed.local[pid]
    return fit_model(cfg, fed, model, data.train, data.valid, seed=_partner_seed(cfg.seed, info.pid),
                     width=float(info.device.max_width), init_seed=int(cfg.seed),
                     max_steps=train_settings(cfg)["max_local_steps"], min_epochs=min_epochs, patience=patience,
                     n_jobs=n_jobs)


def centralized_model(cfg: RunConfig, fed: Federation, model: str, *, min_epochs: int = 5,
                      patience: int | None = None, n_jobs: int | None = -1) -> Fitted:
    """The pooled model: every partner's training molecules, width 1, selected on the pooled
    validation molecules; an epoch capped at ``partners * max_local_steps`` steps."""
    cap = train_settings(cfg)["max_local_steps"]
    return fit_model(cfg, fed, model, pooled_train(fed), fed.valid, seed=int(cfg.seed), width=1.0,
                     max_steps=None if cap is None else int(cap) * len(fed.infos), min_epochs=min_epochs,
                     patience=patience, n_jobs=n_jobs)


# ------------------------------------------------------------------------------------------ ensembles
def ensemble_average(outputs: list[np.ndarray], n_labelled: list[np.ndarray]) -> np.ndarray:
    """The members' outputs ``(n, num_tasks)`` averaged per task with weights proportional to their
    training molecules labelled for that task (equal weights for a task no member has labels for)."""
    out = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])  # (members, n, tasks)
    w = np.stack([np.asarray(c, dtype=np.float64) for c in n_labelled])  # (members, tasks)
    total = w.sum(axis=0)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / len(outputs))
    return np.einsum("kt,knt->nt", w, out)


def can_run(member: Fitted, cap: float) -> bool:
    """Whether a device capped at width ``cap`` runs ``member`` (trees run anywhere)."""
    return member.width is None or member.width <= float(cap) + 1e-9


def ensemble_scores(fed: Federation, members: list[Fitted], evaluator: Evaluator) -> dict:
    """The one-shot ensemble of ``members`` (partner k's local model at index k), scored like a
    federated run: ``test`` / ``valid`` keyed by width (the GNN: the ensemble a device of that cap
    runs; trees: ``1.0``), ``per_partner`` (each partner on the ensemble it can run), ``members``,
    ``rounds``, ``bytes_up`` (each member sent once), ``bytes_down`` (each partner receives the
    other members it runs)."""
    metric = evaluator.eval_metric
    caps = [float(info.device.max_width) for info in fed.infos]
    cache: dict[tuple, np.ndarray] = {}

    def outputs(k: int, where, ds) -> np.ndarray:
        if (k, where) not in cache:
            cache[(k, where)] = members[k].outputs(ds)
        return cache[(k, where)]

    def ens_scores(ks: tuple, where, ds) -> dict:
        if not ks or len(ds) == 0:
            return {metric: float("nan")}
        pred = ensemble_average([outputs(k, where, ds) for k in ks], [members[k].n_labelled for k in ks])
        return evaluator.eval({"y_true": labels_of(ds), "y_pred": pred})

    def ens_score(ks: tuple, where, ds) -> float:
        return ens_scores(ks, where, ds)[metric]

    def runnable(cap: float) -> tuple:
        return tuple(k for k, m in enumerate(members) if can_run(m, cap))

    gnn = members[0].family == "gnn"
    keys = sorted(set(caps), reverse=True) if gnn else [1.0]
    test = {width_key(w): ens_score(runnable(w), "test", fed.test) for w in keys}
    valid = {width_key(w): ens_score(runnable(w), "valid", fed.valid) for w in keys}
    per_partner, test_of = [], {}
    for j, (info, data) in enumerate(zip(fed.infos, fed.local)):
        ks, own = runnable(caps[j]), fed.partner_test[j]  # "test": the same molecules, own labels
        if (ks, id(own)) not in test_of:
            test_of[(ks, id(own))] = ens_scores(ks, "test", own)
        scores = test_of[(ks, id(own))]
        per_partner.append(dict(partner=info.pid, width=caps[j] if gnn else None, members=list(ks),
                                n_train=len(data.train), n_valid=len(data.valid), test=scores[metric],
                                **secondary_scores(scores, metric), valid=ens_score(ks, ("valid", j), data.valid)))
    sizes = [m.nbytes() for m in members]
    info_members = [dict(partner=info.pid, width=m.width, n_train=m.n_train, bytes=sizes[k],
                         test=m.score(fed.test, evaluator), valid=m.score(data.valid, evaluator))
                    for k, (m, info, data) in enumerate(zip(members, fed.infos, fed.local))]
    down = sum(sizes[k] for p in per_partner for k in p["members"] if k != p["partner"])
    return dict(test=test, valid=valid, per_partner=per_partner, members=info_members, rounds=1,
                bytes_up=int(sum(sizes)), bytes_down=int(down))


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


def ensemble(cfg: RunConfig, model: str = "gnn", out_dir: str | Path | None = None, *,
             fed: Federation | None = None, progress: bool = True, min_epochs: int = 5,
             patience: int | None = None, n_jobs: int | None = -1) -> dict:
    """The partners' local-only models averaged, sent once (see the module docstring)."""
    return run_reference(cfg, "ensemble", model, out_dir, fed=fed, progress=progress, min_epochs=min_epochs,
                         patience=patience, n_jobs=n_jobs)


def neural_family(backbone: str) -> str:
    """The family name of a neural model in tables and best-local choices: ``mlp`` for the
    fingerprint MLP, ``gnn`` for every graph network (the ``gnn`` reference trains the run's backbone)."""
    return "mlp" if backbone == "mlp" else "gnn"


def check_reference(reference: str, model: str) -> None:
    if reference not in REFERENCES:
        raise FedmolError(f"unknown reference {reference!r}; known: {', '.join(REFERENCES)}")
    if model not in REFERENCE_MODELS:
        raise FedmolError(f"unknown reference model {model!r}; known: {', '.join(REFERENCE_MODELS)}")


def reference_config(cfg: RunConfig, reference: str, model: str, min_epochs: int = 5,
                     patience: int | None = None) -> dict:
    """What a reference result depends on (written as ``config.json``; the benchmark's resume check)."""

    # what a reference does not depend on: the algorithm, sampling, evaluation schedule and model selection
    # of a federated run, links, data folder
    skip = {"algorithm", "data_dir", "select", "clients_per_round", "faulty_links", "lossy_links"}
    if model in TREE_MODELS:  # trees see fingerprints of their own, whatever the suite's backbone
        skip |= BACKBONE_KEYS
    run = {k: v for k, v in cfg.model_dump().items() if k not in skip}
    run["hparams"] = {k: v for k, v in (cfg.hparams or {}).items() if k in TRAIN_KEYS}
    conf = dict(reference=reference, model=model, run=run, split=split_versions())
    if model == "gnn":
        conf["train"] = dict(train_settings(cfg), epochs=budget(cfg, min_epochs),
                             patience=reference_patience(cfg, patience),
                             optimizer="adam", protocol=PROTOCOL, init="the run seed's common start weights")
    elif model == "rf-ecfp4":
        conf["forest"] = dict(fingerprint=f"morgan r={FP_RADIUS} {FP_BITS} bits (ECFP4)", trees=RF_TREES,
                              class_weight="balanced", one_forest_per_task=True)
    else:
        import lightgbm

        conf["gbt"] = dict(fingerprint=f"morgan r={FP_RADIUS} {FP_BITS} bits (ECFP4)", library="lightgbm",
                           version=lightgbm.__version__, params=GBT_PARAMS, early_stopping=None,
                           one_model_per_task=True)
    if reference == "ensemble":
        conf["ensemble"] = dict(rule=ENSEMBLE_RULE, members="the local-only models (local_model: same seeds and code)",
                                rounds=1)
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
    patience = reference_patience(cfg, patience)
    train = dict(min_epochs=min_epochs, patience=patience, n_jobs=n_jobs)
    extra: dict[str, Any] = {}
    if reference == "centralized":
        central = centralized_model(cfg, fed, model, **train)
        t = central.scores(fed.test, evaluator)
        key = width_key(1.0)
        test, valid = {key: t[metric]}, {key: central.score(fed.valid, evaluator)}
        own = {id(d): t if d is fed.test else central.scores(d, evaluator) for d in fed.partner_test}
        mine = [own[id(d)] for d in fed.partner_test]  # each partner's own test set (its tasks)
        per_partner = [dict(partner=info.pid, width=central.width, n_train=len(data.train),
                            n_valid=len(data.valid), test=s[metric], **secondary_scores(s, metric),
                            valid=central.score(data.valid, evaluator))
                       for info, data, s in zip(fed.infos, fed.local, mine)]
    else:
        members = [local_model(cfg, fed, info.pid, model, **train) for info in fed.infos]
        if reference == "ensemble":
            extra = ensemble_scores(fed, members, evaluator)
            test, valid, per_partner = extra.pop("test"), extra.pop("valid"), extra.pop("per_partner")
        else:
            per_partner = []
            for m, info, data in zip(members, fed.infos, fed.local):
                t = m.scores(fed.partner_test[info.pid], evaluator)
                per_partner.append(dict(partner=info.pid, width=m.width, n_train=len(data.train),
                                        n_valid=len(data.valid), test=t[metric], **secondary_scores(t, metric),
                                        valid=m.score(data.valid, evaluator)))
            test = {"mean": _nanmean([p["test"] for p in per_partner])}
            valid = {"mean": _nanmean([p["valid"] for p in per_partner])}
            if model == "gnn":
                for w in sorted({p["width"] for p in per_partner}, reverse=True):
                    test[width_key(w)] = _nanmean([p["test"] for p in per_partner if p["width"] == w])
                    valid[width_key(w)] = _nanmean([p["valid"] for p in per_partner if p["width"] == w])
    summary = dict(dataset=ds.name, metric=metric, reference=reference, model=model, test=test, valid=valid,
                   per_partner=per_partner, **extra, seed=cfg.seed, seconds=round(time.perf_counter() - t0, 2),
                   config=reference_config(cfg, reference, model, min_epochs, patience))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", summary["config"])
        write_json(out / "summary.json", summary)
    return summary


def pooled_train(fed: Federation):
    """Every partner's training molecules, as one dataset (source rows in ascending order; in a task
    split labelled only on their partner's tasks: :func:`fedmol.data.splits.pooled_subset`)."""
    from fedmol.data.splits import pooled_subset

    return pooled_subset(fed.split, fed.dataset, "train")


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
        for key in SECONDARY_KEYS:  # PR-AUC: higher is better
            if key in f or key in loc:
                row[f"gain_{key}"] = _num(f.get(key)) - _num(loc.get(key))
        rows.append(row)
    out: dict[str, Any] = dict(metric=metric, higher_is_better=HIGHER_IS_BETTER[metric], n_partners=len(rows),
                               per_partner=rows)
    for key in SECONDARY_KEYS:
        g = np.array([r.get(f"gain_{key}", np.nan) for r in rows], dtype=float)
        if any(f"gain_{key}" in r for r in rows):
            out[f"gain_{key}"] = float(np.nanmean(g)) if np.isfinite(g).any() else float("nan")
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



# ------------------------------------------------------------------------------------------ best local
def best_local(local_summaries: dict[str, dict]) -> dict:
    """Per partner, its best local model: among the local-only summaries of one split (``{family:
    summary}``, whatever families were run: gnn, rf-ecfp4, gbt-ecfp4, mlp, ...), the family with the
    best score on that partner's **own validation molecules** (never the test set). Ties go to the
    family first in :data:`BEST_LOCAL_FALLBACK` (then the given order); a partner whose validation
    score is undefined for every family (e.g. one class only) takes the first family of that order
    that was run (``selected_by`` says which rule chose).

    Returns a summary-like dict that :func:`federated_gain` compares with: ``metric``, ``reference``
    ("best local"), ``families``, ``choices`` ({family: partners}), ``test`` / ``valid``
    (``{"mean": ...}``), ``per_partner`` [``{partner, family, width, selected_by, test, valid,
    valid_by_family}``] (``test``, ``valid``: the chosen family's)."""
    if not local_summaries:
        raise FedmolError("best local needs at least one local-only summary")
    metrics = {s["metric"] for s in local_summaries.values()}
    if len(metrics) != 1:
        raise FedmolError(f"best local: the local-only summaries have different metrics {sorted(metrics)}")
    metric = metrics.pop()
    if metric not in HIGHER_IS_BETTER:
        raise FedmolError(f"unknown metric {metric!r}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    given = list(local_summaries)
    order = sorted(given, key=lambda f: (BEST_LOCAL_FALLBACK.index(f) if f in BEST_LOCAL_FALLBACK
                                         else len(BEST_LOCAL_FALLBACK), given.index(f)))
    per = {f: {int(p["partner"]): p for p in local_summaries[f]["per_partner"]} for f in order}
    partners = sorted(per[order[0]])
    for f in order:
        if sorted(per[f]) != partners:
            raise FedmolError(f"best local: partners differ: {order[0]} {partners} vs {f} {sorted(per[f])}")
    rows = []
    for pid in partners:
        valids = {f: _num(per[f][pid].get("valid")) for f in order}
        defined = [f for f in order if math.isfinite(valids[f])]
        if defined:
            choice = max(defined, key=lambda f: sign * valids[f])  # the first of equal scores in `order`
            how = "validation"
        else:
            choice, how = order[0], "fallback: validation undefined for every family"
        p = per[choice][pid]
        rows.append(dict(partner=pid, family=choice, width=p.get("width"), selected_by=how, test=_num(p.get("test")),
                         valid=valids[choice], valid_by_family=valids,
                         **{k: _num(v) for k, v in p.items() if k in SECONDARY_KEYS},
                         **({"test_by_task": p["test_by_task"]} if "test_by_task" in p else {})))
    return dict(metric=metric, reference="best local", model=None, families=order,
                choices={f: [r["partner"] for r in rows if r["family"] == f] for f in order},
                test={"mean": _nanmean([r["test"] for r in rows])}, valid={"mean": _nanmean([r["valid"] for r in rows])},
                per_partner=rows)
