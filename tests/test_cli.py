import json

import pytest
from typer.testing import CliRunner

from fedmol.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_datasets_lists_registry_with_availability(data_dir):
    res = run("datasets", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert len(rows) == 12 and rows["moleculeace"]["file"] == "MoleculeACE-3.0.0-py3-none-any.whl"
    assert rows["bbbp"]["available"] and rows["bbbp"]["location"] == str(data_dir / "BBBP.csv")
    assert rows["b3db_classification"]["available"]
    table = run("datasets")
    assert table.exit_code == 0 and "lipophilicity" in table.stdout


def test_algorithms_lists_every_hyperparameter_with_its_default():
    from fedmol.fl.registry import ALGORITHMS, get_algorithm

    res = run("algorithms", "--json")
    assert res.exit_code == 0, res.output
    cards = {c["name"]: c for c in json.loads(res.stdout)}
    assert list(cards) == list(ALGORITHMS)
    for name, c in cards.items():
        algo = get_algorithm(name)(dict(name="gin", num_tasks=1, hidden=8, layers=2, task_type="classification"))
        assert {**c["shared_hparams"], **c["hparams"]} == json.loads(json.dumps(algo.hp))  # what a run resolves
    assert cards["fedgen"]["hparams"]["ordered_dropout"] is False and cards["fedgen"]["supports_dp"] is False
    assert cards["fedgen"]["summary"].startswith("FedGen: data-free knowledge distillation (Zhu, Hong, Zhou, ICML 2021)")
    assert "fedgen.label_counts" in cards["fedgen"]["disclosures"] and cards["fjord"]["supports_dp"] is True
    table = run("algorithms", "heterofl")
    assert table.exit_code == 0 and "HeteroFL" in table.stdout and "shared by every algorithm" in table.stdout
    bad = run("algorithms", "fedprox")
    assert bad.exit_code == 2 and "unknown algorithm 'fedprox'; known: fedavg" in bad.output


def test_featurize_json_counts_bbbp():
    res = run("featurize", "bbbp", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["rows"], out["valid"], out["invalid"]) == (2050, 2039, 11)
    assert len(out["invalid_rows"]) == 11 and set(out["invalid_rows"][0]) == {"row", "smiles", "reason"}
    assert out["duplicates"] == 0  # repeated SMILES strings (BBBP repeats molecules only in other spellings)


def test_featurize_summary_and_report_file(tmp_path):
    res = run("featurize", "bbbp", "--report", tmp_path / "bad.csv")
    assert res.exit_code == 0, res.output
    assert "2050 rows" in res.stdout and "11 invalid" in res.stdout
    assert len((tmp_path / "bad.csv").read_text().strip().splitlines()) == 12


def test_featurize_lists_duplicated_smiles_with_their_rows(tmp_path):
    f = tmp_path / "dup.csv"
    f.write_text("smiles,y\nCCO,1\nCCN,0\nCCO,0\nc1ccccc1,1\nnot a smiles,1\nCCN,1\nCCO,1\n")
    args = ("featurize", "--csv", f, "--smiles-col", "smiles", "--target-cols", "y", "--task", "classification")
    out = json.loads(run(*args, "--json").stdout)
    assert out["duplicates"] == 3
    assert out["duplicated_smiles"] == [dict(smiles="CCO", rows=[0, 2, 6]), dict(smiles="CCN", rows=[1, 5])]
    text = run(*args).stdout
    assert "3 duplicated SMILES" in text and "  CCO: rows 0, 2, 6\n" in text and "  CCN: rows 1, 5\n" in text


@pytest.mark.parametrize("args,message", [
    (["featurize", "nosuch"], "unknown dataset 'nosuch'; known datasets: bbbp"),
    (["split", "make", "esol", "--alpha", "0", "--out", "x.json"], "alpha must be > 0"),
    (["split", "make", "freesolv", "--partners", "5000", "--out", "x.json"], "more partners"),
    (["split", "show", "absent.json"], "split file not found"),
    (["run", "--select", "best", "--out", "x"], "--select must be 'best-valid' or 'last', got 'best'"),
    (["run", "--rounds", "0", "--out", "x"], "--rounds must be an integer in [1, 100000], got 0"),
    (["train", "bace", "--device", "tpu", "--out", "x"], "unknown device 'tpu'"),
    (["run", "--eval-every", "0", "--out", "x"], "--eval-every must be an integer >= 1, got 0"),
    (["run", "--clients-per-round", "0", "--out", "x"], "--clients-per-round must be an integer in [1, 10000] or null, got 0"),
    (["run", "--faulty-links", "1.5", "--out", "x"], "--faulty-links must be a number in [0.0, 1.0], got 1.5"),
])
def test_user_mistakes_are_one_line_errors(args, message):
    res = run(*args)
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_csv_without_smiles_column(tmp_path):
    p = tmp_path / "partner.csv"
    p.write_text("id,structure,act\n1,CCO,1\n")
    res = run("featurize", "--csv", p, "--smiles-col", "smiles", "--target-cols", "act", "--task", "classification")
    assert res.exit_code == 2
    assert "columns found: ['id', 'structure', 'act']" in " ".join(res.output.split())


def test_split_make_show_verify(tmp_path):
    out = tmp_path / "esol.json"
    res = run("split", "make", "esol", "--partners", 4, "--alpha", 0.1, "--seed", 1, "--out", out)
    assert res.exit_code == 0, res.output
    obj = json.loads(out.read_text())
    assert obj["spec"]["partners"] == 4 and len(obj["partners"]) == 4
    shown = run("split", "show", out, "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["sha256"] == obj["sha256"]
    ok = run("split", "verify", out)
    assert ok.exit_code == 0 and "OK" in ok.stdout


def test_split_on_partner_csv(tmp_path, data_dir):
    import pandas as pd
    df = pd.read_csv(data_dir / "BBBP.csv").head(400)
    p = tmp_path / "partner.csv"
    df.to_csv(p, index=False)
    out = tmp_path / "s.json"
    args = ["--csv", p, "--smiles-col", "smiles", "--target-cols", "p_np", "--task", "classification"]
    res = run("split", "make", "--partners", 3, "--alpha", 1, "--out", out, *args)
    assert res.exit_code == 0, res.output
    spec = json.loads(out.read_text())["spec"]
    assert spec["dataset"] == "csv:partner" and spec["csv"]["target_cols"] == ["p_np"]
    assert run("split", "verify", out).exit_code == 2  # needs its CSV
    res = run("split", "verify", out, "--csv", p)
    assert res.exit_code == 0, res.output


def test_train_writes_summary_and_safetensors(tmp_path):
    res = run("train", "bace", "--epochs", 2, "--hidden", 16, "--layers", 2, "--width", 0.5, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["dataset"] == "bace" and s["metric"] == "rocauc" and list(s["test"]) == ["0.5"]
    assert set(s) >= {"valid", "seconds", "config"} and 0 <= s["test"]["0.5"] <= 1
    from safetensors.torch import load_file
    from fedmol.models import build
    net = build(**{**s["config"]["model"]})
    net.load_state_dict(load_file(str(tmp_path / "model.safetensors")))


def test_train_split_protocols(tmp_path):
    from fedmol.centralized import centralized_split
    from fedmol.data.dataset import load_dataset
    ds = load_dataset("bace", progress=False)
    ours, hu = centralized_split(ds, "fedmol"), centralized_split(ds, "hu2020")
    assert [len(x) for x in ours] == [len(x) for x in hu] == [1210, 151, 152]  # same sizes, other molecules
    assert set(ours[2].tolist()) != set(hu[2].tolist())
    res = run("train", "bace", "--epochs", 1, "--hidden", 8, "--layers", 2, "--split-protocol", "hu2020",
              "--out", tmp_path)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["config"]["split"] == "scaffold 80/10/10, protocol hu2020" and s["sizes"]["test"] == 152
    bad = run("train", "bace", "--split-protocol", "random", "--out", tmp_path)
    assert bad.exit_code != 0 and "unknown split protocol 'random'" in bad.output


@pytest.mark.parametrize("algorithm", ["fedavg", "heterofl", "fjord", "fedgen", "fedrescue", "feddf"])
def test_run_every_algorithm(tmp_path, algorithm):
    # FedDF: a small server-side distillation budget (its full default costs ~30 s and is measured in the benches)
    small = ["--hp", "distill_steps=20", "--hp", "eval_every=10", "--hp", "pool_size=200"] if algorithm == "feddf" else []
    res = run("run", "--algorithm", algorithm, "--dataset", "bace", "--partners", 3, "--rounds", 1, "--hidden", 16,
              "--layers", 2, "--devices", "tiered", "--hp", "max_local_steps=2", *small, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["algorithm"] == algorithm and s["test"] and all(0 <= v <= 1 for v in s["test"].values())
    for f in ("config.json", "metrics.csv", "model.safetensors", "test_predictions.csv", "sent.jsonl"):
        assert (tmp_path / f).is_file()


def test_run_on_a_partner_csv(tmp_path, data_dir):
    import pandas as pd
    p = tmp_path / "partner.csv"
    pd.read_csv(data_dir / "bace.csv").head(300)[["smiles", "Class"]].to_csv(p, index=False)
    out = tmp_path / "run"
    res = run("run", "--csv", p, "--smiles-col", "smiles", "--target-cols", "Class", "--task", "classification",
              "--partners", 2, "--rounds", 1, "--hidden", 16, "--layers", 2, "--hp", "max_local_steps=2", "--out", out)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "csv:partner" and 0 <= s["test"]["1.0"] <= 1


def test_train_records_the_last_epoch_protocol(tmp_path):
    """--patience 0 trains every epoch; the test score after each epoch is recorded (Hu et al.'s last-epoch
    protocol) and never changes which epoch is kept."""
    res = run("train", "bace", "--epochs", 3, "--patience", 0, "--hidden", 16, "--layers", 2, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["epochs_run"] == 3 and s["last_epoch"] == 2 and s["config"]["patience"] is None
    assert [h["epoch"] for h in s["history"]] == [0, 1, 2] and all(0 <= h["test"] <= 1 for h in s["history"])
    assert s["test_last"]["1.0"] == s["history"][-1]["test"]
    best = s["history"][s["best_epoch"]]
    assert s["valid"]["1.0"] == best["valid"] and s["test"]["1.0"] == pytest.approx(best["test"], abs=1e-12)
    assert "last epoch 2: test" in " ".join(res.output.split())


def test_train_on_a_gpu_that_is_not_there(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = run("train", "bace", "--device", "cuda", "--out", tmp_path / "t")
    assert res.exit_code == 2 and "sees no CUDA GPU" in " ".join(res.output.split())
    assert not (tmp_path / "t").exists()


def test_a_model_below_chance_on_test_but_good_on_validation_is_flagged():
    from fedmol.cli import below_chance_warnings

    s = dict(metric="rocauc", test={"1.0": 0.42, "0.5": 0.61}, valid={"1.0": 0.71, "0.5": 0.66})
    assert below_chance_warnings(s) == [
        "width 1.0: test rocauc 0.420 is below chance (0.5) while validation scores 0.710: the held-out scaffolds "
        "behave unlike the validation molecules; do not read this model's test score as its quality"]
    assert below_chance_warnings(dict(s, valid={"1.0": 0.45})) == []  # bad everywhere: nothing to contrast
    assert below_chance_warnings(dict(metric="rmse", test={"1.0": 0.1}, valid={"1.0": 0.9})) == []


def test_invalid_smiles_are_shown_as_they_can_be_copied_back():
    from fedmol.cli import shown_smiles

    assert shown_smiles(r"C/C=C\C(=O)O") == r"C/C=C\C(=O)O"  # one backslash, not Python's two
    assert shown_smiles("CC\t(=O)O") == "CC<TAB>(=O)O"
    assert shown_smiles("C" * 70) == "C" * 60 + "..."
