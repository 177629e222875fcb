"""A partner's side of a pilot: its data, what it answers, and its audit log.

Nothing here knows about Flower: :func:`serve` takes a fedmol message and the partner's node
config and returns the reply, so the same code runs inside the ClientApp
(:mod:`fedmol.pilot.client_app`) and in-process in tests.

Node config (``flower-supernode --node-config site.toml``; keys as Flower spells them):

``partition-id`` (int, required)
    the partner number the coordinator gave this site (0 .. K-1).
``width-cap`` (float, default 1.0)
    the widest model this site's hardware trains (one of :data:`fedmol.models.slicing.WIDTHS`);
    the coordinator serves every message at a width within it.
``audit-dir`` (default ``$FLWR_HOME/fedmol-audit`` or ``./fedmol-audit``)
    the site's own folder for ``audit.jsonl``: one line per message received, sent, refused or
    failed (round, kind, array names / shapes / bytes, metrics, and the values of every extra
    disclosure such as FedGen's label counts).
``state-dir`` (default: the audit-dir)
    the site's own folder for what it keeps between messages: with private heads its task head,
    ``heads/run-<run id>.safetensors``, and its head at each evaluated round
    (:mod:`fedmol.pilot.heads`); never sent.
``threads`` (int, default 0 = torch's default)
    CPU threads for local training.

Data, one of:

* **a site CSV** (a real pilot): ``csv`` (path), ``smiles-col``, ``target-cols`` (comma-separated),
  ``task`` (classification | regression); validation molecules from ``valid-csv`` (same columns)
  or, without it, a seeded random ``valid-fraction`` (default 0.1, ``valid-seed`` 0) of the CSV.
* **one partner of a frozen split** (the demo / benchmark): ``split`` (split file), optionally
  ``data-dir`` (else ``$FEDMOL_DATA_DIR``) and ``split-csv`` (for a split made from a CSV).

With private heads (the message's config ``heads: "private"``) a site's target columns may
differ from the other sites' (its head predicts its own columns; the task type must be the
federation's): the hello check knows the run's heads setting.

Nothing a message carries can name a file or ask for molecules: the coordinator chooses the
algorithm (one of fedmol's registry), the round, the width and the hyperparameters; the site
answers with tensors and scalar metrics only. An error that leaves the site has its SMILES
redacted (the full text stays in the site's audit log).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmol.errors import FedmolError
from fedmol.fl.message import Message
from fedmol.jsonio import to_json
from fedmol.pilot.records import HELLO, QUERY, TRAIN, VALIDATE, IncompatibleVersion, PilotError, check_compatible

SITE_KEYS = {"partition-id", "width-cap", "audit-dir", "state-dir", "threads", "csv", "smiles-col", "target-cols",
             "task", "valid-csv", "valid-fraction", "valid-seed", "split", "data-dir", "split-csv"}


class PartnerDataError(PilotError):
    """A site's data cannot be used (missing file or column, no valid molecule, ...)."""


@dataclass
class SiteData:
    local: Any            # fedmol.fl.algorithm.LocalData
    task_type: str
    tasks: list[str]
    source: str           # "csv" or "split"
    split_sha256: str | None
    smiles: list[str]     # the site's own molecules (used only to redact error messages)
    split: dict | None = None     # a benchmark split file's content (the demo, flower-sim)
    dataset: Any = None           # the split's dataset (its test rows, the pooled validation molecules)
    scoring_sets: dict | None = None  # private heads: the split's sets restricted to its tasks (made once)


_CACHE: dict[tuple, SiteData] = {}


def _get(node_config: dict, key: str, default=None):
    v = node_config.get(key, default)
    return default if v == "" else v


def partition_id(node_config: dict) -> int:
    v = node_config.get("partition-id")
    if v is None or isinstance(v, bool) or not str(v).lstrip("-").isdigit():
        raise PilotError(f"node config needs an integer partition-id (the partner number), got {v!r}")
    return int(v)


def width_cap(node_config: dict) -> float:
    from fedmol.models.slicing import WIDTHS

    v = float(_get(node_config, "width-cap", 1.0))
    if not any(abs(v - w) < 1e-9 for w in WIDTHS):
        raise PilotError(f"width-cap {v} is not one of the widths {list(WIDTHS)}")
    return v


def audit_path(node_config: dict) -> Path:
    folder = _get(node_config, "audit-dir")
    if folder is None:
        home = os.environ.get("FLWR_HOME")
        folder = Path(home) / "fedmol-audit" if home else Path("fedmol-audit")
    return Path(folder) / "audit.jsonl"


def state_dir(node_config: dict) -> Path:
    """The site's folder for what it keeps between messages (``state-dir``, default the audit-dir)."""
    folder = _get(node_config, "state-dir")
    return Path(folder) if folder is not None else audit_path(node_config).parent


def load_site_data(node_config: dict) -> SiteData:
    """The site's LocalData (train / valid), cached per process."""
    key = tuple(sorted((k, str(v)) for k, v in node_config.items() if k in SITE_KEYS))
    if key in _CACHE:
        return _CACHE[key]
    pid = partition_id(node_config)
    try:
        data = _load_split(node_config, pid) if _get(node_config, "split") else _load_csv(node_config, pid)
    except PilotError:
        raise
    except FedmolError as e:
        raise PartnerDataError(f"cannot use its data: {e}") from e
    _CACHE[key] = data
    return data


def _load_split(node_config: dict, pid: int) -> SiteData:
    from fedmol.data.splits import dataset_for_split, partner_subsets, read_split
    from fedmol.fl.algorithm import LocalData

    split = read_split(node_config["split"])
    if not 0 <= pid < len(split["partners"]):
        raise PartnerDataError(f"partition-id {pid} is not a partner of the split ({len(split['partners'])} partners)")
    ds = dataset_for_split(split, _get(node_config, "data-dir"), csv=_get(node_config, "split-csv"), progress=False)
    train, valid = partner_subsets(split, ds)[pid]  # in a task split: labelled on its own tasks only
    return SiteData(LocalData(pid, train, valid), ds.task_type, list(ds.info.tasks), "split", split["sha256"],
                    list(train.smiles) + list(valid.smiles), split, ds)


def _load_csv(node_config: dict, pid: int) -> SiteData:
    from fedmol.data.dataset import load_dataset
    from fedmol.fl.algorithm import LocalData

    csv = _get(node_config, "csv")
    if csv is None:
        raise PartnerDataError("node config names no data: give csv (with smiles-col, target-cols, task) or split")
    cols = dict(smiles_col=_get(node_config, "smiles-col"), target_cols=_get(node_config, "target-cols"),
                task=_get(node_config, "task"))
    if not Path(csv).is_file():
        raise PartnerDataError(f"cannot use its data: CSV file {Path(csv).name!r} not found")
    ds = load_dataset(csv=csv, progress=False, **cols)
    if _get(node_config, "valid-csv"):
        train, valid = ds, load_dataset(csv=node_config["valid-csv"], progress=False, **cols)
    else:
        frac = float(_get(node_config, "valid-fraction", 0.1))
        if not 0 <= frac < 1:
            raise PartnerDataError(f"valid-fraction must be in [0, 1), got {frac}")
        perm = np.random.default_rng([int(_get(node_config, "valid-seed", 0)), 23]).permutation(len(ds))
        n_valid = int(round(frac * len(ds)))
        rows = ds.rows
        train = ds.select_rows(sorted(int(r) for r in rows[perm[n_valid:]]))
        valid = ds.select_rows(sorted(int(r) for r in rows[perm[:n_valid]]))
    if len(train) == 0:
        raise PartnerDataError("cannot use its data: no valid training molecule")
    return SiteData(LocalData(pid, train, valid), ds.task_type, list(ds.info.tasks), "csv", None,
                    list(train.smiles) + list(valid.smiles))


# -- redaction -------------------------------------------------------------------------------------
_TOKEN = re.compile(r"[^\s'\",;]+")


def redact(text: str, smiles: list[str] | None = None, folders: list[str] | None = None) -> str:
    """``text`` without anything that looks like a molecule -- the site's own SMILES, what RDKit says
    it could not parse, any token of 4+ characters that RDKit reads as a valid molecule -- and
    without the site's folder names (``folders`` become ``<site>``)."""
    text = str(text)
    for d in sorted({str(d) for d in folders or [] if str(d) not in ("", ".", "/")}, key=len, reverse=True):
        text = text.replace(d, "<site>")
    for s in sorted({s for s in smiles or [] if len(s) >= 2}, key=len, reverse=True):
        text = text.replace(s, "<SMILES>")
    text = re.sub(r"(while parsing:|for input:|SMILES Parse Error:)\s*\S+", r"\1 <SMILES>", text)
    from rdkit import Chem, rdBase

    def repl(m: re.Match) -> str:
        tok = m.group(0).strip(".")
        if len(tok) >= 4 and not tok.isdigit() and Chem.MolFromSmiles(tok) is not None:
            return "<SMILES>"
        return m.group(0)

    with rdBase.BlockLogs():
        text = _TOKEN.sub(repl, text)
    return text[:2000]


# -- audit log -------------------------------------------------------------------------------------
def audit(node_config: dict, entry: dict) -> None:
    path = audit_path(node_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), **entry}
    with open(path, "a") as f:
        f.write(to_json(entry, default=str) + "\n")


def _describe(msg: Message, disclosures: dict | None = None) -> dict:
    out = dict(bytes=msg.nbytes(), arrays=msg.describe(), metrics=msg.metrics)
    if disclosures:
        out["disclosed"] = {k: msg.arrays[k].tolist() for k in disclosures if k in msg.arrays}
    return out


# -- serving ---------------------------------------------------------------------------------------
def serve(kind: str, msg: Message, meta: dict, node_config: dict, run_id: int | None = None) -> tuple[Message, dict]:
    """Answer one message from the coordinator; every step goes to the site's audit log."""
    base = dict(run=run_id, round=meta.get("round"), kind=kind, partition_id=node_config.get("partition-id"))
    audit(node_config, {**base, "direction": "received", **_describe(msg), "config": msg.config, "meta": meta})
    smiles: list[str] | None = None
    try:
        try:
            check_compatible(meta, "coordinator")
        except IncompatibleVersion as e:
            raise IncompatibleVersion(f"partner {node_config.get('partition-id')} refused the message: {e}") from None
        threads = int(_get(node_config, "threads", 0) or 0)
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        data = load_site_data(node_config)
        smiles = data.smiles
        t0 = time.perf_counter()
        reply, disclosures = _answer(kind, msg, meta, data, node_config, run_id)
        info = dict(kind=kind, round=meta.get("round", -1), seconds=round(time.perf_counter() - t0, 4),
                    **{"partition-id": data.local.pid})
    except Exception as e:  # noqa: BLE001 - every failure is logged locally, then reported redacted
        full = f"{type(e).__name__}: {e}"
        safe = redact(str(e), smiles, _site_folders(node_config))
        if not safe.startswith("partner "):
            safe = f"partner {node_config.get('partition-id', '?')}: {safe}"
        audit(node_config, {**base, "direction": "failed", "reason": full, "reported": safe})
        if isinstance(e, IncompatibleVersion):
            raise IncompatibleVersion(safe) from None
        raise PilotError(safe if isinstance(e, FedmolError) else f"{safe} ({type(e).__name__})") from None
    audit(node_config, {**base, "direction": "sent", **_describe(reply, disclosures), "meta": info})
    return reply, info


def _site_folders(node_config: dict) -> list[str]:
    out = []
    folders = ("data-dir", "audit-dir", "state-dir")
    for key in ("csv", "valid-csv", "split", "split-csv", *folders):
        v = _get(node_config, key)
        if v:
            p = Path(str(v))
            out += [str(p if key in folders else p.parent)]
            out += [str(p.resolve() if key in folders else p.resolve().parent)]
    return out


def _answer(kind: str, msg: Message, meta: dict, data: SiteData, node_config: dict,
            run_id=None) -> tuple[Message, dict]:
    from fedmol.fl.registry import get_algorithm
    from fedmol.pilot import heads

    if kind == HELLO:
        return _hello(msg, data, node_config), {}
    algo_cls = get_algorithm(str(meta.get("algorithm", "")))
    private = heads.is_private(msg) and kind in (TRAIN, VALIDATE)
    store = heads.HeadStore.of_site(node_config, run_id) if private else None
    if kind == TRAIN:
        cap = width_cap(node_config)
        if float(msg.config.get("width", 1.0)) > algo_cls.serving_cap(cap) + 1e-9:
            raise PilotError(f"asked to train width {msg.config.get('width')}, above this site's width-cap {cap}")
        if private:
            return heads.train(algo_cls, msg, data.local, store), algo_cls.disclosures
        return algo_cls.partner_update(msg, data.local), algo_cls.disclosures
    if kind == QUERY:
        return algo_cls.client_query(msg, data.local), {}
    if kind == VALIDATE:
        return (heads.validate(algo_cls, msg, meta, data, store) if private else validate(msg, data, algo_cls)), {}
    raise PilotError(f"unknown message kind {kind!r}")


def _hello(msg: Message, data: SiteData, node_config: dict) -> Message:
    """The site's introduction, once its data matches the federation's task: the same task type
    and columns, or with private heads the same task type (its own columns)."""
    want = msg.config.get("task_type"), msg.config.get("num_tasks")
    if msg.config.get("heads") == "private":
        bad = task_type_problem(data.task_type, want[0]) if want[0] is not None else None
        if bad:
            raise PartnerDataError(bad)
    elif want[0] is not None and (want[0] != data.task_type or want[1] != len(data.tasks)):
        raise PartnerDataError(f"its data is {data.task_type} with {len(data.tasks)} task(s), the federation "
                               f"trains {want[0]} with {want[1]} task(s)")
    facts = {"n_train": len(data.local.train), "n_valid": len(data.local.valid), "width_cap": width_cap(node_config)}
    config = {"task_type": data.task_type, "tasks": data.tasks, "source": data.source,
              "split_sha256": data.split_sha256}
    return Message(config=config, metrics=facts)


def task_type_problem(site_type: str | None, federation_type: str) -> str | None:
    """Why a site's data cannot join a private-heads federation (its columns may differ, its task
    type may not); None when it can."""
    if site_type != federation_type:
        return (f"its data is {site_type}, the federation's is {federation_type}: private heads need one task "
                "type at every site")
    return None


def validate(msg: Message, data: SiteData, algo_cls) -> Message:
    """Score the model a validate message carries (built by the run's algorithm) on the site's
    validation molecules."""
    from fedmol.evaluate import Evaluator
    from fedmol.training import score

    width = float(msg.config["width"])
    model = algo_cls.client_model(msg)
    ev = Evaluator(data.task_type, len(data.tasks))
    value = score(model, data.local.valid, ev, width)[ev.eval_metric]
    return Message(metrics={"valid": float(value), "n_valid": float(len(data.local.valid))},
                   config={"metric": ev.eval_metric})
