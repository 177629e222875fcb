"""FedDF (Lin et al. 2020) and its public distillation pool: small, fast checks (tiny models)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.loader import DataLoader

import fedmol.fl.feddf as feddf_mod
from fedmol.fl.algorithm import PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.feddf import FedDF, avg_logits, distill, distill_loss, teacher_outputs
from fedmol.fl.message import Message
from fedmol.fl.public_pool import PublicPool, build_public_pool, canonical_key
from fedmol.models import build, slicing

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "[NH3+]CC(=O)[O-]",
          "C1CC2CCC1C2", "ClC(Cl)(Cl)Br", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "O=C1CCCN1", "c1ccc2c(c1)ccc1ccccc12",
          "CC#N", "CCN(CC)CC", "OC(=O)c1ccccc1", "CCCCCCCC", "c1ccncc1", "CC(C)O", "NC(=O)N", "CCOC(=O)C",
          "c1ccc(cc1)Cl", "OCC(O)CO", "CC(=O)O", "c1cc[nH]c1", "C1CCOC1", "CS(=O)C"]
TINY = dict(name="gin", num_tasks=2, hidden=16, layers=2, task_type="classification", dropout=0.0)


@pytest.fixture(scope="module")
def tiny_pool() -> PublicPool:
    return PublicPool.from_smiles(SMILES)


def _table_smiles(data_dir, name: str) -> list[str]:
    from fedmol.data.dataset import read_table
    from fedmol.data.registry import get_info
    from fedmol.data.sources import resolve_file

    info = get_info(name)
    path, _ = resolve_file(info, data_dir, allow_download=False, progress=False)
    return read_table(info, path)[0]


def _keys(smiles) -> tuple[set, set]:
    """(isomeric canonical, non-isomeric canonical) SMILES, computed independently of the pool code."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    iso, flat = set(), set()
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is not None:
            iso.add(Chem.MolToSmiles(m))
            flat.add(Chem.MolToSmiles(m, isomericSmiles=False))
    RDLogger.EnableLog("rdApp.*")
    return iso, flat


# ---------------------------------------------------------------------------------- the public pool
def test_pool_disjoint_from_federated_dataset_and_deterministic(data_dir):
    kw = dict(sources="b3db_classification,bace", size=300, data_dir=str(data_dir))
    pool = build_public_pool("bbbp", seed=0, **kw)
    again = build_public_pool("bbbp", seed=0, **kw)
    other = build_public_pool("bbbp", seed=1, **kw)
    assert len(pool) == 300 and pool.smiles == again.smiles and list(pool.sources) == list(again.sources)
    assert pool.smiles != other.smiles
    # B3DB overlaps BBBP heavily: the de-duplication must have been exercised
    assert pool.report["removed_overlap"] > 0 and pool.report["skipped"] == {}
    bbbp = _table_smiles(str(data_dir), "bbbp")
    iso, flat = _keys(bbbp)
    p_iso, p_flat = _keys(pool.smiles)
    assert not (set(pool.smiles) & {s.strip() for s in bbbp})
    assert not (p_iso & iso) and not (p_flat & flat)
    assert len(p_flat) == len(pool)  # no molecule twice
    assert set(pool.sources) <= {"b3db_classification", "bace"}
    g = pool[0]
    assert getattr(g, "y", None) is None and int(g.mol_id) == 0 and g.x.shape[1] == 9


def test_pool_excludes_given_smiles_by_canonical_form_and_skips_unavailable(monkeypatch, tmp_path):
    from rdkit import Chem

    monkeypatch.delenv("FEDMOL_DATA_DIR", raising=False)
    monkeypatch.setenv("FEDMOL_CACHE_DIR", str(tmp_path))  # nothing downloaded there
    reg = _table_smiles(None, "b3db_regression")
    # the same molecules written differently (random atom order): exact text differs, canonical does not
    rng = np.random.default_rng(0)
    picked = [reg[i] for i in rng.choice(len(reg), 100, replace=False)]
    rewritten = [Chem.MolToSmiles(Chem.MolFromSmiles(s), doRandom=True) for s in picked]
    pool = build_public_pool(exclude_smiles=rewritten, sources="bbbp,b3db_regression", size=10_000)
    assert "bbbp" in pool.report["skipped"] and list(pool.report["sources"]) == ["b3db_regression"]
    assert pool.report["excluded_unavailable"] == [] and pool.report["excluded_smiles_given"] == len(_keys(picked)[1])
    # an excluded dataset that is not available: nothing could be removed for it, and the report says so
    assert build_public_pool("bbbp", sources="b3db_regression", size=5).report["excluded_unavailable"] == ["bbbp"]
    assert not (_keys(pool.smiles)[1] & _keys(picked)[1])
    assert len(pool) < len(reg) - 90


@pytest.fixture(scope="module")
def shipped() -> dict[str, tuple[list[str], list[str | None]]]:
    """Each default pool source file, read independently: (stripped SMILES, stereo-free key) per row."""
    import csv

    from rdkit import Chem, RDConfig, RDLogger

    from fedmol.fl.public_pool import DEFAULT_SOURCES, SHIPPED

    RDLogger.DisableLog("rdApp.*")
    out = {}
    for name in DEFAULT_SOURCES:
        path = f"{RDConfig.RDDataDir}/{SHIPPED[name]}"
        with open(path, newline="") as f:
            smi = [r[0].strip() for r in csv.reader(f)] if path.endswith(".csv") else [ln.split()[0] for ln in f]
        mols = [Chem.MolFromSmiles(x) for x in smi]
        out[name] = (smi, [Chem.MolToSmiles(m, isomericSmiles=False) if m is not None else None for m in mols])
    RDLogger.EnableLog("rdApp.*")
    return out


@pytest.mark.parametrize("dataset", ["b3db_classification", "bbbp"])
def test_default_pool_independent_of_data_folder_and_disjoint(dataset, shipped, data_dir, monkeypatch, tmp_path):
    import shutil

    import fedmol.fl.public_pool as pp
    from fedmol.data.registry import get_info

    def pool_now(folder):  # as the harness builds it: bind_dataset(name, data_dir=cfg.data_dir)
        pp._load.cache_clear()
        algo = FedDF(TINY, dict(pool_size=300), seed=3)
        algo.bind_dataset(dataset, None, data_dir=folder)
        return algo.ensure_pool()

    with_folder = pool_now(str(data_dir))
    from fedmol.data.sources import cache_dir

    shutil.copytree(cache_dir() / "public_pool", tmp_path / "public_pool")  # the canonical keys (by file sha256)
    monkeypatch.delenv("FEDMOL_DATA_DIR", raising=False)
    monkeypatch.setenv("FEDMOL_CACHE_DIR", str(tmp_path))
    if dataset == "bbbp":  # the run needs BBBP's file: here from fedmol's download cache, no data folder
        (tmp_path / "raw").mkdir()
        shutil.copy(data_dir / get_info("bbbp").file, tmp_path / "raw")
    without = pool_now(None)
    assert without.smiles == with_folder.smiles and without.sources == with_folder.sources
    assert list(without.rows) == list(with_folder.rows) and without.report == with_folder.report
    rep = with_folder.report
    assert len(with_folder) == 300 and rep["skipped"] == {} and rep["excluded"] == [dataset]
    assert rep["excluded_unavailable"] == []
    assert list(rep["sources"]) == ["rdkit_nci5k", "rdkit_wehi10k"]
    assert rep["per_source"] == {n: with_folder.sources.count(n) for n in rep["sources"]}
    assert rep["sources"] == {n: len(smi) for n, (smi, _) in shipped.items()}
    # no molecule of the federated dataset: exact text, isomeric and stereo-free canonical SMILES
    fed = [x.strip() for x in _table_smiles(str(data_dir), dataset) if isinstance(x, str)]
    iso, flat = _keys(fed)
    p_iso, p_flat = _keys(with_folder.smiles)
    assert not (set(with_folder.smiles) & set(fed)) and not (p_iso & iso) and not (p_flat & flat)
    # every source row that is a federated molecule is reported as removed, and only those
    expected = {n: [r for r, (x, k) in enumerate(zip(smi, keys)) if k is not None and (x in fed or k in flat)]
                for n, (smi, keys) in shipped.items()}
    assert rep["overlap_rows"] == expected and rep["removed_overlap"] == sum(map(len, expected.values())) > 0
    for src, row, smi in zip(with_folder.sources, with_folder.rows, with_folder.smiles):
        assert shipped[src][0][row] == smi


def test_feddf_pool_uses_bound_dataset(data_dir):
    free = _table_smiles(str(data_dir), "freesolv")
    algo = FedDF(dict(TINY, num_tasks=1, task_type="regression"),
                 dict(pool_sources="bace,freesolv", pool_size=5000, pool_data_dir=str(data_dir)), seed=0)
    algo.bind_dataset("bace", smiles=free[:200])  # the organiser names the dataset (+ extra SMILES)
    pool = algo.ensure_pool()
    assert pool.report["skipped"] == {"bace": "is the federated dataset"} and set(pool.sources) == {"freesolv"}
    assert not (_keys(pool.smiles)[1] & _keys(free[:200])[1]) and len(pool) > 300
    assert "bound: bace" in pool.report["exclusion"] and algo.ensure_pool() is pool


# ---------------------------------------------------------------------------------- teacher and loss
def test_avg_logits_is_the_mean_of_client_logits(tiny_pool):
    a = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    b = torch.tensor([[-1.0, 2.0], [1.0, 4.0]])
    c = torch.tensor([[0.0, 3.0], [2.0, -1.0]])
    assert torch.allclose(avg_logits([a, b, c]), torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    # on real client models over the pool (rows indexed by mol_id)
    states = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        states.append((1.0, build(**TINY).state_dict()))
    outs = teacher_outputs(TINY, states, tiny_pool)
    by_hand = []
    for _, st in states:
        m = build(**TINY)
        m.load_state_dict(st)
        m.eval()
        with torch.no_grad():
            by_hand.append(m(next(iter(DataLoader(tiny_pool, batch_size=len(tiny_pool))))))
    assert torch.allclose(avg_logits(outs), sum(by_hand) / 3, atol=1e-6)


def test_distill_loss_matches_hand_computed_kl():
    teacher = torch.tensor([[0.0, math.log(4.0)]])  # p = 0.5, 0.8
    student = torch.tensor([[math.log(3.0), 0.0]])  # q = 0.75, 0.5
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl2 = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    got = distill_loss(student, teacher, "classification")
    assert got.item() == pytest.approx((kl1 + kl2) / 2, abs=1e-6)
    assert kl1 == pytest.approx(0.5 * math.log(4 / 3))
    assert distill_loss(teacher, teacher, "classification").item() == pytest.approx(0.0, abs=1e-7)
    # temperature: KL of the softened distributions times T^2
    t2 = distill_loss(student * 2, teacher * 2, "classification", temperature=2.0)
    assert t2.item() == pytest.approx(4 * (kl1 + kl2) / 2, abs=1e-6)
    reg = distill_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]]), "regression")
    assert reg.item() == pytest.approx((1 + 4) / 2)


# ---------------------------------------------------------------------------------- early stopping
def _scripted(scores_by_step, eval_every, snapshots):
    """A fake validation: the score at each evaluation step from a script; records the weights seen."""
    calls = []

    def validate(model):
        step = len(calls) * eval_every
        calls.append(step)
        snapshots[step] = copy.deepcopy(model.state_dict())
        return scores_by_step(step)

    return validate, calls


@pytest.mark.parametrize("eval_every,patience,best", [(5, 12, 15), (4, 8, 8), (3, 9, 0)])
def test_early_stopping_keeps_best_checkpoint(tiny_pool, eval_every, patience, best):
    torch.manual_seed(0)
    student = build(**TINY)
    targets = torch.randn(len(tiny_pool), 2) * 3
    snapshots: dict[int, dict] = {}
    # improves until `best`, then worsens steadily
    validate, calls = _scripted(lambda s: 1.0 - 0.01 * s if s <= best else 1.0 - 0.01 * best + 0.01 * (s - best),
                                eval_every, snapshots)
    res = distill(student, 1.0, tiny_pool, targets, validate, task_type="classification", steps=1000,
                  eval_every=eval_every, patience=patience, batch_size=8, seed=0)
    assert res["best_step"] == best
    assert patience <= res["steps"] - best < patience + eval_every
    assert res["steps"] == calls[-1] and res["steps"] < 1000
    final = student.state_dict()
    for k, v in snapshots[best].items():
        assert torch.equal(final[k], v), k
    last = snapshots[res["steps"]]
    assert any(not torch.equal(final[k], last[k]) for k in final if final[k].is_floating_point())


def test_distill_without_validation_runs_all_steps_and_learns(tiny_pool):
    torch.manual_seed(0)
    student = build(**TINY)
    targets = torch.randn(len(tiny_pool), 2) * 3
    full = next(iter(DataLoader(tiny_pool, batch_size=len(tiny_pool))))

    def loss_now():
        student.eval()
        with torch.no_grad():
            return distill_loss(student(full), targets, "classification").item()

    before = loss_now()
    res = distill(student, 1.0, tiny_pool, targets, None, task_type="classification", steps=60, eval_every=10,
                  patience=10, batch_size=8, lr=1e-2, seed=0)
    assert res["steps"] == 60 and res["best_step"] == 60
    assert loss_now() < before


# ---------------------------------------------------------------------------------- heterogeneous groups
def test_tiered_devices_one_student_per_group_starting_from_group_fedavg(tiny_pool, monkeypatch):
    caps = [1.0, 0.5, 0.25, 0.125, 0.5]
    partners = [PartnerInfo(k, 10 * (k + 1), DeviceProfile(c, speed=c)) for k, c in enumerate(caps)]
    algo = FedDF(TINY, dict(distill_steps=10, eval_every=5, patience=5, distill_batch=8), seed=0)
    algo.init(partners)
    algo.pool = tiny_pool
    assert algo.widths() == (1.0, 0.5, 0.25, 0.125)
    before = {g: copy.deepcopy(m.state_dict()) for g, m in algo.students.items()}
    # the narrow students start as slices of the one seeded full-width model
    for g in (0.5, 0.25, 0.125):
        for k, v in slicing.sub_state_dict(algo.students[1.0], g).items():
            assert torch.equal(v, before[g][k])

    gen = torch.Generator().manual_seed(0)
    replies = []
    for p in partners:
        msg = algo.configure(0, p)
        assert msg.config["width"] == p.device.max_width and "distill_steps" not in msg.config["hp"]
        for k, v in slicing.sub_state_dict(algo.students[p.device.max_width], p.device.max_width).items():
            assert torch.equal(msg.arrays[k], v)
        arrays = {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 1
                  for k, v in msg.arrays.items()}
        replies.append((p, Message(arrays=arrays, metrics={"n_train": float(p.n_train)})))
    expected = {g: slicing.aggregate_nested(before[g], [(m.arrays, m.metrics["n_train"]) for p, m in replies
                                                        if p.device.max_width == g]) for g in algo.groups}

    starts, n_teachers = {}, []
    real_distill, real_teachers = feddf_mod.distill, feddf_mod.teacher_outputs

    def spy_distill(student, width, *a, **kw):
        starts[width] = copy.deepcopy(student.state_dict())
        return real_distill(student, width, *a, **kw)

    def spy_teachers(cfg, teachers, pool, *a, **kw):
        n_teachers.append(sorted(w for w, _ in teachers))
        return real_teachers(cfg, teachers, pool, *a, **kw)

    monkeypatch.setattr(feddf_mod, "distill", spy_distill)
    monkeypatch.setattr(feddf_mod, "teacher_outputs", spy_teachers)
    algo.aggregate(0, replies)
    metrics = algo.server_step(0)

    assert n_teachers == [sorted(caps)]  # every client model of every group teaches
    assert sorted(starts) == [0.125, 0.25, 0.5, 1.0]
    for g in algo.groups:
        for k, v in expected[g].items():
            assert torch.allclose(starts[g][k], v, atol=1e-6), (g, k)
        m = algo.eval_model(g)
        assert m is algo.students[g] and m.width == g
        assert f"distill_steps@{g!r}" in metrics and 0 <= metrics[f"distill_best_step@{g!r}"] <= 10
    assert metrics["teachers"] == 5.0 and metrics["pool_size"] == len(tiny_pool)


# ---------------------------------------------------------------------------------- end to end
def test_run_federated_two_rounds_finite(data_dir, tmp_path):
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated

    hp = dict(pool_sources="esol,bace", pool_size=150, distill_steps=20, eval_every=5, patience=10,
              distill_batch=32)
    cfg = RunConfig(algorithm="feddf", dataset="freesolv", partners=3, devices="tiered", rounds=2, hidden=16,
                    layers=2, hparams=hp)
    res = run_federated(cfg, tmp_path, progress=False)
    assert set(res["test"]) == {"1.0", "0.5", "0.25"}
    assert all(math.isfinite(v) for v in res["test"].values())
    assert all(math.isfinite(v) for v in res["valid"].values())
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert len(rows) == 2
    for w in ("1.0", "0.5", "0.25"):
        steps = rows[f"server_distill_steps@{w}"]
        assert (steps > 0).all() and (steps <= 20).all()
        assert (rows[f"server_distill_best_step@{w}"] <= steps).all()
    assert (rows["server_pool_size"] == 150).all()
    # no pool_exclude and no binding: every regression x1 dataset (freesolv among them) was excluded
    free = _keys(_table_smiles(str(data_dir), "freesolv"))[1]
    pool = build_public_pool(["esol", "freesolv", "lipophilicity", "b3db_regression"], sources="esol,bace", size=150,
               data_dir=str(data_dir))
    assert set(pool.sources) == {"bace"} and not ({canonical_key(s) for s in pool.smiles} & free)
    # the run's pool, as config.json and summary.json record it
    config = json.loads((tmp_path / "config.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    rep = config["public_pool"]
    assert rep == summary["public_pool"] and rep["exclusion"] == "bound: freesolv"
    assert rep["excluded"] == ["freesolv"] and rep["size"] == 150 and sum(rep["per_source"].values()) == 150
    esol, bace = (_table_smiles(str(data_dir), n) for n in ("esol", "bace"))
    assert rep["sources"] == {"esol": len(esol), "bace": len(bace)}
    assert rep["overlap_rows"]["esol"] == [r for r, x in enumerate(esol) if _keys([x])[1] & free] != []
    assert rep["overlap_rows"]["bace"] == [] and rep["source_files"]["esol"]["file"] == "delaney-processed.csv"
