"""The fedmol leaderboard: submission archives, their verification, and the static board.

Python API::

    from fedmol.leaderboard import submit, verify, build_board, load_tracks, Rejected, Limits
    manifest = submit(["runs/s0", "runs/s1", "runs/s2"], name="my-method", out="my-method.zip")
    report = verify("my-method.zip", rerun=1)     # raises Rejected("<one-line reason>")
    board = build_board("leaderboard/submissions", "leaderboard/board")

Command line (``fedmol leaderboard ...``, or ``python -m fedmol.leaderboard ...``): ``submit``,
``verify``, ``build``. Tracks live in ``leaderboard/tracks.toml``; the manifest schema in
:mod:`fedmol.leaderboard.schema`.
"""

from fedmol.leaderboard.archive import Limits, Rejected
from fedmol.leaderboard.board import build_board
from fedmol.leaderboard.schema import SCHEMA_VERSION, Manifest
from fedmol.leaderboard.submission import submit
from fedmol.leaderboard.tracks import Track, load_tracks, match_track
from fedmol.leaderboard.verification import Report, verify

__all__ = ["submit", "verify", "build_board", "load_tracks", "match_track", "Track", "Manifest", "Report", "Limits",
           "Rejected", "SCHEMA_VERSION"]
