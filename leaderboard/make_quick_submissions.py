"""Make fedmol's own submissions to the quick track and build the board.

For every algorithm of the harness's registry (``fedmol.fl.registry.ALGORITHMS``) and every seed
of the ``quick`` track (``leaderboard/tracks.toml``) -- and for the FedGen variant of the standard
suite in :data:`VARIANTS` -- one :func:`fedmol.fl.harness.run_federated`
run with the track's settings; the runs of each algorithm are packed with
:func:`fedmol.leaderboard.submission` into ``leaderboard/submissions/<algorithm>.zip`` as the
submission ``"<algorithm> (fedmol)"`` (fedmol's own runs of it; the board's reference rows are
``make_reference_rows.py``'s); then the board is built into ``leaderboard/board/`` from the
verified submissions. The archives are packed in a temporary folder and moved into place only when all
are packed: one written into the checkout would mark the next ones as packed from modified code (``+``).
The scores reproduce to float noise on the CPU kind that made them (``provenance.numerics``); on
another kind training grows last-bit differences (up to ``fedmol.numerics.CROSS_MACHINE_TOL``).

Usage (from anywhere; a few minutes on one CPU core)::

    python leaderboard/make_quick_submissions.py [--algorithms fedavg,fjord] [--no-board]

Method-specific hyperparameters (everything the track does not fix) are in :data:`HPARAMS`:
FedDF's server-side distillation budget is the one of the ``quick`` bench suite, and its public
pool is FedDF's default (RDKit's NCI and WEHI sets, shipped with RDKit: offline, so ``verify
--rerun`` reproduces it anywhere; every molecule of the federated dataset is removed from it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRACK = "quick"
HPARAMS: dict[str, dict] = {
    "feddf": dict(distill_steps=50, eval_every=10, patience=30, pool_size=500),
}
#: variants of the standard bench suite shipped as rows of their own (their algorithm and hyperparameters
#: are the suite's: benchmarks/suites/standard.toml)
VARIANTS = ("fedgen_od_cap",)


def run_label(label: str, algo: str, extra: dict, track, runs_root: Path) -> list[Path]:
    """Run ``label`` (algorithm ``algo`` with ``extra`` hyperparameters) on every split and seed of ``track``."""
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    dirs = []
    for split in track.splits:
        for seed in track.seeds:
            t0 = time.perf_counter()
            cfg = RunConfig(algorithm=algo, split=f"data_splits/{split}", devices=track.devices,
                            rounds=track.rounds, seed=seed, **track.run,
                            hparams={**track.hparams, **HPARAMS.get(algo, {}), **extra})
            d = runs_root / label / f"{Path(split).stem}-seed{seed}"
            s = run_federated(cfg, d, progress=False)
            dirs.append(d)
            print(f"{label} seed {seed}: test {s['metric']} "
                  + ", ".join(f"{k}={v:.4f}" for k, v in s["test"].items())
                  + f" ({time.perf_counter() - t0:.1f}s)", flush=True)
    return dirs


def main(argv: list[str] | None = None) -> int:
    from fedmol.fl.bench import load_suite
    from fedmol.fl.registry import ALGORITHMS
    from fedmol.leaderboard import build_board, load_tracks, submit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", default=",".join([*ALGORITHMS, *VARIANTS]),
                    help="comma-separated (default: the registry and the variants)")
    ap.add_argument("--out", default=str(ROOT / "leaderboard" / "submissions"))
    ap.add_argument("--board", default=str(ROOT / "leaderboard" / "board"))
    ap.add_argument("--runs-dir", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--no-board", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    os.chdir(ROOT)  # run configs record the split as the repository-relative data_splits/... path
    track = load_tracks()[TRACK]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="fedmol-quick-")
    runs_root = Path(args.runs_dir or tmp.name)
    stage = tempfile.TemporaryDirectory(prefix="fedmol-quick-archives-")
    t_all = time.perf_counter()
    variants = {a.label: (a.base, a.hparams) for a in load_suite("standard").algorithms if a.label in VARIANTS}
    for label in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        algo, extra = variants.get(label, (label, {}))
        dirs = run_label(label, algo, extra, track, runs_root)
        m = submit(dirs, name=f"{label} (fedmol)", out=Path(stage.name) / f"{label}.zip", track=TRACK)
        print(f"-> {out / (label + '.zip')}: {m['status']} {'; '.join(m['unranked_reasons'])}", flush=True)
        if m["status"] != "ranked":
            print(f"error: fedmol's {label} submission does not qualify for track {TRACK}", file=sys.stderr)
            return 1
    for z in sorted(Path(stage.name).glob("*.zip")):  # every archive packed from the same (clean) checkout
        shutil.move(str(z), str(out / z.name))
    stage.cleanup()
    if tmp is not None:
        tmp.cleanup()
    if not args.no_board:
        res = build_board(out, args.board)
        print(f"board: {args.board} ({res['verified']} verified, {len(res['rejected'])} rejected)")
        for f, reason in res["rejected"]:
            print(f"  rejected {f}: {reason}", file=sys.stderr)
        if res["rejected"]:
            return 1
    print(f"done in {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
