"""The CPU numerics a result records, and the tolerance a rerun is held to."""

from fedmol.numerics import CROSS_MACHINE_TOL, numerics, numerics_id, rerun_tolerance


def test_numerics_describe_this_machine_and_name_it_stably():
    import torch

    d = numerics()
    assert d["torch"] == torch.__version__ and d["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert numerics_id() == numerics_id(d) and len(numerics_id()) == 12
    assert numerics_id({**d, "isa": d["isa"] + ["amx_tile_x"]}) != numerics_id(d)


def test_a_rerun_is_exact_on_the_same_kind_and_loose_elsewhere():
    here = numerics()
    assert rerun_tolerance(here, 1e-6) == (1e-6, True)
    other = {**here, "cpu_capability": "NOT-" + here["cpu_capability"]}
    assert rerun_tolerance(other, 1e-6) == (CROSS_MACHINE_TOL, False)
    assert rerun_tolerance(None, 1e-6) == (CROSS_MACHINE_TOL, False)  # not recorded: treated as another kind
