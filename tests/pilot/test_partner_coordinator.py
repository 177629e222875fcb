"""``fedmol pilot coordinator`` and ``fedmol pilot partner``: the two commands of a real pilot.

One federation runs as real processes on loopback, started exactly as docs/pilot.md tells the IT
teams: ``fedmol pilot certs`` makes the CA, the SuperLink certificate and one folder per partner;
``fedmol pilot coordinator pilot.toml --certs pki`` (TLS, SuperNode authentication with the
partners' registered public keys) and two ``fedmol pilot partner --certs pki/partner-<k>`` processes
with their own BBBP CSVs; the partners are stopped with SIGINT (Ctrl-C) once the coordinator is
done. About two minutes on a loaded 2-core machine (Flower starts a ClientApp process per message),
run in the background while the rest of the suite runs (tests/pilot/federations.py).

The rest is fast and in-process: the partner's local CSV check (``--check-only``), the pilot
TOML's one-line errors, and the minimum-partners rule (through :class:`LocalLink`, the same
coordinator code the ServerApp runs). ``pytest -m slow`` adds the minimum-partners rule over
real processes with ``--insecure`` (one partner of two connects).
"""

import csv
import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmol.pilot.cli import pilot_app
from fedmol.pilot.processes import group_members
from federations import COLS, make_csvs, pilot_toml, run_federation

runner = CliRunner()


@pytest.fixture(scope="module")
def csvs(tmp_path_factory, data_dir):
    """Two sites' CSVs (50 BBBP rows each) and the coordinator's test CSV (20 positive, 20 negative)."""
    return make_csvs(tmp_path_factory.mktemp("csvs"), data_dir)


def no_processes_left(records: Path) -> None:
    doc = json.loads(records.read_text())
    assert doc["processes"] and doc["leftovers"] == {}
    for p in doc["processes"]:
        assert p["returncode"] is not None and group_members(p["pgid"]) == [], p


@pytest.fixture(scope="module")
def tls_pilot(federation):
    """The TLS pilot of two partners (tests/pilot/federations.py): its folders, CSVs and exit codes."""
    r = federation("tls_cli_pilot")
    return dict(r, root=Path(r["root"]), out=Path(r["out"]))


def test_tls_pilot_end_to_end(tls_pilot):
    root, out = tls_pilot["root"], tls_pilot["out"]
    said = (root / "coordinator.out").read_text()
    assert tls_pilot["coordinator"] == 0, said
    assert "TLS, SuperNode authentication" in said and "registered partner-0.pub" in said
    assert "round 1 (2/2): 2 partner(s) replied" in said and "0 round(s) skipped" in said
    for name in ("config.json", "metrics.csv", "summary.json", "model.safetensors", "test_predictions.csv",
                 "sent.jsonl", "nodes.json", "coordinator.log"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ("dataset", "metric", "algorithm", "test", "valid", "per_partner", "bytes_up", "bytes_down",
                "failures", "rounds", "partners", "refused"):
        assert key in s, key
    assert s["rounds"] == 2 and s["partners"] == 2 and s["failures"] == 0 and s["refused"] == []
    assert s["metric"] == "rocauc" and set(s["test"]) == {"1.0"} and 0 <= s["test"]["1.0"] <= 1
    assert [e["partner"] for e in s["per_partner"]] == [0, 1] and all(e["n_train"] > 30 for e in s["per_partner"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["round"] for r in rows] == ["0", "1"]
    assert [(r["participants"], r["aggregated"], r["skipped_reason"]) for r in rows] == [("2", "1", ""), ("2", "1", "")]
    nodes = json.loads((out / "nodes.json").read_text())
    assert sorted(n["partition_id"] for n in nodes if n["status"] == "accepted") == [0, 1]
    run_config = tomllib.loads((out / "pilot" / "run.toml").read_text())
    assert run_config["min-partners"] == 2 and run_config["round-timeout"] == 300.0
    assert run_config["target-cols"] == "p_np" and run_config["test-csv"].endswith("test.csv")
    link_log = (out / "pilot" / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in link_log and "RegisterNode" in link_log


def test_partners_keep_their_molecules_audit_and_stop_on_ctrl_c(tls_pilot):
    root, out, csvs = tls_pilot["root"], tls_pilot["out"], tls_pilot["csvs"]
    for k, returncode in tls_pilot["partners"].items():
        said = (root / f"partner{k}.out").read_text()
        assert returncode == 0, said
        assert "50 rows -> " in said and "SuperNode started" in said and "stopped (SIGINT)" in said
        site = root / f"site{k}"
        nc = tomllib.loads((site / "site.toml").read_text())
        assert nc["partition-id"] == int(k) and nc["csv"] == csvs[k] and nc["width-cap"] == 1.0
        audit = [json.loads(x) for x in (site / "audit" / "audit.jsonl").read_text().splitlines()]
        assert [(a["kind"], a["direction"]) for a in audit] == [
            ("hello", "received"), ("hello", "sent"), ("train", "received"), ("train", "sent"),
            ("train", "received"), ("train", "sent"), ("validate", "received"), ("validate", "sent")]
        no_processes_left(site / "processes.json")
    no_processes_left(out / "pilot" / "processes.json")
    # nothing the coordinator wrote holds a site's molecule
    texts = [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    for smi in csvs["smiles"]:
        assert not any(smi in t for t in texts), smi


def test_partner_check_only(tmp_path, csvs):
    home = tmp_path / "home"
    r = runner.invoke(pilot_app, ["partner", "--check-only", "--csv", str(csvs[0]), *COLS, "--width-cap", "0.25",
                                  "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "50 rows -> " in r.output and "p_np: " in r.output and "check passed" in r.output
    assert "width cap 0.25" in r.output and not home.exists()  # nothing written, nothing started

    no_smiles = tmp_path / "no_smiles.csv"
    no_smiles.write_text("compound,p_np\nCCO,1\nCCN,0\n")
    r = runner.invoke(pilot_app, ["partner", "--check-only", "--csv", str(no_smiles), *COLS])
    assert r.exit_code == 2 and "no SMILES column 'smiles'" in r.output and "compound" in r.output
    assert "Traceback" not in r.output

    invalid = tmp_path / "invalid.csv"
    invalid.write_text("smiles,p_np\nnot-a-molecule,1\nC1CC,0\n")
    r = runner.invoke(pilot_app, ["partner", "--check-only", "--csv", str(invalid), *COLS])
    assert r.exit_code == 2 and "no valid molecule" in r.output

    r = runner.invoke(pilot_app, ["partner", "--check-only", "--csv", str(csvs[0]), *COLS, "--width-cap", "0.3"])
    assert r.exit_code == 2 and "width-cap 0.3 is not one of the widths" in r.output
    # without --check-only: the coordinator's address and the certificates are required before anything starts
    r = runner.invoke(pilot_app, ["partner", "--csv", str(csvs[0]), *COLS, "--partition-id", "0"])
    assert r.exit_code == 2 and "--superlink" in r.output
    r = runner.invoke(pilot_app, ["partner", "--superlink", "127.0.0.1:9", "--csv", str(csvs[0]), *COLS,
                                  "--partition-id", "0"])
    assert r.exit_code == 2 and "--certs" in r.output


@pytest.mark.parametrize("change, message", [
    ({"pilot": "min_partner = 2"}, "unknown key [pilot] min_partner; known: "),
    ({"top": "[security]\nkey = 1"}, "unknown key [security]"),
    ({"pilot": 'rounds = "2"'}, "pilot.rounds: Input should be a valid integer (got '2')"),
    ({"pilot": "round_deadline = -1"}, "pilot.round_deadline: Input should be greater than 0"),
    ({"dataset": 'task = "ranking"'}, "dataset.task: Input should be 'classification' or 'regression'"),
    ({"pilot": "min_partners = 3"}, "min_partners (3) is larger than partners (2)"),
    ({"pilot": 'algorithm = "fedsgd"'}, "unknown algorithm 'fedsgd'"),
    ({"hparams": "colour = 1"}, "unknown hyperparameter(s) ['colour']"),
    ({"dataset": 'test_csv = "missing.csv"'}, "test_csv"),
    ({"pilot": 'select = "best"'}, "pilot.select: Input should be 'best-valid' or 'last'"),
    ({"text": "[pilot\n"}, "is not valid TOML"),
])
def test_pilot_toml_errors_are_one_line(tmp_path, csvs, change, message):
    sections = {
        "pilot": {"name": '"t"', "algorithm": '"fedavg"', "rounds": "2", "partners": "2", "min_partners": "2",
                  "round_deadline": "60"},
        "hparams": {},
        "dataset": {"task": '"classification"', "target_cols": '["p_np"]', "test_csv": json.dumps(str(csvs["test"]))},
    }
    for section, line in change.items():
        if section in sections:
            key, value = line.split(" = ", 1)
            sections[section][key] = value
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()) for name, body in sections.items())
    text = change.get("text", "") + text + change.get("top", "")
    if "min_partner = 2" in change.get("pilot", ""):
        text = text.replace("min_partners = 2\n", "")
    toml = tmp_path / "pilot.toml"
    toml.write_text(text)
    r = runner.invoke(pilot_app, ["coordinator", str(toml), "--out", str(tmp_path / "run"), "--insecure"])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) <= 3  # one line (soft-wrapped at most by the terminal width)
    assert not (tmp_path / "run").exists()  # nothing started


def test_min_partners_skips_rounds_with_a_reason(tmp_path, csvs):
    """Two partners expected, two required per round, one connects: every round is skipped, the run goes on."""
    from fedmol.pilot.coordinator import LocalLink, run_coordinator
    from fedmol.pilot.deploy import node_config
    from fedmol.pilot.plan import load_plan

    plan = load_plan(pilot_toml(tmp_path / "pilot.toml", csvs["test"], connect_timeout=0.5))
    s = plan.settings(tmp_path / "run")
    assert (s.min_partners, s.partners, s.round_timeout) == (2, 2, 120.0)
    nc = node_config(csvs[0], "smiles", "p_np", "classification", 1.0, 0, tmp_path / "audit")
    summary = run_coordinator(LocalLink({7: nc}), s, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["participants"] for r in rows] == ["1", "1"]
    assert [r["aggregated"] for r in rows] == ["0", "0"]
    for r in rows:
        assert r["skipped_reason"] == ("1 usable reply by the deadline, fewer than min-partners 2: not aggregated, "
                                       "global model unchanged")
    # the global model never changed: the same test score every round
    assert rows[0]["test_rocauc@1.0"] == rows[1]["test_rocauc@1.0"]
    assert summary["rounds"] == 2 and summary["partners"] == 1 and (tmp_path / "run" / "summary.json").is_file()

    s.min_partners = 1  # one reply is enough: the rounds are aggregated
    run_coordinator(LocalLink({7: nc}), s, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [(r["aggregated"], r["skipped_reason"]) for r in rows] == [("1", ""), ("1", "")]


@pytest.mark.slow  # the rule itself always runs in-process (above)
def test_insecure_pilot_with_a_missing_partner_skips_rounds(tmp_path, csvs):
    fed = run_federation(tmp_path, csvs, insecure=True, partners=[0], connect_timeout=10)
    fed["out"] = Path(fed["out"])
    said = (tmp_path / "coordinator.out").read_text()
    assert fed["coordinator"] == 0, said
    assert "INSECURE" in said and "2 round(s) skipped" in said
    rows = list(csv.DictReader(open(fed["out"] / "metrics.csv")))
    assert [(r["participants"], r["aggregated"]) for r in rows] == [("1", "0"), ("1", "0")]
    assert "fewer than min-partners 2" in rows[0]["skipped_reason"]
    assert "http://127.0.0.1" in (fed["out"] / "pilot" / "logs" / "superlink.log").read_text()
    assert fed["partners"]["0"] == 0
    no_processes_left(fed["out"] / "pilot" / "processes.json")
    no_processes_left(tmp_path / "site0" / "processes.json")


def test_server_certificate_also_names_loopback(tmp_path):
    """The coordinator's own flwr CLI and ServerApp reach the SuperLink through 127.0.0.1."""
    from cryptography import x509

    from fedmol.pilot.certs import make_certs

    make_certs(tmp_path, 0, hosts=("coordinator.example.org", "203.0.113.10"))
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.10", "127.0.0.1"]


def test_pilot_toml_without_a_test_set(tmp_path):
    """A coordinator that holds no molecule: the partners' validation scores are the metric."""
    from fedmol.pilot.plan import load_plan

    plan = load_plan(pilot_toml(tmp_path / "pilot.toml", None, select="best-valid"))
    s = plan.settings(tmp_path / "run")
    assert plan.test_csv is None and s.test_csv is None and s.select == "best-valid"
    assert s.target_cols == "p_np" and s.task == "classification"
    from fedmol.pilot.config import PilotSettings
    assert PilotSettings.from_run_config(s.to_run_config()) == s
