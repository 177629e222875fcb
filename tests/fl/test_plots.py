"""The plots read at a glance (issue 21, item 2): one colour per method in every plot and on the board,
integer round ticks, legends outside the data, the width axis narrow -> wide everywhere, coinciding
reference lines still told apart, a legend entry for the reported round. Checked on the figures
themselves (captured as they are saved) of a tiny report."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from fedmol.fl import report
from fedmol.fl.registry import ALGORITHMS
from fedmol.plotstyle import ALGORITHM_COLORS, method_color, method_marker

matplotlib.use("Agg")


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved while the test runs, by file name."""
    figs: dict[str, Figure] = {}
    orig = Figure.savefig

    def savefig(self, fname, *a, **kw):
        figs[Path(fname).name] = self
        return orig(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


def _colors(ax) -> dict[str, str]:
    """{legend label: colour} of the lines of an axes (errorbar containers included)."""
    out = {}
    for line in ax.get_lines():
        if not line.get_label().startswith("_"):
            out[line.get_label()] = to_hex(line.get_color())
    for c in ax.containers:
        if not c.get_label().startswith("_"):
            out[c.get_label()] = to_hex(c.lines[0].get_color())
    return out


@pytest.fixture
def tiny(tmp_path):
    """Two algorithms with 3 rounds each, and the references, where the local forest equals the centralized GNN."""
    entries, rows, gains = [], [], []
    for m, vals, sel in (("fedavg", [0.60, 0.64, 0.66], 2), ("fjord", [0.58, 0.70, 0.69], 1)):
        d = tmp_path / m
        d.mkdir()
        pd.DataFrame({"round": [0, 1, 2], "bytes_up": [1e6] * 3, "bytes_down": [1e6] * 3,
                      "test_rocauc@1.0": vals}).to_csv(d / "metrics.csv", index=False)
        entries.append(dict(kind="federated", method=m, dataset="tiny", devices="tiered", alpha=1.0, path=str(d),
                            summary=dict(metric="rocauc", selected_round=sel)))
        rows.append(dict(kind="federated", method=m, **{"test@1.0_mean": vals[sel], "test@1.0_std": np.nan,
                                                           "test@0.5_mean": vals[sel] - 0.02, "test@0.5_std": np.nan,
                                                           "test@partner_mean": vals[sel]}))
        gains += [dict(method=m, gain_test_vs_best_local=g) for g in (-0.02, 0.01, 0.03)]
    for ref, v in (("local-only (gnn)", 0.55), ("local-only (rf-ecfp4)", 0.72), ("centralized (gnn)", 0.72),
                   ("centralized (rf-ecfp4)", 0.75)):
        rows.append(dict(kind="reference", method=ref, **{"test@1.0_mean": v, "test@1.0_std": np.nan,
                                                            "test@0.5_mean": np.nan, "test@0.5_std": np.nan,
                                                            "test@partner_mean": v}))
    gains += [dict(method="centralized (gnn)", gain_test_vs_best_local=g) for g in (0.05, 0.06)]
    return entries, pd.DataFrame(rows), pd.DataFrame(gains), tmp_path


def test_every_algorithm_has_a_fixed_colour_of_its_own():
    colors = [method_color(a) for a in ALGORITHMS]
    assert all(a in ALGORITHM_COLORS for a in ALGORITHMS), "a registered algorithm has no fixed colour"
    assert len(set(colors)) == len(colors)
    assert len(set(ALGORITHM_COLORS.values())) == len(ALGORITHM_COLORS), "two fixed colours are the same"
    refs = {method_color(r) for r in ("local-only (gnn)", "centralized (rf-ecfp4)", "ensemble (gbt-ecfp4)",
                                       "best local")}
    assert not refs & set(colors), "an algorithm is drawn in a reference's colour"
    # a board row is named after its algorithm: same colour and marker
    assert method_color("fjord (fedmol)") == method_color("fjord")
    assert method_marker("fedgen_od_cap (fedmol)") == method_marker("fedgen_od_cap")
    assert method_color("fedgen_od_cap") != method_color("fedgen")
    # any other name: a stable colour
    assert method_color("my idea") == method_color("my idea")


def test_a_method_has_one_colour_in_every_plot_and_on_the_board(tiny, saved, tmp_path):
    from fedmol.leaderboard.board import _plot
    from fedmol.leaderboard.tracks import Track

    entries, table, gains, folder = tiny
    report.plot_group(entries, table, folder / "plots", "t")
    report.plot_partner_cdf(gains, folder / "plots" / "cdf_t.png", "t")
    rows = [dict(name=f"{m} (fedmol)", metric="rocauc", widths={"1.0": (0.6, 0.01, 3), "0.5": (0.6, 0.01, 3)})
            for m in ("fjord", "fedavg")]
    _plot(tmp_path / "board.png", Track.model_construct(name="t"), rows)
    colors = {name: _colors(fig.axes[0]) for name, fig in saved.items()}
    assert set(colors) == {"rounds_t.png", "mb_t.png", "widths_t.png", "cdf_t.png", "board.png"}
    for m in ("fedavg", "fjord"):
        seen = {colors["rounds_t.png"][f"{m} @1.0"], colors["mb_t.png"][f"{m} @1.0"],
                colors["widths_t.png"][m], colors["cdf_t.png"][m], colors["board.png"][f"{m} (fedmol)"]}
        assert seen == {to_hex(method_color(m))}, m
    assert colors["rounds_t.png"]["centralized (gnn)"] == colors["cdf_t.png"]["centralized (gnn)"] == "#000000"


def test_round_ticks_legends_and_width_axes(tiny, saved, tmp_path):
    from fedmol.leaderboard.board import _plot
    from fedmol.leaderboard.tracks import Track

    entries, table, gains, folder = tiny
    report.plot_group(entries, table, folder / "plots", "t")
    rows = [dict(name="fjord (fedmol)", metric="rocauc",
                 widths={"1.0": (0.6, 0.01, 3), "0.5": (0.6, 0.01, 3), "0.125": (0.5, 0.01, 3)})]
    _plot(tmp_path / "board.png", Track.model_construct(name="t"), rows)
    for fig in saved.values():
        fig.canvas.draw()
    ax = saved["rounds_t.png"].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(lab.lstrip("−-").isdigit() for lab in labels), labels
    # the reported round has its own legend entry
    assert any(t.get_text().startswith("reported round") for t in ax.get_legend().get_texts())
    # every legend right of its axes: never over the data
    for name, fig in saved.items():
        ax = fig.axes[0]
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1, name
    # the width axis narrow -> wide, left to right, in the bench plot and on the board
    for name, expect in (("widths_t.png", ["1/2", "1"]), ("board.png", ["1/8", "1/2", "1"])):
        ax = saved[name].axes[0]
        assert not ax.xaxis_inverted(), name
        ticks = list(ax.get_xticks())
        assert ticks == sorted(ticks) and [t.get_text() for t in ax.get_xticklabels()] == expect, name


def test_coinciding_reference_lines_stay_apart(tiny, saved):
    entries, table, gains, folder = tiny
    report.plot_group(entries, table, folder / "plots", "t")
    ax = saved["rounds_t.png"].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    rf, gnn = lines["local-only (rf-ecfp4)"], lines["centralized (gnn)"]
    assert rf.get_ydata()[0] == gnn.get_ydata()[0] == 0.72
    # different dash patterns or a shifted dash, and markers at different places
    assert rf.get_linestyle() != gnn.get_linestyle() or rf._dash_pattern != gnn._dash_pattern
    mark = lambda ln: ln.get_xdata()[ln.get_markevery()[0]]  # noqa: E731
    assert not math.isclose(mark(rf), mark(gnn))
    assert rf.get_color() != gnn.get_color() or rf.get_marker() != gnn.get_marker()
