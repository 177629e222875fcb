"""Issue 19, property-based: generated partner CSVs (delimiters, encodings, quoting, whitespace, labels of
every kind, duplicate and empty columns), device-profile files, split files and suite files. The promise:
exit 0 with exactly the counts an independent oracle expects, or exit 2 with one line -- never a
traceback, never a changed molecule. Example counts are capped so the whole file runs in well under a
minute on a 2-core CI machine."""

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedmol.cli import app
from fedmol.errors import FedmolError
from fedmol.fl.devices import load_tiers

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
                database=None)

# SMILES with what fedmol must make of them (after stripping surrounding blanks): valid or not.
VALID = ["CCO", "c1ccccc1", "CC(=O)O", "C[C@H](F)Cl", "[Na+].[Cl-]", "O", "C/C=C/C"]
INVALID = ["Xx", "C1CC", "N(C)(C)(C)(C)C", "", "CC (=O)O", "CC\t(=O)O", "CC\nO", "CC,O", 'C"C']
LABELS = ["", "nan", "NaN", "0", "1", "1.0", " 1 ", "-2.5", "3e2", "inf", "-inf", "1e400", "1e39", "Infinity",
          "abc", "NA"]
COMMON_LABELS = ["", "0", "1", "1.0", " 1 ", "0", "1"]  # drawn most of the time, so many tables are accepted
NON_FINITE = {"inf", "-inf", "1e400", "1e39", "infinity"}


def _number(text: str):
    """The oracle's reading of a label cell: None (empty), float, or "bad" (not a number)."""
    t = text.strip()
    if t == "" or t.lower() == "nan":
        return None
    if t.lower() in ("abc", "na"):
        return "bad"
    return float(t)


def one_line_error(res) -> str:
    """The single line of a refused command (asserts: exit 2, one line, no traceback)."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    return lines[0]


LABEL = st.one_of(st.sampled_from(COMMON_LABELS), st.sampled_from(COMMON_LABELS), st.sampled_from(LABELS))


@st.composite
def partner_tables(draw):
    n = draw(st.integers(1, 8))
    rows = [dict(smiles=draw(st.sampled_from(VALID + INVALID)),
                 pad=draw(st.sampled_from(["", " ", "\t", "  "])),
                 y=draw(LABEL), z=draw(LABEL),
                 note=draw(st.sampled_from(["", "a", "é", "x,y"]))) for _ in range(n)]
    return dict(rows=rows, task=draw(st.sampled_from(["classification", "regression"])),
                targets=draw(st.sampled_from(["y", "y,z"])),
                suffix=draw(st.sampled_from([".csv", ".tsv"])),
                wrong_delimiter=draw(st.integers(0, 7)) == 0,
                encoding=draw(st.sampled_from(["utf-8"] * 5 + ["utf-8-sig", "latin-1", "utf-16"])),
                quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])),
                duplicate=draw(st.sampled_from([None, None, None, None, "y", "note"])),
                empty_column=draw(st.booleans()))


def write_table(t, folder: Path) -> Path:
    sep = "\t" if t["suffix"] == ".tsv" else ","
    if t["wrong_delimiter"]:
        sep = ";"
    header = ["smiles", "y", "z", "note"] + ([""] if t["empty_column"] else [])
    if t["duplicate"]:
        header.append(t["duplicate"])
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, quoting=t["quoting"], lineterminator="\n")
    w.writerow(header)
    for r in t["rows"]:
        cells = [r["pad"] + r["smiles"] + r["pad"], r["y"], r["z"], r["note"]]
        w.writerow(cells + [""] * (len(header) - len(cells)))
    path = folder / f"partner{t['suffix']}"
    path.write_bytes(buf.getvalue().encode(t["encoding"]))
    return path


def expected(t) -> tuple[str, object]:
    """("error", fragment of the message) or ("ok", (rows, valid, invalid, invalid_labels, valid SMILES))."""
    if t["encoding"] == "utf-16":
        return "error", "is UTF-16 text"
    if t["encoding"] == "latin-1" and any(r["note"] == "é" for r in t["rows"]):
        return "error", "is not UTF-8 text"
    if t["wrong_delimiter"]:  # one column named "smiles;y;z;note", or a row with a comma: more fields than names
        return "error", ("no SMILES column 'smiles'", "more fields than the header has names", "could not read")
    if t["duplicate"]:
        return "error", f"duplicate column name(s) ['{t['duplicate']}']"
    targets = t["targets"].split(",")
    values = {c: [_number(r[c]) for r in t["rows"]] for c in targets}
    for c in targets:
        if "bad" in values[c]:
            return "error", f"column '{c}' has"
        if t["task"] == "classification" and any(v is not None and v not in (0.0, 1.0) for v in values[c]):
            return "error", f"classification column '{c}' must hold 0/1"
    for c in targets:
        if all(v is None for v in values[c]):
            return "error", f"target column(s) ['{c}'] hold no label in any row"
    smiles_ok = [r["smiles"] in VALID for r in t["rows"]]
    label_bad = [any(values[c][i] is not None and not (math.isfinite(values[c][i]) and abs(values[c][i]) < 3.4e38)
                     for c in targets) for i in range(len(t["rows"]))]
    valid = [ok and not bad for ok, bad in zip(smiles_ok, label_bad)]
    if not any(valid):
        return "error", f"no valid molecule in {len(valid)} rows"
    for c in targets:
        if all(values[c][i] is None for i in range(len(valid)) if valid[i]):
            return "error", f"target column(s) ['{c}'] hold no label on any valid molecule"
    return "ok", (len(valid), sum(valid), len(valid) - sum(valid), sum(label_bad),
                  [r["smiles"] for r, v in zip(t["rows"], valid) if v])


@settings(FAST, max_examples=120)
@given(t=partner_tables())
def test_partner_csv_counts_or_one_line(t):
    with tempfile.TemporaryDirectory() as d:
        path = write_table(t, Path(d))
        res = runner.invoke(app, ["featurize", "--csv", str(path), "--smiles-col", "smiles", "--target-cols",
                                  t["targets"], "--task", t["task"], "--json", "--jobs", "1"])
        kind, want = expected(t)
        event(f"{kind}: {want if kind == 'error' else 'counts'}"[:60])
        if kind == "error":
            line = one_line_error(res)
            assert any(w in line for w in ([want] if isinstance(want, str) else want)), (line, want)
            return
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        rows, valid, invalid, invalid_labels, smiles = want
        assert (out["rows"], out["valid"], out["invalid"], out["invalid_labels"]) == (rows, valid, invalid,
                                                                                   invalid_labels)
        assert len(out["invalid_rows"]) == invalid
        from fedmol.data.dataset import load_dataset
        ds = load_dataset(csv=path, smiles_col="smiles", target_cols=t["targets"], task=t["task"], progress=False)
        assert ds.smiles == smiles  # every kept molecule exactly as written (only surrounding blanks stripped)


# -- device-profile files ---------------------------------------------------------------------------
TIER_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3),
                        st.sampled_from(["abc", "1.0", True]), st.lists(st.integers(0, 2), max_size=2))
KEYS = ["share", "max_width", "speed", "p_online", "p_drop", "p_truncate", "p_upload_loss", "colour"]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    return json.dumps(v)


def _tier_ok(tier: dict) -> bool:
    from fedmol.models.slicing import WIDTHS

    for k, v in tier.items():
        if k == "colour" or isinstance(v, (bool, str, list)) or not math.isfinite(v):
            return False
        if (k in ("share", "speed") and not v > 0) or (k.startswith("p_") and not 0 <= v <= 1):
            return False
        if k == "max_width" and not any(math.isclose(v, w) for w in WIDTHS):
            return False
    return True


@FAST
@given(tiers=st.lists(st.dictionaries(st.sampled_from(KEYS), TIER_VALUES, max_size=3), max_size=3),
       shape=st.sampled_from(["tables", "array", "scalar"]))
def test_device_profiles_load_or_one_line(tiers, shape):
    if shape == "tables":
        text = "".join("[[tier]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in t.items()) for t in tiers)
    elif shape == "array":
        text = f"tier = {json.dumps([len(t) for t in tiers])}\n"
    else:
        text = "tier = 3\n"
    ok = shape == "tables" and bool(tiers) and all(_tier_ok(t) for t in tiers)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "devices.toml"
        path.write_text(text)
        if ok:
            got = load_tiers(path)
            assert [g.share for g in got] == [float(t.get("share", 1.0)) for t in tiers]
            assert [g.profile.max_width for g in got] == [float(t.get("max_width", 1.0)) for t in tiers]
        else:
            with pytest.raises(FedmolError) as e:
                load_tiers(path)
            assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
        with pytest.MonkeyPatch.context() as mp:
            import fedmol.fl.harness as harness

            mp.setattr(harness, "build_federation", _no_data)
            res = runner.invoke(app, ["run", "--devices", str(path), "--out", str(Path(d) / "run")])
        if ok:
            assert isinstance(res.exception, _Reached)
        else:
            one_line_error(res)
        assert not (Path(d) / "run").exists()


class _Reached(Exception):
    """Every input check passed and the run went on to read its data."""


def _no_data(*a, **k):
    raise _Reached


# -- split files ------------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(edit=st.sampled_from(["drop", "replace", "nest", "garbage"]), key=st.sampled_from(
    ["format", "spec", "partners", "test", "report", "sha256"]), value=JSON, depth=st.integers(1, 50_000))
def test_split_files_show_or_one_line(edit, key, value, depth):
    obj = json.loads((REPO / "data_splits" / "bace" / "K4-a0.1-s0.json").read_text())
    if edit == "drop":
        obj.pop(key)
        text = json.dumps(obj)
    elif edit == "replace":
        obj[key] = value
        text = json.dumps(obj)
    elif edit == "nest":
        text = "[" * depth + "]" * depth
    else:
        text = json.dumps(value)[: depth % 40]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "split.json"
        path.write_text(text)
        res = runner.invoke(app, ["split", "show", str(path), "--json"])
        if res.exit_code == 0:  # only an unchanged split file (a replaced key with its own value) is shown
            assert json.loads(res.stdout)["sha256"] == json.loads(text)["sha256"]
        else:
            one_line_error(res)


# -- suite files ------------------------------------------------------------------------------------
def _toml(doc: dict, prefix: str = "") -> str:
    """A small TOML writer for suite documents (scalars and lists first, then tables)."""
    flat = "".join(f"{k} = {_toml_value(v) if not isinstance(v, list) else '[' + ', '.join(map(_toml_value, v)) + ']'}\n"
                   for k, v in doc.items() if not isinstance(v, dict))
    tables = "".join(f"[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.") for k, v in doc.items() if isinstance(v, dict))
    return flat + tables


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(key=st.sampled_from(["alphas", "algorithms", "devices", "datasets", "hparams.lr", "hparams.batch_size",
                            "hparams.local_epochs", "algorithm.feddf.pool_size", "reference.min_epochs", "threads",
                            "colour"]),
       value=st.sampled_from([math.nan, math.inf, "abc", [], -1, [1, 2], ["fedavg"], 0, True, 0.5]))
def test_suite_files_load_or_one_line(key, value):
    _suite_loads_or_one_line(key, value)


@pytest.mark.parametrize("key,value", [("run.partners", math.nan), ("run.partners", "abc"), ("seeds", math.inf),
                                       ("run.rounds", "abc")])
def test_suite_run_values_are_typed(key, value):
    _suite_loads_or_one_line(key, value, accepted_is_wrong=True)


def _suite_loads_or_one_line(key, value, accepted_is_wrong=False):
    import tomllib

    doc = tomllib.loads((REPO / "benchmarks" / "suites" / "quick.toml").read_text())
    *path, name = key.split(".")
    table = doc
    for part in path:
        table = table[part]
    table[name] = value
    with tempfile.TemporaryDirectory() as d:
        suite = Path(d) / "suite.toml"
        suite.write_text(_toml(doc))
        res = runner.invoke(app, ["bench", str(suite), "--report-only", "--no-references", "--out", str(Path(d) / "o")])
        if res.exit_code != 0 or accepted_is_wrong:
            one_line_error(res)
