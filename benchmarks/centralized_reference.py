"""Centralized GIN reference vs the literature (issue: backbones), resumable.

Trains GIN without pre-training on the deterministic scaffold split 80/10/10 (fedmol train), several
seeds per dataset, and compares the mean +- std test ROC-AUC with Hu et al. 2020 (Table 1, GIN
without pre-training). Also trains standalone models at each width (1 ... 1/16) to show how accuracy
falls with width. Results: ``benchmarks/results/centralized/*.json`` (one per run, skipped when
present) and ``benchmarks/results/centralized_reference.md``. A run interrupted midway (a long
HIV run, a session that ends) continues after its last finished epoch when the script is started
again: its state is kept in ``benchmarks/results/centralized/partial/`` (git-ignored) until it ends.

    python benchmarks/centralized_reference.py [--datasets bbbp,bace] [--seeds 0,1,2] [--epochs 100]
        [--patience 0] [--split-protocol fedmol|hu2020]

``--features hu2020`` keeps only the input features Hu et al.'s GIN sees (atom type and chirality;
bond type and direction, here OGB's bond type and stereo): the other OGB feature columns are set
to 0, a constant that carries no information (an ablation, to explain a gap to the paper).

``--patience 0`` trains every epoch (Hu et al.'s protocol: 100 epochs, no early stopping); every run
records the test score after each epoch, so such a report has two columns: the best validation
epoch's test score (fedmol's reporting) and the last epoch's (Hu et al.'s). Reports are
``centralized_reference[_<protocol>][_e<epochs>-all].md``; a hand-written section starting at a
line ``## Reading these numbers ...`` is kept when the report is rewritten.

``--split-protocol hu2020`` uses Hu et al.'s own scaffold splitter (fedmol.centralized): the
comparison with their Table 1 is only fair on it; ``fedmol`` (default) is the split whose test set
every federated run of the dataset is scored on. Runs are cached per protocol; the Markdown has one
table per protocol that has runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import fedmol
from fedmol import checkpoint
from fedmol.centralized import train_centralized
from fedmol.jsonio import read_summary, write_json

HU2020 = {"bbbp": (65.8, 4.5), "tox21": (74.0, 0.8), "sider": (57.3, 1.6), "clintox": (58.0, 4.4),
          "bace": (70.1, 5.4), "hiv": (75.3, 1.9)}
RESULTS = Path(__file__).resolve().parent / "results"
#: training state of unfinished runs (git-ignored): an interrupted run resumes after its last epoch
PARTIAL = RESULTS / "centralized" / "partial"


#: feature columns each feature set keeps (fedmol's featurizer: OGB's 9 atom and 3 bond features)
FEATURES = {"ogb": (None, None), "hu2020": (2, 2)}


def keep_features(ds, features: str):
    """``ds`` with every atom feature column from ``FEATURES[features][0]`` on (and bond column from
    ``[1]`` on) set to 0, in place."""
    atoms, bonds = FEATURES[features]
    if atoms is not None:
        ds._data.x[:, atoms:] = 0
        ds._data.edge_attr[:, bonds:] = 0
    return ds


def run_path(name: str, seed: int, width: float, epochs: int, patience: int, protocol: str = "fedmol",
             features: str = "ogb") -> Path:
    """Where a finished run is cached (its unfinished state: ``PARTIAL / <this file's stem>``)."""
    tag = (("" if protocol == "fedmol" else f"-{protocol}") + ("-all" if patience == 0 else "")
           + ("" if features == "ogb" else f"-{features}feat"))
    return RESULTS / "centralized" / f"{name}-gin-w{width:g}-s{seed}-e{epochs}{tag}.json"


def in_progress(name: str, seeds, *args) -> list[str]:
    """``"seed S: epoch E of N"`` for each seed of ``name`` whose run is unfinished (args: as run_path)."""
    out = []
    for s in seeds:
        path = run_path(name, s, 1.0, *args)
        meta = None if path.exists() else checkpoint.read_meta(PARTIAL / path.stem)
        if meta is not None:
            out.append(f"seed {s}: {meta['epoch'] + 1} of {meta['fingerprint']['epochs']} epochs")
    return out


def run(name: str, seed: int, width: float, epochs: int, patience: int, protocol: str = "fedmol",
        cached_only: bool = False, features: str = "ogb", device: str = "cpu") -> dict | None:
    path = run_path(name, seed, width, epochs, patience, protocol, features)
    if path.exists():
        return read_summary(path)
    if cached_only:
        return None
    ds = keep_features(fedmol.load_dataset(name, progress=False), features)
    s = train_centralized(ds, None, model="gin", width=width, seed=seed, epochs=epochs, patience=patience,
                          split_protocol=protocol, progress=False, device=device,
                          checkpoint=PARTIAL / path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    s["features"] = features
    write_json(path, s)
    print(f"{name} {protocol} w={width:g} seed {seed}: test {s['test']} (best epoch {s['best_epoch']}), last epoch "
          f"{s['last_epoch']}: {s['test_last']} ({s['seconds']:.0f} s)", flush=True)
    return s


NOTES = "## Reading these numbers"


def report_path(protocol: str, epochs: int, patience: int, features: str = "ogb") -> Path:
    return RESULTS / ("centralized_reference" + ("" if protocol == "fedmol" else f"_{protocol}")
                      + (f"_e{epochs}-all" if patience == 0 else "")
                      + ("" if features == "ogb" else f"_{features}-features") + ".md")


def kept_notes(path: Path) -> list[str]:
    """The hand-written section of an existing report (from the ``## Reading these numbers`` line on)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(NOTES)), None)
    return [] if start is None else [""] + lines[start:]


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="bbbp,bace,clintox,sider,tox21,hiv")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--width-datasets", default="bace", help="datasets for the accuracy-vs-width sweep")
    ap.add_argument("--width-seeds", default="0")
    ap.add_argument("--width-epochs", type=int, default=None, help="epochs for the width sweep (default: --epochs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-protocol", default="fedmol", choices=["fedmol", "hu2020"])
    ap.add_argument("--cached-only", action="store_true", help="train nothing: report the runs already cached")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (a GPU makes HIV's 41k molecules affordable)")
    ap.add_argument("--features", default="ogb", choices=sorted(FEATURES),
                    help="hu2020: only the features Hu et al.'s GIN sees (an ablation)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    every = a.patience == 0
    training = (f"{a.epochs} epochs (no early stopping; the test score is recorded after every epoch)" if every else
                f"up to {a.epochs} epochs, early stopping on valid (patience {a.patience})")
    lines = [f"# Centralized GIN reference (scaffold split 80/10/10, protocol {a.split_protocol}, no pre-training)", "",
             f"fedmol {fedmol.__version__}; GIN hidden 300, 5 layers, dropout 0.5, mean pool, Adam 1e-3, batch 32, "
             f"{training}; ROC-AUC x100, mean +- std (ddof=1) over seeds. Hu et al. 2020 Table 1 (GIN, no "
             "pre-training) for comparison."
             + (" Input features: only Hu et al.'s (atom type and chirality; bond type and stereo), the other "
                "OGB columns set to 0." if a.features != "ogb" else ""), ""]
    if every:
        lines += ["`best valid`: the test score of the epoch with the best validation score (fedmol's reporting); "
                  "`last epoch`: the test score after the last epoch (Hu et al.'s reporting). Same runs.", "",
                  "| dataset | seeds | best valid | last epoch | Hu et al. 2020 | within 1 std (best valid / last) "
                  "| s/run |", "|---|---|---|---|---|---|---|"]
    else:
        lines += ["| dataset | seeds | fedmol GIN test | Hu et al. 2020 | within 1 std | s/run |", "|---|---|---|---|---|---|"]
    t0 = time.time()
    for name in [d for d in a.datasets.split(",") if d]:
        runs = [r for s in seeds
                if (r := run(name, s, 1.0, a.epochs, a.patience, a.split_protocol, a.cached_only, a.features,
                             a.device))]
        if not runs:
            continue
        m, sd = mean_std([100 * r["test"]["1.0"] for r in runs])
        ref, ref_sd = HU2020.get(name, (float("nan"), float("nan")))
        ok = "yes" if abs(m - ref) <= ref_sd else "no"
        secs = statistics.mean(r["seconds"] for r in runs)
        if every:
            ml, sdl = mean_std([100 * r["test_last"]["1.0"] for r in runs])
            ok_last = "yes" if abs(ml - ref) <= ref_sd else "no"
            lines.append(f"| {name} | {len(runs)} | {m:.1f} +- {sd:.1f} | {ml:.1f} +- {sdl:.1f} | {ref} +- {ref_sd} "
                         f"| {ok} / {ok_last} | {secs:.0f} |")
        else:
            lines.append(f"| {name} | {len(runs)} | {m:.1f} +- {sd:.1f} | {ref} +- {ref_sd} | {ok} | {secs:.0f} |")
    unfinished = [f"{name} ({', '.join(p)})" for name in [d for d in a.datasets.split(",") if d]
                  if (p := in_progress(name, seeds, a.epochs, a.patience, a.split_protocol, a.features))]
    if unfinished:
        lines += ["", "Still training (resumable, not in the table): " + "; ".join(unfinished) + "."]
    if [d for d in a.width_datasets.split(",") if d]:
        lines += ["", "## Accuracy vs width (each width trained alone)", "",
                  f"Seeds {a.width_seeds}, up to {a.width_epochs or a.epochs} epochs.", "",
                  "| dataset | width | params | test ROC-AUC x100 (mean +- std) |", "|---|---|---|---|"]
    from fedmol.models import build, slicing
    for name in [d for d in a.width_datasets.split(",") if d]:
        for w in slicing.WIDTHS:
            runs = [r for s in [int(x) for x in a.width_seeds.split(",")]
                    if (r := run(name, s, w, a.width_epochs or a.epochs, a.patience, cached_only=a.cached_only))]
            if not runs:
                continue
            m, sd = mean_std([100 * r["test"][repr(float(w))] for r in runs])
            params = slicing.count(build("gin", 1, width=1.0), w)["params"]
            lines.append(f"| {name} | {w:g} | {params:,} | {m:.1f} +- {sd:.1f} |")
    out = report_path(a.split_protocol, a.epochs, a.patience, a.features)
    lines += kept_notes(out)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
