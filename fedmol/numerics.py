"""Which CPU numerics a result was computed with, so that a rerun knows how exactly it can match.

A seeded run is bit-for-bit repeatable on one machine kind and library build, but not across CPU
kinds: BLAS kernels (MKL picks AVX2, AVX-512 or AMX code paths per CPU) sum in different orders and
training amplifies the last-bit differences (measured: the quick suite's FjORD run, test ROC-AUC
0.6247 on the machine kind that committed it, 0.6211 on an AVX-512/AMX Xeon; 0.6157 with MKL
forced to its AVX2 path there; PyTorch documents no reproducibility across platforms).
:func:`numerics` describes what decides it (torch build, its CPU capability, the ISA extensions the
kernels dispatch on, the CPU vendor) and :func:`numerics_id` names it in 12 hex characters;
committed results and leaderboard submissions record it, and a rerun on the same kind is held to
float noise, elsewhere to :data:`CROSS_MACHINE_TOL`.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

#: ISA extensions that change which kernels MKL / oneDNN / ATen run
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_bf16")
#: agreement of a seeded training run's metrics on another CPU kind (differences seen: <= 0.01)
CROSS_MACHINE_TOL = 0.02


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("vendor_id", "unknown"), sorted(f for f in KERNEL_FLAGS if f in flags)


def numerics() -> dict:
    """What decides a run's floating-point results on this machine."""
    import torch

    vendor, flags = _cpuinfo()
    return dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                arch=platform.machine(), vendor=vendor, isa=flags)


def numerics_id(desc: dict | None = None) -> str:
    """12 hex characters naming :func:`numerics` (or ``desc``)."""
    blob = json.dumps(desc if desc is not None else numerics(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def rerun_tolerance(recorded: dict | None, exact: float) -> tuple[float, bool]:
    """``(tolerance, same_kind)`` for comparing a rerun here with results made under ``recorded``
    numerics: ``exact`` on the same kind, :data:`CROSS_MACHINE_TOL` elsewhere or when unrecorded."""
    same = recorded is not None and numerics_id(recorded) == numerics_id()
    return (exact if same else max(exact, CROSS_MACHINE_TOL)), same
