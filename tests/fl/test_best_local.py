"""Best local: per partner, the local-only family with the best score on its OWN validation molecules."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from fedmol.errors import FedmolError
from fedmol.fl import references as R
from fedmol.fl import report


def local(model, metric, tests, valids, widths=None):
    widths = widths or [None] * len(tests)
    return dict(metric=metric, reference="local-only", model=model, test={"mean": float(np.nanmean(tests))},
                per_partner=[dict(partner=k, width=w, test=t, valid=v)
                             for k, (t, v, w) in enumerate(zip(tests, valids, widths))])


NAN = float("nan")
# partner 0: the GNN wins on validation (0.9) but loses on test -- the choice follows validation;
# partner 1: validation undefined for every family -- the fallback (the ECFP forest);
# partner 2: forest and boosted trees tie on validation -- the forest (first in the stated order).
LOCALS = {"gnn": local("gnn", "rocauc", [0.60, 0.70, 0.55], [0.90, NAN, 0.70], [1.0, 0.5, 0.25]),
          "rf-ecfp4": local("rf-ecfp4", "rocauc", [0.90, 0.65, 0.75], [0.80, NAN, 0.85]),
          "gbt-ecfp4": local("gbt-ecfp4", "rocauc", [0.95, 0.80, 0.95], [0.70, NAN, 0.85])}


def test_the_choice_follows_validation_not_test():
    b = R.best_local(LOCALS)
    assert [p["family"] for p in b["per_partner"]] == ["gnn", "rf-ecfp4", "rf-ecfp4"]
    assert [p["test"] for p in b["per_partner"]] == [0.60, 0.65, 0.75]  # the chosen models' test scores
    assert b["per_partner"][0]["valid"] == 0.90 and b["per_partner"][2]["valid"] == 0.85
    assert math.isnan(b["per_partner"][1]["valid"])
    assert b["per_partner"][0]["selected_by"] == "validation"
    assert b["per_partner"][1]["selected_by"].startswith("fallback")
    assert b["per_partner"][0]["width"] == 1.0 and b["per_partner"][2]["width"] is None
    assert b["choices"] == {"rf-ecfp4": [1, 2], "gbt-ecfp4": [], "gnn": [0]}
    assert b["test"]["mean"] == pytest.approx((0.60 + 0.65 + 0.75) / 3)


def test_lower_is_better_picks_the_smallest_validation_error():
    b = R.best_local({"gnn": local("gnn", "rmse", [1.0, 2.0], [0.5, 1.5]),
                      "rf-ecfp4": local("rf-ecfp4", "rmse", [3.0, 0.1], [0.7, 1.4])})
    assert [p["family"] for p in b["per_partner"]] == ["gnn", "rf-ecfp4"]
    assert [p["test"] for p in b["per_partner"]] == [1.0, 0.1]


def test_any_local_family_counts_and_mistakes_are_one_line():
    b = R.best_local({**LOCALS, "mlp": local("mlp", "rocauc", [0.5, 0.5, 0.5], [0.95, 0.6, 0.1])})
    assert [p["family"] for p in b["per_partner"]] == ["mlp", "mlp", "rf-ecfp4"]
    with pytest.raises(FedmolError, match="different metrics"):
        R.best_local({"gnn": LOCALS["gnn"], "rf-ecfp4": local("rf-ecfp4", "rmse", [1, 1, 1], [1, 1, 1])})
    with pytest.raises(FedmolError, match="partners differ"):
        R.best_local({"gnn": LOCALS["gnn"], "rf-ecfp4": local("rf-ecfp4", "rocauc", [1, 1], [1, 1])})


def write(tmp_path, name, summary):
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(summary).replace("NaN", "null"))
    return d


def entry(kind, path, method="", reference=None, model=None):
    return dict(kind=kind, dataset="bace", alpha=1.0, devices="tiered", seed=0, method=method, reference=reference,
                model=model, path=str(path))


def test_report_rows_and_partner_gains_vs_best_local(tmp_path):
    fed = dict(metric="rocauc", test={"1.0": 0.8}, bytes_up=1000, bytes_down=2000,
               per_partner=[dict(partner=0, served=True, width=1.0, test=0.70, valid=0.8),
                            dict(partner=1, served=True, width=0.5, test=0.90, valid=0.8),
                            dict(partner=2, served=False, width=None, test=None, valid=None)])
    ens = dict(metric="rocauc", reference="ensemble", model="rf-ecfp4", test={"1.0": 0.85}, bytes_up=300,
               bytes_down=600, per_partner=[dict(partner=k, width=None, members=[0, 1, 2], test=0.85, valid=0.8)
                                            for k in range(3)])
    entries = [entry("reference", write(tmp_path, f"local-{m}", s), f"reference-local-only-{m}", "local-only", m)
               for m, s in LOCALS.items()]
    entries.append(entry("reference", write(tmp_path, "ens", ens), "reference-ensemble-rf-ecfp4", "ensemble",
                         "rf-ecfp4"))
    entries.append(entry("federated", write(tmp_path, "fedavg", fed), "fedavg"))
    per_seed, gains = report.seed_tables(report.load(entries))
    rows = per_seed.set_index("method")
    # partners 0 and 1 are served: gains 0.70 - 0.60 and 0.90 - 0.65; partner 2 (no model) is left out
    assert rows.loc["fedavg", "gain_test_vs_best_local"] == pytest.approx((0.10 + 0.25) / 2)
    assert rows.loc["best local", "test@partner"] == pytest.approx((0.60 + 0.65 + 0.75) / 3)
    assert rows.loc["best local", "kind"] == "reference" and np.isnan(rows.loc["best local", "gain_test_vs_best_local"])
    assert rows.loc["best local", "gain_test_vs_rf"] == pytest.approx(((0.6 - 0.9) + 0 + 0) / 3)
    ensemble = rows.loc["ensemble (rf-ecfp4)"]
    assert ensemble["gain_test_vs_best_local"] == pytest.approx(((0.85 - 0.6) + (0.85 - 0.65) + (0.85 - 0.75)) / 3)
    assert ensemble["gain_test"] == pytest.approx(((0.85 - 0.9) + (0.85 - 0.65) + (0.85 - 0.75)) / 3)  # vs local RF
    assert ensemble["mb"] == pytest.approx(900 / 1e6) and ensemble["served"] == 1.0
    assert rows.loc["local-only (rf-ecfp4)", "gain_test_vs_best_local"] == pytest.approx((0.3 + 0 + 0) / 3)
    fa = gains[gains["method"] == "fedavg"].set_index("partner")
    assert list(fa["best_local_family"]) == ["gnn", "rf-ecfp4", "rf-ecfp4"]
    assert list(fa["gain_test_vs_best_local"][:2]) == pytest.approx([0.10, 0.25])
    assert np.isnan(fa.loc[2, "gain_test_vs_best_local"])
    bl = gains[gains["method"] == "best local"].set_index("partner")
    assert list(bl["best_local_family"]) == ["gnn", "rf-ecfp4", "rf-ecfp4"]
    assert bl.loc[0, "valid_gnn"] == 0.9 and bl.loc[0, "valid_rf-ecfp4"] == 0.8
    table = report.results_table(per_seed)
    assert list(table["method"]) == ["local-only (gnn)", "local-only (rf-ecfp4)", "local-only (gbt-ecfp4)", "best local",
                                     "ensemble (rf-ecfp4)", "fedavg"]
    header, shown = report.display_rows(table)
    col = header.index("vs best local")
    assert shown[-1][col] == f"{(0.10 + 0.25) / 2:.3f}"


def test_one_local_family_has_no_best_local_row(tmp_path):
    entries = [entry("reference", write(tmp_path, "l", LOCALS["gnn"]), "reference-local-only-gnn", "local-only",
                     "gnn")]
    per_seed, _ = report.seed_tables(report.load(entries))
    assert list(per_seed["method"]) == ["local-only (gnn)"] and per_seed["gain_test_vs_best_local"].isna().all()
    assert isinstance(per_seed, pd.DataFrame)


def test_task_gains_against_the_best_local_per_partner_and_task(tmp_path):
    def local(model, valid, by_task):
        return dict(metric="rocauc", reference="local-only", model=model, test={"mean": 0.0},
                    per_partner=[dict(partner=k, width=None, test=float(np.mean(t)), valid=v, test_by_task=t)
                                 for k, (v, t) in enumerate(zip(valid, by_task))])
    rf = local("rf-ecfp4", [0.8, 0.6], [[0.70, 0.60], [0.50, 0.55]])
    gbt = local("gbt-ecfp4", [0.7, 0.7], [[0.90, 0.90], [0.65, 0.45]])
    fed = dict(metric="rocauc", test={"1.0": 0.7},
               per_partner=[dict(partner=0, served=True, width=1.0, test=0.7, valid=0.7, test_by_task=[0.75, 0.55]),
                            dict(partner=1, served=True, width=1.0, test=0.6, valid=0.7, test_by_task=[0.70, 0.50])])
    entries = [entry("reference", write(tmp_path, "rf", rf), "r", "local-only", "rf-ecfp4"),
               entry("reference", write(tmp_path, "gbt", gbt), "g", "local-only", "gbt-ecfp4"),
               entry("federated", write(tmp_path, "fed", fed), "fedavg")]
    entries = report.load(entries)
    t = report.task_gains(entries, {"bace": ["A", "B"]}).set_index(["method", "partner", "task"])
    # best local: partner 0 -> rf (valid 0.8), partner 1 -> gbt (valid 0.7)
    assert t.loc[("fedavg", 0, "A"), "abs"] == pytest.approx(0.05) and t.loc[("fedavg", 0, "B"), "abs"] == pytest.approx(-0.05)
    assert t.loc[("fedavg", 1, "A"), "abs"] == pytest.approx(0.05) and t.loc[("fedavg", 1, "B"), "abs"] == pytest.approx(0.05)
    per_seed, _ = report.seed_tables(entries)
    assert per_seed.set_index("method").loc["fedavg", "improved_tasks_vs_best_local"] == pytest.approx(3 / 4)
