"""``fedmol pilot ...``: the pilot commands, as a typer sub-app (mounted by :mod:`fedmol.cli`).

Importing this module is cheap (typer only); each command imports what it needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedmol.cli_common import console, err, friendly, parse_hparams  # noqa: F401
from fedmol.errors import FedmolError

pilot_app = typer.Typer(no_args_is_help=True, help="Pharma collaboration pilots on Flower: demo, certificates, app.")






@pilot_app.command("demo")
@friendly
def demo(
    algorithm: str = typer.Option("fedavg", "--algorithm", "-A", help="fedavg | feddf | heterofl | fjord | fedgen | fedrescue"),
    dataset: Optional[str] = typer.Option("b3db_classification", "--dataset", "-d", help="Registry dataset name."),
    split: Optional[Path] = typer.Option(None, "--split", help="A frozen split file (overrides --dataset/--partners/--alpha)."),
    partners: int = typer.Option(8, "--partners", "-k", help="Partners = SuperNodes started."),
    alpha: float = typer.Option(1.0, "--alpha", "-a"),
    quantity_skew: float = typer.Option(0.0, "--quantity-skew"),
    devices: str = typer.Option("homogeneous", "--devices", help="homogeneous | tiered | pharma | FILE.toml (width caps per site)"),
    rounds: int = typer.Option(20, "--rounds", "-r"),
    seed: int = typer.Option(0, "--seed", "-s"),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (the same files as `fedmol run`, plus pilot/)."),
    model: str = typer.Option("gin", "--model"),
    hidden: int = typer.Option(300, "--hidden"),
    layers: int = typer.Option(5, "--layers"),
    clients_per_round: Optional[int] = typer.Option(None, "--clients-per-round"),
    eval_every: int = typer.Option(1, "--eval-every"),
    hp: list[str] = typer.Option([], "--hp", help="Algorithm hyperparameter KEY=VALUE (repeatable)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding the dataset files (else $FEDMOL_DATA_DIR)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (loopback experiments only)."),
    node_auth: bool = typer.Option(True, "--node-auth/--no-node-auth", help="SuperNode authentication (needs TLS)."),
    certs: Optional[Path] = typer.Option(None, "--certs", help="Use the CA and server certificate in this folder (`fedmol pilot certs`)."),
    round_timeout: float = typer.Option(300.0, "--round-timeout", help="Seconds a round waits for replies before going on without the late partners."),
    connect_timeout: float = typer.Option(120.0, "--connect-timeout", help="Seconds the coordinator waits for the SuperNodes to connect."),
    threads: int = typer.Option(1, "--threads", help="CPU threads per process (0: torch's default)."),
):
    """Run the federation as real Flower processes on this machine (SuperLink + one SuperNode per partner)."""
    from fedmol.fl.harness import RunConfig
    from fedmol.pilot.demo import run_demo

    cfg = RunConfig(algorithm=algorithm, dataset=dataset, split=str(split) if split else None, partners=partners,
                    alpha=alpha, quantity_skew=quantity_skew, devices=devices, rounds=rounds, seed=seed,
                    clients_per_round=clients_per_round, model=model, hidden=hidden, layers=layers,
                    eval_every=eval_every, hparams=parse_hparams(hp), data_dir=str(data_dir) if data_dir else None)
    s = run_demo(cfg, out, insecure=insecure, node_auth=(node_auth and not insecure), certs_dir=certs,
                 round_timeout=round_timeout, connect_timeout=connect_timeout, threads=threads,
                 progress=True, log=lambda m: console.print(m, highlight=False))
    t = Table(title=f"{algorithm} on {s['dataset']}: Flower pilot, {s['partners']} partners, {s['rounds']} rounds "
                    f"({s['seconds']:.0f} s coordinator time)")
    t.add_column("width")
    t.add_column(f"test {s['metric']}")
    t.add_column(f"valid {s['metric']} (partners' mean)")
    for w, v in s["test"].items():
        vv = s["valid"].get(w)
        t.add_row(w, f"{v:.4f}", "-" if vv is None else f"{vv:.4f}")
    console.print(t)
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
        console.print(f"partner {k}: private key {key} (to that site only), public key {pub} (register it)")


@pilot_app.command("app")
@friendly
def app_folder(out: Path = typer.Option(..., "--out", "-o", help="Folder for the Flower app (pyproject.toml).")):
    """Write the pilot's Flower app folder (for `flwr run`) and a run.toml template for the coordinator."""
    from fedmol.pilot.config import RUN_CONFIG_DEFAULTS, write_app, write_toml

    write_app(out)
    write_toml(out / "run.toml.example", RUN_CONFIG_DEFAULTS)
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
            print(json.dumps(r))
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
