"""One look per method in every plot: the bench plots (:mod:`fedmol.fl.report`) and the leaderboard's
(:mod:`fedmol.leaderboard.board`) both take a method's colour and marker from here, so FjORD is the
same colour in a rounds plot, a CDF and the board.

* Algorithms (every name of :data:`fedmol.fl.registry.ALGORITHMS`, plus the standard suite's variants
  and the task suites' ``<algorithm>_refit``, a darker shade of its algorithm's) have a fixed colour
  of their own; none is black, gray, brown or red, which the references use.
* References keep their styles: the GNN black, the fingerprint MLP gold, the ECFP4 forest gray, the ECFP4
  boosted trees brown;
  centralized dashed, local-only dotted, ensemble dash-dotted; the partner's best local red dotted.
* A name not listed (a leaderboard submission called "my idea") gets a colour from a spare palette
  chosen by a checksum of the name: the same name, the same colour, on every machine.

A board row is named like ``"fjord (fedmol)"``: a trailing parenthesis is ignored when the name
before it is an algorithm (never for the references, whose family is in the parenthesis).

Imports nothing heavy (matplotlib is imported by the functions that draw).
"""

from __future__ import annotations

import re
import zlib

#: fixed per algorithm of fedmol.fl.registry.ALGORITHMS (a test checks every registered one is here)
ALGORITHM_COLORS = {
    "fedavg": "#1f77b4",     # blue
    "feddf": "#ff7f0e",      # orange
    "heterofl": "#2ca02c",   # green
    "fjord": "#9467bd",      # purple
    "fedgen": "#e377c2",     # pink
    "fedrescue": "#17becf",  # cyan
    "gbt-bagging": "#d6616b",  # salmon (boosted trees; the gbt-ecfp4 references are brown)
    "gbt-cyclic": "#8c6d31",   # ochre
    # variants of the standard suite (benchmarks/suites/standard.toml)
    "fedgen_pooled": "#bcbd22",  # olive
    "fedgen_od": "#7b4173",      # plum
    "fedgen_od_cap": "#393b79",  # indigo
    # FedRep's head phase (benchmarks/suites/federation_tasks*.toml): the algorithm's colour, darker
    "fedavg_refit": "#08306b",     # navy
    "fjord_refit": "#4a1486",      # dark purple
    "fedrescue_refit": "#00646e",  # dark teal
    "heterofl_refit": "#00441b",   # dark green
}
ALGORITHM_MARKERS = {"fedavg": "o", "feddf": "s", "heterofl": "^", "fjord": "v", "fedgen": "D",
                     "fedrescue": "P", "gbt-bagging": "*", "gbt-cyclic": "h",
                     "fedgen_pooled": "X", "fedgen_od": "<", "fedgen_od_cap": ">",
                     "fedavg_refit": "o", "fjord_refit": "v", "fedrescue_refit": "P",
                     "heterofl_refit": "^"}
#: names not listed above: colours no algorithm and no reference uses
SPARE_COLORS = ["#637939", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#de9ed6", "#6baed6", "#fd8d3c",
                "#74c476", "#9e9ac8", "#b5cf6b", "#e7969c"]
SPARE_MARKERS = ["h", "*", "p", "d", "8", "H"]

_FAMILY_COLORS = {"gnn": "black", "mlp": "darkgoldenrod", "rf-ecfp4": "gray", "gbt-ecfp4": "saddlebrown"}
_FAMILY_MARKERS = {"gnn": "s", "mlp": "o", "rf-ecfp4": "^", "gbt-ecfp4": "D"}
#: a suite with several backbones names its federated rows "<algorithm> (<family>)": the GNN's dashed
_GNN_ROW_LINE = (0, (4, 1.5))
_KIND_LINES = {"centralized": "--", "local-only": ":", "ensemble": "-."}
BEST_LOCAL = "best local"


def _reference(name: str) -> tuple[str, str, str] | None:
    """``(colour, linestyle, marker)`` of a reference row name, or None."""
    if name == BEST_LOCAL:
        return "tab:red", ":", "x"
    m = re.fullmatch(r"(centralized|local-only|ensemble) \((.+)\)", name)
    if m is None:
        return None
    kind, family = m.groups()
    return _FAMILY_COLORS.get(family, "dimgray"), _KIND_LINES[kind], _FAMILY_MARKERS.get(family, "o")


def _algorithm_key(name: str) -> str | None:
    if name in ALGORITHM_COLORS:
        return name
    base = re.sub(r"\s*\([^()]*\)\s*$", "", name)  # "fjord (fedmol)" -> "fjord"
    return base if base in ALGORITHM_COLORS else None


def is_reference(name: str) -> bool:
    return _reference(str(name)) is not None


def _look(name: str) -> tuple[str, str]:
    """``(colour, marker)`` of any method name."""
    name = str(name)
    if (ref := _reference(name)) is not None:
        return ref[0], ref[2]
    if (key := _algorithm_key(name)) is not None:
        return ALGORITHM_COLORS[key], ALGORITHM_MARKERS[key]
    h = zlib.crc32(name.encode())
    return SPARE_COLORS[h % len(SPARE_COLORS)], SPARE_MARKERS[h % len(SPARE_MARKERS)]


def method_color(name: str) -> str:
    """The colour of a method (algorithm, variant, reference row or any other name) in every plot."""
    return _look(name)[0]


def method_marker(name: str) -> str:
    """Its marker, fixed like the colour (told apart where two curves coincide)."""
    return _look(name)[1]


def reference_linestyle(name: str) -> str | tuple:
    """Dashed (centralized), dotted (local-only, best local), dash-dotted (ensemble); an algorithm's
    GNN row beside its MLP row (``"fjord (gnn)"``) densely dashed; solid otherwise."""
    ref = _reference(str(name))
    if ref is not None:
        return ref[1]
    return _GNN_ROW_LINE if str(name).endswith(" (gnn)") and _algorithm_key(str(name)) else "-"


def width_label(w: float) -> str:
    w = float(w)
    if w == 1:
        return "1"
    inv = 1 / w
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{w:g}"


def width_axis(ax, widths, label: str = "served width") -> None:
    """The width axis of every plot: log2, narrow -> wide from left to right, ticks 1/8 ... 1."""
    ws = sorted({float(w) for w in widths})
    ax.set_xscale("log", base=2)
    if ws:
        ax.set_xticks(ws)
        ax.set_xticklabels([width_label(w) for w in ws])
        ax.minorticks_off()
        if len(ws) == 1:
            ax.set_xlim(ws[0] / 1.5, ws[0] * 1.5)
    if ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel(f"{label} (narrow → wide)")


def round_axis(ax, label: str = "round") -> None:
    """Integer ticks on a round axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def legend_outside(ax, fontsize: int = 7) -> None:
    """The legend right of the axes, never over the data (the figure should use a constrained layout)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False)


def reference_hlines(ax, refs: dict[str, float], rel_tol: float = 0.004) -> None:
    """Horizontal reference lines, each in its reference style with its marker near the right edge;
    lines at (nearly) the same height -- the local forest equal to the centralized GNN -- stay visible:
    their dashes are shifted against each other and their markers stand side by side."""
    import math

    drawn: list[float] = []
    vals = [v for v in refs.values() if v is not None and math.isfinite(v)]
    span = (max(vals) - min(vals)) if len(vals) > 1 else 1.0
    tol = rel_tol * max(span, 0.05)
    for i, (name, v) in enumerate(refs.items()):
        if v is None or not math.isfinite(v):
            continue
        k = sum(abs(v - d) <= tol for d in drawn)  # lines already drawn at this height
        drawn.append(v)
        ls = reference_linestyle(name)
        pattern = {"--": (5, 3), ":": (1, 2.5), "-.": (6, 2, 1, 2)}.get(ls, (4, 2))
        x_mark = 0.975 - 0.035 * i
        ax.plot([0.0, x_mark, 1.0], [v, v, v], transform=ax.get_yaxis_transform(), color=method_color(name),
                ls=(2.0 * k, pattern), lw=1.2 + 0.4 * k, marker=method_marker(name), markevery=[1], ms=5,
                mfc="white" if k % 2 else method_color(name), label=name, zorder=1.5)
