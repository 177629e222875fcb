"""The in-process benchmark harness: one loop that runs any :class:`Algorithm` fairly.

Everything that differs between methods lives in the algorithm; everything here is shared:
the split (a frozen file, or one made on the fly with the same code), the partners and their
device profiles, sampling and failures, byte accounting, evaluation with the one Evaluator at
every width the algorithm serves, and the result files.

A round (seeded: the same seed gives identical metrics):

1. each partner is online with its device's ``p_online``; at most ``clients_per_round`` of the
   online ones are sampled;
2. ``configure`` gives each sampled partner its message (or None: it sits out); bytes down are
   counted from the tensors in the message;
3. a partner drops mid-round with its device's ``p_drop`` (after downloading); otherwise it runs
   ``client_update`` on its own data (through :meth:`Algorithm.partner_update`, which also clips
   the update when differential privacy is on, :mod:`fedmol.fl.privacy`); a reply with NaN/inf is
   rejected; a faulty link loses the upload (``p_upload_loss``) or truncates it at a random
   narrower width (``p_truncate``): what arrives is the sub-model of that width, which algorithms
   with ``accepts_partial_uploads`` aggregate and the others must discard; each failure is logged
   with its reason and counted in ``metrics.csv`` (truncations in their own columns);
4. ``aggregate`` over the replies that arrived, then ``server_step``;
5. every ``eval_every`` rounds and after the last: evaluation of the global model at each width on
   the global test set (held-out scaffolds) and on the pooled validation molecules.

The run reports one round's global model (``select``, :mod:`fedmol.fl.selection`): by default the
evaluated round with the best pooled validation score -- the rule the references' early stopping
follows -- else the last round's.

Partners are never held as model copies: a client update builds its model from the message and
drops it after replying, and partners' datasets are index views of one shared dataset.

Files in ``out_dir``: ``config.json`` (fully resolved), ``metrics.csv`` (one row per round; test
and validation scores on evaluated rounds), ``summary.json`` (the reported model's ``test`` and
``valid`` by width, ``selected_round``, ``test_last``; ``privacy``: the DP accounting of
:func:`fedmol.fl.privacy.account`, null when DP is off, also in config.json),
``model.safetensors`` (the reported global weights), ``test_predictions.csv`` (the reported
model's predictions on the global test set at every width)
and ``sent.jsonl`` (one line per message a partner sent: array names, shapes, bytes, metrics, and
the values of anything the algorithm declares as extra disclosure, e.g. FedGen's label counts).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import save_file

import fedmol
from fedmol.data.dataset import MoleculeDataset, load_dataset
from fedmol.data.splits import dataset_for_split, make_split, read_split
from fedmol.evaluate import Evaluator
from fedmol.fl import privacy
from fedmol.fl.algorithm import LocalData, PartnerInfo
from fedmol.fl.devices import assign_devices
from fedmol.fl.registry import get_algorithm
from fedmol.fl.selection import RoundSelector, check_selection
from fedmol.models import slicing
from fedmol.training import predict, score, width_key


@dataclass
class RunConfig:
    algorithm: str = "fedavg"
    dataset: str | None = "b3db_classification"
    split: str | None = None
    partners: int = 8
    alpha: float = 1.0
    quantity_skew: float = 0.0
    devices: str = "homogeneous"
    rounds: int = 20
    seed: int = 0
    clients_per_round: int | None = None
    model: str = "gin"
    hidden: int = 300
    layers: int = 5
    dropout: float = 0.5
    eval_every: int = 1
    select: str = "best-valid"  # which round's model is reported: "best-valid" | "last" (fedmol.fl.selection)
    faulty_links: float = 0.0  # P(upload truncated at a random narrower width), for every partner
    lossy_links: float = 0.0   # P(upload lost), for every partner
    hparams: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    csv: str | None = None           # a partner's own table instead of a registry dataset ...
    smiles_col: str | None = None    # ... with its SMILES column,
    target_cols: str | None = None   # comma-separated label columns
    task: str | None = None          # and task type


@dataclass
class Federation:
    """The simulated partners of one split: their info (server-visible) and data (private)."""

    dataset: MoleculeDataset
    split: dict
    infos: list[PartnerInfo]
    local: list[LocalData]
    test: Any
    valid: Any


def build_federation(cfg: RunConfig, progress: bool = True) -> Federation:
    if cfg.split:
        split = read_split(cfg.split)
        ds = dataset_for_split(split, cfg.data_dir, csv=cfg.csv, progress=progress)
    else:
        ds = load_dataset(None if cfg.csv else cfg.dataset, csv=cfg.csv, smiles_col=cfg.smiles_col,
                          target_cols=cfg.target_cols, task=cfg.task, data_dir=cfg.data_dir, progress=progress)
        split = make_split(ds, cfg.partners, cfg.alpha, cfg.seed, cfg.quantity_skew, progress=progress)
    sizes = [len(p["train"]) for p in split["partners"]]
    devices = assign_devices(cfg.devices, sizes, cfg.seed)
    if cfg.faulty_links or cfg.lossy_links:
        devices = [dataclasses.replace(d, p_truncate=cfg.faulty_links or d.p_truncate,
                                       p_upload_loss=cfg.lossy_links or d.p_upload_loss) for d in devices]
    local = [LocalData(k, ds.select_rows(p["train"]), ds.select_rows(p["valid"]))
             for k, p in enumerate(split["partners"])]
    infos = [PartnerInfo(k, sizes[k], devices[k]) for k in range(len(sizes))]
    valid_rows = sorted(r for p in split["partners"] for r in p["valid"])
    return Federation(ds, split, infos, local, ds.select_rows(split["test"]), ds.select_rows(valid_rows))


def served_width(widths: tuple[float, ...], cap: float) -> float:
    """The widest served width a device with cap ``cap`` can run (the narrowest if none fits)."""
    fitting = [w for w in widths if w <= cap + 1e-9]
    return max(fitting) if fitting else min(widths)


def run_federated(cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    check_selection(cfg.select)
    fed = build_federation(cfg, progress)
    ds = fed.dataset
    evaluator = Evaluator(ds.task_type, ds.num_tasks)
    metric = evaluator.eval_metric
    algo_cls = get_algorithm(cfg.algorithm)
    model_config = dict(name=cfg.model, num_tasks=ds.num_tasks, hidden=cfg.hidden, layers=cfg.layers,
                        task_type=ds.task_type, dropout=cfg.dropout)
    algo = algo_cls(model_config, cfg.hparams, cfg.seed)
    if hasattr(algo, "bind_dataset"):  # the organizer tells FedDF which molecules its public pool must avoid
        algo.bind_dataset(ds.name, list(ds.smiles) if ds.info.is_custom else None, data_dir=cfg.data_dir)
    algo.init(fed.infos)
    widths = tuple(sorted(algo.widths(), reverse=True))
    spec = slicing.slice_spec(algo.model)  # how tensors nest: used to model truncated uploads
    dp = privacy.account(algo.hp, [p.device.p_online for p in fed.infos], cfg.clients_per_round, cfg.rounds)
    rng = np.random.default_rng([cfg.seed, 11])
    selector = RoundSelector(cfg.select, metric)
    rows, sent, bytes_up, bytes_down, failures_total = [], [], 0, 0, 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(resolved_config(cfg, algo, fed, dp), indent=1))

    traffic = {"down": 0, "up": 0, "log": [], "round": 0}

    def query(w: float) -> None:
        _query(algo, fed, w, traffic)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[info]}"), disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{cfg.algorithm} on {ds.name}", total=cfg.rounds, info="")
        for rnd in range(cfg.rounds):
            t0 = time.perf_counter()
            online = [p for p in fed.infos if rng.random() < p.device.p_online]
            if cfg.clients_per_round is not None and len(online) > cfg.clients_per_round:
                pick = rng.choice(len(online), cfg.clients_per_round, replace=False)
                online = [online[i] for i in sorted(pick)]
            replies, failures, truncated, up, down, client_time = [], [], [], 0, 0, 0.0
            client_total = 0.0
            for p in online:
                msg = algo.configure(rnd, p)
                if msg is None:
                    continue
                down += msg.nbytes()
                if rng.random() < p.device.p_drop:
                    failures.append(f"partner {p.pid}: dropped out mid-round")
                    continue
                tc = time.perf_counter()
                reply = algo_cls.partner_update(msg, fed.local[p.pid])
                dt = time.perf_counter() - tc
                client_total += dt
                client_time = max(client_time, dt / p.device.speed)
                up += accept_reply(algo, p, p.pid, rnd, msg, reply, rng, spec, replies, failures, truncated, sent)
            ts = time.perf_counter()
            agg = algo.aggregate(rnd, replies)
            agg.update(algo.server_step(rnd))
            server_time = time.perf_counter() - ts
            bytes_up, bytes_down, failures_total = bytes_up + up, bytes_down + down, failures_total + len(failures)
            row = dict(round=rnd, participants=len(replies), partners=";".join(str(p.pid) for p, _ in replies),
                       failures=len(failures), failure_reasons=" | ".join(failures), truncated=len(truncated),
                       truncations=" | ".join(truncated), bytes_up=up, bytes_down=down,
                       sim_client_seconds=round(client_time, 4))
            te = time.perf_counter()
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds - 1:
                traffic.update(down=0, up=0, round=rnd)
                scores = evaluate_widths(algo, widths, {"test": fed.test, "valid": fed.valid}, evaluator, query)
                for where, by_width in scores.items():
                    row.update({f"{where}_{metric}@{w}": v for w, v in by_width.items()})
                selector.observe(rnd, scores["valid"], algo)
                # evaluation queries (e.g. HeteroFL's static-BN statistics) are real traffic too
                row["bytes_down"] += traffic["down"]
                row["bytes_up"] += traffic["up"]
                bytes_down, bytes_up = bytes_down + traffic["down"], bytes_up + traffic["up"]
                sent += traffic["log"]
                traffic["log"] = []
            rows.append(close_row(row, te, t0, client_total, server_time, agg))
            bar.update(task, advance=1, info=_info(row, metric, widths))
    selected = selector.finish(algo, rows[-1]["round"])
    test, valid = (scores_of(rows, selected, where, metric) for where in ("test", "valid"))
    per_partner = []
    for p in fed.infos:
        w = served_width(widths, p.device.max_width)
        query(w)
        per_partner.append(dict(partner=p.pid, width=w, n_train=p.n_train, n_valid=len(fed.local[p.pid].valid),
                                test=test[width_key(w)],
                                valid=score(algo.eval_model(w), fed.local[p.pid].valid, evaluator, w)[metric]))
    extra = {"public_pool": algo.pool.report} if getattr(algo, "pool", None) is not None else {}
    summary = dict(dataset=ds.name, metric=metric, algorithm=cfg.algorithm, test=test, valid=valid,
                   selected_round=selected, selection=selector.describe(),
                   test_last=scores_of(rows, rows[-1]["round"], "test", metric), **extra, per_partner=per_partner, bytes_up=bytes_up, bytes_down=bytes_down, failures=failures_total,
                   rounds=cfg.rounds, privacy=dp, seconds=round(time.perf_counter() - t_start, 2))
    if out is not None:
        write_predictions(out / "test_predictions.csv", algo, fed, widths)
        write_metrics(out / "metrics.csv", rows)
        with open(out / "sent.jsonl", "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in sent)
        save_file(algo.state(), str(out / "model.safetensors"),
                  metadata={"config": json.dumps(algo.model_config), "algorithm": cfg.algorithm})
        tmp = out / "summary.json.tmp"  # written last and atomically: its presence means the run is complete
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, out / "summary.json")
    summary["history"] = rows
    return summary


def evaluate_widths(algo, widths, datasets: dict, evaluator: Evaluator, query) -> dict[str, dict[str, float]]:
    """The global model's metric at every served width on each of ``datasets`` (name -> dataset),
    as ``{name: {width key: value}}``; ``query(width)`` runs first at each width (an algorithm's
    pre-evaluation question to the partners, e.g. HeteroFL's static BN). Both round drivers use it."""
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
    """The timing and server-metric columns that end a round's ``metrics.csv`` row (both round drivers)."""
    row["eval_seconds"] = round(time.perf_counter() - t_eval, 4)
    row["client_seconds"] = round(client_total, 4)
    row["server_seconds"] = round(server_time, 4)
    row["seconds"] = round(time.perf_counter() - t_round, 4)
    row.update({f"server_{k}": v for k, v in agg.items()})
    return row


def accept_reply(algo, p, name, rnd: int, msg, reply, rng, spec, replies: list, failures: list, truncated: list,
                 sent: list) -> int:
    """A delivered reply, the step both round drivers (this harness and the pilot coordinator)
    share: :func:`screen_reply`, then the reply is logged as a failure, or taken (with its
    truncation, if any) into ``replies`` and ``sent``. Returns the bytes that count as uploaded."""
    failure, cut = screen_reply(algo, p.device, msg, reply, rng, spec)
    if failure:
        failures.append(f"partner {name}: {failure}")
        return 0
    if cut:
        truncated.append(f"partner {name}: {cut}")
    replies.append((p, reply))
    sent.append(sent_record(rnd, name, reply, algo))
    return reply.nbytes()


def screen_reply(algo, device, msg, reply, rng, spec) -> tuple[str | None, str | None]:
    """Everything a delivered reply goes through before aggregation, in one fixed order (the same
    in-process and over Flower): NaN/inf is rejected, then :func:`link_faults` applies."""
    if not reply.is_finite():
        return "non-finite update rejected", None
    return link_faults(algo, device, msg, reply, rng, spec)


def link_faults(algo, device, msg, reply, rng, spec) -> tuple[str | None, str | None]:
    """Apply a faulty link to a delivered ``reply`` (the device's ``p_upload_loss``, then
    ``p_truncate``), drawing from ``rng`` in a fixed order. Returns ``(failure reason or None,
    truncation note or None)``; a truncated upload's arrays are replaced, in place, by the
    sub-model of a random narrower width (what arrives of an upload ordered narrow-to-wide)."""
    if rng.random() < device.p_upload_loss:
        return "upload lost", None
    if rng.random() < device.p_truncate:
        narrower = [w for w in slicing.WIDTHS if w < msg.config["width"] - 1e-9]
        if not narrower or not algo.accepts_partial_uploads:
            return f"upload truncated, unusable by {algo.name}", None
        cut = float(narrower[int(rng.integers(len(narrower)))])
        reply.arrays = slicing.sub_state_dict(reply.arrays, cut, spec=spec)
        return None, f"upload truncated at width {cut:g}"
    return None, None


def sent_record(rnd: int, partner, reply, algo) -> dict:
    """One line of ``sent.jsonl``: what a partner sent this round, with declared extra disclosures."""
    return dict(round=rnd, partner=partner, kind="update", bytes=reply.nbytes(), arrays=reply.describe(),
                metrics=reply.metrics,
                disclosed={k: reply.arrays[k].tolist() for k in algo.disclosures if k in reply.arrays})


def _query(algo, fed: Federation, width: float, traffic: dict) -> None:
    """Run an algorithm's pre-evaluation query at every partner; its bytes count as traffic."""
    q = algo.query(width)
    if q is None:
        return
    replies = [(p, type(algo).client_query(q, fed.local[p.pid])) for p in fed.infos]
    traffic["down"] += q.nbytes() * len(replies)
    traffic["up"] += sum(m.nbytes() for _, m in replies)
    traffic["log"] += [dict(round=traffic["round"], partner=p.pid, kind="query", bytes=m.nbytes(),
                            arrays=m.describe(), metrics=m.metrics) for p, m in replies]
    algo.absorb_query(width, replies)


def _info(row: dict, metric: str, widths) -> str:
    w = width_key(widths[0])
    v = row.get(f"test_{metric}@{w}")
    return f"{row['participants']} partners, test {metric}@{w} {v:.3f}" if v is not None else ""


def write_predictions(path: Path, algo, fed: Federation, widths) -> None:
    """The final global model's predictions on the global test set, one row per (molecule, width):
    ``row`` (source row), ``width``, then ``task_0 ... task_{T-1}`` (logits for classification)."""
    rows = fed.test.rows
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "width"] + [f"task_{t}" for t in range(fed.dataset.num_tasks)])
        for width in widths:
            _, pred = predict(algo.eval_model(width), fed.test, width)
            for r, p in zip(rows, pred):
                w.writerow([int(r), width_key(width)] + [repr(float(x)) for x in p])


def write_metrics(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def resolved_config(cfg: RunConfig, algo, fed: Federation, dp: dict | None = None) -> dict:
    import rdkit
    return dict(
        run=asdict(cfg), algorithm=dict(name=algo.name, hparams=algo.hp, norm=algo.norm, scaler=algo.scaler),
        sent=dict(log="sent.jsonl", model_weights="each participating partner's trained weights at its width",
                  metrics="n_train (training-set size), local loss and steps", extra=algo.disclosures),
        model=algo.model_config, widths=list(algo.widths()), privacy=dp,
        split=dict(spec=fed.split["spec"], sha256=fed.split.get("sha256"), partners=len(fed.infos),
                   test=len(fed.test)),
        partners=[dict(pid=p.pid, n_train=p.n_train, n_valid=len(fed.local[p.pid].valid), device=p.device.to_dict())
                  for p in fed.infos],
        versions=dict(fedmol=fedmol.__version__, torch=torch.__version__, rdkit=rdkit.__version__),
    )
