"""The board: README table rows, rejected and unranked submissions listed apart, and the static page
sorted by a real headless browser (Debian's chromium) executing the page's JavaScript."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lb_helpers import repack

from fedmol.leaderboard.cli import leaderboard_app


DATED = "2026-11-30"


@pytest.fixture(scope="module")
def board(good_zip, fedavg_zip, unranked_zip, tracks_file, tmp_path_factory) -> Path:
    subs = tmp_path_factory.mktemp("submissions")
    repack(good_zip, subs / "a-good.zip", edit_manifest=lambda m: m.update(created=DATED))
    shutil.copy(unranked_zip, subs / "b-unranked.zip")
    repack(fedavg_zip, subs / "c-fedavg.zip", edit_manifest=lambda m: m.pop("created"))  # as made before dates
    repack(good_zip, subs / "d-tampered.zip",
           edit_manifest=lambda m: m["runs"][0]["test"].update({"1.0": 0.99}))
    (subs / "e-garbage.zip").write_bytes(b"garbage")
    out = tmp_path_factory.mktemp("board")
    res = CliRunner().invoke(leaderboard_app, ["build", "--submissions", str(subs), "--out", str(out),
                                               "--tracks", str(tracks_file)])
    assert res.exit_code == 0, res.output
    assert "3 verified submission(s), 2 rejected" in res.stdout
    return out


def test_readme_table(board):
    text = (board / "README.md").read_text()
    assert "## Track `tiny`: Tiny (tests)" in text and "## Track `quick`" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 2 ≈1 |"))]
    assert len(rows) == 2 and any("| tiny fjord | fjord |" in r for r in rows)
    assert "≈1: within seed noise of #1 (paired t-test over the track's seeds, p ≥ 0.05)" in text
    assert any("| tiny fedavg | fedavg |" in r for r in rows)
    assert "| # | submission | algorithm | rocauc@1.0 | rocauc@0.5 | rocauc@0.25 | rocauc@0.125 |" in text
    assert re.search(r"\| tiny fjord \| fjord \| 0\.\d{4} ± 0\.\d{4} \|", text)
    assert re.search(r"\| tiny fedavg \| fedavg \| 0\.\d{4} ± 0\.\d{4} \| — \| — \| — \|", text)
    # ranked by the mean at width 1.0, best first
    means = [float(re.search(r"\| (0\.\d{4}) ±", r).group(1)) for r in rows]
    assert means == sorted(means, reverse=True)
    # unranked listed apart, rejected with reasons
    unranked = text.split("## Unranked", 1)[1].split("## Rejected", 1)[0]
    assert "tiny two seeds" in unranked and "are not the track's [0, 1, 2]" in unranked
    assert "tiny two seeds" not in text.split("## Unranked", 1)[0]
    rejected = text.split("## Rejected", 1)[1]
    assert "`d-tampered.zip`: run 00: claimed test rocauc@1.0 = 0.99" in rejected
    assert "`e-garbage.zip`: not a zip archive" in rejected
    assert (board / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![tiny: metric per width](tiny.png)" in text


def test_configs_written_next_to_page(board):
    html = (board / "index.html").read_text()
    links = re.findall(r'href="(configs/[^"]+\.json)"', html)
    assert len(links) == 3
    docs = {}
    for link in links:
        doc = json.loads((board / link).read_text())
        assert doc["runs"][0]["config"]["model"]["hidden"] == 16
        docs[doc["name"]] = doc
    assert docs["tiny fjord"]["verification"]["runs"][0]["reproduced_widths"] == ["1.0", "0.5", "0.25", "0.125"]
    assert docs["tiny fedavg"]["verification"]["runs"][0]["reproduced_widths"] == ["1.0"]


def test_config_shows_the_split_actually_used(board):
    """The config page leads with the frozen split file (path, sha256, its spec), and the run config's unused
    defaults for what the split decides (partners, alpha, ...) are not shown as if they were the setting."""
    html = (board / "index.html").read_text()
    for link in re.findall(r'href="(configs/[^"]+\.json)"', html):
        doc = json.loads((board / link).read_text())
        assert doc["splits"] and all(s["path"].startswith("data_splits/") for s in doc["splits"])
        for run in doc["runs"]:
            split = next(s for s in doc["splits"] if s["path"] == run["split"])
            assert split["spec"] == run["config"]["split"]["spec"]
            assert split["spec"]["partners"] == run["config"]["split"]["partners"]
            assert not {"partners", "alpha", "quantity_skew"} & set(run["config"]["run"])
        # the link itself names the split
        stems = ", ".join(Path(s["path"]).stem for s in doc["splits"])
        assert f'<a href="{link}"' in html and f">{stems}</a>" in html


def test_code_and_date_columns(board):
    """The date a submission records (its manifest's ``created``) is shown; an archive without one shows —."""
    text = (board / "README.md").read_text()
    assert "| weights reproduce | split (config) | code | date |" in text
    assert "date: the day the submission was packed by fedmol leaderboard submit (UTC; —" in text
    row = next(line for line in text.splitlines() if "| tiny fjord | fjord |" in line)
    assert re.search(rf"\| `([0-9a-f]{{7}}\+?|unknown)` \| {DATED} \|$", row), row
    row = next(line for line in text.splitlines() if "| tiny fedavg | fedavg |" in line)
    assert re.search(r"\| `([0-9a-f]{7}\+?|unknown)` \| — \|$", row), row
    page = (board / "index.html").read_text()
    dated = page.split('<tr data-name="tiny fjord">', 1)[1].split("</tr>", 1)[0]
    undated = page.split('<tr data-name="tiny fedavg">', 1)[1].split("</tr>", 1)[0]
    assert dated.endswith(f'<td data-value="{DATED}" title="the day the submission was packed (UTC)">{DATED}</td>')
    assert undated.endswith('<td data-value="" title="the day the submission was packed (UTC)">—</td>')
    configs = {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in (board / "configs").glob("*")}
    assert configs["tiny fjord"]["created"] == DATED and configs["tiny fedavg"]["created"] is None


# -- the browser --------------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Rows(HTMLParser):
    """The data-value of one column of one table's body rows, in document order."""

    def __init__(self, table_id: str, key: str):
        super().__init__()
        self.table_id, self.key = table_id, key
        self.in_table = self.in_body = False
        self.col = None
        self.cell = 0
        self.values: list[str] = []
        self.names: list[str] = []
        self._headers: list[str] = []
        self.sort_attr = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == self.table_id:
            self.in_table = True
            self.sort_attr = a.get("data-sort")
        elif self.in_table and tag == "th":
            self._headers.append(a.get("data-key"))
        elif self.in_table and tag == "tbody":
            self.in_body = True
            self.col = self._headers.index(self.key)
        elif self.in_body and tag == "tr":
            self.cell = 0
            self.names.append(a.get("data-name"))
        elif self.in_body and tag == "td":
            if self.cell == self.col:
                self.values.append(a.get("data-value"))
            self.cell += 1

    def handle_endtag(self, tag):
        if tag == "table" and self.in_table:
            self.in_table = self.in_body = False


def _dump_dom(chromium: str, page: Path, fragment: str, profile: Path) -> str:
    url = page.resolve().as_uri() + fragment
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_browser_sorts_columns(board, tmp_path):
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: apt-get install -y chromium chromium-driver")
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver); CI is not set")
    page = board / "index.html"

    static = _Rows("board-tiny", "w1.0")
    static.feed(page.read_text())
    assert static.sort_attr is None and len(static.values) == 2

    # numeric column, both directions: the page's JS reorders the rows from the URL fragment
    for direction in ("asc", "desc"):
        dom = _dump_dom(chromium, page, f"#sort=board-tiny:w1.0:{direction}", tmp_path / f"profile-{direction}")
        p = _Rows("board-tiny", "w1.0")
        p.feed(dom)
        assert p.sort_attr == f"w1.0:{direction}", "the page's script did not run"
        vals = [float(v) for v in p.values]
        assert len(vals) == 2 and vals[0] != vals[1]
        assert vals == sorted(vals, reverse=direction == "desc")
        by_name = dict(zip(p.names, vals))
        assert set(by_name) == {"tiny fjord", "tiny fedavg"}

    # a text column; and a width FedAvg does not serve: its empty cell sorts last either way
    dom = _dump_dom(chromium, page, "#sort=board-tiny:name:desc", tmp_path / "profile-name")
    p = _Rows("board-tiny", "name")
    p.feed(dom)
    assert p.names == ["tiny fjord", "tiny fedavg"]
    dom = _dump_dom(chromium, page, "#sort=board-tiny:w0.5:asc", tmp_path / "profile-w05")
    p = _Rows("board-tiny", "w0.5")
    p.feed(dom)
    assert p.names == ["tiny fjord", "tiny fedavg"] and p.values[1] == ""


_FIT_JS = """<script>document.addEventListener("DOMContentLoaded", function () {
  var r = [];
  Array.prototype.forEach.call(document.querySelectorAll("table"), function (t) {
    var box = t.parentNode;
    r.push({id: t.id, right: t.getBoundingClientRect().right, box: box.clientWidth, scroll: box.scrollWidth});
  });
  document.body.setAttribute("data-fit", JSON.stringify(
    {tables: r, doc: document.documentElement.scrollWidth, inner: window.innerWidth}));
});</script>"""


def _fit(chromium: str, page: Path, width: int, tmp: Path) -> dict:
    """The page laid out by chromium in a window ``width`` px wide: per table its right edge and its scroll
    box's visible and scrolled widths, the document's scroll width."""
    import html as _html

    probe = tmp / f"fit-{width}.html"
    probe.write_text(page.read_text().replace("</body>", _FIT_JS + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
           "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp / f'profile-fit-{width}'}", f"--window-size={width},900", "--dump-dom",
           probe.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'data-fit="([^"]*)"', res.stdout)
    assert m, "the probe script did not run"
    return json.loads(_html.unescape(m.group(1)))


@pytest.mark.parametrize("which", ["built", "shipped"])
def test_tables_fit_1400_px(board, tmp_path, which):
    """Every table of the page fits a 1400 px window without horizontal scroll (measured in chromium's
    layout); a screenshot at that size is taken too. At 800 px the same probe does see the overflow."""
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: apt-get install -y chromium chromium-driver")
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver); CI is not set")
    shipped = Path(__file__).resolve().parents[2] / "leaderboard" / "board" / "index.html"
    page = board / "index.html" if which == "built" else shipped
    fit = _fit(chromium, page, 1400, tmp_path)
    assert fit["inner"] == 1400 and fit["tables"]
    for t in fit["tables"]:
        assert t["scroll"] <= t["box"] and t["right"] <= 1400, t
    assert fit["doc"] <= 1400, fit
    narrow = _fit(chromium, page, 800, tmp_path)
    assert any(t["scroll"] > t["box"] for t in narrow["tables"]), "the probe cannot see an overflow"
    shot = tmp_path / "board.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile-shot'}", "--window-size=1400,1000",
                          f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=60)
    assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1400  # the PNG's width


def test_ties_with_the_top_row_are_marked():
    from fedmol.leaderboard.board import _rank_cell, mark_ties
    from fedmol.leaderboard.tracks import Track

    track = Track.model_construct(rank_width=1.0)
    rows = [dict(metric="rocauc", by_seed={"1.0": {0: 0.80, 1: 0.82, 2: 0.81}}),
            dict(metric="rocauc", by_seed={"1.0": {0: 0.79, 1: 0.83, 2: 0.80}}),   # within noise of #1
            dict(metric="rocauc", by_seed={"1.0": {0: 0.70, 1: 0.71, 2: 0.705}})]  # consistently below
    mark_ties(rows, track)
    assert [r["tie"] for r in rows] == [False, True, False]
    assert [_rank_cell(i, r) for i, r in enumerate(rows, 1)] == ["1", "2 ≈1", "3"]


def test_page_escapes_untrusted_text():
    """Names, reasons, commits, dates and rejected files come from submissions: the page's template prints
    every one of them escaped by html.escape (quote=True), in text and in attributes alike."""
    import html

    from fedmol.leaderboard import load_tracks
    from fedmol.leaderboard.board import _html

    evil = "<script>alert(\"x\")</script>'&"
    tracks = load_tracks()
    row = dict(name=evil, algorithm=evil, track=evil, status="unranked", reasons=[evil], metric="rocauc",
               widths={"1.0": (0.5, 0.1, 3)}, mb=1.0, failures=0.0, reproduced=[evil], rescored=[evil],
               commit=evil, commit_dirty=False, created=evil, slug="s", splits=[evil])
    page = _html(tracks, {n: [] for n in tracks}, [row], [(evil, evil)], {}, {n: [] for n in tracks})
    assert "<script>alert" not in page and "'&" not in page
    safe = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;&amp;"
    assert safe == html.escape(evil, quote=True)
    assert f'<tr data-name="{safe}"><td class="wrap" data-value="{safe}">{safe}</td>' in page
    assert f'<td class="why" data-value="{safe}">{safe}</td>' in page
    assert f"<li><code>{safe}</code>: {safe}</li>" in page
    # name, algorithm, reproduced (value, text), track and why (value, text), commit (title, value, text),
    # date (value, text), the split files in a title, the rescored widths in a title, the rejected file and reason
    assert page.count(safe) == 3 + 2 + 2 + 2 + 2 + 3 + 2 + 1 + 1 + 2
