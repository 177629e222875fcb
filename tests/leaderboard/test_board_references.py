"""The board's reference rows (``leaderboard/references/<track>.json``, made by
``leaderboard/make_reference_rows.py``): the shipped board shows the file's numbers, marked ``ref`` and
unranked; they change no submission's rank or tie; a malformed or stale file stops the build with one
line; and one committed number reproduces."""

from __future__ import annotations

import html
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedmol.errors import FedmolError
from fedmol.leaderboard import build_board, load_tracks
from fedmol.leaderboard.board import REFERENCE_NOTE, _code, reference_settings
from fedmol.leaderboard.cli import leaderboard_app
from fedmol.numerics import rerun_tolerance

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "leaderboard" / "references" / "quick.json"
BOARD = REPO / "leaderboard" / "board"
#: as tests/test_reproduce.py: float noise on the CPU kind that made the file, CROSS_MACHINE_TOL elsewhere
TOL = 1e-6


def _maker():
    script = REPO / "leaderboard" / "make_reference_rows.py"
    spec = importlib.util.spec_from_file_location("make_reference_rows", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quick() -> dict:
    return json.loads(QUICK.read_text())


def test_shipped_board_shows_the_reference_rows_with_the_files_numbers():
    doc, maker = _quick(), _maker()
    assert [r["name"] for r in doc["rows"]] == list(maker.ROWS)
    md, page = (BOARD / "README.md").read_text(), (BOARD / "index.html").read_text()
    for r in doc["rows"]:
        cell = f"{r['mean']:.4f} ± {r['std']:.4f}"
        dashes = " | ".join(["—"] * 6)  # the other widths, MB sent, failures, weights reproduce
        assert f"| ref | {r['name']} | {r['model'] or r['family']} | {cell} | {dashes} |" in md, r["name"]
        row = page.split(f'<tr class="ref" data-name="{html.escape(r["name"])}">', 1)[1].split("</tr>", 1)[0]
        assert row.startswith('<td class="num" data-value="" title="a reference row')  # no rank
        assert f'{r["mean"]:.4f}<span class="sd">± {r["std"]:.4f}</span>' in row
    assert REFERENCE_NOTE in md and _code(REFERENCE_NOTE) in page
    assert (BOARD / "references" / "quick.json").read_bytes() == QUICK.read_bytes()
    assert doc["settings"] == reference_settings(load_tracks()["quick"])


def _tiny_references(tracks_file: Path, folder: Path) -> Path:
    """The quick track's reference rows relabelled for the test suite's tiny track (their scores beat
    every tiny submission: ranked, they would come first)."""
    doc = _quick()
    doc.update(track="tiny", settings=reference_settings(load_tracks(tracks_file)["tiny"]))
    folder.mkdir(exist_ok=True)
    (folder / "tiny.json").write_text(json.dumps(doc))
    return folder


def test_reference_rows_are_unranked_and_change_no_rank_or_tie(good_zip, fedavg_zip, tracks_file, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for z in (good_zip, fedavg_zip):
        shutil.copy(z, subs / z.name)
    refs = _tiny_references(tracks_file, tmp_path / "refs")
    with_refs = build_board(subs, tmp_path / "with", tracks_file=tracks_file, references=refs)
    without = build_board(subs, tmp_path / "without", tracks_file=tracks_file, references=tmp_path / "none")
    assert with_refs["tracks"] == without["tracks"] and len(with_refs["tracks"]["tiny"]) == 2
    assert with_refs["references"]["tiny"] == list(_maker().ROWS) and without["references"]["tiny"] == []

    def table(board: Path) -> list[str]:
        text = (board / "README.md").read_text().split("## Track `tiny`", 1)[1].split("## Unranked", 1)[0]
        return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]

    ranked, shown = table(tmp_path / "without"), table(tmp_path / "with")
    assert shown[:len(ranked)] == ranked  # the same ranks, ties and cells, first
    refs = shown[len(ranked):]
    assert len(refs) == len(_maker().ROWS) and all(line.startswith("| ref |") for line in refs)


@pytest.mark.parametrize("corrupt, message", [
    (lambda text, doc: text.replace(f'"test": {doc["rows"][0]["seeds"][0]["test"]!r}', '"test": NaN', 1),
     "invalid references file: rows.0.seeds.0.test"),
    (lambda text, doc: json.dumps({**doc, "rows": []}), "invalid references file: rows"),
    (lambda text, doc: json.dumps({**doc, "settings": {**doc["settings"], "rounds": 99}}),
     "made for other settings of track quick"),
    (lambda text, doc: json.dumps({**doc, "rows": [{**doc["rows"][0], "mean": 0.99}]}), "mean/std are not those"),
    (lambda text, doc: json.dumps({**doc, "rows": [{**doc["rows"][0], "seeds": doc["rows"][0]["seeds"][:2]}]}),
     "seeds [0, 1] are not the track's [0, 1, 2]"),
    (lambda text, doc: text[:100], "invalid references file: file: Invalid JSON"),
])
def test_a_malformed_references_file_stops_the_build_with_one_line(corrupt, message, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "quick.json").write_text(corrupt(QUICK.read_text(), _quick()))
    (tmp_path / "subs").mkdir()
    with pytest.raises(FedmolError) as err:
        build_board(tmp_path / "subs", tmp_path / "board", references=refs)
    assert message in str(err.value) and "\n" not in str(err.value) and str(refs / "quick.json") in str(err.value)
    res = CliRunner().invoke(leaderboard_app, ["build", "--submissions", str(tmp_path / "subs"), "--out",
                                               str(tmp_path / "board"), "--references", str(refs)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: ")


def test_one_committed_reference_number_reproduces():
    """The centralized GNN of seed 0 on the quick track, rerun with the script's own function."""
    torch.set_num_threads(1)
    doc = _quick()
    row = next(r for r in doc["rows"] if r["name"] == "centralized (gnn)")
    committed = next(s["test"] for s in row["seeds"] if s["seed"] == 0)
    got = _maker().seed_rows(load_tracks()["quick"], 0, ("centralized (gnn)",))["centralized (gnn)"]["test"]
    tol, same = rerun_tolerance(doc["provenance"]["numerics"], TOL)
    assert got == pytest.approx(committed, abs=tol), (
        f"rerun {got} vs committed {committed} (tolerance {tol:g}, {'same' if same else 'another'} CPU kind): "
        "regenerate with python leaderboard/make_reference_rows.py")
