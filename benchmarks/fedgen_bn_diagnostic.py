"""Diagnostic for the standard suite's analysis: is FedGen's weak narrow-width model a BatchNorm problem?

Loads each finished FedGen run of the standard suite (``benchmarks/results/standard/runs``, clean links)
and scores its final model at widths 1/8 and 1/4 on the global test set three ways:

* ``stored``: with the statistics the run tracked (per width, from the partners that trained at it);
* ``recomputed``: after recomputing that width's BN statistics on the partners' pooled training
  molecules in one pass (HeteroFL's sBN step, ``fedmol.models.slicing.recompute_bn_stats``: every BN
  normalizes with its batch's statistics during the pass);
* ``exact``: layer by layer in forward order, each BN's statistics the exact moments of the inputs
  it sees when every earlier BN already uses its final statistics (what evaluation sees; one pass
  per BN layer) -- to tell whether sBN's batch approximation matters;
* ``narrow``: recomputed as ``recomputed`` but on the training molecules of the partners whose cap
  is that width only -- the data the stored statistics came from -- to tell whether it is their
  data or the weights they were measured with (the partners' local models during training, not
  the averaged global model) that makes the stored statistics differ.

A diagnostic only: a real server never sees the pooled molecules. If the score recovers, the
mismatch between per-width statistics (from the narrow partners only) and nested weights (averaged
with wide partners) explains the failure. Writes ``benchmarks/results/standard/fedgen_bn_diagnostic.json``.
The in-protocol fixes: FedGen's hp ``pooled_bn=True`` (the same pooling, by a counted query to the
partners; the suite's ``fedgen_pooled`` row) and hp ``ordered_dropout=True`` (every partner trains,
and keeps the statistics of, every served width up to its cap; rows ``fedgen_od``, ``fedgen_od_cap``).

    python benchmarks/fedgen_bn_diagnostic.py   (after fedmol bench standard)
"""
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedmol.evaluate import Evaluator
from fedmol.config import RunConfig
from fedmol.fl.harness import build_federation
from fedmol.jsonio import write_json
from fedmol.models import build, slicing
from fedmol.models.slicing import SliceBatchNorm
from fedmol.training import make_loader, score

BASE = Path("benchmarks/results/standard/runs")
DATASETS = ("bbbp", "bace", "b3db_classification")
WIDTHS = (0.125, 0.25)


def exact_stats(net, data, width: float) -> None:
    """Set every BN's statistics at ``width``, in forward order, to the exact moments of its eval-mode inputs."""
    bns = dict((n, m) for n, m in net.named_modules() if isinstance(m, SliceBatchNorm))
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n)) for n, m in bns.items()]
    net.eval()
    with torch.no_grad():
        net(next(iter(make_loader(data, 8))), width=width)
    for h in hooks:
        h.remove()
    for name in dict.fromkeys(order):
        acc = []
        hook = bns[name].register_forward_pre_hook(lambda mod, args: acc.append(args[0].detach().double()))
        with torch.no_grad():
            for batch in make_loader(data, 256):
                net(batch, width=width)
        hook.remove()
        x = torch.cat(acc)
        bns[name].set_stats(width, x.mean(0).float(), x.var(0, unbiased=True).float())


def diagnose(run: Path) -> dict[float, dict[str, float]]:
    """{width: {stored, recomputed, exact, narrow}: test metric with each kind of BN statistics}."""
    c = json.loads((run / "config.json").read_text())
    fed = build_federation(RunConfig(**c["run"]), progress=False)
    ev = Evaluator(c["model"]["task_type"], c["model"]["num_tasks"])
    state = {k: v for k, v in load_file(str(run / "model.safetensors")).items() if not k.startswith("generator.")}
    net = build(**c["model"])
    net.load_state_dict(state)
    pooled = torch.utils.data.ConcatDataset([part.train for part in fed.local])
    out = {}
    for w in WIDTHS:
        got = dict(stored=score(net, fed.test, ev, width=w)[ev.eval_metric])
        slicing.recompute_bn_stats(net, make_loader(pooled, 128, shuffle=False), width=w)
        got["recomputed"] = score(net, fed.test, ev, width=w)[ev.eval_metric]
        net.load_state_dict(state)
        exact_stats(net, pooled, w)
        got["exact"] = score(net, fed.test, ev, width=w)[ev.eval_metric]
        net.load_state_dict(state)
        own = torch.utils.data.ConcatDataset([fed.local[p.pid].train for p in fed.infos
                                              if abs(p.device.max_width - w) < 1e-9])
        slicing.recompute_bn_stats(net, make_loader(own, 128, shuffle=False), width=w)
        got["narrow"] = score(net, fed.test, ev, width=w)[ev.eval_metric]
        net.load_state_dict(state)
        out[w] = got
    return out


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for ds in DATASETS:
        for a in ("a0.1", "a1", "a100"):
            for s in (0, 1, 2):
                out = diagnose(BASE / ds / "tiered" / a / "fedgen" / f"s{s}")
                rows.append(dict(dataset=ds, alpha=a, seed=s, **{f"{w}": got for w, got in out.items()}))
                print(ds, a, s, {w: " / ".join(f"{v:.3f}" for v in got.values()) for w, got in out.items()}, flush=True)
    summary = {}
    for ds in DATASETS:
        for w in WIDTHS:
            sub = [r[f"{w}"] for r in rows if r["dataset"] == ds]
            means = {k: statistics.mean(v[k] for v in sub) for k in ("stored", "recomputed", "exact", "narrow")}
            print(f"{ds} width {w}: " + ", ".join(f"{k} BN {v:.3f}" for k, v in means.items())
                  + f" (mean of {len(sub)} runs)")
            summary[f"{ds}@{w}"] = dict(**means, runs=len(sub))
    out = BASE.parent / "fedgen_bn_diagnostic.json"
    write_json(out, dict(summary=summary, runs=rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
