"""A suite over several backbones (``models = ["mlp", "gin"]``) and PR-AUC beside ROC-AUC."""

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from sklearn.metrics import average_precision_score

from fedmol.errors import FedmolError
from fedmol.fl import bench
from fedmol.fl.references import best_local, federated_gain, neural_family

SUITE = """
name = "two"
datasets = ["bace"]
alphas = [1.0]
devices = ["tiered"]
algorithms = ["fedavg", "gbt-cyclic"]
seeds = [0]
references = ["local-only", "centralized"]
reference_models = ["gnn", "rf-ecfp4"]
models = ["mlp", "gin"]

[run]
partners = 3
rounds = 1

[model.mlp]
hidden = 32
layers = 2

[model.gin]
hidden = 16
layers = 2

[hparams]
max_local_steps = 2

[reference]
min_epochs = 1
rf_jobs = 1
"""


def write(tmp_path, text=SUITE):
    p = tmp_path / "two.toml"
    p.write_text(text)
    return p


def test_plan_runs_each_backbone_in_its_folder_and_the_trees_once(tmp_path):
    s = bench.load_suite(write(tmp_path))
    assert s.backbones == ["mlp", "gin"] and s.run_settings("gin") == dict(partners=3, rounds=1, hidden=16, layers=2,
                                                                           model="gin")
    jobs = bench.plan(s, tmp_path / "out")
    base = tmp_path / "out" / "runs" / "bace" / "tiered" / "a1"
    got = [(j.path.relative_to(base).as_posix(), j.cfg.model, j.cfg.hidden, j.family) for j in jobs]
    assert got == [
        ("mlp/reference-local-only-gnn/s0", "mlp", 32, "mlp"),
        ("reference-local-only-rf-ecfp4/s0", "mlp", 32, "rf-ecfp4"),
        ("mlp/reference-centralized-gnn/s0", "mlp", 32, "mlp"),
        ("reference-centralized-rf-ecfp4/s0", "mlp", 32, "rf-ecfp4"),
        ("mlp/fedavg/s0", "mlp", 32, "mlp"),
        ("gbt-cyclic/s0", "mlp", 32, "gbt-ecfp4"),  # federated trees: no backbone, one run of the gbt family
        ("gin/reference-local-only-gnn/s0", "gin", 16, "gnn"),
        ("gin/reference-centralized-gnn/s0", "gin", 16, "gnn"),
        ("gin/fedavg/s0", "gin", 16, "gnn")]
    assert [e["method"] for j in jobs for e in j.entries() if j.kind == "federated"] == [
        "fedavg (mlp)", "gbt-cyclic (gbt-ecfp4)", "fedavg (gnn)"]


def test_one_backbone_keeps_the_plain_layout_and_names(tmp_path):
    text = SUITE.replace('models = ["mlp", "gin"]\n', "").split("[model.mlp]")[0] + "[hparams]\nmax_local_steps = 2\n"
    text = text.replace("[run]\n", '[run]\nmodel = "mlp"\n')
    jobs = bench.plan(bench.load_suite(write(tmp_path, text)), tmp_path / "out")
    fed = [j for j in jobs if j.kind == "federated"][0]
    assert fed.path == tmp_path / "out" / "runs" / "bace" / "tiered" / "a1" / "fedavg" / "s0"
    assert fed.entries()[0]["method"] == "fedavg" and fed.family == "mlp"
    assert [j.entries()[0]["family"] for j in jobs if j.kind == "reference"] == ["mlp", "rf-ecfp4", "mlp", "rf-ecfp4"]


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("[run]\n", '[run]\nmodel = "gin"\n'), "both as the axis models and in \\[run\\] model"),
    (lambda t: t + "[model.gat]\nhidden = 8\n", "\\[model.gat\\] is not in models"),
    (lambda t: t.replace("[model.gin]\n", "[model.gin]\nwidth = 2\n"), "unknown \\[model.gin\\] key"),
    (lambda t: t.replace("[model.gin]\nhidden = 16", '[model.gin]\nhidden = "big"'), "\\[model.gin\\]: \\[run\\] hidden"),
    (lambda t: t.replace('models = ["mlp", "gin"]\n', ""), "need the backbones axis"),
    (lambda t: t.replace('models = ["mlp", "gin"]', 'models = ["mlp", "mlp"]'), "duplicates"),
])
def test_backbone_axis_mistakes_are_one_line(tmp_path, edit, match):
    with pytest.raises(FedmolError, match=match):
        bench.load_suite(write(tmp_path, edit(SUITE)))


def test_neural_family():
    assert [neural_family(b) for b in ("mlp", "gin", "gcn", "gat")] == ["mlp", "gnn", "gnn", "gnn"]


def test_two_backbone_suite_reports_rows_per_family_with_prauc(tmp_path):
    console = Console(file=io.StringIO(), width=200)
    res = bench.run_suite(write(tmp_path), tmp_path / "out", progress=False, console=console)
    assert res["ran"] == 9
    t = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(t["method"]) == ["local-only (gnn)", "local-only (mlp)", "local-only (rf-ecfp4)", "best local",
                                 "centralized (gnn)", "centralized (mlp)", "centralized (rf-ecfp4)", "fedavg (mlp)",
                                 "gbt-cyclic (gbt-ecfp4)", "fedavg (gnn)"]
    by = t.set_index("method")
    # each federated row is measured against its own family's local-only model
    gains = pd.read_csv(tmp_path / "out" / "partner_gains.csv")
    for method, fam in (("fedavg (mlp)", "mlp"), ("fedavg (gnn)", "gnn")):
        g = gains[gains["method"] == method]
        loc = by.loc[f"local-only ({fam})", "test@partner_mean"]
        fed = g[g["gain_test"].notna()]
        assert np.isclose(fed["gain_test"].mean(), (fed["fed_test"] - fed["local_test"]).mean())
        assert np.isclose(by.loc[method, "gain_test_mean"], fed["gain_test"].mean())
        assert np.isfinite(loc)
    assert by["prauc@partner_mean"].drop("best local").notna().all()
    trees = gains[gains["method"] == "gbt-cyclic (gbt-ecfp4)"]  # no local-only gbt ran: gains vs best local only
    assert trees["gain_test"].isna().all() and trees["gain_test_vs_best_local"].notna().all()
    md = (tmp_path / "out" / "results.md").read_text()
    assert "PR-AUC@partner" in md and "| fedavg (mlp) |" in md


def _summary(tests, valids, praucs, metric="rocauc"):
    return dict(metric=metric, per_partner=[dict(partner=i, width=1.0, test=t, valid=v, test_prauc=p)
                                            for i, (t, v, p) in enumerate(zip(tests, valids, praucs))])


def test_prauc_gains_against_the_best_local_equal_a_hand_computation():
    rf = _summary([0.70, 0.60], [0.80, 0.50], [0.40, 0.30])
    mlp = _summary([0.65, 0.75], [0.70, 0.90], [0.35, 0.55])
    best = best_local({"rf-ecfp4": rf, "mlp": mlp})
    assert [p["family"] for p in best["per_partner"]] == ["rf-ecfp4", "mlp"]  # chosen on validation ROC-AUC
    assert [p["test_prauc"] for p in best["per_partner"]] == [0.40, 0.55]
    fed = _summary([0.72, 0.74], [0.0, 0.0], [0.50, 0.50])
    g = federated_gain(fed, best)
    assert [round(p["gain_test_prauc"], 12) for p in g["per_partner"]] == [0.10, -0.05]
    assert g["gain_test_prauc"] == pytest.approx(0.025)


def test_federated_summary_holds_the_test_prauc_of_each_partners_width(tmp_path):
    from fedmol.evaluate import Evaluator
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    cfg = RunConfig(algorithm="fedavg", dataset="bace", partners=3, rounds=1, model="mlp", hidden=16, layers=2,
                    hparams=dict(max_local_steps=2))
    s = run_federated(cfg, tmp_path / "run", progress=False)
    pred = pd.read_csv(tmp_path / "run" / "test_predictions.csv")
    served = [p for p in s["per_partner"] if p["served"]]
    assert served
    from fedmol.fl.harness import build_federation

    y = np.array([l[0] for l in build_federation(cfg, False).test.labels], dtype=float)
    for p in served:
        at = pred[pred["width"] == p["width"]].sort_values("row")
        ok = ~np.isnan(y)
        assert p["test_prauc"] == pytest.approx(average_precision_score(y[ok], at.iloc[:, 2].to_numpy()[ok]), abs=1e-9)
    assert Evaluator("bace").metrics == ("rocauc", "prauc")
