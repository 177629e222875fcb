"""FedDF's faster server step gives the old step's results bit for bit (issue 22, item 4).

The old path is the one ``benchmarks/perf_feddf_server.py`` measures (a model built per teacher, per-tensor
Adam, ``deepcopy`` checkpoints). The order of every float sum is unchanged, so the tolerance is zero:
metrics, students (weights and BatchNorm buffers) and the global RNG state after the step are equal.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import fedmol.fl.feddf as feddf
from fedmol.fl.algorithm import PartnerInfo
from fedmol.fl.devices import DeviceProfile
from fedmol.fl.message import Message
from fedmol.fl.public_pool import PublicPool

from fl_graphs import SMILES

REPO = Path(__file__).resolve().parents[2]
TINY = dict(name="gin", num_tasks=2, hidden=16, layers=2, task_type="classification", dropout=0.5)
CAPS = (1.0, 0.5, 0.25, 0.125, 1.0, 0.5)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("perf_feddf_server", REPO / "benchmarks" / "perf_feddf_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pool() -> PublicPool:
    return PublicPool.from_smiles(SMILES + SMILES[::-1])  # 32 molecules: 24 to distil on, 8 held out


def _replies(algo: feddf.FedDF, partners: list[PartnerInfo], rnd: int) -> list[tuple[PartnerInfo, Message]]:
    """Each partner's reply: the model it was sent plus seeded noise (a stand-in for local training)."""
    gen = torch.Generator().manual_seed(100 + rnd)
    out = []
    for p in partners:
        msg = algo.configure(rnd, p)
        arrays = {k: v + 0.2 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                  for k, v in msg.arrays.items()}
        out.append((p, Message(arrays=arrays, metrics={"n_train": float(p.n_train)})))
    return out


def test_server_step_equals_the_old_one_bit_for_bit(bench, pool):
    partners = [PartnerInfo(k, 10 + k, DeviceProfile(c, speed=c)) for k, c in enumerate(CAPS)]
    hp = dict(distill_steps=12, eval_every=3, patience=6, distill_batch=8, pool_valid_frac=0.25)
    algo = feddf.FedDF(TINY, hp, seed=0)
    algo.init(partners)
    algo.pool = pool
    assert algo.widths() == (1.0, 0.5, 0.25, 0.125)
    for rnd in range(2):  # the second round starts from the distilled students
        algo.aggregate(rnd, _replies(algo, partners, rnd))
        runs = {}
        for which in ("old", "new"):
            _, metrics, twin = bench.run_server_step(algo, rnd, which)
            runs[which] = (metrics, twin, torch.get_rng_state())
        (m_old, old, rng_old), (m_new, new, rng_new) = runs["old"], runs["new"]
        assert m_old == m_new and m_new["teachers"] == len(partners)
        assert all(m_new[f"distill_steps@{g!r}"] > 0 for g in algo.groups)
        assert bench.same_students(old, new) and torch.equal(rng_old, rng_new)
        kept = {g: m_new[f"distill_best_step@{g!r}"] for g in algo.groups}
        assert min(kept.values()) == 0 < max(kept.values())  # both outcomes: the FedAvg start and a distilled step
        for g, best in kept.items():
            start, end = algo.students[g].state_dict(), new.students[g].state_dict()
            assert all(torch.equal(end[k], v) for k, v in start.items()) == (best == 0), g
        algo.__dict__.update(new.__dict__)


def test_teacher_outputs_reusing_one_model_per_width_equal_fresh_models(bench, pool):
    """Teachers loaded one after another into the same model give what a model built per teacher gives."""
    teachers = []
    for seed, width in enumerate((1.0, 0.5, 1.0, 0.25, 0.5, 1.0)):
        torch.manual_seed(seed)
        model = feddf.build(**{**TINY, "width": width})
        model.train()
        model(next(iter(feddf.make_loader(pool, 16))), width=width)  # BatchNorm buffers differ per teacher
        teachers.append((width, model.state_dict()))
    new = feddf.teacher_outputs(TINY, teachers, pool, batch_size=10)
    old = bench.old_teacher_outputs(TINY, teachers, pool, batch_size=10)
    assert len(new) == len(old) == len(teachers)
    assert all(torch.equal(a, b) for a, b in zip(new, old))
