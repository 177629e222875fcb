"""Compute the leaderboard's reference rows: what the partners get alone, and with their data pooled.

For every track of ``leaderboard/tracks.toml`` and every seed of the track, fedmol's own reference
code (:mod:`fedmol.fl.references`) runs under exactly the track's settings (its frozen split files,
device profile, rounds and local budget, model, seeds) and the result is written to
``leaderboard/references/<track>.json``, which ``fedmol leaderboard build`` shows as unranked rows
(:func:`fedmol.leaderboard.board.load_references`). The rows (:data:`ROWS`):

* ``local-only (gnn)`` / ``local-only (rf-ecfp4)``: each partner trains alone (the track's GNN at its
  device's width cap; the ECFP4 random forest); a seed's score is the mean over partners of each
  partner's own model's score on the global test set;
* ``best local``: per partner, the one of those two local models with the better score on the
  partner's own validation molecules (:func:`fedmol.fl.references.best_local`); scored as local-only;
* ``centralized (gnn)`` / ``centralized (rf-ecfp4)``: every partner's training molecules pooled
  (the GNN at width 1); its score on the global test set.

With several split files, a seed's score is the mean over the splits (as the board scores a
submission). Mean and std over seeds use the track's ``std_ddof``. One torch thread, forests with
``n_jobs=1``; nothing time-dependent is written, so the same code and CPU kind give the same file.

Usage (from anywhere; about a minute per seed on one core for the quick track)::

    python leaderboard/make_reference_rows.py [--tracks leaderboard/tracks.toml] [--out leaderboard/references]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: the board's reference rows, floor to ceiling: name -> (reference, family); best local picks among LOCAL_FAMILIES
ROWS = {
    "local-only (gnn)": ("local-only", "gnn"),
    "local-only (rf-ecfp4)": ("local-only", "rf-ecfp4"),
    "best local": ("best local", None),
    "centralized (gnn)": ("centralized", "gnn"),
    "centralized (rf-ecfp4)": ("centralized", "rf-ecfp4"),
}
LOCAL_FAMILIES = ("gnn", "rf-ecfp4")
#: how the references train (fedmol.fl.references.run_reference's defaults, as the bench suites use them)
TRAINING = dict(min_epochs=5, patience=None, torch_threads=1, forest_n_jobs=1)
BEST_LOCAL_RULE = ("per partner, the local-only family with the best score on the partner's own validation "
                   "molecules (fedmol.fl.references.best_local; never the test set)")


def run_config(track, split: str, seed: int):
    """The :class:`RunConfig` of a run of ``track`` on ``split`` (under data_splits/) with ``seed``; the
    split path is repository-relative, as a submitted run records it."""
    from fedmol.config import RunConfig

    return RunConfig(split=f"data_splits/{split}", dataset=track.dataset, devices=track.devices,
                     rounds=track.rounds, seed=seed, **track.run, hparams=dict(track.hparams))


def needed(rows) -> list[tuple[str, str]]:
    """The ``(reference, family)`` runs the rows need (best local: every local family)."""
    runs = []
    for name in rows:
        reference, family = ROWS[name]
        pairs = [("local-only", f) for f in LOCAL_FAMILIES] if reference == "best local" else [(reference, family)]
        runs += [p for p in pairs if p not in runs]
    return runs


def split_rows(track, split: str, seed: int, rows=tuple(ROWS)) -> dict[str, dict]:
    """``{row name: {"test", "per_partner", "config"}}`` of one seed on one split file."""
    from fedmol.fl.harness import build_federation
    from fedmol.fl.references import best_local, run_reference
    from fedmol.leaderboard.board import SPLIT_DECIDES

    cfg = run_config(track, split, seed)
    fed = build_federation(cfg.replace(split=str(ROOT / cfg.split)), progress=False)
    summaries = {(ref, fam): run_reference(cfg, ref, fam, fed=fed, progress=False, n_jobs=TRAINING["forest_n_jobs"],
                                           min_epochs=TRAINING["min_epochs"], patience=TRAINING["patience"])
                 for ref, fam in needed(rows)}
    out = {}
    for name in rows:
        reference, family = ROWS[name]
        if reference == "best local":
            best = best_local({f: summaries[("local-only", f)] for f in LOCAL_FAMILIES})
            out[name] = dict(metric=best["metric"], test=best["test"]["mean"],
                             config=dict(families=best["families"], rule=BEST_LOCAL_RULE),
                             per_partner=[_partner(p, p["family"]) for p in best["per_partner"]])
            continue
        s = summaries[(reference, family)]
        test = s["test"]["mean"] if reference == "local-only" else s["test"]["1.0"]
        # the run settings, less the seed (per seed below) and the unused defaults the split file decides
        run = {k: v for k, v in s["config"]["run"].items() if k != "seed" and k not in SPLIT_DECIDES}
        config = {**s["config"], "run": run}
        partners = s["per_partner"] if reference == "local-only" else []  # centralized: one model, one score
        out[name] = dict(metric=s["metric"], test=test, config=config,
                         per_partner=[_partner(p, family) for p in partners])
    return out


def _partner(p: dict, family: str) -> dict:
    """A partner's entry: its model's family, width (trees: None), test and own validation scores; for best
    local, which rule chose the family."""
    keep = dict(partner=p["partner"], family=family, width=p.get("width"), test=p["test"], valid=p["valid"])
    return {**keep, **({"selected_by": p["selected_by"]} if "selected_by" in p else {})}


def seed_rows(track, seed: int, rows=tuple(ROWS)) -> dict[str, dict]:
    """``{row name: {"seed", "test", "runs", "config", "metric"}}`` of one seed: ``test`` is the mean over
    the track's splits, ``runs`` one entry per split (its test score and per-partner scores)."""
    import numpy as np

    per_split = {split: split_rows(track, split, seed, rows) for split in track.splits}
    return {name: dict(seed=seed, test=float(np.mean([per_split[sp][name]["test"] for sp in track.splits])),
                       runs=[dict(split=sp, test=per_split[sp][name]["test"],
                                  per_partner=per_split[sp][name]["per_partner"]) for sp in track.splits],
                       config=per_split[track.splits[0]][name]["config"],
                       metric=per_split[track.splits[0]][name]["metric"])
            for name in rows}


def track_references(track, log=print) -> dict:
    """The references document of ``track`` (every row, every seed)."""
    from fedmol.leaderboard.board import REFERENCES_SCHEMA, reference_settings, seed_stats

    by_seed = []
    for seed in track.seeds:
        t0 = time.perf_counter()
        by_seed.append(seed_rows(track, seed))
        log(f"{track.name} seed {seed}: " + ", ".join(f"{n} {r['test']:.4f}" for n, r in by_seed[-1].items())
            + f" ({time.perf_counter() - t0:.1f}s)")
    rows = []
    for name, (reference, family) in ROWS.items():
        seeds = [{k: v for k, v in s[name].items() if k not in ("config", "metric")} for s in by_seed]
        mean, std, _ = seed_stats([s["test"] for s in seeds], track.std_ddof)
        rows.append(dict(name=name, reference=reference, family=family or "best of " + ", ".join(LOCAL_FAMILIES),
                         model=track.run.get("model") if family == "gnn" else family, mean=mean, std=std,
                         seeds=seeds, config=by_seed[0][name]["config"]))
    metric = next(iter(by_seed[0].values()))["metric"]
    return dict(schema_version=REFERENCES_SCHEMA, track=track.name, metric=metric, settings=reference_settings(track),
                training=TRAINING, provenance=provenance(), rows=rows)


def provenance() -> dict:
    """The code and numerics the references were computed with."""
    import rdkit
    import sklearn

    import fedmol
    from fedmol.leaderboard.submission import git_commit
    from fedmol.numerics import numerics, numerics_id

    commit, dirty = git_commit()
    return dict(fedmol=fedmol.__version__, commit=commit, commit_dirty=dirty, torch=torch.__version__,
                sklearn=sklearn.__version__, rdkit=rdkit.__version__, numerics=numerics(), numerics_id=numerics_id())


def main(argv: list[str] | None = None) -> int:
    from fedmol.jsonio import write_json
    from fedmol.leaderboard import load_tracks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", default=str(ROOT / "leaderboard" / "tracks.toml"))
    ap.add_argument("--out", default=str(ROOT / "leaderboard" / "references"))
    ap.add_argument("--only", default=None, help="comma-separated track names (default: every track)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = load_tracks(args.tracks)
    names = [t.strip() for t in args.only.split(",")] if args.only else sorted(tracks)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    for name in names:
        t0 = time.perf_counter()
        doc = track_references(tracks[name])
        write_json(out / f"{name}.json", doc)
        print(f"-> {out / (name + '.json')}: " + ", ".join(f"{r['name']} {r['mean']:.4f} ± {r['std']:.4f}"
                                                           for r in doc["rows"])
              + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"done in {time.perf_counter() - t_all:.0f}s ({time.process_time() - cpu_all:.0f}s of CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
