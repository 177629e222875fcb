import json
from pathlib import Path

import pytest

from fedmol.data.dataset import load_dataset
from fedmol.data.splits import (content_sha256, dataset_scaffolds, make_split, read_split, verify_split,
                                write_split)
from fedmol.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CANONICAL = sorted((REPO / "data_splits").glob("*/*.json"))


@pytest.fixture(scope="module")
def bace():
    return load_dataset("bace", progress=False)


@pytest.fixture(scope="module")
def split_file(bace, tmp_path_factory):
    path = tmp_path_factory.mktemp("splits") / "bace.json"
    write_split(make_split(bace, 4, 0.5, seed=3, progress=False), path)
    return path


def test_split_file_contents(bace, split_file):
    obj = read_split(split_file)
    assert obj["format"] == "fedmol-split/1"
    spec = obj["spec"]
    assert (spec["dataset"], spec["partners"], spec["alpha"], spec["seed"]) == ("bace", 4, 0.5, 3)
    assert spec["source_sha256"] == bace.source_sha256
    assert obj["sha256"] == content_sha256(obj)
    rows = [r for p in obj["partners"] for r in p["train"] + p["valid"]] + obj["test"]
    assert sorted(rows) == sorted(bace.rows.tolist())  # every valid row exactly once, rows not positions
    scaffolds = dict(zip(bace.rows.tolist(), dataset_scaffolds(bace, progress=False)))
    owners = {}
    for k, p in enumerate(obj["partners"]):
        for r in p["train"] + p["valid"]:
            assert owners.setdefault(scaffolds[r], k) == k, "a scaffold is held by two partners"
    assert not {scaffolds[r] for r in obj["test"]} & set(owners), "a test scaffold is held by a partner"
    assert len(obj["report"]["partners"]) == 4


def test_verify_rebuilds_identically(split_file):
    problems, _ = verify_split(split_file, progress=False)
    assert problems == []


def _rewrite(path, tmp_path, mutate, rehash=True):
    obj = json.loads(Path(path).read_text())
    mutate(obj)
    out = tmp_path / "t.json"
    if rehash:
        obj = {k: v for k, v in obj.items() if k != "sha256"}
        write_split(obj, out)
    else:
        out.write_text(json.dumps(obj))
    return out


def test_tampered_content_fails_the_hash(split_file, tmp_path):
    bad = _rewrite(split_file, tmp_path, lambda o: o["test"].pop(), rehash=False)
    with pytest.raises(DataError, match="content sha256 does not match"):
        read_split(bad)


def test_consistently_rehashed_forgery_fails_the_rebuild(split_file, tmp_path):
    def move(o):
        o["partners"][0]["train"].append(o["partners"][1]["train"].pop())
    problems, _ = verify_split(_rewrite(split_file, tmp_path, move), progress=False)
    assert problems == ["rebuilding from the spec gives a different 'partners'"]


@pytest.mark.parametrize("mutate,match", [
    (lambda o: o.update(extra=1), "extra: Extra inputs are not permitted"),
    (lambda o: o["spec"].update(alpha=-1), "spec.alpha"),
    (lambda o: o["partners"][0].update(train="1,2"), "partners.0.train"),
    (lambda o: o.update(format="other/9"), "unsupported split format"),
    (lambda o: o["test"].append(o["test"][0]), "more than one partner/part"),
])
def test_malformed_split_files(split_file, tmp_path, mutate, match):
    with pytest.raises(DataError, match=match):
        read_split(_rewrite(split_file, tmp_path, mutate))


def test_not_json_or_missing(tmp_path):
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_split(tmp_path / "x.json")
    with pytest.raises(DataError, match="split file not found"):
        read_split(tmp_path / "absent.json")


def test_source_sha_mismatch_is_reported(split_file, tmp_path):
    bad = _rewrite(split_file, tmp_path, lambda o: o["spec"].update(source_sha256="a" * 64))
    with pytest.raises(DataError, match="the file found has"):
        verify_split(bad, progress=False)


def test_canonical_set_is_complete_and_intact():
    assert CANONICAL, "data_splits/ holds no canonical split files"
    index = json.loads((REPO / "data_splits" / "index.json").read_text())
    made = {r["file"] for r in index if "error" not in r}
    assert made == {str(p.relative_to(REPO / "data_splits")) for p in CANONICAL}
    assert {r["dataset"] for r in index} >= {"bbbp", "bace", "clintox", "sider", "tox21", "hiv", "esol", "freesolv",
                                             "lipophilicity", "b3db_classification", "b3db_regression"}
    for path in CANONICAL:
        obj = read_split(path)
        s = obj["spec"]
        assert path.name == f"K{s['partners']}-a{s['alpha']:g}-s{s['seed']}.json" and path.parent.name == s["dataset"]
        assert len(obj["partners"]) == s["partners"]


def test_canonical_bbbp_split_verifies():
    problems, _ = verify_split(REPO / "data_splits" / "bbbp" / "K4-a0.1-s0.json", progress=False)
    assert problems == []
