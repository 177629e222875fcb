"""One run setup for every transport: the in-process harness, flower-sim and Flower pilots start a
run, describe it and clean up the same way; they differ only in how messages are delivered.

* :func:`clear_results` -- a run folder without a previous run's results;
* :func:`partner_devices` -- the partners' device draw (:func:`fedmol.fl.devices.assign_devices`),
  capped at each site's own width cap in a pilot, with the run's link faults;
* :func:`start_algorithm` -- the algorithm on the run's backbone, told which dataset is federated
  (FedDF's public pool avoids its molecules), initialised on the partners, with its DP accounting;
* :func:`resolved_config` -- ``config.json``;
* :func:`summary_extras` -- what an algorithm adds to ``summary.json`` (FedDF's pool report).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedmol.config import FederationConfig, RunConfig

#: the files a run writes that must not survive from an earlier run in the same folder
RESULT_FILES = ("summary.json", "pilot_error.json", "progress.jsonl", "inbox.jsonl", "nodes.json", "coordinator.log")


def clear_results(out: Path) -> Path:
    """``out`` (made if absent) without a previous run's :data:`RESULT_FILES`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    return out


def partner_devices(cfg: FederationConfig, sizes: list[int], width_caps: list[float] | None = None) -> list:
    """The partners' devices: the profile's seeded draw, each capped at its site's ``width_caps`` (a
    pilot: what the node says it runs), with the run's faulty and lossy links."""
    from fedmol.fl.devices import assign_devices

    devices = assign_devices(cfg.devices, sizes, cfg.seed)
    if width_caps is not None:
        devices = [dataclasses.replace(d, max_width=float(cap)) for d, cap in zip(devices, width_caps)]
    if cfg.faulty_links or cfg.lossy_links:
        devices = [dataclasses.replace(d, p_truncate=cfg.faulty_links or d.p_truncate,
                                       p_upload_loss=cfg.lossy_links or d.p_upload_loss) for d in devices]
    return devices


def backbone_config(model: str, ds, hidden: int, layers: int, dropout: float) -> dict:
    """The backbone of a run on dataset ``ds`` (what ``fedmol.models.build`` takes; every algorithm
    adds its norm, scaler and width): the fingerprint ``mlp`` records its fingerprint settings."""
    conf = dict(name=model, num_tasks=ds.num_tasks, hidden=hidden, layers=layers, task_type=ds.task_type,
                dropout=dropout)
    if model == "mlp":
        from fedmol.data.fingerprints import DEFAULTS
        conf.update(DEFAULTS)
    return conf


def start_algorithm(cfg: FederationConfig, ds, infos: list, heads: str = "shared"):
    """``(algorithm, DP accounting)``: the run's algorithm on its backbone, bound to the federated
    dataset when the organizer holds it (``ds`` a dataset, not only a pilot's task schema) and
    initialised on the partners ``infos``."""
    from fedmol.fl import privacy
    from fedmol.fl.registry import get_algorithm

    algo_cls = get_algorithm(cfg.algorithm)
    algo_cls.check_heads(heads)
    algo = algo_cls(backbone_config(cfg.model, ds, cfg.hidden, cfg.layers, cfg.dropout), cfg.hparams, cfg.seed, heads)
    info = getattr(ds, "info", None)
    if hasattr(algo, "bind_dataset") and info is not None:  # FedDF's public pool must avoid these molecules
        algo.bind_dataset(ds.name, list(ds.smiles) if info.is_custom else None, data_dir=cfg.data_dir)
    algo.init(infos)
    dp = privacy.account(algo.hp, [p.device.p_online for p in infos], cfg.clients_per_round, cfg.rounds)
    return algo, dp


def resolved_config(run: RunConfig, algo, split: dict | None, partners: list[dict], test: int, dp: dict | None,
                    sent: dict | None = None, **extra) -> dict:
    """``config.json``: the run's settings, the algorithm as resolved, what a partner's messages
    disclose (``sent``: the transport's own words added), the backbone, the widths, DP, the split,
    the partners (one entry each), the transport's ``extra`` sections, the versions and FedDF's pool."""
    import rdkit
    import torch

    import fedmol
    from fedmol.numerics import numerics

    return dict(
        run=run.model_dump(), algorithm=dict(name=algo.name, hparams=algo.hp, norm=algo.norm, scaler=algo.scaler),
        sent={**dict(log="sent.jsonl", model_weights=algo.model_disclosure,
                     metrics="n_train (training-set size), local loss and steps", extra=algo.disclosures),
              **(sent or {})},
        model=algo.model_config, widths=list(algo.widths()), privacy=dp,
        split=dict(spec=split["spec"] if split else {}, sha256=split.get("sha256") if split else None,
                   partners=len(partners), test=test),
        partners=partners, **extra,
        versions=dict(fedmol=fedmol.__version__, torch=torch.__version__, rdkit=rdkit.__version__, numerics=numerics()),
        **({"public_pool": algo.ensure_pool().report} if hasattr(algo, "ensure_pool") else {}),  # FedDF's pool
    )


def summary_extras(algo) -> dict:
    """What the algorithm adds to ``summary.json``: FedDF's public-pool report."""
    pool = getattr(algo, "pool", None)
    return {"public_pool": pool.report} if pool is not None else {}
