"""``fedmol pilot`` commands (the typer sub-app): certs, app, audit, and early errors of demo."""

import json
import socket
import ssl
import stat
import threading
import tomllib

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from fedmol.pilot.cli import pilot_app
from fedmol.pilot.config import PilotSettings, run_config_defaults

runner = CliRunner()


def test_certs_make_a_working_tls_chain_and_node_keys(tmp_path):
    r = runner.invoke(pilot_app, ["certs", "--out", str(tmp_path), "--partners", "2"])
    assert r.exit_code == 0, r.output
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "partner-keys/partner-0.pub",
                 "partner-keys/partner-1.pub", "partner-0/ca.pem", "partner-0/node.key", "partner-0/partner.json",
                 "partner-1/node.key"):
        assert (tmp_path / name).is_file(), name
    for name in ("ca.key", "server.key", "partner-0/node.key", "partner-1/node.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    key = load_ssh_private_key((tmp_path / "partner-0" / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key((tmp_path / "partner-keys" / "partner-0.pub").read_bytes()).public_numbers() == \
        key.public_key().public_numbers()
    assert (tmp_path / "partner-1" / "ca.pem").read_bytes() == (tmp_path / "ca.pem").read_bytes()
    assert json.loads((tmp_path / "partner-1" / "partner.json").read_text()) == {"partition_id": 1}
    assert not (tmp_path / "partner-0" / "ca.key").exists() and not (tmp_path / "partner-0" / "server.key").exists()

    # a TLS handshake to 127.0.0.1 with the server certificate, verified against the CA
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]

        def serve():
            conn, _ = lsock.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        for host in ("127.0.0.1", "localhost"):
            if host == "localhost":
                t = threading.Thread(target=serve, daemon=True)
                t.start()
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=host) as s:
                    assert s.recv(2) == b"ok"


def test_app_folder_is_a_valid_flower_app(tmp_path):
    from flwr.common.config import validate_config

    r = runner.invoke(pilot_app, ["app", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(doc, check_module=True, project_dir=tmp_path)
    assert ok, errors
    assert doc["tool"]["flwr"]["app"]["components"] == {"serverapp": "fedmol_pilot_server:app",
                                                        "clientapp": "fedmol_pilot_client:app"}
    for entry, module in (("fedmol_pilot_server", "fedmol.pilot.server_app"),
                          ("fedmol_pilot_client", "fedmol.pilot.client_app")):
        assert f"from {module} import app as _app" in (tmp_path / f"{entry}.py").read_text()
    assert doc["tool"]["flwr"]["app"]["config"] == run_config_defaults()
    example = tomllib.loads((tmp_path / "run.toml.example").read_text())
    s = PilotSettings.from_run_config({**example, "out-dir": str(tmp_path), "split": "split.json"})
    assert s.algorithm == "fedavg" and s.hparams == {}


def test_audit_summary(tmp_path):
    path = tmp_path / "audit.jsonl"
    rows = [dict(time="2026-01-01T00:00:00", run=1, round=0, kind="train", direction="received", bytes=10, arrays=[]),
            dict(time="2026-01-01T00:00:01", run=1, round=0, kind="train", direction="sent", bytes=2_000_000,
                 arrays=[{"name": "w"}], disclosed={"fedgen.label_counts": [[3, 4]]})]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = runner.invoke(pilot_app, ["audit", str(path)])
    assert r.exit_code == 0, r.output
    assert "sent 1 message(s), 2.00 MB; 0 failure(s)" in r.output
    r = runner.invoke(pilot_app, ["audit", str(path), "--json"])
    assert [json.loads(x) for x in r.output.splitlines()] == rows
    assert runner.invoke(pilot_app, ["audit", str(tmp_path / "none.jsonl")]).exit_code == 2


def test_demo_rejects_unknown_algorithm_before_starting_anything(tmp_path):
    r = runner.invoke(pilot_app, ["demo", "--algorithm", "nope", "--dataset", "bace", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown algorithm" in r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(pilot_app, ["demo", "--hp", "colour=red", "--dataset", "bace", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown hyperparameter" in r.output


def test_partner_state_dir_reaches_the_node_config(tmp_path, monkeypatch, data_dir):
    """``--state-dir`` (where a site keeps its private heads) goes into the node config the SuperNode gets;
    without it the key is absent (the site then keeps its state in its audit dir)."""
    import pandas as pd

    from fedmol.pilot import deploy

    pd.read_csv(data_dir / "BBBP.csv").iloc[:40][["smiles", "p_np"]].to_csv(tmp_path / "site.csv", index=False)
    seen = []
    monkeypatch.setattr(deploy, "run_partner", lambda superlink, nc, *a, **kw: seen.append(nc) or 0)
    base = ["partner", "--superlink", "127.0.0.1:9092", "--insecure", "--partition-id", "0", "--csv",
            str(tmp_path / "site.csv"), "--smiles-col", "smiles", "--target-cols", "p_np", "--task", "classification",
            "--home", str(tmp_path / "home")]
    for extra in (["--state-dir", str(tmp_path / "state")], []):
        r = runner.invoke(pilot_app, base + extra)
        assert r.exit_code == 0, r.output
    assert seen[0]["state-dir"] == str((tmp_path / "state").resolve()) and "state-dir" not in seen[1]
