"""Issue 19 (6-9): what `fedmol run` checks before it reads any data or writes anything -- every
hyperparameter's type and range, the seed, --out, the device-profile file, the split file -- each
mistake one line and exit code 2, no run folder left behind."""

import json

import pytest
from typer.testing import CliRunner

from fedmol.cli import app
from fedmol.errors import FedmolError
from fedmol.fl.devices import load_tiers
from fedmol.fl.registry import ALGORITHMS, get_algorithm

runner = CliRunner()


@pytest.fixture
def no_data(monkeypatch):
    """Reading the data (or training) would fail the test: every check must come first."""
    import fedmol.fl.harness as harness

    def forbidden(*a, **k):
        raise AssertionError("the run read its data before checking its inputs")
    monkeypatch.setattr(harness, "build_federation", forbidden)


def run(*args):
    res = runner.invoke(app, ["run", *[str(a) for a in args]])
    return res, " ".join(res.output.split())


@pytest.mark.parametrize("hp,message", [
    ("lr=abc", "fedavg: lr must be a number > 0, got 'abc'"),
    ("lr=-1", "fedavg: lr must be a number > 0, got -1"),
    ("lr=NaN", "fedavg: lr must be a number > 0, got nan"),
    ("batch_size=0", "fedavg: batch_size must be an integer >= 1, got 0"),
    ("batch_size=8.5", "fedavg: batch_size must be an integer >= 1, got 8.5"),
    ("local_epochs=abc", "fedavg: local_epochs must be an integer >= 1, got 'abc'"),
    ("local_epochs=true", "fedavg: local_epochs must be an integer >= 1, got True"),
    ("max_local_steps=0", "fedavg: max_local_steps must be an integer >= 1 or null, got 0"),
    ("hetero=max", "fedavg: hetero must be 'drop' or 'min', got 'max'"),
    ("dp_delta=2", "fedavg: dp_delta must be a number in (0, 1), got 2"),
    ("colour=red", "fedavg: unknown hyperparameter(s) ['colour']"),
])
def test_a_bad_hyperparameter_is_one_line_before_any_data(tmp_path, no_data, hp, message):
    res, out = run("--hp", hp, "--out", tmp_path / "run")
    assert res.exit_code == 2 and out.startswith(f"error: {message}") and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algorithm,hp,message", [
    ("feddf", {"pool_valid_frac": 1.0}, "feddf: pool_valid_frac must be a number in [0, 1), got 1.0"),
    ("feddf", {"pool_sources": 3}, "feddf: pool_sources must be a string or a list of strings or null, got 3"),
    ("fedgen", {"gen_steps": -1, "noise_dim": 0}, "fedgen: gen_steps must be an integer >= 0, got -1 (also wrong: "
                                                  "noise_dim)"),
    ("fedgen", {"ordered_dropout": "yes"}, "fedgen: ordered_dropout must be true or false, got 'yes'"),
    ("heterofl", {"optimizer": "rmsprop"}, "heterofl: optimizer must be 'adam' or 'sgd', got 'rmsprop'"),
    ("fjord", {"kd_temperature": 0}, "fjord: kd_temperature must be a number > 0, got 0"),
    ("fedrescue", {"width_sampling": "two"}, "fedrescue: width_sampling must be one of 'all', 'sandwich', 'one', "
                                             "got 'two'"),
])
def test_every_algorithm_types_its_own_hyperparameters(algorithm, hp, message):
    with pytest.raises(FedmolError) as e:
        get_algorithm(algorithm).check_hparams(hp)
    assert str(e.value) == message


def test_each_schema_covers_exactly_the_defaults_and_accepts_them():
    for name in ALGORITHMS:
        cls = get_algorithm(name)
        assert set(cls.hparam_schema.model_fields) == {**cls.base_defaults, **cls.defaults}.keys(), name
        assert cls.check_hparams({}) == {**cls.base_defaults, **cls.defaults}
    assert get_algorithm("heterofl").check_hparams({"optimizer": "SGD", "lr": 1})["lr"] == 1  # kept as given


def test_values_the_suites_use_pass():
    import tomllib
    from pathlib import Path

    for suite in sorted(Path(__file__).resolve().parents[1].glob("benchmarks/suites/*.toml")):
        doc = tomllib.loads(suite.read_text())
        for label in doc["algorithms"]:
            own = dict(doc.get("algorithm", {}).get(label, {}))
            base = own.pop("base", label)
            get_algorithm(base).check_hparams({**doc.get("hparams", {}), **own})


def test_algorithms_shows_type_range_and_meaning():
    cards = {c["name"]: c for c in json.loads(runner.invoke(app, ["algorithms", "--json"]).stdout)}
    assert cards["fedavg"]["hparam_types"]["lr"] == {"type": "a number > 0",
                                                     "meaning": "learning rate of the partners' local optimizer"}
    assert cards["fedgen"]["hparam_types"]["pooled_bn"]["type"] == "true or false"
    assert all(set(c["hparam_types"]) == set(c["hparams"]) | set(c["shared_hparams"]) for c in cards.values())
    table = " ".join(runner.invoke(app, ["algorithms", "fjord"]).output.split())
    assert "type and range" in table and "'all' or 'served'" in table and "an integer >= 1" in table


@pytest.mark.parametrize("seed", [2**64, 2**63, -1])
def test_a_seed_out_of_range(tmp_path, no_data, seed):
    res, out = run("--seed", seed, "--out", tmp_path / "run")
    assert res.exit_code == 2 and out == f"error: --seed must be an integer in [0, 2**63 - 1], got {seed}"


def test_out_naming_an_existing_file(tmp_path, no_data):
    (tmp_path / "f").write_text("keep me")
    res, out = run("--out", tmp_path / "f")
    assert res.exit_code == 2 and out == f"error: --out {tmp_path / 'f'} is an existing file; a run writes a " \
                                         "folder: name another path"
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.parametrize("body,message", [
    ("[[tier]]\nshare = nan\n", "tier 0: share must be a number > 0, got nan"),
    ("[[tier]]\nshare = inf\n", "tier 0: share must be a number > 0, got inf"),
    ('[[tier]]\nshare = "abc"\n', "tier 0: share must be a number > 0, got 'abc'"),
    ("tier = [1, 2]\n", "a device profile needs [[tier]] tables (each with share, max_width, ...); got tier = [1, 2]"),
    ("tier = []\n", "a device profile needs [[tier]] tables (each with share, max_width, ...); got tier = []"),
    ("[[tier]]\nmax_width = 0.3\n", "tier 0: max_width must be one of the widths 1.0, 0.5, 0.25, 0.125, 0.0625, "
                                    "got 0.3"),
    ("[[tier]]\nshare = 1\n[[tier]]\np_drop = 1.5\n", "tier 1: p_drop must be a number in [0, 1], got 1.5"),
    ("[[tier]]\nspeed = 0\n", "tier 0: speed must be a number > 0, got 0"),
    ("[[tier]]\ncolour = 1\n", "tier 0: unknown key 'colour'; known: max_width, p_drop, p_online, p_truncate, "
                               "p_upload_loss, share, speed"),
    ("[[tier]]\n[extra]\na = 1\n", "unknown key 'extra'; known: tier"),
    ("share = 1\n", "a device profile needs at least one [[tier]] table"),
])
def test_a_bad_device_profile_is_one_line(tmp_path, no_data, body, message):
    prof = tmp_path / "devices.toml"
    prof.write_text(body)
    res, out = run("--devices", prof, "--out", tmp_path / "run")
    assert res.exit_code == 2 and out == f"error: {prof}: {message}"
    assert not (tmp_path / "run").exists()


def test_a_good_device_profile_loads():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "p.toml"
        prof.write_text("[[tier]]\nshare = 3\nmax_width = 1\n[[tier]]\nmax_width = 0.25\nspeed = 0.5\np_online = 0.9\n")
        (a, b) = load_tiers(prof)
    assert (a.share, a.profile.max_width, b.share, b.profile.speed, b.profile.p_online) == (3.0, 1.0, 1.0, 0.5, 0.9)


def test_a_deeply_nested_split_file(tmp_path, no_data):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    res, out = run("--split", deep, "--out", tmp_path / "run")
    assert res.exit_code == 2 and out == f"error: {deep} is nested too deeply to be a fedmol split file"
    for cmd in (["split", "show", str(deep)], ["split", "verify", str(deep)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and "Traceback" not in res.output and "nested too deeply" in res.output
        assert len(res.output.strip().splitlines()) <= 2  # one line (soft-wrapped at most once)
