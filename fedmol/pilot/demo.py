"""``fedmol pilot demo``: the benchmark's federation as a real Flower deployment on this machine.

The same arguments as ``fedmol run`` give the same split (made with the same code and seed, or a
frozen split file), the same partners and device caps, and -- because the coordinator replays the
harness's sampling and the algorithms are the harness's own -- the same metrics. What differs is
the machinery: a SuperLink and one SuperNode per partner run as separate processes on loopback,
each SuperNode holding one partner's part of the split (node config: partition id, split file,
data folder, width cap), and the ServerApp writes ``summary.json`` / ``metrics.csv`` (and the
harness's other files) to the run folder. Everything started is stopped at the end, also on error.

Folder layout (``out``): the harness's files, plus ``nodes.json`` (which node joined, which was
refused and why) and ``pilot/`` (``split.json``, ``certs/``, ``app/``, ``run.toml``, ``logs/``,
``sites/<k>/site.toml`` and ``sites/<k>/audit/audit.jsonl`` -- each partner's audit log -- and
``processes.json``: every pid started, and what was left alive when the demo ended (nothing)).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedmol.config import RunConfig
from fedmol.fl.setup import clear_results
from fedmol.jsonio import read_summary
from fedmol.pilot.config import PilotSettings
from fedmol.pilot.loopback import LoopbackPilot
from fedmol.pilot.records import PilotError


def demo_split(cfg: RunConfig, folder: Path, progress: bool = False) -> tuple[Path, dict]:
    """The split ``fedmol run`` would use for ``cfg``: its split file, or one made the same way."""
    from fedmol.data.dataset import load_dataset
    from fedmol.data.splits import make_split, read_split, write_split

    if cfg.split:
        path = Path(cfg.split).resolve()
        return path, read_split(path)
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, progress=progress)
    split = make_split(ds, cfg.partners, cfg.alpha, cfg.seed, cfg.quantity_skew, progress=progress)
    path = write_split(split, folder / "split.json").resolve()
    return path, read_split(path)


def site_configs(cfg: RunConfig, split_path: Path, split: dict) -> list[dict]:
    """One node config per partner: its partition of the split and the width cap of its device."""
    from fedmol.fl.devices import assign_devices

    sizes = [len(p["train"]) for p in split["partners"]]
    devices = assign_devices(cfg.devices, sizes, cfg.seed)
    out = []
    for k, d in enumerate(devices):
        nc = {"partition-id": k, "split": str(split_path), "width-cap": float(d.max_width)}
        if cfg.data_dir:
            nc["data-dir"] = str(Path(cfg.data_dir).resolve())
        out.append(nc)
    return out


def settings_for(cfg: RunConfig, split_path: Path, out: Path, partners: int, round_timeout: float,
                 connect_timeout: float, threads: int, record_inbox: bool) -> PilotSettings:
    """The coordinator's settings for ``cfg`` run over ``partners`` loopback sites."""
    data_dir = str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None
    return PilotSettings(**{**cfg.shared(), "partners": partners, "split": str(split_path), "data_dir": data_dir,
                            "heads": cfg.heads},
                         out_dir=str(out.resolve()), round_timeout=float(round_timeout),
                         connect_timeout=float(connect_timeout), threads=threads, record_inbox=record_inbox)


def run_demo(cfg: RunConfig, out: str | Path, *, insecure: bool = False, node_auth: bool | None = None,
             certs_dir: str | Path | None = None, round_timeout: float = 300.0, connect_timeout: float = 120.0,
             run_timeout: float | None = None, threads: int = 1, record_inbox: bool = False,
             extra_sites: list[dict] | None = None, on_poll=None, progress: bool = False, log=print) -> dict:
    """Run ``cfg`` as a loopback Flower deployment; return the coordinator's summary.

    ``extra_sites``: more SuperNodes beyond the split's partners, each ``{"name", "node_config",
    "env"}`` (e.g. a site with its own CSV); the coordinator waits for all of them and says in
    ``nodes.json`` which joined and which were refused. ``on_poll(pilot)`` is called while the run
    goes (fault injection in tests: :meth:`LoopbackPilot.kill_site`).
    """
    from fedmol.fl.registry import get_algorithm

    get_algorithm(cfg.algorithm)({"name": cfg.model}, cfg.hparams, cfg.seed, cfg.heads)  # fail here, not remotely
    out = Path(out).resolve()
    work = out / "pilot"
    work.mkdir(parents=True, exist_ok=True)
    clear_results(out)
    split_path, split = demo_split(cfg, work, progress)
    sites = site_configs(cfg, split_path, split)
    extra_sites = list(extra_sites or [])
    s = settings_for(cfg, split_path, out, len(sites) + len(extra_sites), round_timeout, connect_timeout, threads,
                     record_inbox)
    if run_timeout is None:
        run_timeout = connect_timeout + round_timeout * (cfg.rounds + 2) * 2 + 300
    with LoopbackPilot(work, insecure=insecure, node_auth=node_auth, certs_dir=certs_dir, threads=threads) as pilot:
        port = pilot.start_superlink()
        log(f"SuperLink on 127.0.0.1:{port} ({'INSECURE, no TLS' if insecure else 'TLS'}"
            f"{', SuperNode authentication' if pilot.node_auth else ''})")
        for k, nc in enumerate(sites):
            pilot.add_site(str(k), nc)
        for extra in extra_sites:
            pilot.add_site(extra["name"], extra["node_config"], env=extra.get("env"))
        log(f"{len(sites) + len(extra_sites)} SuperNodes started; submitting the run")
        run_id = pilot.submit(s)
        log(f"run {run_id} submitted; waiting for it to finish (each round is shown as it closes)")
        show = round_reporter(out / "progress.jsonl", log)

        def poll(p):
            show()
            if on_poll is not None:
                on_poll(p)
        status = pilot.wait(run_id, run_timeout, on_poll=poll, done=lambda: any((out / f).is_file() for f in
                                                                ("summary.json", "pilot_error.json")))
        show()
        log(f"run {run_id} {status}; stopping the SuperNodes and the SuperLink")
        run_log = pilot.run_log(run_id) if status != "finished:completed" else ""
    summary = {**read_results(out, where=f"logs in {work / 'logs'}", status=status, run_log=run_log,
                              leftovers=pilot.procs.leftovers()), "run_id": run_id}
    log("all processes stopped")
    return summary


def round_reporter(progress: Path, log, describe=None):
    """A callable that logs the rounds the coordinator has closed since its last call (the lines of
    ``progress.jsonl``, each as ``describe(row)``, by default the coordinator's round line; a line
    still being written waits for the next call)."""
    from fedmol.pilot.coordinator import round_line

    describe = describe or round_line
    shown = 0

    def report() -> None:
        nonlocal shown
        if not progress.is_file():
            return
        for line in progress.read_text().splitlines()[shown:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return
            log(describe(row))
            shown += 1
    return report


def read_results(out: Path, what: str = "pilot run", where: str = "", status: str = "finished:completed",
                 run_log: str = "", leftovers: dict | None = None) -> dict:
    """The run's summary (with its per-round ``history``), or why it has none, as a PilotError
    (``where``: where its logs are; ``status``, ``run_log``: Flower's word on the run)."""
    if leftovers:  # pragma: no cover - stop_all ends whole process groups
        raise PilotError(f"processes still alive after the run: {leftovers}")
    err = out / "pilot_error.json"
    logs = f" ({where})" if where else ""
    if err.is_file():
        raise PilotError(f"the {what} failed: {json.loads(err.read_text())['error']}{logs}")
    if status != "finished:completed" or not (out / "summary.json").is_file():
        tail = "\n".join(run_log.strip().splitlines()[-15:])
        raise PilotError(f"the {what} ended with status {status} without results{logs}"
                         + (f"; the run's log ends with:\n{tail}" if tail else ""))
    return read_summary(out / "summary.json", history=out / "progress.jsonl")
