"""The static leaderboard: ``README.md``, ``index.html``, one PNG per track, one config JSON per
submission -- built from *verified* submissions only.

Every archive in the submissions folder is verified (:func:`fedmol.leaderboard.verify`,
without reruns); those that fail are listed as rejected with their one-line reason. Ranked
submissions appear in their track's table, ordered by the track's ranking width (mean over seeds);
unranked ones (runs that fit no track) are listed apart with why. Metrics come from the
verification (re-scored from the shipped predictions), never from the submitter's claims; bytes
and failures are as reported by the runs (only ``verify --rerun`` checks them).

Each row links its config page, named by the split file(s) the runs used (``K4-a0.1-s0``): the page
leads with the split's path, sha256 and spec (the verified frozen file), and leaves the run config's
unused defaults for what the split decides (partners, alpha, ...) out. *code* is the fedmol commit the
runs were packed from (``+``: with uncommitted changes); *date* the day they were packed (the manifest's
``created``, UTC; ``—`` for archives made before it was recorded). The tables fit a 1400 px window (the
std on a line under the mean; long cells wrap).

Each track's table ends with its **reference rows** when ``references/<track>.json`` exists next to
the tracks file (``leaderboard/make_reference_rows.py`` computes them with :mod:`fedmol.fl.references`
under the track's settings): local-only, best local and centralized models, shown as ``ref``, never
ranked, never in the ties or the plot's curves (centralized and best local are horizontal lines in
the plot). The file is validated (:func:`load_references`: schema, the track's current settings and
seeds, mean and std of the per-seed scores); a malformed or stale one stops the build with one line.

``index.html`` is ``templates/board.html.j2`` rendered by Jinja2 (autoescaped) with ``static/board.css`` and
``static/board.js`` inlined: self-contained (no network). Click a column header to sort,
or open ``index.html#sort=<table id>:<column key>:<asc|desc>`` (e.g. ``#sort=board-quick:w1.0:asc``).
The output is deterministic: the same submissions give the same files.
"""

from __future__ import annotations

import functools
import html
import math
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from fedmol.errors import FedmolError
from fedmol.evaluate import HIGHER_IS_BETTER
from fedmol.jsonio import jsonable, write_json
from fedmol.leaderboard.archive import Limits, Rejected, one_line
from fedmol.leaderboard.tracks import Track, default_tracks_path, load_tracks
from fedmol.stats import SIGNIFICANCE, tie_labels

WIDTH_LABEL = {"1.0": "1", "0.5": "1/2", "0.25": "1/4", "0.125": "1/8", "0.0625": "1/16"}


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "submission"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def seed_stats(values: list[float], ddof: int) -> tuple[float, float, int]:
    """``(mean, std with ddof, n)`` of the per-seed scores (std NaN when ``n <= ddof``)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=ddof)) if n > ddof else math.nan
    return mean, std, n


def summarize(rep, track: Track | None) -> dict:
    """A board row from a verification report: per width, mean and std over seeds of the verified
    test metric (a seed's value is the mean over the track's splits)."""
    m = rep.manifest
    ddof = track.std_ddof if track is not None else 1
    splits = sorted({r.split for r in rep.runs})
    widths = sorted({k for r in rep.runs for k in r.test}, key=float, reverse=True)
    per_width, by_seed = {}, {}
    for k in widths:
        by_seed[k] = {}
        for s in sorted({r.seed for r in rep.runs}):
            vals = [r.test[k] for r in rep.runs if r.seed == s and k in r.test]
            if len(vals) == len(splits):
                by_seed[k][s] = float(np.mean(vals))
        per_width[k] = seed_stats(list(by_seed[k].values()), ddof)
    runs = m["runs"]
    mb = float(np.mean([(r["bytes_up"] + r["bytes_down"]) / 1e6 for r in runs]))
    failures = float(np.mean([r["failures"] for r in runs]))
    reproduced = sorted({w for r in rep.runs for w in r.reproduced_widths}, key=float, reverse=True)
    rescored = sorted({w for r in rep.runs for w in r.rescored_only_widths}, key=float, reverse=True)
    return dict(name=rep.name, algorithm=rep.algorithm, track=rep.track, status=rep.status,
                reasons=rep.unranked_reasons, metric=rep.metric, seeds=rep.seeds, ddof=ddof, widths=per_width,
                by_seed=by_seed,
                mb=mb, failures=failures, reproduced=reproduced, rescored=rescored, hparams=m["hparams"],
                commit=m["provenance"]["commit"], commit_dirty=m["provenance"]["commit_dirty"],
                created=m.get("created"))


#: the run settings a frozen split file decides (its spec), whatever the run config's defaults say
SPLIT_DECIDES = ("dataset", "partners", "alpha", "quantity_skew")
SPLIT_NOTE = ("The split each run used is the frozen file under splits (path, sha256 and the spec it was made "
              "with: partners, alpha, seed, ...; verified against data_splits/). A run given a split file takes "
              f"{', '.join(SPLIT_DECIDES)} from it, so the run config's own values for them (unused defaults) "
              "are left out of runs[].config.run.")


def _config_doc(rep, file: str) -> dict:
    """The config page of a submission: the splits actually used first (path, sha256, spec, from the
    verified manifest), then each run's resolved config without the settings the split file decides."""
    import copy

    m = rep.manifest
    specs = {r["split"]: r["config"]["split"]["spec"] for r in m["runs"]}
    runs = []
    for r in m["runs"]:
        config = copy.deepcopy(r["config"])
        if config.get("run", {}).get("split"):
            for k in SPLIT_DECIDES:
                config["run"].pop(k, None)
        runs.append(dict(seed=r["seed"], split=f"data_splits/{r['split']}", config=config))
    return dict(name=rep.name, file=file, created=m.get("created"), algorithm=rep.algorithm, track=rep.track,
                status=rep.status, unranked_reasons=rep.unranked_reasons, seeds=rep.seeds, note=SPLIT_NOTE,
                splits=[dict(path=f"data_splits/{sp['path']}", sha256=sp["sha256"], spec=specs.get(sp["path"]))
                        for sp in m["splits"]],
                hparams=m["hparams"], provenance=m["provenance"],
                verification=dict(checks=rep.checks, runs=[r.__dict__ for r in rep.runs]), runs=runs)


def _split_label(row: dict) -> str:
    """``K4-a0.1-s0`` (the split files' names, without folder and extension)."""
    return ", ".join(Path(p).stem for p in row.get("splits", [])) or "config"


def _code_label(row: dict) -> str:
    """The fedmol commit the runs were packed from (7 hex digits; ``+`` = with uncommitted changes)."""
    c = row.get("commit") or "unknown"
    return (c[:7] if re.fullmatch(r"[0-9a-f]{40}", c) else c) + ("+" if row.get("commit_dirty") else "")


DATE_NOTE = ("date: the day the submission was packed by fedmol leaderboard submit (UTC; — for archives made "
             "before the format recorded it); code: the fedmol commit the runs were packed from (+: with "
             "uncommitted changes to tracked files)")
DATE_TIP = "the day the submission was packed (UTC)"


def _date_label(row: dict) -> str:
    """The day the submission was packed, ``—`` when its archive does not say (reference rows, old archives)."""
    return row.get("created") or "—"


def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "—"
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f} (n=1)"


def _rank_key(row: dict, track: Track | None):
    k = repr(float(track.rank_width)) if track is not None else "1.0"
    mean = row["widths"].get(k, (math.nan, math.nan, 0))[0]
    if not math.isfinite(mean):
        return (1, 0.0, row["name"])
    sign = -1.0 if HIGHER_IS_BETTER.get(row["metric"], True) else 1.0
    return (0, sign * mean, row["name"])


def mark_ties(rows: list[dict], track: Track) -> None:
    """``row["tie"]``: True for a ranked row whose per-seed scores at the ranking width do not differ
    from the top row's by a paired t-test over seeds (:func:`fedmol.stats.tie_labels`)."""
    k = repr(float(track.rank_width))
    higher = HIGHER_IS_BETTER.get(rows[0]["metric"], True) if rows else True
    labels = tie_labels([r.get("by_seed", {}).get(k, {}) for r in rows], higher)
    for r, label in zip(rows, labels):
        r["tie"] = label == "tie"


def _rank_cell(i: int, row: dict) -> str:
    return f"{i} ≈1" if row.get("tie") else str(i)


TIE_NOTE = (f"≈1: within seed noise of #1 (paired t-test over the track's seeds, p ≥ {SIGNIFICANCE}); "
            "rows without it differ from #1 significantly")


# -- reference rows ----------------------------------------------------------------------------------
REFERENCES_SCHEMA = "fedmol-references/1"
#: the track settings the reference rows depend on: a references file made for other values is stale
REFERENCE_SETTINGS = ("dataset", "splits", "devices", "rounds", "seeds", "std_ddof", "run", "hparams")
MAX_REFERENCES_BYTES = 4 << 20
REFERENCE_NOTE = ("ref: a reference row, fedmol's own computation under the track's settings "
                  "(`leaderboard/make_reference_rows.py`), not a submission and not ranked; full-width models only, "
                  "so only the @1.0 column is filled: centralized = the pooled model's test score, local-only and "
                  "best local = the mean over partners of each partner's own model's test score (a local GNN at its "
                  "device's width cap; best local: per partner the family best on its own validation molecules)")


class _RefSeed(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    seed: StrictInt
    test: StrictFloat


class _RefRow(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9 ()._,-]{1,60}$")]
    reference: Literal["local-only", "centralized", "best local"]
    family: Annotated[str, Field(pattern=r"^[A-Za-z0-9 ()._,-]{1,60}$")]
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,40}$")] | None
    mean: StrictFloat
    std: StrictFloat | None
    seeds: Annotated[list[_RefSeed], Field(min_length=1, max_length=64)]


class _RefProvenance(BaseModel):
    commit: Annotated[str, Field(pattern=r"^([0-9a-f]{40}|unknown)$")]
    commit_dirty: StrictBool | None


class _RefDoc(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    schema_version: Literal["fedmol-references/1"]
    track: StrictStr
    metric: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,20}$")]
    settings: dict[str, Any]
    provenance: _RefProvenance
    rows: Annotated[list[_RefRow], Field(min_length=1, max_length=16)]


def reference_settings(track: Track) -> dict:
    """The settings of ``track`` its reference rows are computed under (recorded in the references file)."""
    return jsonable(track.model_dump(include=set(REFERENCE_SETTINGS)))


def load_references(folder: str | Path, track: Track) -> list[dict]:
    """The reference rows of ``track`` from ``folder/<track>.json`` (none when the file is absent), as
    board rows; a malformed or stale file is a one-line :class:`FedmolError`."""
    path = Path(folder) / f"{track.name}.json"
    if not path.is_file():
        return []
    try:
        if path.stat().st_size > MAX_REFERENCES_BYTES:
            raise FedmolError(f"{path}: {path.stat().st_size} bytes is too large for a references file")
        doc = _RefDoc.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise FedmolError(one_line(f"{path}: invalid references file: {where}: {first['msg']}")) from None
    except OSError as e:
        raise FedmolError(one_line(f"cannot read the references file {path}: {e}")) from e
    problem = _reference_problem(doc, track)
    if problem:
        raise FedmolError(one_line(f"{path}: {problem}"))
    return [dict(name=r.name, kind=r.reference, algorithm=r.model or r.family, metric=doc.metric, reference=True,
                 widths={"1.0": seed_stats([s.test for s in r.seeds], track.std_ddof)}, splits=list(track.splits),
                 commit=doc.provenance.commit, commit_dirty=doc.provenance.commit_dirty,
                 file=f"references/{track.name}.json") for r in doc.rows]


def _reference_problem(doc: _RefDoc, track: Track) -> str | None:
    """Why a parsed references file does not fit ``track`` (None: it does)."""
    if doc.track != track.name:
        return f"it is for track {doc.track!r}, not {track.name!r}"
    if doc.settings != reference_settings(track):
        return (f"it was made for other settings of track {track.name}: "
                "rerun python leaderboard/make_reference_rows.py")
    names = [r.name for r in doc.rows]
    if len(set(names)) != len(names):
        return "duplicate reference row names"
    for r in doc.rows:
        scores = [s.test for s in r.seeds]
        if [s.seed for s in r.seeds] != track.seeds:
            return f"row {r.name!r}: seeds {[s.seed for s in r.seeds]} are not the track's {track.seeds}"
        mean, std, _ = seed_stats(scores, track.std_ddof)
        if not (_close(mean, r.mean) and _close(std, r.std)):
            return f"row {r.name!r}: mean/std are not those of its per-seed scores"
    return None


def _close(value: float, recorded: float | None) -> bool:
    """A recomputed statistic agrees with the recorded one (NaN is recorded as null)."""
    if not math.isfinite(value):
        return recorded is None
    return recorded is not None and abs(value - recorded) <= 1e-9


def _columns(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k in r["widths"]}, key=float, reverse=True)


def build_board(submissions: str | Path, out: str | Path, *, tracks_file: str | Path | None = None,
                splits_dir: str | Path | None = None, references: str | Path | None = None,
                limits: Limits = Limits()) -> dict:
    """Verify every ``*.zip`` in ``submissions`` and write the board to ``out``, with each track's
    reference rows from ``references/<track>.json`` when present (default: the ``references`` folder
    next to the tracks file); returns ``{"verified": n, "rejected": [(file, reason)], "tracks": {track:
    [row names in rank order]}, "unranked": [...], "references": {track: [reference row names]}}``."""
    submissions, out = Path(submissions), Path(out)
    if not submissions.is_dir():
        raise FedmolError(f"submissions folder not found: {submissions}")
    tracks = load_tracks(tracks_file)
    tracks_path = Path(tracks_file) if tracks_file is not None else default_tracks_path()
    ref_dir = Path(references) if references is not None else tracks_path.parent / "references"
    refs = {name: load_references(ref_dir, t) for name, t in sorted(tracks.items())}  # malformed: fail first
    rows, rejected = _verified_rows(submissions, tracks, tracks_file, splits_dir, limits)

    if out.exists():
        for sub in ("configs", "references"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for old in out.glob("*.png"):
            old.unlink()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for r in rows:
        write_json(out / "configs" / f"{r['slug']}.json", r["config_doc"])
    for name in (n for n, rs in refs.items() if rs):  # the page links the file it shows
        (out / "references").mkdir(exist_ok=True)
        shutil.copyfile(ref_dir / f"{name}.json", out / "references" / f"{name}.json")

    ranked = {name: sorted([r for r in rows if r["status"] == "ranked" and r["track"] == name],
                           key=lambda r: _rank_key(r, t)) for name, t in sorted(tracks.items())}
    for name, rs in ranked.items():
        mark_ties(rs, tracks[name])
        if rs and refs[name] and refs[name][0]["metric"] != rs[0]["metric"]:
            raise FedmolError(f"{ref_dir / (name + '.json')}: metric {refs[name][0]['metric']} is not the "
                              f"submissions' {rs[0]['metric']}")
    unranked = sorted([r for r in rows if r["status"] != "ranked" or r["track"] not in tracks],
                      key=lambda r: (r["track"] or "", r["name"]))
    plots = {name: _plot(out / f"{name}.png", tracks[name], rs, refs[name]) for name, rs in ranked.items() if rs}
    (out / "README.md").write_text(_markdown(tracks, ranked, unranked, rejected, plots, refs))
    (out / "index.html").write_text(_html(tracks, ranked, unranked, rejected, plots, refs))
    return dict(verified=len(rows), rejected=rejected,
                tracks={name: [r["name"] for r in rs] for name, rs in ranked.items()},
                unranked=[r["name"] for r in unranked],
                references={name: [r["name"] for r in rs] for name, rs in refs.items()})


def _verified_rows(submissions: Path, tracks: dict[str, Track], tracks_file, splits_dir,
                   limits: Limits) -> tuple[list[dict], list[tuple[str, str]]]:
    """``(board rows of the verified submissions, [(file, why rejected)])``."""
    from fedmol.leaderboard.verification import verify

    rows, rejected, taken = [], [], set()
    seen: set[tuple[str | None, str]] = set()
    for z in sorted(submissions.glob("*.zip")):
        try:
            rep = verify(z, tracks_file=tracks_file, splits_dir=splits_dir, limits=limits)
        except Rejected as e:
            rejected.append((z.name, str(e)))
            continue
        except FedmolError as e:
            rejected.append((z.name, one_line(e)))
            continue
        except Exception as e:  # a verifier bug must not take the board down; it shows as a rejection
            rejected.append((z.name, one_line(f"verifier error: {type(e).__name__}: {e}")))
            continue
        key = (rep.track if rep.status == "ranked" else None, rep.name)
        if key in seen:
            rejected.append((z.name, f"duplicate submission name {rep.name!r}"))
            continue
        seen.add(key)
        row = summarize(rep, tracks.get(rep.track) if rep.track else None)
        row["file"] = z.name
        row["slug"] = _slug(rep.name, taken)
        row["config_doc"] = _config_doc(rep, z.name)
        row["splits"] = [sp["path"] for sp in row["config_doc"]["splits"]]
        rows.append(row)
    return rows, rejected


# -- plots -------------------------------------------------------------------------------------------
def _plot(path: Path, track: Track, rows: list[dict], refs: list[dict] = ()) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedmol.plotstyle import legend_outside, method_color, method_marker, reference_hlines, width_axis

    cols = _columns(rows)
    fig, ax = plt.subplots(figsize=(8.6, 4.2), dpi=100, layout="constrained")
    for i, r in enumerate(rows):
        xs, ys, es = [], [], []
        dodge = 2.0 ** (0.025 * (i - (len(rows) - 1) / 2))  # error bars at one width side by side, not on top
        for k in cols:
            mean, std, n = r["widths"].get(k, (math.nan, math.nan, 0))
            if n and math.isfinite(mean):
                xs.append(float(k) * dodge)
                ys.append(mean)
                es.append(std if math.isfinite(std) else 0.0)
        # the same colour and marker as the method's in the bench plots (fedmol.plotstyle)
        ax.errorbar(xs, ys, yerr=es, marker=method_marker(r["name"]), capsize=3, label=r["name"], linewidth=1.5,
                    color=method_color(r["name"]), linestyle="-" if len(xs) > 1 else "none")
    # the ceiling and the partners' best alone as horizontal lines (never among the ranked curves)
    reference_hlines(ax, {r["name"]: r["widths"]["1.0"][0] for r in refs if r["kind"] in ("centralized", "best local")})
    width_axis(ax, [float(k) for k in cols], "model width")
    metric = rows[0]["metric"] if rows else ""
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.set_title(f"{track.name}: {metric} per width")
    ax.grid(True, alpha=0.3)
    legend_outside(ax, fontsize=8)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path.name


# -- markdown ----------------------------------------------------------------------------------------
def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _track_lines(t: Track) -> list[str]:
    return [f"{t.description}", "",
            f"Split(s): {', '.join('`data_splits/' + s + '`' for s in t.splits)} · devices `{t.devices}` · "
            f"{t.rounds} rounds · seeds {t.seeds} · fixed: "
            + ", ".join(f"{k}={v}" for k, v in {**t.run, **t.hparams}.items())
            + f" · mean ± std over seeds (ddof={t.std_ddof}) · ranked by width {t.rank_width:g}", "", TIE_NOTE, "",
            DATE_NOTE]


def _md_table(rows: list[dict], ranked: bool, refs: list[dict] = ()) -> list[str]:
    cols = _columns([*rows, *refs])
    metric = ([*rows, *refs][0]["metric"]) if rows or refs else "metric"
    head = (["#"] if ranked else []) + ["submission", "algorithm"] + [f"{metric}@{k}" for k in cols] + [
        "MB sent", "failures/run", "weights reproduce", "split (config)", "code", "date"] + (
        [] if ranked else ["track", "why unranked"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        cells = ([_rank_cell(i, r)] if ranked else []) + [_md(r["name"]), r["algorithm"]]
        cells += [_fmt(*r["widths"].get(k, (math.nan, math.nan, 0))) for k in cols]
        cells += [f"{r['mb']:.3f}", f"{r['failures']:.2f}", ", ".join(r["reproduced"]) or "—",
                  f"[{_md(_split_label(r))}](configs/{r['slug']}.json)", f"`{_md(_code_label(r))}`", _date_label(r)]
        if not ranked:
            cells += [r["track"] or "—", _md("; ".join(r["reasons"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [_md_reference_line(r, cols) for r in refs]


def _md_reference_line(r: dict, cols: list[str]) -> str:
    """A reference row: ``ref`` for a rank, its score at the widths it has, — where a column is a run's."""
    cells = ["ref", _md(r["name"]), _md(r["algorithm"])]
    cells += [_fmt(*r["widths"].get(k, (math.nan, math.nan, 0))) for k in cols]
    cells += ["—", "—", "—", f"[{_md(_split_label(r))}]({r['file']})", f"`{_md(_code_label(r))}`", "—"]
    return "| " + " | ".join(cells) + " |"


def _markdown(tracks, ranked, unranked, rejected, plots, refs) -> str:
    n = sum(len(v) for v in ranked.values()) + len(unranked)
    out = ["# fedmol leaderboard", "",
           f"Built by `fedmol leaderboard build` from the archives in `leaderboard/submissions/`: {n} verified "
           f"submission(s), {len(rejected)} rejected. Only verified submissions are shown; their metrics are "
           "re-scored from the shipped test-set predictions with fedmol's Evaluator, and the shipped weights "
           "reproduce those predictions at the widths listed under *weights reproduce* (elsewhere the "
           "predictions are re-scored only). MB sent = bytes up + down per run as reported by the run "
           "(checked by `fedmol leaderboard verify --rerun`). Open `index.html` for sortable tables.", ""]
    for name, t in sorted(tracks.items()):
        out += [f"## Track `{name}`: {t.title}", ""] + _track_lines(t) + [""]
        if not ranked[name]:
            out += ["No verified submissions yet.", ""]
        if ranked[name] or refs[name]:
            out += _md_table(ranked[name], True, refs[name]) + [""]
        if refs[name]:
            out += [REFERENCE_NOTE, ""]
        if name in plots:
            out += [f"![{name}: metric per width]({plots[name]})", ""]
    out += ["## Unranked", "", "Verified submissions whose runs fit no track (listed apart, not ranked).", ""]
    out += (_md_table(unranked, False) if unranked else ["None."]) + [""]
    out += ["## Rejected", ""]
    out += [f"- `{_md(f)}`: {_md(reason)}" for f, reason in rejected] or ["None."]
    return "\n".join(out) + "\n"


# -- html --------------------------------------------------------------------------------------------
# index.html is templates/board.html.j2 with static/board.css and static/board.js inlined; Python only
# hands it the rows and the labels (the markup lives in the template).
REFERENCE_TIP = "a reference row: fedmol's own computation under the track's settings, not a submission; not ranked"


def _escape(value) -> Markup:
    """Every value the template prints: escaped by :func:`html.escape` (``quote=True``: ``&#x27;``, ``&quot;``),
    markup (the template's macros, :func:`_code`, the static files) as it is."""
    return value if hasattr(value, "__html__") else Markup(html.escape(str(value), quote=True))


def _code(text: str) -> Markup:
    """Escape, then render `x` as <code>x</code>."""
    return Markup(re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(str(text), quote=True)))


def _num(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ""


def _heads(ranked: bool, cols: list[str], metric: str) -> list[tuple[str, str, str]]:
    """A table's columns: ``(sort key, header, "num" or "str")``."""
    heads = [("rank", "#", "num")] if ranked else []
    heads += [("name", "submission", "str"), ("algorithm", "algorithm", "str")]
    heads += [(f"w{k}", f"{metric}@{k}", "num") for k in cols]
    heads += [("mb", "MB sent", "num"), ("failures", "failures / run", "num"),
              ("reproduced", "weights reproduce", "str"), ("config", "split (config)", "str"), ("code", "code", "str"),
              ("date", "date", "str")]
    return heads + ([] if ranked else [("track", "track", "str"), ("why", "why unranked", "str")])


@functools.cache
def _template():
    from importlib.resources import files

    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("fedmol.leaderboard", "templates"), autoescape=True,
                             finalize=_escape, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=_num, code=_code, split_label=_split_label, code_label=_code_label,
                       date_label=_date_label, track_lines=_track_lines, rank_cell=lambda r, i: _rank_cell(i, r))
    env.tests["finite"] = math.isfinite
    static = files("fedmol.leaderboard") / "static"
    env.globals.update(columns=_columns, heads=_heads, nan_score=(math.nan, math.nan, 0), date_tip=DATE_TIP,
                       reference_tip=REFERENCE_TIP, reference_note=REFERENCE_NOTE,
                       css=Markup((static / "board.css").read_text(encoding="utf-8")),
                       js=Markup((static / "board.js").read_text(encoding="utf-8")))
    return env.get_template("board.html.j2")


def _html(tracks, ranked, unranked, rejected, plots, refs) -> str:
    return _template().render(tracks=sorted(tracks.items()), ranked=ranked, unranked=unranked, rejected=rejected,
                              plots=plots, refs=refs)
