"""``python -m fedmol.leaderboard submit|verify|build`` (the same as ``fedmol leaderboard ...``)."""

from fedmol.leaderboard.cli import leaderboard_app

if __name__ == "__main__":
    leaderboard_app(prog_name="fedmol leaderboard")
