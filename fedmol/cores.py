"""How many CPU cores a job may use now: the cores this process may run on, minus what other
processes keep busy (the 1-minute load average). ``fedmol bench --workers auto`` runs one worker
per free core, and featurization pools only over free cores: a 2-worker pool that got one core
(another session held the other) ran at a median 0.64-0.97 of one core's speed on 250-1,000
molecules (``benchmarks/featurize_pool_crossover.py``, ``docs/featurize.md``).
"""

from __future__ import annotations

import os


def free_cores() -> tuple[int, int, float]:
    """``(cores, free, load)``: the cores this process may run on, how many of them are free (cores
    minus the 1-minute load average, rounded; at least 1) and that load."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cores, max(1, cores - round(load)), load
