"""MELLODDY's scorecard equals a hand computation on a small fixture."""

import math

import pytest

from fedmol.fl.scorecard import deltas, gap_closed, partner_scorecard


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
