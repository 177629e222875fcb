"""The one round loop every federated run goes through, whatever carries the messages.

The in-process benchmark (:func:`fedmol.fl.harness.run_federated`) and the Flower coordinator of
pilots and ``--backend flower-sim`` (:mod:`fedmol.pilot.coordinator`) both run
:class:`RoundDriver`; they differ only in their :class:`Transport` (how a message reaches a
partner and how its answer comes back) and in how they start and end a run. A round:

1. each partner is online with its device's ``p_online``; at most ``clients_per_round`` of the
   online ones are sampled;
2. ``algorithm.configure`` gives each sampled partner its message (or None: it sits out); bytes
   down are counted from the tensors in the message;
3. the simulated drops mid-round (``p_drop``) are drawn first, from a generator of the round's own
   (:meth:`RoundDriver._drops`), and a dropped partner is not delivered its message (it never trains,
   on any transport: over Flower its site keeps its private head as it was); the transport delivers
   the others' (in-process, a partner trains when its answer is read; over Flower, all messages go
   out at once and the answers are awaited until the deadline). Then, partner by partner: the drop,
   a transport failure (no answer, an error, an answer that does not fit the model), else
   :func:`screen_reply` (NaN/inf rejection, then faulty links: ``p_upload_loss``, ``p_truncate``).
   Every failure is logged with its reason;
4. ``algorithm.update_global`` over the replies that arrived: its aggregation, FedAvgM's server
   momentum when set, then its ``server_step`` (a round with fewer usable replies than
   ``min_partners`` is not aggregated, when a minimum is set);
5. every ``eval_every`` rounds and after the last, the global model is scored at each served width
   on the organizer's sets (the global test set; the pooled validation set when the organizer has
   it), after the algorithm's queries to the partners (HeteroFL's static BN, counted as traffic).
   An organizer without the partners' validation molecules (a pilot) asks the partners instead
   (``federated_valid``, :meth:`RoundDriver.validate_at_partners`): each scores the model on its
   own validation molecules and only the score leaves it. The
   :class:`~fedmol.fl.selection.RoundSelector` keeps the best validation round.

Every random draw of the loop comes from one NumPy generator seeded ``[seed, 11]``, in the order
above, never from a transport: the same seed gives the same run in-process and over Flower.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fedmol.evaluate import Evaluator
from fedmol.fl.algorithm import PartnerInfo
from fedmol.fl.message import Message
from fedmol.fl.selection import RoundSelector
from fedmol.jsonio import to_json, write_json
from fedmol.models import slicing
from fedmol.safetensors_io import save_safetensors
from fedmol.training import predict, score, width_key


@dataclass
class RoundReplies:
    """What one round's training messages brought back."""

    replies: list[tuple[PartnerInfo, Message]] = field(default_factory=list)  # accepted, for aggregation
    failures: list[str] = field(default_factory=list)   # "partner <id>: <reason>"
    truncated: list[str] = field(default_factory=list)  # accepted replies cut at a narrower width
    bytes_up: int = 0                                   # of the accepted replies
    client_seconds: float = 0.0  # the slowest answering partner's compute time on its device (seconds / speed)
    client_total: float = 0.0    # the answering partners' compute time, summed


@dataclass
class Delivery:
    """What came back from a partner for a training message."""

    reply: Message | None = None
    reason: str = ""               # why there is no usable reply
    seconds: float | None = None   # the partner's own compute time, when it answered


class Transport(Protocol):
    """How messages reach the partners and their answers come back."""

    def partition_id(self, partner: PartnerInfo) -> int:
        """How results files name the partner (its partition id)."""

    def begin_round(self, rnd: int) -> None: ...

    def train(self, rnd: int, sends: list[tuple[PartnerInfo, Message]]) -> Callable[[PartnerInfo, Message], Delivery]:
        """Deliver the round's training messages; returns the getter of each partner's answer."""

    def query(self, rnd: int, width: float, q: Message) -> tuple[int, list[tuple[PartnerInfo, Message]], list[str]]:
        """Ask every reachable partner ``q``: ``(partners asked, answers, failure reasons)``."""

    def validate(self, rnd: int, width: float, msg: Message) -> tuple[int, list[tuple[PartnerInfo, Message]], list[str]]:
        """Have every reachable partner that can run ``width`` score ``msg``'s model on its own
        validation molecules (answers: metrics ``valid``, ``n_valid``); as :meth:`query`. Only
        transports of drivers with ``federated_valid`` need it, or whose ``evaluate`` asks the
        partners (private heads over a link: :class:`fedmol.pilot.heads.SiteScores`)."""


def check_schedule(rounds: int, eval_every: int, clients_per_round: int | None = None,
                   patience: int | None = None, select: str = "best-valid") -> None:
    """A run's schedule makes sense (else a one-line error)."""
    from fedmol.errors import FedmolError

    if patience is not None:
        if int(patience) < 1:
            raise FedmolError(f"patience must be >= 1 (rounds without a better pooled validation score), got {patience}")
        if select != "best-valid":
            raise FedmolError("patience stops on the pooled validation score: it needs --select best-valid")

    if int(rounds) < 1:
        raise FedmolError(f"rounds must be >= 1, got {rounds}")
    if int(eval_every) < 1:
        raise FedmolError(f"eval_every must be >= 1 (evaluate every N rounds), got {eval_every}")
    if clients_per_round is not None and int(clients_per_round) < 1:
        raise FedmolError(f"clients_per_round must be >= 1 (or unset: every online partner), got {clients_per_round}")


class RoundDriver:
    """Runs ``rounds`` rounds of ``algo`` over ``transport``; keeps the metrics rows, the sent log,
    bytes and failures; :meth:`finish` puts the selected round's model back."""

    def __init__(self, algo, partners: list[PartnerInfo], transport: Transport, *, seed: int, rounds: int,
                 evaluator: Evaluator, scored: dict, select: str = "best-valid", eval_every: int = 1,
                 clients_per_round: int | None = None, min_partners: int = 0, federated_valid: bool = False,
                 patience: int | None = None, evaluate: Callable | None = None):
        check_schedule(rounds, eval_every, clients_per_round or None, patience, select)
        #: how an evaluated round is scored: :func:`evaluate_widths` (the global model), or a
        #: replacement of the same signature (private heads: each partner's trunk + own head)
        self.evaluate = evaluate or evaluate_widths
        self.patience = patience
        self.stopped: str | None = None  # why the run ended before ``rounds`` (early stopping)
        self.local_steps = self.samples_seen = 0
        self.algo, self.partners, self.transport = algo, list(partners), transport
        self.rounds, self.eval_every = int(rounds), int(eval_every)
        self.clients_per_round, self.min_partners = clients_per_round or None, int(min_partners or 0)
        self.evaluator, self.metric, self.scored = evaluator, evaluator.eval_metric, dict(scored)
        self.federated_valid = federated_valid
        self.widths = tuple(sorted(algo.widths(), reverse=True))
        self.spec = slicing.slice_spec(algo.model)  # how tensors nest: used to model truncated uploads
        self.rng = np.random.default_rng([seed, 11])
        self.seed = seed
        self.selector = RoundSelector(select, self.metric)
        self.rows: list[dict] = []
        self.sent: list[dict] = []
        self.bytes_up = self.bytes_down = self.failures = 0
        self._traffic = dict(down=0, up=0, failures=[], round=0)

    # ------------------------------------------------------------------------------ queries
    def query(self, width: float) -> None:
        """The algorithm's question before evaluating ``width`` (if any), asked of every partner
        the transport can reach; bytes, records and failures go to the current traffic (see
        :meth:`close_traffic`)."""
        q = self.algo.query(width)
        if q is None:
            return
        t = self._traffic
        asked, answers, failures = self.transport.query(t["round"], width, q)
        t["down"] += q.nbytes() * asked
        t["up"] += sum(m.nbytes() for _, m in answers)
        t["failures"] += failures
        self.sent += [dict(round=t["round"], partner=self.transport.partition_id(p), kind="query", bytes=m.nbytes(),
                           arrays=m.describe(), metrics=m.metrics) for p, m in answers]
        self.algo.absorb_query(width, answers)

    def validate_at_partners(self) -> dict[str, float]:
        """Federated validation of the current global model: at each served width, every reachable
        partner whose device can run it scores the model on its own validation molecules; the
        ``n_valid``-weighted mean by width key (NaN where no partner could). The models sent and
        the scores received are counted traffic (``sent.jsonl`` kind ``validate``)."""
        out = {}
        for w in self.widths:
            msg = Message(arrays=slicing.sub_state_dict(self.algo.eval_model(w), w),
                          config={"width": float(w), "model": self.algo.model_config, "purpose": "validate"})
            scored = [(float(m.metrics["n_valid"]), float(m.metrics["valid"])) for _, m in self.ask_to_validate(w, msg)
                      if np.isfinite(m.metrics["valid"]) and m.metrics["n_valid"] > 0]
            n = sum(k for k, _ in scored)
            out[width_key(w)] = sum(k * v for k, v in scored) / n if n else float("nan")
        return out

    def ask_to_validate(self, width: float, msg: Message) -> list[tuple[PartnerInfo, Message]]:
        """``msg`` (a model at ``width`` to score) to every reachable partner that can run ``width``
        (:meth:`Transport.validate`); returns their answers. The models sent and the answers are
        counted traffic (``sent.jsonl`` kind ``validate``), failures the current round's."""
        t = self._traffic
        asked, answers, failures = self.transport.validate(t["round"], width, msg)
        t["down"] += msg.nbytes() * asked
        t["up"] += sum(m.nbytes() for _, m in answers)
        t["failures"] += failures
        self.sent += [dict(round=t["round"], partner=self.transport.partition_id(p), kind="validate", width=float(width),
                           bytes=m.nbytes(), arrays=m.describe(), metrics=m.metrics) for p, m in answers]
        return answers

    def close_traffic(self, rnd: int) -> dict:
        """Add the query traffic since the last call to the totals and return it (``down``, ``up``,
        ``failures``); what follows is recorded as round ``rnd``'s."""
        t, self._traffic = self._traffic, dict(down=0, up=0, failures=[], round=rnd)
        self.bytes_down, self.bytes_up = self.bytes_down + t["down"], self.bytes_up + t["up"]
        return t

    # ------------------------------------------------------------------------------ a round
    def run(self, on_round: Callable[[dict], None] | None = None) -> None:
        """Rounds until ``rounds``, or until ``patience`` evaluated rounds pass without a better
        pooled validation score (early stopping, checked on evaluated rounds only; counted in the
        algorithm's rounds, :meth:`Algorithm.patience_rounds`)."""
        for rnd in range(self.rounds):
            row = self.run_round(rnd)
            if on_round is not None:
                on_round(row)
            patience = self.algo.patience_rounds(self.patience) if self.patience is not None else None
            if "valid" in self.evaluated_at(row) and self.selector.stale(rnd, patience):
                self.stopped = (f"early stop after round {rnd}: no better pooled validation {self.metric} for "
                                f"{rnd - self.selector.best_round} rounds (patience {self.patience}"
                                + (f": {patience} rounds for {self.algo.name})" if patience != self.patience else ")"))
                return

    def evaluated_at(self, row: dict) -> set[str]:
        """The sets (``test``, ``valid``) a metrics row holds scores of."""
        return {k.split("_", 1)[0] for k in row if k.startswith(("test_", "valid_")) and "@" in k}

    def run_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        self.transport.begin_round(rnd)
        online = self._sample_online()
        sends, down = self._configure(rnd, online)
        got = self._collect(rnd, sends)
        for _, reply in got.replies:  # the local work the aggregated updates cost
            self.local_steps += int(reply.metrics.get("steps", 0))
            self.samples_seen += int(reply.metrics.get("samples", 0))
        ts = time.perf_counter()
        agg, skipped = self._aggregate(rnd, got.replies)
        server_time = time.perf_counter() - ts
        self.bytes_up, self.bytes_down = self.bytes_up + got.bytes_up, self.bytes_down + down
        row = self._round_row(rnd, len(online) - len(sends), down, got, skipped)
        te = time.perf_counter()
        failures = got.failures
        if rnd % self.eval_every == 0 or rnd == self.rounds - 1:
            failures = self._add_evaluation(rnd, row, failures)
        self.failures += len(failures)
        self.rows.append(close_row(row, te, t0, got.client_total, server_time, agg))
        return row

    def _sample_online(self) -> list[PartnerInfo]:
        """The partners online this round (each with its device's ``p_online``), at most ``clients_per_round``."""
        rng = self.rng
        online = [p for p in self.partners if rng.random() < p.device.p_online]
        if self.clients_per_round is not None and len(online) > self.clients_per_round:
            pick = rng.choice(len(online), self.clients_per_round, replace=False)
            online = [online[i] for i in sorted(pick)]
        return online

    def _configure(self, rnd: int, online: list[PartnerInfo]) -> tuple[list[tuple[PartnerInfo, Message]], int]:
        """``(the training messages of the partners that take part, their bytes)``."""
        sends, down = [], 0
        for p in online:
            msg = self.algo.configure(rnd, p)
            if msg is not None:
                down += msg.nbytes()
                sends.append((p, msg))
        return sends, down

    def _collect(self, rnd: int, sends: list[tuple[PartnerInfo, Message]]) -> RoundReplies:
        """Deliver the messages and screen what comes back (:func:`screen_reply`); accepted replies are logged
        in :attr:`sent`."""
        rng, name = self.rng, self.transport.partition_id
        dropped = self._drops(rnd, sends)
        answer = self.transport.train(rnd, [(p, msg) for p, msg in sends if p.pid not in dropped])
        got = RoundReplies()
        for p, msg in sends:
            rng.random()  # where the drop used to be drawn: every later draw of the run stays as it was
            if p.pid in dropped:
                got.failures.append(f"partner {name(p)}: dropped out mid-round")
                continue
            delivery = answer(p, msg)
            if delivery.seconds is not None:
                got.client_total += delivery.seconds
                got.client_seconds = max(got.client_seconds, delivery.seconds / p.device.speed)
            if delivery.reply is None:
                got.failures.append(f"partner {name(p)}: {delivery.reason}")
                continue
            failure, cut = screen_reply(self.algo, p.device, msg, delivery.reply, rng, self.spec)
            if failure:
                got.failures.append(f"partner {name(p)}: {failure}")
                continue
            if cut:
                got.truncated.append(f"partner {name(p)}: {cut}")
            got.replies.append((p, delivery.reply))
            self.sent.append(sent_record(rnd, name(p), delivery.reply, self.algo))
            got.bytes_up += delivery.reply.nbytes()
        return got

    def _drops(self, rnd: int, sends: list[tuple[PartnerInfo, Message]]) -> set[int]:
        """The partners of ``sends`` that drop out mid-round (each with its device's ``p_drop``), drawn
        before anything is delivered from a generator seeded by the run seed and ``rnd``: a dropped
        partner is never sent its training message, in-process or over Flower."""
        rng = np.random.default_rng([self.seed, 13, rnd])
        return {p.pid for p, _ in sends if rng.random() < p.device.p_drop}

    def _aggregate(self, rnd: int, replies: list[tuple[PartnerInfo, Message]]) -> tuple[dict, str]:
        """``(the algorithm's server metrics, why the round was not aggregated or "")``; with fewer replies than
        ``min_partners`` the algorithm sees no update and the model stays."""
        if len(replies) < self.min_partners:
            skipped = (f"{len(replies)} usable repl{'y' if len(replies) == 1 else 'ies'} by the deadline, fewer "
                       f"than min-partners {self.min_partners}: not aggregated, global model unchanged")
            return self.algo.aggregate(rnd, []), skipped
        return self.algo.update_global(rnd, replies), ""

    def _round_row(self, rnd: int, sat_out: int, down: int, got: RoundReplies, skipped: str) -> dict:
        """The round's ``metrics.csv`` row before evaluation and timings."""
        name = self.transport.partition_id
        row = dict(round=rnd, participants=len(got.replies), partner_ids=";".join(str(name(p)) for p, _ in got.replies),
                   sat_out=sat_out, failures=len(got.failures), failure_reasons=" | ".join(got.failures),
                   truncated=len(got.truncated), truncations=" | ".join(got.truncated), bytes_up=got.bytes_up,
                   bytes_down=down, sim_client_seconds=round(got.client_seconds, 4))
        if self.min_partners:
            row.update(aggregated=int(not skipped), skipped_reason=skipped)
        return row

    def _add_evaluation(self, rnd: int, row: dict, failures: list[str]) -> list[str]:
        """Score the global model into ``row``, with the evaluation's traffic; returns the round's failures,
        the evaluation's included."""
        self.close_traffic(rnd)
        scores = self.evaluate(self.algo, self.widths, self.scored, self.evaluator, self.query)
        if self.federated_valid:
            scores["valid"] = self.validate_at_partners()
        for where, by_width in scores.items():
            row.update({f"{where}_{self.metric}@{w}": v for w, v in by_width.items()})
        if "valid" in scores:
            self.selector.observe(rnd, scores["valid"], self.algo)
        t = self.close_traffic(rnd)  # evaluation queries are real traffic too
        row["bytes_down"] += t["down"]
        row["bytes_up"] += t["up"]
        if t["failures"]:
            failures = failures + t["failures"]
            row.update(failures=len(failures), failure_reasons=" | ".join(failures))
        return failures

    # ------------------------------------------------------------------------------ the end
    def finish(self) -> int:
        """Put the selected round's model back into the algorithm; returns the selected round."""
        self.selected = self.selector.finish(self.algo, self.rows[-1]["round"])
        self.close_traffic(self.rounds)
        return self.selected

    def scores(self, rnd: int, where: str) -> dict[str, float]:
        return scores_of(self.rows, rnd, where, self.metric)

    def summary(self, *, dataset: str, algorithm: str, valid: dict, per_partner: list[dict], privacy, t_start: float,
                **extra) -> dict:
        """``summary.json`` of the reported model (call :meth:`finish` first); ``extra`` is appended."""
        self.close_traffic(self.rounds)  # queries made after the last round (per-partner scoring)
        return dict(dataset=dataset, metric=self.metric, algorithm=algorithm, test=self.scores(self.selected, "test"),
                    valid=valid, selected_round=self.selected, selection=self.selector.describe(),
                    test_last=self.scores(self.rows[-1]["round"], "test"), per_partner=per_partner,
                    unserved=sum(1 for p in per_partner if p.get("served") is False),
                    rounds_run=len(self.rows), stopped=self.stopped, local_steps=self.local_steps,
                    molecules_seen=self.samples_seen,
                    bytes_up=self.bytes_up, bytes_down=self.bytes_down, failures=self.failures, rounds=self.rounds,
                    privacy=privacy, seconds=round(time.perf_counter() - t_start, 2), **extra)

    def write_files(self, out: Path, summary: dict, algorithm: str) -> None:
        """The run's files besides ``config.json``; ``summary.json`` last and atomically (its presence
        means the run is complete)."""
        if self.scored.get("test") is not None:
            write_predictions(out / "test_predictions.csv", self.algo, self.scored["test"],
                              self.algo.model_config["num_tasks"], self.widths)
        write_metrics(out / "metrics.csv", self.rows)
        with open(out / "sent.jsonl", "w") as f:
            f.writelines(to_json(m) + "\n" for m in self.sent)
        save_safetensors(self.algo.state(), out / "model.safetensors",
                         metadata={"config": to_json(self.algo.model_config), "algorithm": algorithm})
        write_json(out / "summary.json", summary)


# ---------------------------------------------------------------------------------- the steps
def evaluate_widths(algo, widths, datasets: dict, evaluator: Evaluator, query) -> dict[str, dict[str, float]]:
    """The global model's metric at every served width on each of ``datasets`` (name -> dataset),
    as ``{name: {width key: value}}``; ``query(width)`` runs first at each width (an algorithm's
    pre-evaluation question to the partners, e.g. HeteroFL's static BN)."""
    out: dict[str, dict[str, float]] = {name: {} for name in datasets}
    for w in widths:
        query(w)
        model = algo.eval_model(w)
        for name, data in datasets.items():
            out[name][width_key(w)] = score(model, data, evaluator, w)[evaluator.eval_metric]
    return out


def scores_of(rows: list[dict], rnd: int, where: str, metric: str) -> dict[str, float]:
    """``{width key: value}`` of the ``where`` ("test" | "valid") scores in round ``rnd``'s metrics row."""
    row = next(r for r in rows if r["round"] == rnd)
    prefix = f"{where}_{metric}@"
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def close_row(row: dict, t_eval: float, t_round: float, client_total: float, server_time: float, agg: dict) -> dict:
    """The timing and server-metric columns that end a round's ``metrics.csv`` row."""
    row["eval_seconds"] = round(time.perf_counter() - t_eval, 4)
    row["client_seconds"] = round(client_total, 4)
    row["server_seconds"] = round(server_time, 4)
    row["seconds"] = round(time.perf_counter() - t_round, 4)
    row.update({f"server_{k}": v for k, v in agg.items()})
    return row


def screen_reply(algo, device, msg, reply, rng, spec) -> tuple[str | None, str | None]:
    """Everything a delivered reply goes through before aggregation, in one fixed order: NaN/inf
    is rejected, then :func:`link_faults` applies."""
    if not reply.is_finite():
        return "non-finite update rejected", None
    return link_faults(algo, device, msg, reply, rng, spec)


def link_faults(algo, device, msg, reply, rng, spec) -> tuple[str | None, str | None]:
    """Apply a faulty link to a delivered ``reply`` (the device's ``p_upload_loss``, then
    ``p_truncate``), drawing from ``rng`` in a fixed order. Returns ``(failure reason or None,
    truncation note or None)``; a truncated upload's arrays are replaced, in place, by the
    part the algorithm can use (:meth:`Algorithm.truncate_upload`)."""
    if rng.random() < device.p_upload_loss:
        return "upload lost", None
    if rng.random() < device.p_truncate:
        cut = algo.truncate_upload(reply.arrays, msg, rng, spec)
        if cut is None:
            return f"upload truncated, unusable by {algo.name}", None
        reply.arrays, note = cut
        return None, note
    return None, None


def sent_record(rnd: int, partner, reply, algo) -> dict:
    """One line of ``sent.jsonl``: what a partner sent this round, with declared extra disclosures."""
    return dict(round=rnd, partner=partner, kind="update", bytes=reply.nbytes(), arrays=reply.describe(),
                metrics=reply.metrics,
                disclosed={k: reply.arrays[k].tolist() for k in algo.disclosures if k in reply.arrays})


def served_width(widths: tuple[float, ...], cap: float) -> float | None:
    """The widest served width a device with cap ``cap`` can run; None when it can run none (the
    partner gets no federated model: it is left out of the per-partner scores and counted)."""
    fitting = [w for w in widths if w <= cap + 1e-9]
    return max(fitting) if fitting else None


def unserved_entry(partner: int, n_train: int, n_valid: int) -> dict:
    """``per_partner`` entry of a partner whose device runs no served width: no federated model,
    so no score (``served`` false; reports leave it out of per-partner means and count it)."""
    return dict(partner=partner, width=None, served=False, n_train=n_train, n_valid=n_valid, test=None, valid=None)


def task_names(dataset, num_tasks: int) -> list[str]:
    """The dataset's task (label column) names; ``task_<t>`` for a dataset that has none."""
    names = list(getattr(getattr(dataset, "info", None), "tasks", None) or [])
    return names if len(names) == num_tasks else [f"task_{t}" for t in range(num_tasks)]


def prediction_header(tasks: list[str], task_type: str) -> list[str]:
    """Columns of ``test_predictions.csv``: ``row``, ``width``, one column per task (classification: the
    probability of class 1; regression: the prediction), then for classification ``logit:<task>``."""
    return ["row", "width", *tasks, *([f"logit:{t}" for t in tasks] if task_type == "classification" else [])]


def prediction_values(pred, task_type: str) -> list[float]:
    """One molecule's output as the values of :func:`prediction_header`'s task columns."""
    from scipy.special import expit

    x = [float(v) for v in pred]
    return [float(expit(v)) for v in x] + x if task_type == "classification" else x


def write_predictions(path: Path, algo, test, num_tasks: int, widths) -> None:
    """The reported global model's predictions on the global test set, one row per (molecule,
    width), columns :func:`prediction_header` (source row, width, per task the probability or the
    prediction, and for classification the logits too), floats written exactly (``repr``)."""
    task_type = algo.model_config["task_type"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(prediction_header(task_names(test, num_tasks), task_type))
        for width in widths:
            _, pred = predict(algo.eval_model(width), test, width)
            for r, p in zip(test.rows, pred):
                w.writerow([int(r), width_key(width)] + [repr(v) for v in prediction_values(p, task_type)])


def write_metrics(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
