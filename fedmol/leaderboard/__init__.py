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

# The names are imported lazily (PEP 562), so that ``fedmol leaderboard --help`` and the main CLI do
# not pay for torch, torch_geometric and RDKit just to list the commands.
_LAZY = {"Limits": "archive", "Rejected": "archive", "build_board": "board", "SCHEMA_VERSION": "schema",
         "Manifest": "schema", "submit": "submission", "Track": "tracks", "load_tracks": "tracks",
         "match_track": "tracks", "Report": "verification", "verify": "verification"}

__all__ = ["submit", "verify", "build_board", "load_tracks", "match_track", "Track", "Manifest", "Report", "Limits",
           "Rejected", "SCHEMA_VERSION"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"fedmol.leaderboard.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedmol.leaderboard' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
