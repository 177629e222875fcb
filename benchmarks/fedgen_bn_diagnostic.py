"""Diagnostic for the standard suite's analysis: is FedGen's weak narrow-width model a BatchNorm problem?

Loads each finished FedGen run of the standard suite (``benchmarks/results/standard/runs``, clean links),
scores its final model at widths 1/8 and 1/4 on the global test set as stored, then again after
recomputing that width's BN statistics (HeteroFL's sBN step, ``fedmol.models.slicing.recompute_bn_stats``)
on the partners' pooled training molecules -- a diagnostic only: a real server never sees them.
If the score recovers, the mismatch between per-width statistics (from the narrow partners only) and
nested weights (averaged with wide partners) explains the failure. Writes
``benchmarks/results/standard/fedgen_bn_diagnostic.json``. The in-protocol fix is FedGen's hp
``pooled_bn=True`` (the same pooling, by a counted query to the partners; the suite's ``fedgen_pooled`` row).

    python benchmarks/fedgen_bn_diagnostic.py   (after fedmol bench standard)
"""
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedmol.evaluate import Evaluator
from fedmol.fl.harness import RunConfig, build_federation
from fedmol.models import build, slicing
from fedmol.training import make_loader, score

BASE = Path("benchmarks/results/standard/runs")
DATASETS = ("bbbp", "bace", "b3db_classification")
WIDTHS = (0.125, 0.25)


def diagnose(run: Path) -> dict[float, tuple[float, float]]:
    """{width: (test with the stored BN statistics, test with statistics recomputed on pooled training data)}."""
    c = json.loads((run / "config.json").read_text())
    fed = build_federation(RunConfig(**c["run"]), progress=False)
    ev = Evaluator(c["model"]["task_type"], c["model"]["num_tasks"])
    state = {k: v for k, v in load_file(str(run / "model.safetensors")).items() if not k.startswith("generator.")}
    net = build(**c["model"])
    net.load_state_dict(state)
    pooled = torch.utils.data.ConcatDataset([part.train for part in fed.local])
    out = {}
    for w in WIDTHS:
        before = score(net, fed.test, ev, width=w)[ev.eval_metric]
        slicing.recompute_bn_stats(net, make_loader(pooled, 128, shuffle=False), width=w)
        out[w] = (before, score(net, fed.test, ev, width=w)[ev.eval_metric])
        net.load_state_dict(state)
    return out


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for ds in DATASETS:
        for a in ("a0.1", "a1", "a100"):
            for s in (0, 1, 2):
                out = diagnose(BASE / ds / "tiered" / a / "fedgen" / f"s{s}")
                rows.append(dict(dataset=ds, alpha=a, seed=s,
                                 **{f"{w}": dict(stored=b, recomputed=x) for w, (b, x) in out.items()}))
                print(ds, a, s, {w: f"{b:.3f} -> {x:.3f}" for w, (b, x) in out.items()}, flush=True)
    summary = {}
    for ds in DATASETS:
        for w in WIDTHS:
            sub = [r[f"{w}"] for r in rows if r["dataset"] == ds]
            b, x = statistics.mean(v["stored"] for v in sub), statistics.mean(v["recomputed"] for v in sub)
            print(f"{ds} width {w}: stored BN {b:.3f}, recomputed BN {x:.3f} (mean of {len(sub)} runs)")
            summary[f"{ds}@{w}"] = dict(stored=b, recomputed=x, runs=len(sub))
    out = BASE.parent / "fedgen_bn_diagnostic.json"
    out.write_text(json.dumps(dict(summary=summary, runs=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
