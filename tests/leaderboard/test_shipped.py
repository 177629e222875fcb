"""The shipped board: every submission of fedmol's own runs in leaderboard/submissions/ verifies, every
algorithm of the registry is ranked on the quick track as "<algorithm> (fedmol)", each dated, and
leaderboard/board/ is what the build gives (rebuild it with ``python leaderboard/make_quick_submissions.py``
when the split, the harness or the schema change)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_shipped_submissions_verify_and_board_is_current(tmp_path):
    from fedmol.fl.registry import ALGORITHMS
    from fedmol.leaderboard import build_board

    subs = REPO / "leaderboard" / "submissions"
    zips = sorted(subs.glob("*.zip"))
    assert {z.stem for z in zips} >= set(ALGORITHMS)
    assert all(z.stat().st_size < 2 << 20 for z in zips)
    res = build_board(subs, tmp_path / "board")
    assert res["rejected"] == [], res["rejected"]
    script = REPO / "leaderboard" / "make_quick_submissions.py"
    spec = importlib.util.spec_from_file_location("make_quick_submissions", script)
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    variants = maker.VARIANTS  # rows of the standard suite's FedGen variant
    assert variants == ("fedgen_od_cap",)
    assert sorted(res["tracks"]["quick"]) == sorted(f"{a} (fedmol)" for a in (*ALGORITHMS, *variants))
    rows = [line for line in (REPO / "leaderboard" / "board" / "README.md").read_text().splitlines()
            if " (fedmol) | " in line]
    assert len(rows) == len(ALGORITHMS) + len(variants)
    assert all(re.search(r"\| 20[0-9]{2}-[0-9]{2}-[0-9]{2} \|$", line) for line in rows), "a shipped row has no date"
    for name in ("README.md", "index.html"):
        assert (tmp_path / "board" / name).read_text() == (REPO / "leaderboard" / "board" / name).read_text(), (
            f"leaderboard/board/{name} is stale: rebuild with fedmol leaderboard build "
            "--submissions leaderboard/submissions --out leaderboard/board")
