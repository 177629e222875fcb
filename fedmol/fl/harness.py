"""The in-process benchmark harness: simulated partners on one machine, run fairly.

Everything that differs between methods lives in the algorithm; everything here is shared:
the split (a frozen file, or one made on the fly with the same code), the partners and their
device profiles (:mod:`fedmol.fl.devices`: width cap, speed, availability, drop-outs, faulty
links), and the round loop of :class:`fedmol.fl.driver.RoundDriver` -- sampling, failures, byte
accounting, evaluation with the one Evaluator at every width the algorithm serves -- over an
:class:`InProcessTransport`: a partner runs :meth:`Algorithm.partner_update` on its own data
(which also clips the update when differential privacy is on, :mod:`fedmol.fl.privacy`) when its
answer is read, so a partner that drops out never trains. The Flower coordinator runs the same
loop over the network (:mod:`fedmol.pilot.coordinator`), after the same run setup
(:mod:`fedmol.fl.setup`: devices, the algorithm, ``config.json``, the run folder).

The run reports one round's global model (``select``, :mod:`fedmol.fl.selection`): by default the
evaluated round with the best pooled validation score -- the rule the references' early stopping
follows -- else the last round's.

Partners are never held as model copies: a client update builds its model from the message and
drops it after replying, and partners' datasets are index views of one shared dataset. In a task
split (``fedmol split make --task-split``) a partner's train and validation views carry their own
copy of the labels, NaN outside the tasks it holds (:func:`fedmol.data.splits.partner_subsets`);
the global test set keeps every task, the pooled validation set (like the centralized reference's
pooled training set) labels each molecule on its own partner's tasks only
(:func:`fedmol.data.splits.pooled_subset`): selection never reads a label no partner holds.

With private heads (``RunConfig.heads == "private"``, ``docs/private_heads.md``) each partner's
task head stays at its site (:attr:`fedmol.fl.algorithm.LocalData.head`) and the server
aggregates the trunk only; there is no single global model, so a round is scored by
:class:`PrivateHeadScores`: each partner's model is the federated trunk plus its own head, on the
sets restricted to the partner's tasks (:func:`own_model_scores`, the scoring a pilot site runs
too). ``summary.json`` then says ``heads: "private"``; its
``test`` / ``valid`` by width are means over partners; ``model.safetensors`` and
``test_predictions.csv`` hold the server's model (the trunk with the never-trained initial head),
not any partner's.

Files in ``out_dir``: ``config.json`` (fully resolved), ``metrics.csv`` (one row per round; test
and validation scores on evaluated rounds), ``summary.json`` (the reported model's ``test`` and
``valid`` by width, ``selected_round``, ``test_last``; ``privacy``: the DP accounting of
:func:`fedmol.fl.privacy.account`, null when DP is off, also in config.json),
``model.safetensors`` (the reported global weights), ``test_predictions.csv`` (the reported
model's predictions on the global test set at every width) and ``sent.jsonl`` (one line per
message a partner sent: array names, shapes, bytes, metrics, and the values of anything the
algorithm declares as extra disclosure, e.g. FedGen's label counts).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fedmol.data.dataset import MoleculeDataset, load_dataset
from fedmol.data.splits import (dataset_for_split, make_split, mask_tasks, partner_subsets, pooled_subset, read_split,
                                split_tasks)
from fedmol.config import RunConfig
from fedmol.evaluate import Evaluator
from fedmol.fl.algorithm import LocalData, PartnerInfo, refit_scored_head
from fedmol.fl.driver import Delivery, RoundDriver, check_schedule, served_width, unserved_entry
from fedmol.fl.registry import get_algorithm
from fedmol.fl.setup import clear_results, partner_devices, resolved_config, start_algorithm, summary_extras
from fedmol.jsonio import write_json
from fedmol.models import slicing
from fedmol.training import score, width_key


def secondary_scores(scores: dict, metric: str) -> dict:
    """What a ``per_partner`` entry records of the test scores beside the main metric: ``test_prauc``
    (classification: PR-AUC beside ROC-AUC, as MELLODDY reports both) and, with several tasks,
    ``test_by_task`` (the main metric per task, NaN where undefined; MELLODDY scores per task)."""
    out = {f"test_{m}": v for m, v in scores.items() if m != metric and m == "prauc"}
    if "by_task" in scores:
        out["test_by_task"] = scores["by_task"][metric]
    return out


def own_task_sets(split: dict, ds, pid: int, sets: dict) -> dict:
    """``sets`` (name -> a set of the organizer's: the global test set, the pooled validation set)
    restricted to partner ``pid``'s tasks in a task split (unchanged without one): what a partner's
    own model is scored on with private heads, in-process and at a pilot site holding the split."""
    tasks = split_tasks(split, ds)
    return dict(sets) if tasks is None else {name: mask_tasks(data, tasks[pid]) for name, data in sets.items()}


def own_model_scores(model, sets: dict, evaluator: Evaluator, width: float) -> dict:
    """A partner's own model (the served trunk plus its own head) scored on ``sets`` (name ->
    dataset): ``{name: the main metric}``, and for the set named ``test`` its
    :func:`secondary_scores` too. The one scoring of a partner's model with private heads (the
    harness's :class:`PrivateHeadScores` and a pilot site, :mod:`fedmol.pilot.heads`)."""
    metric, out = evaluator.eval_metric, {}
    for name, data in sets.items():
        scores = score(model, data, evaluator, width)
        out[name] = scores[metric]
        if name == "test":
            out.update(secondary_scores(scores, metric))
    return out


def finite_mean(values) -> float:
    """The mean of the finite ``values`` (NaN when there is none): a private-heads round score."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else float("nan")


@dataclass
class Federation:
    """The simulated partners of one split: their info (server-visible) and data (private)."""

    dataset: MoleculeDataset
    split: dict
    infos: list[PartnerInfo]
    local: list[LocalData]
    test: Any
    valid: Any
    #: the test set each partner is scored on: the global test set, in a task split restricted to the
    #: partner's own tasks (a partner is judged on its own assays)
    partner_test: list[Any] = dataclasses.field(default_factory=list)


def build_federation(cfg: RunConfig, progress: bool = True) -> Federation:
    if cfg.split:
        split = read_split(cfg.split)
        ds = dataset_for_split(split, cfg.data_dir, csv=cfg.csv, progress=progress)
    else:
        ds = load_dataset(None if cfg.csv else cfg.dataset, csv=cfg.csv, smiles_col=cfg.smiles_col,
                          target_cols=cfg.target_cols, task=cfg.task, data_dir=cfg.data_dir, progress=progress)
        split = make_split(ds, cfg.partners, cfg.alpha, cfg.seed, cfg.quantity_skew, progress=progress,
                           task_split=cfg.task_split, holders_per_task=cfg.holders_per_task,
                           target_aware=cfg.target_aware)
    if cfg.model == "mlp":  # its input: fingerprints, computed once and cached beside the graphs
        from fedmol.data.fingerprints import attach_fingerprints
        attach_fingerprints(ds)
    sizes = [len(p["train"]) for p in split["partners"]]
    devices = partner_devices(cfg, sizes)
    local = [LocalData(k, train, valid) for k, (train, valid) in enumerate(partner_subsets(split, ds))]
    infos = [PartnerInfo(k, sizes[k], devices[k]) for k in range(len(sizes))]
    test, tasks = ds.select_rows(split["test"]), split_tasks(split, ds)
    partner_test = [test] * len(infos) if tasks is None else [mask_tasks(test, t) for t in tasks]
    return Federation(ds, split, infos, local, test, pooled_subset(split, ds, "valid"), partner_test)


class InProcessTransport:
    """The simulated partners of a :class:`Federation`, in this process: a partner trains (or
    answers a query) on its own data when its answer is read, from the message alone."""

    def __init__(self, algo_cls, fed: Federation):
        self.algo_cls, self.fed = algo_cls, fed
        self.round = 0  # the round under way (what private-head scoring keeps heads by)

    def partition_id(self, partner: PartnerInfo) -> int:
        return partner.pid

    def begin_round(self, rnd: int) -> None:
        self.round = rnd

    def train(self, rnd: int, sends):
        def answer(partner: PartnerInfo, msg) -> Delivery:
            t = time.perf_counter()
            reply = self.algo_cls.partner_update(msg, self.fed.local[partner.pid])
            return Delivery(reply, seconds=time.perf_counter() - t)
        return answer

    def query(self, rnd: int, width: float, q):
        answers = [(p, self.algo_cls.client_query(q, self.fed.local[p.pid])) for p in self.fed.infos]
        return len(answers), answers, []


def run_federated(cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    check_schedule(cfg.rounds, cfg.eval_every, cfg.clients_per_round, cfg.patience, cfg.select)
    get_algorithm(cfg.algorithm).check_heads(cfg.heads)
    fed = build_federation(cfg, progress)
    ds = fed.dataset
    evaluator = Evaluator(ds.task_type, ds.num_tasks)
    algo, dp = start_algorithm(cfg, ds, fed.infos, cfg.heads)
    out = clear_results(Path(out_dir)) if out_dir is not None else None
    if out is not None:
        write_json(out / "config.json", resolved_config(cfg, algo, fed.split, partner_entries(fed), len(fed.test), dp))
    transport = InProcessTransport(type(algo), fed)
    private = PrivateHeadScores(fed, transport) if cfg.heads == "private" else None
    driver = RoundDriver(algo, fed.infos, transport, seed=cfg.seed, rounds=cfg.rounds,
                         evaluator=evaluator, scored={"test": fed.test, "valid": fed.valid}, select=cfg.select,
                         eval_every=cfg.eval_every, clients_per_round=cfg.clients_per_round, patience=cfg.patience,
                         evaluate=private)
    _run_rounds(driver, f"{cfg.algorithm} on {ds.name}", cfg.rounds, progress)
    selected = driver.finish()
    if private is not None:
        private.restore(selected)
    per_partner = per_partner_results(driver, algo, fed, evaluator, private, driver.scores(selected, "test"))
    extra = {**summary_extras(algo), **({"heads": "private"} if private is not None else {})}
    summary = driver.summary(dataset=ds.name, algorithm=cfg.algorithm, valid=driver.scores(selected, "valid"),
                             per_partner=per_partner, privacy=dp, t_start=t_start, **extra)
    if out is not None:
        driver.write_files(out, summary, cfg.algorithm)
    summary["history"] = driver.rows
    return summary


def _run_rounds(driver: RoundDriver, label: str, rounds: int, progress: bool) -> None:
    """All the driver's rounds, under a progress bar (when ``progress``)."""
    metric = driver.metric
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), disable=not progress, transient=True) as bar:
        task = bar.add_task(label, total=rounds, info="")
        driver.run(lambda row: bar.update(task, advance=1, info=_info(row, metric, driver.widths)))


def per_partner_results(driver: RoundDriver, algo, fed: Federation, evaluator: Evaluator,
                        private: PrivateHeadScores | None, test: dict[str, float]) -> list[dict]:
    """``summary.json``'s ``per_partner``: each partner's model at its served width scored on its test set and
    its own validation molecules (``test``: the reported model's global test scores by width key)."""
    metric = evaluator.eval_metric
    per_partner, second = [], {}  # second: the other metrics (PR-AUC beside ROC-AUC) on the test set per width
    for p in fed.infos:
        w, n_valid = served_width(driver.widths, algo.serving_cap(p.device.max_width)), len(fed.local[p.pid].valid)
        if w is None:
            per_partner.append(unserved_entry(p.pid, p.n_train, n_valid))
            continue
        driver.query(w)
        if private is not None:
            per_partner.append(private.entry(algo, p, w, evaluator))
            continue
        own = fed.partner_test[p.pid]
        key = (w, id(own))  # partners on the same width and test set share one scoring
        if key not in second:
            scores = score(algo.eval_model(w), own, evaluator, w)
            second[key] = {"test": scores[metric] if own is not fed.test else test[width_key(w)],
                           **secondary_scores(scores, metric)}
        per_partner.append(dict(partner=p.pid, width=w, served=True, n_train=p.n_train, n_valid=n_valid,
                                **second[key],
                                valid=score(algo.eval_model(w), fed.local[p.pid].valid, evaluator, w)[metric]))
    return per_partner


class PrivateHeadScores:
    """Scoring with private heads, where there is no single global model: a partner's model is the
    served trunk plus its own head (:attr:`LocalData.head`; the server's head, i.e. the common
    start, while it has none), scored on the organizer's sets restricted to the partner's tasks
    (a task split's per-partner ``tasks``; every task without one). As the round driver's
    ``evaluate``, a set's score at a width is the mean over the partners whose device runs that
    width of their finite scores (NaN when none): that is what ``metrics.csv``, the round selection
    and ``summary.json``'s ``test`` / ``valid`` by width hold. Each evaluated round's heads are kept,
    so the selected round's come back with its trunk (:meth:`restore`)."""

    def __init__(self, fed: Federation, transport: InProcessTransport):
        self.fed, self.transport = fed, transport
        self.sets = [own_task_sets(fed.split, fed.dataset, p.pid, {"test": fed.test, "valid": fed.valid})
                     for p in fed.infos]
        self.kept: dict[int, list] = {}
        self.selected: int | None = None  # the round whose trunk and heads are served (:meth:`restore`)

    @contextmanager
    def model(self, algo, width: float, pid: int, rnd: int):
        """The served model at ``width`` with partner ``pid``'s own head in place of the server's,
        refit on the served trunk when ``head_steps`` asks for it (:func:`refit_head`, seeded by
        round ``rnd``'s client seed; the refit head is not kept: scoring changes no head)."""
        model, own = algo.eval_model(width), self.fed.local[pid].head
        saved = {k: v.clone() for k, v in model.head.state_dict().items()}
        if own is not None:
            model.head.load_state_dict(slicing.sub_state_dict(own, model.width))
            refit_scored_head(model, self.fed.local[pid], algo.hp, algo.seed, rnd)
        try:
            yield model
        finally:
            model.head.load_state_dict(saved)

    def __call__(self, algo, widths, datasets: dict, evaluator: Evaluator, query) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {name: {} for name in datasets}
        for w in widths:
            query(w)
            able = [p.pid for p in self.fed.infos if algo.serving_cap(p.device.max_width) >= w - 1e-9]
            scores = []
            for pid in able:
                with self.model(algo, w, pid, self.transport.round) as m:
                    scores.append(own_model_scores(m, {name: self.sets[pid][name] for name in datasets}, evaluator, w))
            for name in datasets:
                out[name][width_key(w)] = finite_mean([s[name] for s in scores])
        self.kept[self.transport.round] = [copy.deepcopy(d.head) for d in self.fed.local]
        return out

    def restore(self, rnd: int) -> None:
        """Give every partner back its head of evaluated round ``rnd`` (the selected round)."""
        for data, head in zip(self.fed.local, self.kept[rnd]):
            data.head = head
        self.selected = rnd

    def entry(self, algo, p: PartnerInfo, w: float, evaluator: Evaluator) -> dict:
        """``per_partner`` entry of partner ``p`` at its served width ``w``: its own model on the
        global test set restricted to its tasks and on its own validation molecules."""
        valid = self.fed.local[p.pid].valid
        with self.model(algo, w, p.pid, self.selected) as m:
            scores = own_model_scores(m, {"test": self.sets[p.pid]["test"], "own_valid": valid}, evaluator, w)
        own_valid = scores.pop("own_valid")
        return dict(partner=p.pid, width=w, served=True, n_train=p.n_train, n_valid=len(valid), **scores,
                    valid=own_valid)


def _info(row: dict, metric: str, widths) -> str:
    w = width_key(widths[0])
    v = row.get(f"test_{metric}@{w}")
    return f"{row['participants']} partners, test {metric}@{w} {v:.3f}" if v is not None else ""


def partner_entries(fed: Federation) -> list[dict]:
    """``config.json``'s ``partners``: each partner's size and device."""
    return [dict(pid=p.pid, n_train=p.n_train, n_valid=len(fed.local[p.pid].valid), device=p.device.to_dict())
            for p in fed.infos]
