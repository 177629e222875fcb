"""The coordinator: the harness's round loop over real partners (Flower nodes).

It runs the harness's :class:`~fedmol.fl.algorithm.Algorithm` objects unchanged through the same
:class:`~fedmol.fl.driver.RoundDriver` as :func:`fedmol.fl.harness.run_federated`, over a
:class:`LinkTransport` instead of in-process partners, so a pilot on K nodes and the in-process
benchmark with the same arguments give the same metrics, draw for draw. What only a coordinator
does:

1. wait (at most ``connect-timeout``) for the expected nodes; send each a ``hello`` and learn its
   partition id, training-set size and width cap (from the node's own config) and check its
   versions and task; nodes that fail are refused with their reason (``nodes.json``);
2. partners are the accepted nodes in partition-id order; device profiles come from
   ``--devices`` as in the harness (:func:`fedmol.fl.devices.assign_devices` on the reported
   sizes), except that each partner's ``max_width`` is its node's ``width-cap``;
3. in a round, the training messages go out at once and the answers are awaited at most
   ``round-timeout`` seconds; besides the simulated faults of the device profile (drop, upload
   loss, truncation), the real ones are failures with their reason: no reply before the deadline
   (that node is not asked again this round), an error reply (a ClientApp exception, a refusal), a
   reply that does not match the model or is not finite; a round with fewer usable replies than
   ``min-partners`` is not aggregated; a partner whose site restarted (a new node id) takes its
   place again at the start of the next round (:class:`LinkTransport`, ``node_events``);
4. evaluation of the global model at every width on the global test set happens here (the test
   set is held by the benchmark organizer, never a partner); queries an algorithm needs first
   (pooled BN statistics: HeteroFL, FedGen with ``pooled_bn``) go to every partner. On a
   benchmark split (``fedmol pilot demo``, ``--backend flower-sim``) the organizer also knows the partners' validation rows and scores
   the pooled validation set, so ``select = "best-valid"`` reports the same round's model as the
   harness (:mod:`fedmol.fl.selection`); a pilot with a test CSV reports the last round;
5. at the end each partner scores the reported model at its served width on its own validation
   molecules (their union never leaves the partners, so ``summary.json``'s ``valid`` is the
   n_valid-weighted mean of the partners' scores, not the harness's pooled score).

With private heads (run config ``heads = "private"``, :mod:`fedmol.pilot.heads`) the organizer
holds no partner's head, so it scores nothing itself: every evaluated round each partner scores
the trunk plus its own head at its site (:class:`~fedmol.pilot.heads.SiteScores`, the sets of
the harness's ``PrivateHeadScores``; a round's score is the mean over the partners), and the
``per_partner`` entries are the sites' scores of the selected round's trunk with that round's
heads; a site's target columns may differ from the federation's (its task type may not), and a
test CSV is refused.

With differential privacy on (hp ``dp_clip``), the sites clip their updates
(:meth:`~fedmol.fl.algorithm.Algorithm.partner_update`), the algorithm's ``aggregate`` adds the
noise here, and ``summary.json`` / ``config.json`` carry the ``privacy`` accounting of
:func:`fedmol.fl.privacy.account`, exactly as the harness writes it (:mod:`fedmol.fl.privacy`).

Links: :class:`GridLink` over a Flower ``Grid`` (push, then pull only the pending replies until
the deadline), or :class:`LocalLink` in-process (tests).
"""
from __future__ import annotations

import base64
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from fedmol.fl.message import Message
from fedmol.jsonio import to_json, write_json
from fedmol.pilot.config import PilotSettings
from fedmol.pilot.records import (HELLO, MESSAGE_TYPES, QUERY, TRAIN, VALIDATE, IncompatibleVersion, PilotError,
                                  check_compatible, error_reason, from_record_dict, record_strings, to_record_dict)

DEADLINE = "no reply within the deadline"


@dataclass
class Reply:
    ok: bool
    msg: Message | None = None
    meta: dict = field(default_factory=dict)
    reason: str = ""
    timed_out: bool = False  # no answer: deadline passed, or the SuperLink reports the node unavailable


class Link(Protocol):
    def node_ids(self) -> list[int]: ...

    def exchange(self, kind: str, sends: dict[int, tuple[Message, dict]], group: str,
                 timeout: float) -> dict[int, Reply]: ...


def _decode(content, node: int, inbox: list | None) -> Reply:
    """A reply's content as a fedmol message, with the sender's versions checked."""
    if inbox is not None:
        inbox.append(content)
    try:
        msg, meta = from_record_dict(content)
        check_compatible(meta, f"partner node {node}")
    except IncompatibleVersion as e:
        return Reply(False, reason=f"refused: {e}")
    except (PilotError, ValueError, TypeError, KeyError) as e:
        return Reply(False, reason=f"malformed reply: {e}")
    return Reply(True, msg, meta)


class GridLink:
    """Messages over a Flower ``Grid``: push all, then pull the pending replies until the deadline.

    Why not Flower's ``Grid.send_and_receive`` (flwr 1.42, read in ``superlink/grid/http_grid.py``):
    it sleeps 3 s between pulls on a deployment's grid (here ``poll``, 0.2 s: a round makes up to
    three exchanges), a transient pull error ends the run instead of being retried until the
    deadline, a message the SuperLink refuses to accept fails the whole push, and it returns the
    replies without saying which node stayed silent, which the round's failure records need."""

    def __init__(self, grid, poll: float = 0.2, inbox_path: str | Path | None = None):
        self.grid, self.poll = grid, poll
        self.inbox_path = Path(inbox_path) if inbox_path else None

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def _push(self, messages: list) -> list[str | None]:
        try:
            return list(self.grid.push_messages(messages))
        except Exception:  # noqa: BLE001 - find the message that cannot be pushed, keep the others
            ids = []
            for m in messages:
                try:
                    ids += list(self.grid.push_messages([m]))
                except Exception:  # noqa: BLE001
                    ids.append(None)
            return ids

    def exchange(self, kind: str, sends: dict[int, tuple[Message, dict]], group: str,
                 timeout: float) -> dict[int, Reply]:
        from flwr.app import Message as FlowerMessage

        nodes = list(sends)
        messages = [FlowerMessage(to_record_dict(m, meta), node, MESSAGE_TYPES[kind], ttl=float(timeout) + 30.0,
                                  group_id=group) for node, (m, meta) in sends.items()]
        out: dict[int, Reply] = {}
        pending: dict[str, int] = {}
        for node, mid in zip(nodes, self._push(messages)):
            if mid:
                pending[mid] = node
            else:
                out[node] = Reply(False, reason="the SuperLink did not accept the message for this node")
        deadline = time.monotonic() + timeout
        inbox: list | None = [] if self.inbox_path else None
        while pending and time.monotonic() < deadline:
            try:
                got = list(self.grid.pull_messages(list(pending)))
            except Exception:  # noqa: BLE001 - a transient SuperLink error: retry until the deadline
                got = []
            for r in got:
                node = pending.pop(r.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if r.has_error():
                    gone = int(r.metadata.src_node_id) != int(node)  # the SuperLink answers for a node it lost
                    reason = error_reason(r.error.reason)
                    out[node] = Reply(False, reason=f"unreachable, the SuperLink says: {reason}" if gone else reason,
                                      timed_out=gone)
                else:
                    out[node] = _decode(r.content, node, inbox)
            if pending:
                time.sleep(self.poll)
        for node in pending.values():
            out[node] = Reply(False, reason=f"{DEADLINE} ({timeout:g} s)", timed_out=True)
        if inbox:
            self._record(kind, group, inbox)
        return out

    def _record(self, kind: str, group: str, inbox: list) -> None:
        """Append every received record verbatim (arrays base64) to the inbox file (audits, tests)."""
        self.inbox_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.inbox_path, "a") as f:
            for content in inbox:
                rec = {"kind": kind, "group": group, "strings": record_strings(content), "arrays": {}}
                for name, ar in content.array_records.items():
                    for k, a in ar.items():
                        rec["arrays"][f"{name}/{k}"] = {"dtype": str(a.dtype), "shape": list(a.shape),
                                                        "data": base64.b64encode(a.data).decode()}
                f.write(to_json(rec) + "\n")


class LocalLink:
    """In-process partners (no Flower): each message still goes through the wire conversion."""

    def __init__(self, node_configs: dict[int, dict], run_id: int | None = None):
        self.node_configs = node_configs
        self.dead: set[int] = set()  # nodes that answer the hello, then never again (a machine that died)
        #: the run's id at the sites (what a Flower run id is: their private-heads state is kept by it)
        self.run_id = run_id if run_id is not None else int.from_bytes(os.urandom(6), "big")

    def node_ids(self) -> list[int]:
        return sorted(self.node_configs)

    def exchange(self, kind: str, sends: dict[int, tuple[Message, dict]], group: str,
                 timeout: float) -> dict[int, Reply]:
        from fedmol.pilot.site import serve

        out = {}
        for node, (m, meta) in sends.items():
            if node in self.dead and kind != HELLO:
                out[node] = Reply(False, reason=f"{DEADLINE} ({timeout:g} s)", timed_out=True)
                continue
            msg, meta2 = from_record_dict(to_record_dict(m, meta))
            try:
                reply, info = serve(kind, msg, meta2, self.node_configs[node], run_id=self.run_id)
            except Exception as e:  # noqa: BLE001 - what Flower turns into an error reply
                out[node] = Reply(False, reason=str(e))
                continue
            out[node] = _decode(to_record_dict(reply, info), node, None)
        return out


# ------------------------------------------------------------------------------------------------
@dataclass
class Partner:
    node_id: int
    partition_id: int
    info: object  # PartnerInfo
    n_valid: int
    width_cap: float


@dataclass
class Schema:
    """The federation's task when the coordinator holds no molecule at all: what every partner's
    data must be (task type, target columns in order)."""

    task_type: str
    tasks: list[str]
    name: str = "pilot"

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


def load_test_set(s: PilotSettings):
    """``(dataset or schema, test set or None, split or None)``: the global test set the organizer
    holds (a split's test rows, or a test CSV), or only the federation's :class:`Schema`."""
    from fedmol.data.dataset import load_dataset
    from fedmol.data.splits import dataset_for_split, read_split

    if s.split:
        split = read_split(s.split)
        ds = dataset_for_split(split, s.data_dir or None, csv=s.split_csv or None, progress=False)
        return ds, ds.select_rows(split["test"]), split
    if not s.test_csv:
        return Schema(s.task, [c.strip() for c in s.target_cols.split(",") if c.strip()]), None, None
    ds = load_dataset(csv=s.test_csv, smiles_col=s.smiles_col or None, target_cols=s.target_cols or None,
                      task=s.task or None, progress=False)
    return ds, ds, None


def wait_for_nodes(link: Link, expected: int, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        nodes = link.node_ids()
        if len(nodes) >= expected or time.monotonic() >= end:
            return nodes
        time.sleep(0.5)


def _meta(kind: str, rnd: int, algorithm: str) -> dict:
    return {"kind": kind, "round": int(rnd), "algorithm": algorithm}


def _check_reply(reply: Message, algo, n_train: int) -> str | None:
    """Why a training reply cannot be aggregated (None: it can)."""
    bad = algo.upload_problem(reply)
    if bad:
        return bad
    claimed = reply.metrics.get("n_train")
    if claimed is not None and int(claimed) != int(n_train):
        return f"reply claims n_train {claimed}, the partner announced {n_train}"
    return None


def greet(link: Link, nodes: list[int], ds, algorithm: str, timeout: float, group: str,
          heads: str = "shared") -> dict[int, Reply]:
    """Send ``nodes`` a hello (the task and the run's ``heads``); a reply that :func:`_check_hello`
    refuses becomes a refusal."""
    hello = Message(config={"task_type": ds.task_type, "num_tasks": ds.num_tasks, "heads": heads})
    replies = link.exchange(HELLO, {n: (hello, _meta(HELLO, -1, algorithm)) for n in nodes}, group, timeout)
    for n in nodes:
        if replies[n].ok:
            bad = _check_hello(replies[n], ds, heads)
            if bad:
                replies[n] = Reply(False, reason=bad)
    return replies


def _other_split(r: Reply, split) -> str | None:
    """Why a hello reply's split file is not the coordinator's (None: it is, or there is none)."""
    sha = r.msg.config.get("split_sha256")
    if split is not None and sha and sha != split["sha256"]:
        return f"its split file (sha256 {sha[:12]}...) is not the coordinator's ({split['sha256'][:12]}...)"
    return None


def _check_hello(r: Reply, ds, heads: str = "shared") -> str | None:
    """Why a hello reply cannot be accepted (None: it can). With private heads a site's target
    columns may differ from the federation's (its own head predicts them), its task type may not."""
    from fedmol.models.slicing import WIDTHS
    from fedmol.pilot.site import task_type_problem

    try:
        int(r.meta["partition-id"])
        facts = {k: float(r.msg.metrics[k]) for k in ("n_train", "n_valid", "width_cap")}
    except (KeyError, TypeError, ValueError) as e:
        return f"malformed hello reply: {e!r} missing or not a number"
    if not any(abs(facts["width_cap"] - w) < 1e-9 for w in WIDTHS):
        return f"width-cap {facts['width_cap']} is not one of the widths {list(WIDTHS)}"
    if heads == "private":
        return task_type_problem(r.msg.config.get("task_type"), ds.task_type)
    tasks = r.msg.config.get("tasks") or []
    if r.msg.config.get("task_type") != ds.task_type or len(tasks) != ds.num_tasks:
        return (f"its data is {r.msg.config.get('task_type')} with {len(tasks)} task(s), the test set is "
                f"{ds.task_type} with {ds.num_tasks}")
    want = list(getattr(ds, "tasks", None) or getattr(getattr(ds, "info", None), "tasks", None) or [])
    if want and [str(t) for t in tasks] != [str(t) for t in want]:  # same columns, same order: same meaning
        return f"its target columns are {list(tasks)}, the federation's are {want} (same names, same order)"
    return None


def run_coordinator(link: Link, s: PilotSettings, log=print) -> dict:
    """Run a pilot over ``link``; write the harness's result files to ``s.out_dir``; return the summary."""
    from fedmol.fl.setup import clear_results

    out = clear_results(Path(s.out_dir))

    def log_and_record(message: str) -> None:  # the caller's log and out-dir/coordinator.log
        log(message)
        with open(out / "coordinator.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    try:
        return _run(link, s, out, log_and_record)
    except Exception as e:
        log_and_record(f"[fedmol pilot] failed: {e}")
        write_json(out / "pilot_error.json", {"error": str(e), "type": type(e).__name__})
        raise


def _run(link: Link, s: PilotSettings, out: Path, log) -> dict:
    from fedmol.fl.registry import get_algorithm
    from fedmol.fl.setup import start_algorithm, summary_extras

    if s.threads > 0:
        torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    data = _organizer_data(s)
    name = get_algorithm(s.algorithm).name or s.algorithm
    admission = _admit_nodes(link, s, data, name, log)
    write_json(out / "nodes.json", admission.report)
    if not admission.accepted:
        raise PilotError("no partner joined the federation: " +
                         " | ".join(f"node {e['node_id']}: {e.get('reason')}" for e in admission.report))
    partners = _make_partners(admission.accepted, s)
    algo, dp = start_algorithm(s, data.ds, [pt.info for pt in partners], s.heads)
    write_json(out / "config.json", _resolved(s, algo, data.ds, data.test, data.split, partners, admission.report, dp))
    transport = LinkTransport(link, partners, algo, name, s.round_timeout, rejoin=dict(
        ds=data.ds, split=data.split, known=set(admission.node_ids), log=log, heads=s.heads))
    driver = _round_driver(algo, partners, transport, data, s)
    driver.run(_progress_writer(out, log))
    selected = driver.finish()
    test_scores = driver.scores(selected, "test")
    validation = _validate_at_partners(transport, driver, partners, data, test_scores, s.rounds)
    valid, valid_kind = _reported_valid(driver, selected, data, validation.per_partner)
    summary = driver.summary(
        dataset=data.ds.name, algorithm=s.algorithm, valid=valid, per_partner=validation.per_partner, privacy=dp,
        t_start=t_start, backend="flower", valid_kind=valid_kind, test_source=_test_source(s), partners=len(partners),
        refused=[e for e in admission.report if e["status"] != "accepted"], node_events=transport.events,
        validation_failures=validation.failures, **summary_extras(algo), **_heads_extra(s))
    if transport.events:
        write_json(out / "nodes.json", admission.report + transport.events)
    driver.write_files(out, summary, s.algorithm)
    log(_done_line(test_scores, valid, driver.metric, selected, s))
    summary["history"] = driver.rows
    return summary


@dataclass
class OrganizerData:
    """What the organizer holds: the dataset (or only the :class:`Schema`), the global test set, the
    split file, and the sets the coordinator scores itself (``scored``)."""

    ds: object
    test: object | None
    split: dict | None
    evaluator: object
    scored: dict
    federated_valid: bool  # the partners score the model on their own validation molecules every round
    private_heads: bool = False  # only the sites score (their own models), every round (fedmol.pilot.heads)


def _organizer_data(s: PilotSettings) -> OrganizerData:
    from fedmol.evaluate import Evaluator
    from fedmol.pilot.config import PRIVATE_TEST_CSV

    private = s.heads == "private"
    if private and s.test_csv:
        raise PilotError(f"run-config test-csv: {PRIVATE_TEST_CSV}")
    ds, test, split = load_test_set(s)
    evaluator = Evaluator(ds.task_type, ds.num_tasks)
    scored = {} if test is None else {"test": test}
    if split is not None:  # the organizer's split file lists the partners' validation rows (as the harness)
        scored["valid"] = ds.select_rows(sorted(r for p in split["partners"] for r in p["valid"]))
    # otherwise the partners score the model on their own validation molecules (only the scores leave them)
    federated_valid = split is None and (s.select == "best-valid" or test is None) and not private
    return OrganizerData(ds, test, split, evaluator, scored, federated_valid, private)


@dataclass
class Admission:
    """The nodes greeted at the start and what became of them."""

    node_ids: list[int]
    report: list[dict] = field(default_factory=list)  # one entry per node: nodes.json
    accepted: dict[int, tuple[int, Reply]] = field(default_factory=dict)  # partition id -> (node id, hello reply)


def _admit_nodes(link: Link, s: PilotSettings, data: OrganizerData, algorithm: str, log) -> Admission:
    """Wait for the expected nodes, greet them and accept or refuse each (with its reason)."""
    node_ids = wait_for_nodes(link, s.partners, s.connect_timeout)
    log(f"[fedmol pilot] {len(node_ids)} node(s) connected (expected {s.partners})")
    if not node_ids:
        raise PilotError(f"no partner node connected within {s.connect_timeout:g} s")
    replies = greet(link, node_ids, data.ds, algorithm, s.round_timeout, "hello", s.heads)
    claimed = _claimed_partitions(node_ids, replies)
    admission = Admission(node_ids)
    for n in node_ids:
        entry, r = _judge_hello(n, replies[n], claimed, data.split)
        if r.ok:
            admission.accepted[entry["partition_id"]] = (n, r)
        else:
            entry["reason"] = r.reason
            log(f"[fedmol pilot] node {n} refused: {r.reason}")
        admission.report.append(entry)
    return admission


def _claimed_partitions(node_ids: list[int], replies: dict[int, Reply]) -> dict[int, list[int]]:
    """Partition id -> the nodes whose hello claims it."""
    claimed: dict[int, list[int]] = {}
    for n in node_ids:
        if replies[n].ok:
            claimed.setdefault(int(replies[n].meta["partition-id"]), []).append(n)
    return claimed


def _judge_hello(node_id: int, r: Reply, claimed: dict[int, list[int]], split) -> tuple[dict, Reply]:
    """A node's ``nodes.json`` entry and its hello reply, or a refusal that says why."""
    entry = {"node_id": node_id, "status": "refused"}
    if not r.ok:
        return entry, r
    partition_id = int(r.meta["partition-id"])
    entry.update(partition_id=partition_id, n_train=int(r.msg.metrics["n_train"]),
                 n_valid=int(r.msg.metrics["n_valid"]), width_cap=float(r.msg.metrics["width_cap"]),
                 source=r.msg.config.get("source"),
                 versions={k: r.meta.get(k) for k in ("fedmol-version", "featurizer-version", "protocol", "code")})
    if len(claimed[partition_id]) > 1:
        return entry, Reply(False, reason=f"partition-id {partition_id} is claimed by several nodes "
                                          f"{claimed[partition_id]}: all refused")
    other_split = _other_split(r, split)
    if other_split:
        return entry, Reply(False, reason=other_split)
    if entry["n_train"] < 1:
        return entry, Reply(False, reason="it has no training molecule")
    entry["status"] = "accepted"
    return entry, r


def _make_partners(accepted: dict[int, tuple[int, Reply]], s: PilotSettings) -> list[Partner]:
    """The accepted nodes in partition-id order, with the harness's device draw capped at each node's width."""
    from fedmol.fl.algorithm import PartnerInfo
    from fedmol.fl.setup import partner_devices

    partition_ids = sorted(accepted)
    facts = [accepted[p][1].msg.metrics for p in partition_ids]
    sizes = [int(f["n_train"]) for f in facts]
    devices = partner_devices(s, sizes, [f["width_cap"] for f in facts])
    return [Partner(accepted[p][0], p, PartnerInfo(i, sizes[i], devices[i]), int(facts[i]["n_valid"]),
                    devices[i].max_width) for i, p in enumerate(partition_ids)]


def _round_driver(algo, partners: list[Partner], transport: LinkTransport, data: OrganizerData, s: PilotSettings):
    """The harness's :class:`~fedmol.fl.driver.RoundDriver`, over the network."""
    from fedmol.fl.driver import RoundDriver
    from fedmol.pilot.heads import SiteScores

    at_sites = SiteScores(with_test=data.split is not None) if data.private_heads else None
    driver = RoundDriver(algo, [pt.info for pt in partners], transport, seed=s.seed, rounds=s.rounds,
                         evaluator=data.evaluator, scored=data.scored, select=s.select, eval_every=s.eval_every,
                         clients_per_round=s.clients_per_round, min_partners=s.min_partners, patience=s.patience,
                         federated_valid=data.federated_valid, evaluate=at_sites)
    if at_sites is not None:
        at_sites.driver = driver
    return driver


def _progress_writer(out: Path, log):
    """What the driver calls with each closed round: a log line and a line of ``progress.jsonl``."""
    def on_round(row: dict) -> None:
        log(f"[fedmol pilot] {round_line(row)}")
        with open(out / "progress.jsonl", "a") as f:
            f.write(to_json(row) + "\n")
    return on_round


@dataclass
class PartnerValidation:
    """The end of the run at the partners: one ``per_partner`` summary entry each, and what failed."""

    per_partner: list[dict]
    failures: list[str]


def _validate_at_partners(transport: LinkTransport, driver, partners: list[Partner], data: OrganizerData,
                         test_scores: dict, rnd: int) -> PartnerValidation:
    """Each partner scores the reported model at its served width on its own validation molecules
    (with private heads: the reported trunk with its own head of the selected round, and on the
    split's test rows where it holds the split)."""
    from fedmol.fl.driver import served_width, unserved_entry

    served = {pt.node_id: served_width(driver.widths, driver.algo.serving_cap(pt.width_cap)) for pt in partners}
    models = _served_models(driver, sorted({w for w in served.values() if w is not None}, reverse=True), data)
    got = transport.validate_served(rnd, {pt.node_id: models[served[pt.node_id]][0] for pt in partners
                                          if served[pt.node_id] is not None})
    result = PartnerValidation([], list(driver.close_traffic(rnd)["failures"]))
    for pt in partners:
        w = served[pt.node_id]
        if w is None:
            result.per_partner.append(unserved_entry(pt.partition_id, pt.info.n_train, pt.n_valid))
            continue
        r = got.get(pt.node_id) or Reply(False, reason="not asked: it missed the last deadline")
        result.per_partner.append(_served_entry(pt, w, r, test_scores, models[w][1], data.private_heads))
        if not r.ok:
            result.failures.append(f"partner {pt.partition_id}: validation failed: {r.reason}")
    return result


def _served_models(driver, widths: list[float], data: OrganizerData) -> dict[float, tuple[Message, dict]]:
    """Width -> (the reported model at that width to validate, its secondary test scores: PR-AUC beside
    ROC-AUC, and per task, as ``fedmol run``)."""
    from fedmol.fl.harness import secondary_scores
    from fedmol.models import slicing
    from fedmol.pilot.heads import REPORT, trunk_message
    from fedmol.training import score

    algo, models = driver.algo, {}
    for w in widths:
        driver.query(w)
        if data.private_heads:  # the sites score it with their own heads of the selected round
            models[w] = (trunk_message(algo, w, REPORT, head_round=driver.selected), {})
            continue
        msg = Message(arrays=slicing.sub_state_dict(algo.eval_model(w), w),
                      config={"width": float(w), "model": algo.model_config, "purpose": "validate"})
        second = (secondary_scores(score(algo.eval_model(w), data.test, data.evaluator, w), driver.metric)
                  if data.test is not None else {})
        models[w] = (msg, second)
    return models


def _served_entry(pt: Partner, width: float, r: Reply, test_scores: dict, second: dict, private: bool) -> dict:
    """A served partner's ``per_partner`` entry: its validation score, or why there is none (with
    private heads: the scores of its own model, from its site)."""
    from fedmol.pilot.heads import own_model_entry
    from fedmol.training import width_key

    entry = dict(partner=pt.partition_id, width=width, served=True, n_train=pt.info.n_train, n_valid=pt.n_valid)
    if private:
        entry.update(own_model_entry(r.msg if r.ok else None))
    else:
        entry.update(test=test_scores.get(width_key(width), float("nan")), **second,
                     valid=float(r.msg.metrics["valid"]) if r.ok else float("nan"))
    if not r.ok:
        entry["valid_error"] = r.reason
    return entry


def _reported_valid(driver, selected: int, data: OrganizerData, per_partner: list[dict]) -> tuple[dict, str]:
    """The summary's ``valid`` scores and what they are."""
    if data.private_heads:
        return driver.scores(selected, "valid"), PRIVATE_VALID_KIND[data.split is not None]
    if "valid" in data.scored:  # the organizer holds the pooled validation molecules (a split file): as `fedmol run`
        return (driver.scores(selected, "valid"),
                "the selected round's model on the pooled validation molecules of every partner (as fedmol run)")
    # a pilot: only the partners' own scores left them
    return (_weighted_valid(driver.widths, per_partner),
            "n_valid-weighted mean of the partners' own validation scores at their served width")


def _weighted_valid(widths, per_partner: list[dict]) -> dict[str, float]:
    """Width key -> the n_valid-weighted mean of the partners' finite validation scores at that width."""
    from fedmol.training import width_key

    valid = {}
    for w in widths:
        vals = [(e["n_valid"], e["valid"]) for e in per_partner
                if e["width"] == w and math.isfinite(e["valid"]) and e["n_valid"] > 0]
        if vals:
            valid[width_key(w)] = sum(n * v for n, v in vals) / sum(n for n, _ in vals)
    return valid


def _done_line(test_scores: dict, valid: dict, metric: str, selected: int, s: PilotSettings) -> str:
    shown = test_scores or valid
    return (f"[fedmol pilot] done: {'test' if test_scores else 'partners valid'} {metric} "
            + ", ".join(f"@{k} {v:.4f}" for k, v in shown.items())
            + (f" (round {selected}, {s.select})" if selected != s.rounds - 1 else ""))


class LinkTransport:
    """The coordinator's :class:`~fedmol.fl.driver.Transport`: messages to the partners' nodes over
    a :class:`Link`. A node that missed a deadline is not asked again until the next round.

    **Rejoining** (``rejoin``: the dataset, split, node ids already greeted and a log function):
    at the start of every round, a node the coordinator has not seen before is greeted (a site
    whose machine or SuperNode restarted comes back under a new node id). It takes over its
    partner's place when it serves an accepted partner's partition with the same training-set
    size, width cap (and split file), and that partner's node is gone or missed the last
    deadline; then the partner simply goes on from the next round. Anything else is refused with
    its reason: the federation's partners are fixed at the start (the device draw depends on
    them). Every such event is in ``events`` (and ``nodes.json``)."""

    def __init__(self, link: Link, partners: list[Partner], algo, algorithm: str, timeout: float,
                 rejoin: dict | None = None):
        self.link, self.algo, self.algorithm, self.timeout = link, algo, algorithm, timeout
        self.by_index = {pt.info.pid: pt for pt in partners}
        self.unresponsive: set[int] = set()
        self.rejoin = rejoin
        self.events: list[dict] = []

    def partition_id(self, partner) -> int:
        return self.by_index[partner.pid].partition_id

    def begin_round(self, rnd: int) -> None:
        missed, self.unresponsive = self.unresponsive, set()
        if self.rejoin is not None:
            self._greet_newcomers(rnd, missed)

    def _greet_newcomers(self, rnd: int, missed: set[int]) -> None:
        known, log = self.rejoin["known"], self.rejoin["log"]
        listed = self.link.node_ids()
        new = [n for n in listed if n not in known]
        if not new:
            return
        known.update(new)
        replies = greet(self.link, new, self.rejoin["ds"], self.algorithm, self.timeout, f"hello-{rnd}",
                        self.rejoin.get("heads", "shared"))
        by_partition = {pt.partition_id: pt for pt in self.by_index.values()}
        for n in new:
            r, event = replies[n], {"round": rnd, "node_id": n, "status": "refused"}
            reason = None if r.ok else r.reason
            if r.ok:
                partition_id = int(r.meta["partition-id"])
                pt = by_partition.get(partition_id)
                event["partition_id"] = partition_id
                n_train, cap = int(r.msg.metrics["n_train"]), float(r.msg.metrics["width_cap"])
                if pt is None:
                    reason = (f"partition-id {partition_id} is not a partner of this run: the partners are fixed "
                              "when the run starts")
                elif pt.node_id in listed and pt.node_id not in missed:
                    reason = f"partition-id {partition_id} is served by node {pt.node_id}, which is still connected"
                elif n_train != pt.info.n_train or abs(cap - pt.width_cap) > 1e-9:
                    reason = (f"it has {n_train} training molecules and width-cap {cap:g}, partner {partition_id} had "
                              f"{pt.info.n_train} and {pt.width_cap:g}")
                else:
                    reason = _other_split(r, self.rejoin["split"])
                if reason is None:
                    event.update(status="rejoined", replaces=pt.node_id)
                    pt.node_id = n
            if reason:
                event["reason"] = reason
            self.events.append(event)
            log(f"[fedmol pilot] round {rnd}: node {n} " + (f"rejoined as partner {event['partition_id']} (was node "
                                                              f"{event['replaces']})" if reason is None
                                                              else f"refused: {reason}"))

    def train(self, rnd: int, sends):
        from fedmol.fl.driver import Delivery

        nodes = {p.pid: self.by_index[p.pid].node_id for p, _ in sends}
        got = self.link.exchange(TRAIN, {nodes[p.pid]: (msg, _meta(TRAIN, rnd, self.algorithm)) for p, msg in sends},
                                 str(rnd), self.timeout)
        def answer(partner, msg) -> Delivery:
            r = got[nodes[partner.pid]]
            if not r.ok:
                if r.timed_out:
                    self.unresponsive.add(nodes[partner.pid])
                return Delivery(None, r.reason)
            bad = _check_reply(r.msg, self.algo, partner.n_train)  # a reply from the network may not even fit the model
            return Delivery(None if bad else r.msg, bad or "", float(r.meta.get("seconds", 0.0)))
        return answer

    def validate_served(self, rnd: int, models: dict[int, Message]) -> dict[int, Reply]:
        """The end of the run: each reachable node validates its model (node id -> the model at its served width)."""
        sends = {node: (msg, _meta(VALIDATE, rnd, self.algorithm)) for node, msg in models.items()
                 if node not in self.unresponsive}
        return self.link.exchange(VALIDATE, sends, "validate", self.timeout)

    def query(self, rnd: int, width: float, q: Message):
        return self._ask(QUERY, rnd, width, q, list(self.by_index.values()))

    def validate(self, rnd: int, width: float, msg: Message):
        able = [pt for pt in self.by_index.values() if self.algo.serving_cap(pt.width_cap) >= width - 1e-9]
        return self._ask(VALIDATE, rnd, width, msg, able)

    def _ask(self, kind: str, rnd: int, width: float, msg: Message, partners: list[Partner]):
        """``msg`` to the reachable ``partners``: ``(asked, answers, failure reasons)``."""
        from fedmol.training import width_key

        targets = [pt for pt in partners if pt.node_id not in self.unresponsive]
        got = self.link.exchange(kind, {pt.node_id: (msg, _meta(kind, rnd, self.algorithm)) for pt in targets},
                                 f"{kind}-{rnd}-{width_key(width)}", self.timeout)
        answers, failures = [], []
        for pt in targets:
            r = got[pt.node_id]
            if r.ok and kind == VALIDATE and not _valid_answer(r.msg):
                r = Reply(False, reason=f"malformed validation reply: {r.msg.metrics}")
            if r.ok:
                answers.append((pt.info, r.msg))
            else:
                failures.append(f"partner {pt.partition_id}: {kind} at width {width:g} failed: {r.reason}")
                if r.timed_out:
                    self.unresponsive.add(pt.node_id)
        return len(targets), answers, failures


def _valid_answer(msg: Message) -> bool:
    try:
        return float(msg.metrics["n_valid"]) >= 0 and isinstance(float(msg.metrics["valid"]), float)
    except (KeyError, TypeError, ValueError):
        return False


def _test_source(s: PilotSettings) -> str:
    if s.heads == "private":
        return ("split test rows, scored at the sites (each partner's own model on its own tasks)" if s.split else
                "none: with private heads only a site can score its own model, and the sites hold no test set "
                "(test scores are absent: partners' validation scores only)")
    if s.split:
        return "split test rows"
    return "test-csv" if s.test_csv else "none: the coordinator holds no test set (partners' validation scores only)"


def _heads_extra(s: PilotSettings) -> dict:
    """What ``summary.json`` says of the heads (as ``fedmol run``: ``heads`` only when private)."""
    return {"heads": "private"} if s.heads == "private" else {}


#: ``valid_kind`` with private heads, by whether the sites hold the split file
PRIVATE_VALID_KIND = {
    True: "mean over the partners able to run each width of their own models' scores (the selected round's trunk "
          "with its heads) on the pooled validation molecules restricted to their tasks, scored at the sites "
          "(as fedmol run --heads private)",
    False: "mean over the partners able to run each width of their own models' scores (the selected round's trunk "
           "with its heads) on their own validation molecules, scored at the sites"}


def _resolved(s: PilotSettings, algo, ds, test, split, partners: list[Partner], nodes_report: list,
              dp: dict | None = None) -> dict:
    """``config.json`` of a pilot: the harness's, with the nodes and the pilot's own settings."""
    from fedmol.config import RunConfig
    from fedmol.fl.setup import resolved_config

    spec = split["spec"] if split else {}
    run = RunConfig(**{**s.shared(), "partners": len(partners), "dataset": ds.name, "alpha": spec.get("alpha"),
                       "quantity_skew": spec.get("quantity_skew", 0.0), "heads": s.heads})
    entries = [dict(pid=pt.partition_id, node_id=pt.node_id, n_train=pt.info.n_train, n_valid=pt.n_valid,
                    device=pt.info.device.to_dict()) for pt in partners]
    sent = dict(log="sent.jsonl (what the coordinator received from each partner)",
                partner_audit="each site's own audit.jsonl (its audit-dir)")
    return resolved_config(run, algo, split, entries, 0 if test is None else len(test), dp, sent=sent,
                           nodes=nodes_report, pilot=dict(backend="flower", round_timeout=s.round_timeout,
                                                          connect_timeout=s.connect_timeout, test_source=_test_source(s)))


def round_line(row: dict) -> str:
    """One closed round of ``progress.jsonl`` as a line: partners, failures, a skip, the scores."""
    skipped = row.get("skipped_reason")
    return (f"round {row['round']}: {row['participants']} partner(s), {row['failures']} failure(s)"
            + (f", SKIPPED ({skipped})" if skipped else "")
            + "".join(f", {k.split('_', 1)[0]} {k.split('_', 1)[1]} {v:.4f}" for k, v in row.items()
                      if k.startswith(("test_", "valid_")) and isinstance(v, (int, float))))
