"""Headline tables of the standard suite, for its written analysis (benchmarks/results/standard/ANALYSIS.md).

Reads ``benchmarks/results/standard/results_per_seed.csv`` (written by ``fedmol bench standard``) and
writes ``headlines.md`` beside it: test ROC-AUC at width 1, per partner and at width 1/8 per
alpha; the paired effect of faulty links; the federated gain; the reported round and what model
selection changed; MB and seconds per run. Values are
mean +- sample std over the seeds present (the column ``seeds`` says how many).

    python benchmarks/standard_headlines.py
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "results" / "standard"
d = pd.read_csv(OUT / "results_per_seed.csv")
algos = [a["label"] for a in json.loads((OUT / "suite.json").read_text())["algorithms"]]  # the suite's order
refs = ["local-only (gnn)", "centralized (gnn)", "local-only (rf-ecfp4)", "centralized (rf-ecfp4)"]


def ms(x, digits=3):
    """mean +- sample std of the defined values; empty when there are none."""
    x = x.dropna()
    if len(x) == 0:
        return ""
    return f"{x.mean():.{digits}f}" + (f" ± {x.std(ddof=1):.{digits}f}" if len(x) > 1 else "")


def table(measure, devices, methods, title, digits=3):
    print(f"\n**{title}**\n")
    alphas = sorted(d.alpha.unique())
    for ds in d.dataset.unique():
        print(f"\n{ds}:\n")
        print("| method | " + " | ".join(f"alpha {a:g}" for a in alphas) + " | seeds |")
        print("|---|" + "---:|" * len(alphas) + "---:|")
        for m in methods:
            sub = d[(d.dataset == ds) & (d.devices == devices) & (d.method == m)]
            if sub.empty:
                continue
            cells = [ms(sub[sub.alpha == a][measure], digits) for a in alphas]
            print(f"| {m} | " + " | ".join(cells) + f" | {sub.seed.nunique()} |")


def delta(measure):
    print(f"\n**{measure}: faulty links (p=0.5) minus clean, mean over seeds (paired by seed)**\n")
    alphas = sorted(d.alpha.unique())
    for ds in d.dataset.unique():
        print(f"\n{ds}:\n")
        print("| method | " + " | ".join(f"alpha {a:g}" for a in alphas) + " | all |")
        print("|---|" + "---:|" * (len(alphas) + 1))
        for m in algos:
            vals, row = [], []
            for a in alphas:
                c = d[(d.dataset == ds) & (d.devices == "tiered") & (d.method == m) & (d.alpha == a)].set_index("seed")[measure]
                f = d[(d.dataset == ds) & (d.devices == "tiered-faulty0.5") & (d.method == m) & (d.alpha == a)].set_index("seed")[measure]
                x = (f - c).dropna()
                vals += list(x); row.append(f"{x.mean():+.3f}" if len(x) else "")
            if vals:  # a method that never serves this measure (FedAvg at width 1/8) has no row
                print(f"| {m} | " + " | ".join(row) + f" | {np.mean(vals):+.3f} |")


def ties(measure, devices, methods, title):
    """Per dataset x alpha: the methods in order of mean ``measure``, each marked against the best
    by a paired t-test over seeds (fedmol.stats): = best, ~ tie (p >= 0.05), < significantly worse."""
    from fedmol.stats import SIGNIFICANCE, tie_labels

    print(f"\n**{title}** (order by mean; `~` within seed noise of the best, `<` significantly below it: "
          f"paired t-test over the seeds, p < {SIGNIFICANCE})\n")
    print("| dataset | alpha | ranking |")
    print("|---|---:|---|")
    mark = {"best": "", "tie": "~", "worse": "<", "": "?"}
    for ds in d.dataset.unique():
        for a in sorted(d.alpha.unique()):
            sub = d[(d.dataset == ds) & (d.devices == devices) & (d.alpha == a) & d.method.isin(methods)]
            by = sub.pivot_table(index="seed", columns="method", values=measure, aggfunc="first")
            if by.empty:
                continue
            order = by.mean().sort_values(ascending=False).index.tolist()
            labels = tie_labels([by[m].to_dict() for m in order])
            cells = [f"{mark[lab]}{m} {by[m].mean():.3f}" for m, lab in zip(order, labels)]
            print(f"| {ds} | {a:g} | " + ", ".join(cells) + " |")


buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    table("test@1.0", "tiered", refs[:2] + refs[3:] + algos, "test ROC-AUC of the global model at width 1 (clean links)")
    table("test@partner", "tiered", refs + algos, "test ROC-AUC of the model each partner ends up with, mean over partners (clean links)")
    table("test@0.125", "tiered", ["local-only (gnn)"] + [a for a in algos if a != "fedavg"], "test ROC-AUC at width 1/8 (the weakest tier's model; clean links)")
    table("test@partner", "tiered-faulty0.5", algos, "test@partner with faulty links (p=0.5)")
    delta("test@partner")
    delta("test@0.125")
    ties("test@1.0", "tiered", algos, "which differences at width 1 are more than seed noise (clean links)")
    ties("test@partner", "tiered", [a for a in algos if a != "fedavg"],
         "which per-partner differences are more than seed noise (clean links; FedAvg left out: its row credits "
         "the partners that cannot run its model with it)")
    table("gain_test", "tiered", algos, "federated gain on the global test set vs each partner's local-only GNN (clean)")
    if "selected_round" in d:
        d["selection_gain"] = d["test@1.0"] - d["test_last@1.0"]
        table("selected_round", "tiered", algos, "the round each run reports (best pooled validation score; 19 = last)", digits=1)
        table("selection_gain", "tiered", algos, "test@1.0 of the reported round minus the last round's (clean links)")
    print("\n**MB communicated per run and seconds per run (clean links, mean over all alphas/seeds)**\n")
    print("| method | " + " | ".join(f"{ds} MB | {ds} s" for ds in d.dataset.unique()) + " |")
    print("|---|" + "---:|---:|" * d.dataset.nunique())
    for m in algos:
        cells = []
        for ds in d.dataset.unique():
            sub = d[(d.dataset == ds) & (d.devices == "tiered") & (d.method == m)]
            cells += [f"{sub.mb.mean():.1f}", f"{sub.seconds.mean():.0f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")

text = "# fedmol bench standard: headline tables\n\nGenerated by benchmarks/standard_headlines.py from results_per_seed.csv.\n" + buf.getvalue()
(OUT / "headlines.md").write_text(text)
print(text)
print(f"wrote {OUT / 'headlines.md'}")
