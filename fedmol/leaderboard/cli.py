"""``fedmol leaderboard``: submit, verify, build.

Wire it into the main CLI with::

    from fedmol.leaderboard.cli import leaderboard_app
    app.add_typer(leaderboard_app, name="leaderboard")

Exit codes: 0 success; 1 the submission is rejected (one line on stderr: ``rejected: <reason>``);
2 a usage error (missing file, unknown track, ...: ``error: <message>``); 3 an internal error
while verifying (one line, no traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedmol.cli_common import friendly
from fedmol.jsonio import to_json

leaderboard_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                              help="Leaderboard: pack runs into a submission, verify submissions, build the board.")

TracksOpt = typer.Option(None, "--tracks", help="Tracks file (default: leaderboard/tracks.toml of this checkout).")
SplitsOpt = typer.Option(None, "--splits-dir", help="Frozen split files (default: data_splits/ of this checkout).")


@leaderboard_app.command()
@friendly
def submit(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders of run_federated: one per seed (and split)."),
    name: str = typer.Option(..., "--name", help="Submission name (letters, digits, space, ._+()-)."),
    out: Path = typer.Option(..., "--out", help="The archive to write (.zip)."),
    track: Optional[str] = typer.Option(None, "--track", help="Check against this track (default: detect)."),
    tracks: Optional[Path] = TracksOpt,
    splits_dir: Optional[Path] = SplitsOpt,
):
    """Pack the runs of one method on one track into a submission archive."""
    import torch

    from fedmol.leaderboard.submission import submit as do_submit

    torch.set_num_threads(1)
    m = do_submit(run_dirs, name, out, track=track, tracks_file=tracks, splits_dir=splits_dir)
    where = f"track {m['track']}" if m["track"] else "no track"
    print(f"wrote {out}: {m['algorithm']} '{m['name']}', {len(m['runs'])} run(s), seeds {m['seeds']}, {where}, "
          f"{m['status']}, dated {m['created']} (UTC)")
    for reason in m["unranked_reasons"]:
        print(f"  unranked: {reason}")
    print(f"check it with: fedmol leaderboard verify {out}")


@leaderboard_app.command()
@friendly
def verify(
    file: Path = typer.Argument(..., help="The submission archive."),
    rerun: int = typer.Option(0, "--rerun", help="Also re-run K randomly chosen seeds and compare the metrics."),
    rerun_seed: int = typer.Option(0, "--rerun-seed", help="Seed of the choice of runs to re-run."),
    as_json: bool = typer.Option(False, "--json", help="Print the verification report as JSON."),
    tracks: Optional[Path] = TracksOpt,
    splits_dir: Optional[Path] = SplitsOpt,
):
    """Verify a submission; exit 0 only if every check passes."""
    import torch

    from fedmol.errors import FedmolError, InternalError
    from fedmol.leaderboard.verification import verify as do_verify

    torch.set_num_threads(1)
    try:
        rep = do_verify(file, rerun=rerun, rerun_seed=rerun_seed, tracks_file=tracks, splits_dir=splits_dir,
                        progress=False)
    except FedmolError:  # rejected (exit 1) or a usage error (exit 2)
        raise
    except Exception as e:  # never a traceback for a hostile file
        raise InternalError(f"internal error while verifying: {type(e).__name__}: {e}") from None
    if as_json:
        print(to_json(rep.to_dict(), indent=1))
        return
    print(f"verified {file}: '{rep.name}' ({rep.algorithm}) on {rep.dataset}, "
          f"{'track ' + rep.track if rep.track else 'no track'}, {rep.status}")
    for c in rep.checks:
        print(f"  ok  {c}")
    for r in rep.runs:
        scores = ", ".join(f"{k}: {v:.4f}" for k, v in sorted(r.test.items(), key=lambda kv: -float(kv[0])))
        line = (f"  run {r.id} seed {r.seed}: test {rep.metric} {scores}; reproduced from weights at "
                f"{', '.join(r.reproduced_widths) or 'none'}")
        if r.rescored_only_widths:
            line += f"; re-scored from predictions only at {', '.join(r.rescored_only_widths)}"
        if r.rerun:
            line += "; rerun reproduces"
        print(line)


@leaderboard_app.command()
@friendly
def build(
    submissions: Path = typer.Option(..., "--submissions", help="Folder of submission archives (*.zip)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the board to."),
    tracks: Optional[Path] = TracksOpt,
    splits_dir: Optional[Path] = SplitsOpt,
    references: Optional[Path] = typer.Option(
        None, "--references", help="Reference rows, <track>.json per track (default: references/ next to the "
                                   "tracks file; made by leaderboard/make_reference_rows.py)."),
):
    """Verify every submission and write the board: README.md, index.html, plots, configs, reference rows."""
    import torch

    from fedmol.leaderboard.board import build_board

    torch.set_num_threads(1)
    res = build_board(submissions, out, tracks_file=tracks, splits_dir=splits_dir, references=references)
    print(f"wrote {out}/README.md and {out}/index.html: {res['verified']} verified submission(s), "
          f"{len(res['rejected'])} rejected")
    for name, reason in res["rejected"]:
        print(f"  rejected {name}: {reason}")
