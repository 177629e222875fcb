"""``fedmol run --backend flower-sim``: a benchmark run on Flower's simulation engine (Ray).

The same coordinator (:func:`fedmol.pilot.coordinator.run_coordinator`) and the same partner side
(:func:`fedmol.pilot.site.serve`) as a pilot, but the partners are Flower *virtual* SuperNodes
that Ray schedules on this machine's cores (or a Ray cluster's: start one with ``ray start`` and
set ``RAY_ADDRESS``) instead of separate SuperNode processes. Because the coordinator reproduces
the in-process harness draw for draw (:mod:`fedmol.pilot.coordinator`), the results equal
``fedmol run``'s with the same arguments (tests check 1e-4); what Ray buys is scale: the
partners' local training runs in parallel, one Ray actor per ``client_cpus`` cores.

Each virtual node learns which partner it is from Flower's own node config
(``partition-id``); its data is that partner of the run's split (made exactly as ``fedmol run``
makes it, or the ``--split`` file) and its width cap is its device's, as in ``fedmol pilot
demo``. Audit logs are written under ``OUT/pilot/audit/<partner>/``, and with private heads
(``--heads private``) each partner's head files beside them (``heads/``, :mod:`fedmol.pilot.heads`):
the partners score their own models there, as ``fedmol run`` does in-process.

Deviation from a real pilot: the nodes share the machine's filesystem (each reads the split file
and its own rows of the dataset), and there is no TLS: nothing crosses a network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedmol.errors import FedmolError
from fedmol.config import RunConfig


def _server_app(settings, log):
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        from fedmol.pilot.coordinator import GridLink, run_coordinator

        run_coordinator(GridLink(grid, poll=0.05), settings, log=log)

    return app


def run_flower_sim(cfg: RunConfig, out: str | Path, *, client_cpus: int = 1, round_timeout: float = 3600.0,
                   connect_timeout: float = 300.0, threads: int = 1, progress: bool = False, log=print) -> dict:
    """Run ``cfg`` on Flower's simulation engine; write the run's files to ``out``; return the summary."""
    try:
        from flwr.simulation import run_simulation
        import ray  # noqa: F401  (flwr[simulation]'s engine)
    except ImportError as e:  # pragma: no cover - ray is a dependency
        raise FedmolError(f"--backend flower-sim needs Flower's simulation engine: pip install 'flwr[simulation]' ({e})")
    from fedmol.fl.registry import get_algorithm
    from fedmol.fl.setup import clear_results
    from fedmol.pilot.client_app import make_client_app
    from fedmol.pilot.demo import demo_split, read_results, settings_for, site_configs

    get_algorithm(cfg.algorithm).check_heads(cfg.heads)  # before Ray starts
    if cfg.csv:
        raise FedmolError("--backend flower-sim runs registry datasets and split files; a partner CSV is a pilot "
                          "(fedmol pilot partner / coordinator)")
    out = clear_results(Path(out).resolve())
    work = out / "pilot"
    work.mkdir(parents=True, exist_ok=True)
    split_path, split = demo_split(cfg, work, progress)
    sites = site_configs(cfg, split_path, split)
    for k, nc in enumerate(sites):
        nc.update({"audit-dir": str(work / "audit" / str(k)), "threads": max(1, threads)})
    s = settings_for(cfg, split_path, out, len(sites), round_timeout, connect_timeout, threads, False)
    cpus = max(1, os.cpu_count() or 1)
    backend = {"client_resources": {"num_cpus": int(client_cpus), "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "error",
                             "log_to_driver": False}}
    t0 = time.perf_counter()
    # Ray workers re-import fedmol: they must find the same package and data as this process
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    log(f"Flower simulation engine (Ray): {len(sites)} virtual SuperNodes on {cpus} CPUs, "
        f"{client_cpus} per partner")
    client_app = make_client_app(lambda context: sites[int(context.node_config["partition-id"])])
    run_simulation(server_app=_server_app(s, log), client_app=client_app,
                   num_supernodes=len(sites), backend_name="ray", backend_config=backend)
    summary = read_results(out, "flower-sim run", where="see the log above")
    summary["backend_seconds"] = round(time.perf_counter() - t0, 2)
    return summary
