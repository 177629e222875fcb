"""MELLODDY's scorecard equals a hand computation on a small fixture."""

import math

import pytest

from fedmol.fl.scorecard import deltas, gap_closed, partner_scorecard, task_scorecard


def test_deltas_by_hand():
    d = deltas(0.80, 0.60, "rocauc")
    assert d["abs"] == pytest.approx(0.20) and d["rel"] == pytest.approx(0.20 / 0.60)
    assert d["itp"] == pytest.approx(0.20 / 0.40)  # half of the way from 0.6 to a perfect 1.0
    e = deltas(0.9, 1.2, "rmse")  # lower is better: 0.9 beats 1.2
    assert e["abs"] == pytest.approx(0.3) and e["rel"] == pytest.approx(0.25) and e["itp"] == pytest.approx(0.25)
    assert math.isnan(deltas(0.7, None, "rocauc")["abs"]) and math.isnan(deltas(0.7, 1.0, "rocauc")["itp"])


def test_gap_closed_by_hand():
    assert gap_closed(0.70, 0.60, 0.80) == pytest.approx(0.5)
    assert gap_closed(0.55, 0.60, 0.80) == pytest.approx(-0.25)
    assert math.isnan(gap_closed(0.7, 0.6, 0.6))


def test_partner_scorecard_by_hand():
    fed = [dict(partner=0, test=0.80), dict(partner=1, test=0.50), dict(partner=2, test=0.70),
           dict(partner=3, served=False, test=None), dict(partner=4, test=0.9)]
    base = [dict(partner=0, test=0.60), dict(partner=1, test=0.60), dict(partner=2, test=0.50),
            dict(partner=3, test=0.55), dict(partner=4, test=None)]
    card = partner_scorecard(fed, base, "rocauc")
    # defined: partners 0, 1, 2 (abs +0.2, -0.1, +0.2); 3 unserved (not improved); 4 undefined (no baseline)
    assert card["abs"] == pytest.approx((0.2 - 0.1 + 0.2) / 3)
    assert card["rel"] == pytest.approx((0.2 / 0.6 - 0.1 / 0.6 + 0.2 / 0.5) / 3)
    assert card["itp"] == pytest.approx((0.2 / 0.4 - 0.1 / 0.4 + 0.2 / 0.5) / 3)
    assert card["improved"] == pytest.approx(2 / 4)
    assert (card["n"], card["n_undefined"], card["n_unserved"]) == (5, 1, 1)
    assert [r["served"] for r in card["per_partner"]] == [True, True, True, False, True]


def test_report_scorecard_measures_by_hand():
    from fedmol.fl.report import scorecard_measures

    fed = dict(metric="rocauc", per_partner=[dict(partner=0, test=0.70), dict(partner=1, test=0.66),
                                             dict(partner=2, served=False, test=None)])
    local = dict(metric="rocauc", per_partner=[dict(partner=0, test=0.60), dict(partner=1, test=0.70),
                                               dict(partner=2, test=0.50)])
    best = dict(metric="rocauc", per_partner=[dict(partner=0, test=0.65), dict(partner=1, test=0.72),
                                              dict(partner=2, test=0.58)])
    central = dict(metric="rocauc", test={"1.0": 0.80})
    m = scorecard_measures(fed, local, best, central)
    assert m["itp_test"] == pytest.approx((0.10 / 0.40 - 0.04 / 0.30) / 2)
    assert m["itp_vs_best_local"] == pytest.approx((0.05 / 0.35 - 0.06 / 0.28) / 2)
    assert m["improved_vs_best_local"] == pytest.approx(1 / 3)  # partner 0 only; 2 has no model
    # served partners 0 and 1: fed mean 0.68, their local mean 0.65, centralized 0.80
    assert m["gap_closed"] == pytest.approx((0.68 - 0.65) / (0.80 - 0.65))


def test_verdict_names_the_best_method_its_margins_and_the_noise():
    import pandas as pd

    from fedmol.fl.report import verdicts

    rows = []
    for seed, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.61), (0.71, 0.66)]):
        for method, v, vs_best in (("fjord", a, a - 0.65), ("fedavg", b, b - 0.65)):
            rows.append(dict(dataset="d", metric="rocauc", alpha=1.0, devices="tiered", kind="federated",
                             method=method, seed=seed, **{"test@partner": v}, gain_test=v - 0.62,
                             gain_test_vs_best_local=vs_best, gap_closed=(v - 0.62) / 0.2))
    v = verdicts(pd.DataFrame(rows))[("d", 1.0, "tiered")]
    assert v.startswith("best federated: fjord (rocauc 0.710 per partner); vs local-only +0.090; vs best local "
                        "+0.060; closes 45% of the local-to-centralized gap; ")
    assert v.endswith("beyond seed noise")  # +0.05, +0.07, +0.06 over the best local: consistent
    one = verdicts(pd.DataFrame([r for r in rows if r["seed"] == 0]))[("d", 1.0, "tiered")]
    assert one.endswith("one seed: noise not measured")


def test_the_bench_table_reads_at_100_columns():
    import io
    from pathlib import Path

    import pandas as pd
    from rich.console import Console

    from fedmol.fl.report import rich_table

    table = pd.read_csv(Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quick" / "results.csv")
    table["rank"] = table["rank"].astype(object).fillna("")
    for wide, width in ((False, 100), (True, 170)):
        con = Console(width=width, record=True, file=io.StringIO())
        con.print(rich_table(table, "t", wide=wide))
        text = con.export_text()
        assert "…" not in text and max(map(len, text.splitlines())) <= width
        assert ("gaining" in text) == wide and "ensemble (gbt-ecfp4)" in text and "fedrescue" in text


def test_task_scorecard_by_hand():
    nan = math.nan
    fed = [dict(partner=0, test_by_task=[0.80, 0.60, nan]), dict(partner=1, test_by_task=[0.70, 0.90, 0.50]),
           dict(partner=2, served=False, test=None)]
    base = [dict(partner=0, test_by_task=[0.75, 0.70, 0.60]), dict(partner=1, test_by_task=[0.60, 0.80, 0.50]),
            dict(partner=2, test_by_task=[0.50, nan, 0.70])]
    card = task_scorecard(fed, base, "rocauc")
    # pairs: p0 (+0.05, -0.10, undefined), p1 (+0.10, +0.10, 0.00), p2 unserved: tasks 0 and 2 (task 1 has no base)
    assert card["n"] == 7 and card["improved"] == pytest.approx(3 / 7)
    assert card["abs"] == pytest.approx((0.05 - 0.10 + 0.10 + 0.10 + 0.0) / 5)
    assert card["itp"] == pytest.approx((0.05 / 0.25 - 0.10 / 0.30 + 0.10 / 0.40 + 0.10 / 0.20 + 0.0) / 5)
    assert [(r["partner"], r["task"]) for r in card["per_task"]][:3] == [(0, 0), (0, 1), (0, 2)]
    assert task_scorecard([dict(partner=0, test=0.7)], [dict(partner=0, test=0.6)], "rocauc")["n"] == 0
