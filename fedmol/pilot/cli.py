"""``fedmol pilot ...``: the pilot commands, as a typer sub-app (mounted by :mod:`fedmol.cli`).

Importing this module is cheap (typer only); each command imports what it needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedmol.cli_common import console, friendly, parse_hparams, results_table, with_run_settings
from fedmol.errors import FedmolError
from fedmol.jsonio import to_json

pilot_app = typer.Typer(no_args_is_help=True,
                        help="Pharma collaboration pilots on Flower: coordinator, partner, certificates, demo, audit.")


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


@pilot_app.command("coordinator")
@friendly
def coordinator(
    pilot_toml: Path = typer.Argument(..., help="The pilot TOML ([pilot], [model], [hparams], [dataset]; docs/pilot.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: [pilot] out in the TOML)."),
    certs: Optional[Path] = typer.Option(None, "--certs", help="The folder `fedmol pilot certs` made: ca.pem, server.pem, server.key, partner-keys/."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Folder of the partners' public keys (*.pub) to register (default CERTS/partner-keys)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (test networks only)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="SuperNode authentication with the partners' public keys."),
    address: str = typer.Option("0.0.0.0:9092", "--address", help="HOST:PORT the SuperLink listens on (the partners connect to this port)."),
):
    """Run a pilot as its coordinator: start the SuperLink, run the federation, write the results, stop."""
    import signal

    from fedmol.pilot.deploy import run_coordinator_pilot
    from fedmol.pilot.plan import load_plan

    plan = load_plan(pilot_toml)
    out_dir = plan.out_dir(out)

    def on_term(_signum, _frame):
        raise KeyboardInterrupt  # ends the SuperLink and everything it started, as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        s = run_coordinator_pilot(plan, out_dir, certs=certs, keys=keys, insecure=insecure, node_auth=node_auth,
                                  address=address, log=_say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    skipped = [r for r in s["history"] if str(r.get("aggregated", 1)) == "0"]
    console.print(results_table(f"pilot {plan.doc.pilot.name}: {s['algorithm']} on {s['dataset']}, {s['partners']} "
                                f"partner(s), {s['rounds']} rounds ({s['seconds']:.0f} s)", s, "partners' valid"))
    _say(f"{len(skipped)} round(s) skipped (fewer than min_partners replies), {s['failures']} failed partner-rounds, "
         f"{len(s['refused'])} node(s) refused; {s['bytes_down'] / 1e6:.2f} MB sent, {s['bytes_up'] / 1e6:.2f} MB "
         f"received")
    _say(f"results in {out_dir}: summary.json, metrics.csv, nodes.json, model.safetensors, "
         + ("test_predictions.csv, " if s["test"] else "") + f"sent.jsonl; logs in {out_dir / 'pilot' / 'logs'}")


@pilot_app.command("partner")
@friendly
def partner(
    superlink: Optional[str] = typer.Option(None, "--superlink", help="The coordinator's HOST:PORT."),
    csv: Path = typer.Option(..., "--csv", help="This site's molecules and labels (stays here)."),
    smiles_col: str = typer.Option(..., "--smiles-col", help="SMILES column."),
    target_cols: str = typer.Option(..., "--target-cols", help="Target columns, comma-separated, as the coordinator's [dataset] target_cols."),
    task: str = typer.Option(..., "--task", help="classification (0/1 labels) | regression."),
    width_cap: float = typer.Option(1.0, "--width-cap", help="Widest model this machine trains: 1, 0.5, 0.25, 0.125 or 0.0625."),
    valid_csv: Optional[Path] = typer.Option(None, "--valid-csv", help="Validation molecules (else a seeded 10% of --csv)."),
    partition_id: Optional[int] = typer.Option(None, "--partition-id", help="This site's partner number (default: from CERTS/partner.json)."),
    certs: Optional[Path] = typer.Option(None, "--certs", help="This site's folder from `fedmol pilot certs`: ca.pem and node.key."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (test networks only)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="Authenticate with CERTS/node.key (--no-node-auth: only with a coordinator started with --no-node-auth)."),
    home: Path = typer.Option(Path("fedmol-partner"), "--home", help="Folder for site.toml, the SuperNode's state and logs."),
    audit_dir: Optional[Path] = typer.Option(None, "--audit-dir", help="Where audit.jsonl goes (default HOME/audit)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Where the site keeps what it needs between "
                                             "messages: with private heads its own heads (default: the audit dir)."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for local training (0: torch's default)."),
    check_only: bool = typer.Option(False, "--check-only", help="Only check and featurize the CSV, start nothing."),
    wait: float = typer.Option(300.0, "--wait", min=0, help="Seconds to keep trying while the coordinator has not "
                               "accepted this site yet (its key not registered, or not up), with backoff."),
):
    """Run a partner site: check this site's CSV here, then run its Flower SuperNode until Ctrl-C."""
    from fedmol.pilot.deploy import check_partner_data, node_config, parse_address, partner_certs, run_partner

    ca = key = None
    if certs is not None:
        if insecure:
            raise FedmolError("--insecure and --certs exclude each other")
        ca, key, pid_from_certs = partner_certs(certs.expanduser().resolve())
        partition_id = pid_from_certs if partition_id is None else partition_id
    if partition_id is None:
        if not check_only:
            raise FedmolError("give --partition-id K (the partner number the coordinator gave this site) or "
                              "--certs with this site's folder (its partner.json holds it)")
        partition_id = 0
    if partition_id < 0:
        raise FedmolError(f"--partition-id must be >= 0, got {partition_id}")
    if not check_only:
        if superlink is None:
            raise FedmolError("give --superlink HOST:PORT (the coordinator's address) or --check-only")
        parse_address(superlink, "--superlink")
        if certs is None and not insecure:
            raise FedmolError("give --certs DIR (this site's folder from the coordinator: ca.pem, node.key) or, "
                              "on a test network only, --insecure")
    home = home.expanduser().resolve()
    nc = node_config(csv.expanduser(), smiles_col, target_cols, task, width_cap, partition_id,
                     (audit_dir or home / "audit").expanduser(), valid_csv.expanduser() if valid_csv else None,
                     threads, state_dir.expanduser() if state_dir else None)
    check_partner_data(nc, log=_say)
    if check_only:
        _say("check passed: nothing was started (--check-only)")
        return
    if not node_auth:
        key = None
    elif key is None and not insecure:
        _say(f"no node.key in {certs}: SuperNode authentication is off (the coordinator must run --no-node-auth)")
    code = run_partner(superlink, nc, home, ca=ca, node_key=key, insecure=insecure, log=_say,
                       echo=lambda line: print(line, flush=True), wait=wait)
    raise typer.Exit(code)


#: the run settings ``fedmol pilot demo`` takes as options (fedmol.config.RunConfig declares them)
DEMO_OPTIONS = ("algorithm", "dataset", "split", "partners", "alpha", "quantity_skew", "devices", "rounds", "seed",
                "model", "hidden", "layers", "dropout", "clients_per_round", "eval_every", "select", "patience",
                "heads", "data_dir")


@pilot_app.command("demo")
@friendly
@with_run_settings(*DEMO_OPTIONS)
def demo(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (the same files as `fedmol run`, plus pilot/)."),
    hp: list[str] = typer.Option([], "--hp", help="Algorithm hyperparameter KEY=VALUE (repeatable)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (loopback experiments only)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="SuperNode authentication (needs TLS)."),
    certs: Optional[Path] = typer.Option(None, "--certs", help="Use the CA and server certificate in this folder (`fedmol pilot certs`)."),
    round_timeout: float = typer.Option(300.0, "--round-timeout", help="Seconds a round waits for replies before going on without the late partners."),
    connect_timeout: float = typer.Option(120.0, "--connect-timeout", help="Seconds the coordinator waits for the SuperNodes to connect."),
    threads: int = typer.Option(1, "--threads", help="CPU threads per process (0: torch's default)."),
    **settings,
):
    """Run the federation as real Flower processes on this machine (SuperLink + one SuperNode per partner)."""
    from fedmol.cli_common import run_config
    from fedmol.pilot.demo import run_demo

    cfg = run_config(settings, hparams=parse_hparams(hp))
    s = run_demo(cfg, out, insecure=insecure, node_auth=(node_auth and not insecure), certs_dir=certs,
                 round_timeout=round_timeout, connect_timeout=connect_timeout, threads=threads,
                 progress=True, log=lambda m: console.print(m, highlight=False))
    console.print(results_table(f"{cfg.algorithm} on {s['dataset']}: Flower pilot, {s['partners']} partners, "
                                f"{s['rounds']} rounds ({s['seconds']:.0f} s coordinator time)", s, "partners' valid"))
    console.print(f"sent {s['bytes_down'] / 1e6:.1f} MB down, {s['bytes_up'] / 1e6:.1f} MB up; "
                  f"{s['failures']} failed partner-rounds; {len(s['refused'])} node(s) refused -> {out}")


@pilot_app.command("certs")
@friendly
def certs(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ca.pem/ca.key, server.pem/server.key, partner keys."),
    partners: int = typer.Option(0, "--partners", "-k", help="Also make this many SuperNode key pairs (partner-<k>, .pub)."),
    host: list[str] = typer.Option([], "--host", help="SuperLink host name or IP for the certificate (repeatable; default 127.0.0.1 and localhost)."),
    days: int = typer.Option(365, "--days", help="Validity in days."),
):
    """Create the pilot's CA, the SuperLink's TLS certificate and SuperNode authentication keys."""
    from fedmol.pilot.certs import DEFAULT_HOSTS, make_certs

    c = make_certs(out, partners, hosts=tuple(host) or DEFAULT_HOSTS, days=days)
    console.print(f"CA {c['ca']} (give ca.pem to every site; keep ca.key offline)")
    console.print(f"SuperLink certificate {c['server_cert']} + {c['server_key']} for {', '.join(c['hosts'])}")
    for k, (key, pub) in enumerate(zip(c["partner_keys"], c["partner_pubs"])):
        console.print(f"partner {k}: give the folder {key.parent} (ca.pem, node.key, partner.json) to that site only; "
                      f"its public key {pub} is registered by `fedmol pilot coordinator --certs {out}`")


@pilot_app.command("app")
@friendly
def app_folder(out: Path = typer.Option(..., "--out", "-o", help="Folder for the Flower app (pyproject.toml).")):
    """Write the pilot's Flower app folder (for `flwr run`) and a run.toml template for the coordinator."""
    from fedmol.pilot.config import run_config_defaults, write_app, write_toml

    write_app(out)
    write_toml(out / "run.toml.example", run_config_defaults())
    console.print(f"wrote {out / 'pyproject.toml'} and {out / 'run.toml.example'}; run with "
                  f"`flwr run {out} <connection> --run-config run.toml`")


@pilot_app.command("audit")
@friendly
def audit(path: Path = typer.Argument(..., help="A site's audit.jsonl (its audit-dir)."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON object per message.")):
    """Summarize a site's audit log: every message it received and sent, with bytes and disclosures."""
    if not path.is_file():
        raise FedmolError(f"audit log not found: {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if as_json:
        for r in rows:
            print(to_json(r))
        return
    t = Table(title=f"{path}: {len(rows)} entries")
    for col in ("time", "run", "round", "kind", "direction", "bytes", "arrays", "disclosed / reason"):
        t.add_column(col)
    for r in rows:
        extra = r.get("reason") or ", ".join(f"{k}={v}" for k, v in (r.get("disclosed") or {}).items())
        t.add_row(str(r.get("time", ""))[:19], str(r.get("run", "")), str(r.get("round", "")), str(r.get("kind", "")),
                  str(r.get("direction", "")), str(r.get("bytes", "")), str(len(r.get("arrays") or [])), extra[:80])
    console.print(t)
    sent = [r for r in rows if r.get("direction") == "sent"]
    console.print(f"sent {len(sent)} message(s), {sum(r.get('bytes', 0) for r in sent) / 1e6:.2f} MB; "
                  f"{sum(r.get('direction') == 'failed' for r in rows)} failure(s)")
