"""Diagnostic for the standard suite's analysis: is FedGen's weak narrow-width model a BatchNorm problem?

Loads each finished FedGen run of the standard suite (``benchmarks/results/standard/runs``, clean links),
scores its final model at widths 1/8 and 1/4 on the global test set as stored, then again after
recomputing that width's BN statistics (HeteroFL's sBN step, ``fedmol.models.slicing.recompute_bn_stats``)
on the partners' pooled training molecules -- a diagnostic only: a real server never sees them.
If the score recovers, the mismatch between per-width statistics (from the narrow partners only) and
nested weights (averaged with wide partners) explains the failure. Writes
``benchmarks/results/standard/fedgen_bn_diagnostic.json``.

    python benchmarks/fedgen_bn_diagnostic.py   (after fedmol bench standard)
"""
import json

import torch
from pathlib import Path
from safetensors.torch import load_file
from fedmol.evaluate import Evaluator
from fedmol.fl.harness import RunConfig, build_federation
from fedmol.models import build, slicing
from fedmol.training import make_loader, score
torch.set_num_threads(1)
base = Path("benchmarks/results/standard/runs")
rows = []
for ds in ("bbbp", "bace", "b3db_classification"):
    for a in ("a0.1", "a1", "a100"):
        for s in (0, 1, 2):
            run = base / ds / "tiered" / a / "fedgen" / f"s{s}"
            c = json.loads((run / "config.json").read_text())
            cfg = RunConfig(**{k: v for k, v in c["run"].items()})
            fed = build_federation(cfg, progress=False)
            ev = Evaluator(c["model"]["task_type"], c["model"]["num_tasks"])
            state = {k: v for k, v in load_file(str(run / "model.safetensors")).items() if not k.startswith("generator.")}
            net = build(**c["model"]); net.load_state_dict(state)
            pooled = torch.utils.data.ConcatDataset([fed.local[p].train for p in range(len(fed.local))])
            out = {}
            for w in (0.125, 0.25):
                before = score(net, fed.test, ev, width=w)[ev.eval_metric]
                slicing.recompute_bn_stats(net, make_loader(pooled, 128, shuffle=False), width=w)
                after = score(net, fed.test, ev, width=w)[ev.eval_metric]
                out[w] = (before, after)
                net.load_state_dict(state)
            rows.append((ds, a, s, out))
            print(ds, a, s, {w: f"{b:.3f} -> {x:.3f}" for w, (b, x) in out.items()}, flush=True)
import statistics
summary = {}
for ds in ("bbbp", "bace", "b3db_classification"):
    for w in (0.125, 0.25):
        b = [r[3][w][0] for r in rows if r[0] == ds]; x = [r[3][w][1] for r in rows if r[0] == ds]
        print(f"{ds} width {w}: stored BN {statistics.mean(b):.3f}, recomputed BN {statistics.mean(x):.3f} (mean of 9 runs)")
        summary[f"{ds}@{w}"] = dict(stored=statistics.mean(b), recomputed=statistics.mean(x), runs=len(b))
out = base.parent / "fedgen_bn_diagnostic.json"
out.write_text(json.dumps(dict(summary=summary, runs=[dict(dataset=r[0], alpha=r[1], seed=r[2],
                                                           **{f"{w}": dict(stored=b, recomputed=x) for w, (b, x) in r[3].items()})
                                                      for r in rows]), indent=1))
print(f"wrote {out}")
