"""Hostile and tampered submissions: each is rejected with a one-line reason (exit code 1), nothing is
extracted or unpickled, and nothing appears outside the test's temporary folder."""

from __future__ import annotations

import csv
import io
import pickle
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from typer.testing import CliRunner

from lb_helpers import members, raw_zip, repack

from fedmol.leaderboard.cli import leaderboard_app


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Run from an empty working folder inside tmp_path; snapshot tmp_path's parent and tmp_path."""
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before_parent = set(p.name for p in tmp_path.parent.iterdir())
    yield tmp_path
    assert set(p.name for p in tmp_path.parent.iterdir()) == before_parent, "something was written beside tmp_path"
    assert not any(work.iterdir()), "something was written into the working folder"
    assert not any("evil" in p for p in _tree(tmp_path) if not p.endswith(".zip")), "an archive member was extracted"


def rejected(zip_path: Path, *extra: str) -> str:
    res = CliRunner().invoke(leaderboard_app, ["verify", str(zip_path), *extra])
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert res.stdout == "", res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rejected: "), res.stderr
    return lines[0]


# -- archive-level attacks -------------------------------------------------------------------------
def test_not_a_zip(sandbox):
    p = sandbox / "x.zip"
    p.write_bytes(b"definitely not a zip")
    assert "not a zip archive" in rejected(p)


def test_dotdot_member(sandbox):
    p = raw_zip(sandbox / "dotdot.zip", [("manifest.json", b"{}"), ("../evil", b"pwned"),
                                         ("../../evil", b"pwned")])
    assert "'../evil': path escapes the archive ('..')" in rejected(p)
    assert not (sandbox.parent / "evil").exists() and not (sandbox / "evil").exists()


def test_absolute_member(sandbox):
    target = sandbox.parent / "evil_absolute"
    p = raw_zip(sandbox / "abs.zip", [("manifest.json", b"{}"), (str(target), b"pwned")])
    assert "absolute path" in rejected(p)
    assert not target.exists()


def test_symlink_member(sandbox, good_zip):
    info = zipfile.ZipInfo("runs/00/model.safetensors")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    files = members(good_zip)
    p = raw_zip(sandbox / "link.zip", [("manifest.json", files["manifest.json"]), (info, b"/etc/passwd")])
    assert "'runs/00/model.safetensors' is a symlink" in rejected(p)


def test_too_many_members(sandbox):
    p = raw_zip(sandbox / "many.zip", [("manifest.json", b"{}")] + [(f"runs/00/x{i}", b"") for i in range(300)])
    assert "301 members, more than the limit of 129" in rejected(p)


def test_zip_bomb_declared_size(sandbox):
    # 65 MiB of zeros deflate to ~65 KiB: the declared size is over the 64 MiB weights limit
    p = raw_zip(sandbox / "bomb.zip", [("manifest.json", b"{}"), ("runs/00/model.safetensors", bytes(65 << 20))])
    assert p.stat().st_size < 1 << 20
    assert "'runs/00/model.safetensors' declares 68157440 bytes, more than the limit of 67108864" in rejected(p)


def test_zip_bomb_lying_header(sandbox):
    """The header claims 100 bytes; the stream holds 4 MiB: reading stops at the declared size."""
    p = raw_zip(sandbox / "liar.zip", [("manifest.json", b" " * (4 << 20))])
    data = bytearray(p.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    p.write_bytes(bytes(data))
    line = rejected(p)
    assert "manifest.json" in line and ("more than its declared size" in line or "corrupt" in line
                                        or "CRC" in line)


def test_duplicate_member(sandbox):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = raw_zip(sandbox / "dup.zip", [("manifest.json", b"{}"), ("manifest.json", b"{}")])
    assert "appears more than once" in rejected(p)


def test_unexpected_member(sandbox, good_zip):
    p = repack(good_zip, sandbox / "extra.zip", edit_files=lambda f: f.update({"README.md": b"hi"}))
    assert "unexpected archive member 'README.md'" in rejected(p)


# -- pickles and other weights -----------------------------------------------------------------------
class _Evil:
    """Unpickling this creates a file: proof that nothing is unpickled."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_member_refused(sandbox, good_zip):
    p = repack(good_zip, sandbox / "pkl.zip", edit_files=lambda f: f.update({"runs/00/model.pkl": b"\x80\x04."}))
    assert "'runs/00/model.pkl': pickle and other non-safetensors weights are not accepted" in rejected(p)


def test_pickle_as_weights_never_unpickled(sandbox, good_zip, tracks_file):
    marker = sandbox / "evil_unpickled"
    _Evil.marker = str(marker)
    payload = pickle.dumps(_Evil(), protocol=4)
    p = repack(good_zip, sandbox / "pkl2.zip",
               edit_files=lambda f: f.update({"runs/00/model.safetensors": payload}))
    assert "runs/00/model.safetensors is a pickle: only safetensors weights are accepted" in rejected(
        p, "--tracks", str(tracks_file))
    assert not marker.exists()


def test_torch_save_as_weights(sandbox, good_zip, tracks_file):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    p = repack(good_zip, sandbox / "pt.zip", edit_files=lambda f: f.update({"runs/00/model.safetensors": buf.getvalue()}))
    assert "is a zip (torch.save) file" in rejected(p, "--tracks", str(tracks_file))


# -- manifest --------------------------------------------------------------------------------------
def test_unknown_manifest_field(sandbox, good_zip):
    p = repack(good_zip, sandbox / "unknown.zip", edit_manifest=lambda m: m.update({"bonus": 1}))
    assert "manifest.json does not fit the schema: bonus: Extra inputs are not permitted" in rejected(p)


def test_missing_manifest_field(sandbox, good_zip):
    p = repack(good_zip, sandbox / "missing.zip", edit_manifest=lambda m: m["runs"][0].pop("bytes_up"))
    assert "runs.0.bytes_up: Field required" in rejected(p)


@pytest.mark.parametrize("created, why", [
    ("2026-02-30", "'2026-02-30' is not a UTC date YYYY-MM-DD (e.g. 2026-12-03)"),
    ("2026-2-3", "'2026-2-3' is not a UTC date YYYY-MM-DD"),
    ("20261203", "'20261203' is not a UTC date YYYY-MM-DD"),
    ("2026-12-03T10:00:00Z", "'2026-12-03T10:00:00Z' is not a UTC date YYYY-MM-DD"),
    ("2026-12-03\n<script>", "is not a UTC date YYYY-MM-DD"),
    ("9999-12-31", "'9999-12-31' is in the future (UTC)"),
    (20261203, "created: Input should be a valid string"),
])
def test_bad_creation_date(sandbox, good_zip, created, why):
    p = repack(good_zip, sandbox / "date.zip", edit_manifest=lambda m: m.update(created=created))
    line = rejected(p)
    assert line.startswith("rejected: manifest.json does not fit the schema: created: ") and why in line, line


def test_nan_in_manifest(sandbox, good_zip):
    p = repack(good_zip, sandbox / "nan.zip", edit_manifest=lambda m: m["runs"][0]["test"].update({"1.0": float("nan")}))
    assert "NaN is not allowed (non-finite number)" in rejected(p)


def test_wrong_split_hash(sandbox, good_zip, tracks_file):
    def edit(m):
        m["splits"][0]["sha256"] = "0" * 64
        for r in m["runs"]:
            r["config"]["split"]["sha256"] = "0" * 64
    p = repack(good_zip, sandbox / "split.zip", edit_manifest=edit)
    assert "sha256 000000000000... is not the frozen file's" in rejected(p, "--tracks", str(tracks_file))


def test_file_hash_mismatch(sandbox, good_zip):
    def edit(f):
        f["runs/01/test_predictions.csv"] += b"\n"
    p = repack(good_zip, sandbox / "hash.zip", edit_files=edit, fix_hashes=False)
    assert "runs/01/test_predictions.csv: its sha256 or size differs from the manifest's" in rejected(p)


def test_false_rank_claim(sandbox, unranked_zip):
    def edit(m):
        m.update(status="ranked", track="quick", unranked_reasons=[])
    p = repack(unranked_zip, sandbox / "claim.zip", edit_manifest=edit)
    assert "claims a rank on track quick but" in rejected(p)


# -- tampered results --------------------------------------------------------------------------------
def _edit_predictions(files, width, fn, run="00", consistent=True):
    """Apply ``fn`` to the logits at ``width``; ``consistent``: rewrite the probabilities as their
    sigmoid (as a careful attacker would), else leave them."""
    from scipy.special import expit

    key = f"runs/{run}/test_predictions.csv"
    rows = list(csv.reader(io.StringIO(files[key].decode())))
    for i, r in enumerate(rows[1:], start=1):
        if r[1] == width:  # one classification task: row, width, probability, logit
            logit = fn(i, r[3])
            rows[i] = r[:2] + [repr(float(expit(float(logit)))) if consistent else r[2], logit]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    files[key] = out.getvalue().encode()


def test_probabilities_that_are_not_the_logits_sigmoid(sandbox, good_zip, tracks_file):
    p = repack(good_zip, sandbox / "probs.zip", edit_files=lambda f: _edit_predictions(
        f, "1.0", lambda i, v: repr(float(v) + 0.5), consistent=False))
    assert "the probabilities are not the sigmoid of the logits" in rejected(p, "--tracks", str(tracks_file))


def test_tampered_metric(sandbox, good_zip, tracks_file):
    p = repack(good_zip, sandbox / "metric.zip",
               edit_manifest=lambda m: m["runs"][0]["test"].update({"1.0": m["runs"][0]["test"]["1.0"] + 0.01}))
    line = rejected(p, "--tracks", str(tracks_file))
    assert "run 00: claimed test rocauc@1.0 = " in line and "but the shipped predictions score" in line


def test_tampered_predictions_rescore(sandbox, good_zip, tracks_file):
    p = repack(good_zip, sandbox / "preds.zip",
               edit_files=lambda f: _edit_predictions(f, "0.5", lambda i, v: repr(-float(v))))
    assert "claimed test rocauc@0.5" in rejected(p, "--tracks", str(tracks_file))


def test_tampered_predictions_weights(sandbox, good_zip, tracks_file):
    # a constant shift keeps the ROC-AUC: re-scoring passes, the weights catch it
    p = repack(good_zip, sandbox / "shift.zip",
               edit_files=lambda f: _edit_predictions(f, "1.0", lambda i, v: repr(float(v) + 1e-3)))
    assert ("run 00: the shipped weights do not reproduce the shipped predictions at width 1.0"
            in rejected(p, "--tracks", str(tracks_file)))


def test_nan_prediction(sandbox, good_zip, tracks_file):
    p = repack(good_zip, sandbox / "nanpred.zip",
               edit_files=lambda f: _edit_predictions(f, "1.0", lambda i, v: "nan" if i == 1 else v))
    assert "NaN or inf prediction" in rejected(p, "--tracks", str(tracks_file))


def _edit_weights(files, fn, run="00"):
    key = f"runs/{run}/model.safetensors"
    t = load(files[key])
    fn(t)
    files[key] = save(t)


def test_inf_weights(sandbox, good_zip, tracks_file):
    def fn(t):
        t["head.weight"] = t["head.weight"].clone()
        t["head.weight"][0, 0] = float("inf")
    p = repack(good_zip, sandbox / "inf.zip", edit_files=lambda f: _edit_weights(f, fn))
    assert "tensor 'head.weight' holds NaN or inf" in rejected(p, "--tracks", str(tracks_file))


def test_shape_mismatch(sandbox, good_zip, tracks_file):
    def fn(t):
        t["head.weight"] = torch.zeros(t["head.weight"].shape[0], t["head.weight"].shape[1] + 3)
    p = repack(good_zip, sandbox / "shape.zip", edit_files=lambda f: _edit_weights(f, fn))
    line = rejected(p, "--tracks", str(tracks_file))
    assert "tensor 'head.weight' has shape [1, 19] but the declared model needs [1, 16]" in line


def test_missing_tensor(sandbox, good_zip, tracks_file):
    p = repack(good_zip, sandbox / "lack.zip", edit_files=lambda f: _edit_weights(f, lambda t: t.pop("head.bias")))
    assert "lacks tensor 'head.bias' of the declared model" in rejected(p, "--tracks", str(tracks_file))


def test_oversized_declared_model(sandbox, good_zip, tracks_file):
    """A manifest cannot make verification allocate a huge model."""
    def edit(m):
        for r in m["runs"]:
            r["config"]["run"]["hidden"] = 10**7
    p = repack(good_zip, sandbox / "huge.zip", edit_manifest=edit)
    assert "less than or equal to 4096" in rejected(p, "--tracks", str(tracks_file))


def test_an_unexpected_failure_is_one_line_exit_3(monkeypatch, tmp_path):
    """Every command group shares one error path (fedmol.cli_common.friendly): the label and exit code
    come from the error; what verification did not expect is exit 3, one line, no traceback."""
    from fedmol.leaderboard import verification

    def boom(*args, **kwargs):
        raise RuntimeError("bad\nstate")

    monkeypatch.setattr(verification, "verify", boom)
    res = CliRunner().invoke(leaderboard_app, ["verify", str(tmp_path / "x.zip")])
    assert res.exit_code == 3 and "Traceback" not in res.output
    assert res.stderr.strip() == "error: internal error while verifying: RuntimeError: bad state"
