"""Cold featurization throughput on HIV: bare RDKit vs PyG ``from_smiles`` vs fedmol.

    python benchmarks/featurize_speed.py [--data-dir DIR] [--limit N] [--repeat K]

All three are timed on the SAME rows of HIV.csv (all 41,127 by default; ``--limit N`` takes the
first N), one after the other in this process:

* ``rdkit_parse``      -- ``Chem.MolFromSmiles`` on every row, one core: the floor any
                          RDKit-based featurizer pays per core;
* ``pyg_from_smiles``  -- ``torch_geometric.utils.from_smiles`` row by row, one process, as users
                          call it (it builds one ``Data`` per molecule);
* ``fedmol``           -- ``fedmol.data.featurize.featurize_smiles(rows, n_jobs=all cores)``, cold
                          (no cache exists at this level: every call parses every SMILES), pool
                          start-up included;
* ``fedmol_1core``     -- the same with ``n_jobs=1`` (no pool), for a per-core comparison.

Wall-clock mol/s is reported for each (best of ``--repeat`` runs, default 1), plus CPU seconds per
molecule (this process + its children), the load average and the core count, because on a shared
machine other processes steal cores: when ``load_before`` is well above 0, the multi-core fedmol
number is the one that suffers. Results go to ``benchmarks/results/featurize_speed.json``. The
target is fedmol >= 4x ``from_smiles`` on the same rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATIO = 4.0


def _default_data_dir() -> Path:
    return Path(os.environ.get("FEDMOL_DATA_DIR", REPO.parent / "shared" / "datasets" / "moleculenet"))


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, n: int, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        extra = fn()
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        if best is None or wall < best["seconds"]:
            best = {"seconds": round(wall, 3), "mol_per_s": round(n / wall, 1),
                    "cpu_us_per_mol": round(cpu / n * 1e6, 1), **(extra or {})}
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=_default_data_dir(),
                    help="folder holding HIV.csv (default: $FEDMOL_DATA_DIR or ../shared/datasets/moleculenet)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="time each method K times, keep the fastest")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "featurize_speed.json")
    args = ap.parse_args(argv)

    path = args.data_dir / "HIV.csv"
    if not path.is_file():
        print(f"error: {path} not found; pass --data-dir or set FEDMOL_DATA_DIR", file=sys.stderr)
        return 2
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r["smiles"] for r in csv.DictReader(fh)]
    if args.limit:
        rows = rows[: args.limit]
    n = len(rows)
    n_cores = os.cpu_count() or 1

    import rdkit
    import torch_geometric
    from rdkit import Chem, RDLogger, rdBase
    from torch_geometric.utils import from_smiles

    from fedmol.data.featurize import FEATURIZER_VERSION, featurize_smiles

    RDLogger.DisableLog("rdApp.*")  # from_smiles does this too; keeps the terminal clean
    load_before = os.getloadavg()
    print(f"HIV: {n} SMILES from {path}; {n_cores} cores; load average {load_before[0]:.2f}")

    def rdkit_parse():
        with rdBase.BlockLogs():
            bad = sum(Chem.MolFromSmiles(s) is None for s in rows)
        return {"invalid": bad}

    def pyg():
        failed = 0
        for s in rows:
            try:
                from_smiles(s)  # invalid SMILES silently become an empty graph
            except Exception:  # noqa: BLE001 - e.g. a feature value outside PyG's vocabulary
                failed += 1
        return {"exceptions": failed}

    def fedmol_all():
        f = featurize_smiles(rows, n_jobs=n_cores, progress=False)
        return {"invalid": int((~f.valid).sum()), "n_jobs": n_cores}

    def fedmol_one():
        f = featurize_smiles(rows, n_jobs=1, progress=False)
        return {"invalid": int((~f.valid).sum()), "n_jobs": 1}

    results = {}
    for name, fn in (("rdkit_parse", rdkit_parse), ("pyg_from_smiles", pyg),
                     ("fedmol", fedmol_all), ("fedmol_1core", fedmol_one)):
        results[name] = _timed(fn, n, args.repeat)
        r = results[name]
        print(f"  {name:<16} {r['mol_per_s']:>9,.0f} mol/s   {r['seconds']:>7.2f} s   "
              f"{r['cpu_us_per_mol']:>6.0f} CPU-us/mol")

    ratio = results["fedmol"]["mol_per_s"] / results["pyg_from_smiles"]["mol_per_s"]
    ratio_1core = results["fedmol_1core"]["mol_per_s"] / results["pyg_from_smiles"]["mol_per_s"]
    met = ratio >= TARGET_RATIO
    load_after = os.getloadavg()
    print(f"fedmol ({n_cores} cores) / from_smiles: {ratio:.2f}x  (target >= {TARGET_RATIO:.0f}x: "
          f"{'MET' if met else 'NOT MET'});  fedmol 1 core / from_smiles: {ratio_1core:.2f}x")
    print(f"fedmol ({n_cores} cores) / bare RDKit parse on 1 core: "
          f"{results['fedmol']['mol_per_s'] / results['rdkit_parse']['mol_per_s']:.2f}x;  "
          f"load average after: {load_after[0]:.2f}")

    report = {
        "dataset": "HIV", "rows": n, "limit": args.limit, "repeat": args.repeat,
        "results": results,
        "ratio_fedmol_vs_from_smiles": round(ratio, 2),
        "ratio_fedmol_1core_vs_from_smiles": round(ratio_1core, 2),
        "target_ratio": TARGET_RATIO, "target_met": met,
        "machine": {"cores": n_cores, "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in load_after]},
        "versions": {"rdkit": rdkit.__version__, "torch_geometric": torch_geometric.__version__,
                     "featurizer": FEATURIZER_VERSION},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
