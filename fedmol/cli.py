"""The ``fedmol`` command line: parse, call one library function, print.

Every user mistake surfaces as a :class:`fedmol.errors.FedmolError` and is printed here as one
line (exit code 2), never as a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedmol.cli_common import (console, err, friendly, parse_hparams, results_table,  # noqa: F401
                               run_option, with_run_settings)
from fedmol.errors import FedmolError
from fedmol.jsonio import to_json, write_json

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedmol: federated learning benchmarks for drug discovery.")
split_app = typer.Typer(no_args_is_help=True, help="Scaffold partner splits: make, show, verify.")
app.add_typer(split_app, name="split")
from fedmol.leaderboard.cli import leaderboard_app  # noqa: E402

app.add_typer(leaderboard_app, name="leaderboard")
from fedmol.pilot.cli import pilot_app  # noqa: E402  (typer only; each command imports what it needs)

app.add_typer(pilot_app, name="pilot")



# shared options -----------------------------------------------------------------------------------
DataDir = run_option("data_dir")
CsvOpt = run_option("csv")
SmilesCol = run_option("smiles_col")
TargetCols = run_option("target_cols")
TaskOpt = run_option("task")
Jobs = typer.Option(None, "--jobs", "-j", help="Worker processes for featurization (default: all cores).")


def _load(name, data_dir, csv, smiles_col, target_cols, task, jobs=None, progress=True):
    from fedmol.data.dataset import load_dataset

    return load_dataset(name, csv=csv, smiles_col=smiles_col, target_cols=target_cols, task=task,
                        data_dir=data_dir, n_jobs=jobs, progress=progress)


# datasets ---------------------------------------------------------------------------------------------
@app.command()
@friendly
def datasets(data_dir: Optional[Path] = DataDir,
             as_json: bool = typer.Option(False, "--json", help="Print the registry as a JSON list.")):
    """List the dataset registry with local availability."""
    from fedmol.data.registry import DATASETS
    from fedmol.data.sources import availability, candidate_dirs

    rows = []
    for info in DATASETS.values():
        where = availability(info, data_dir)
        rows.append(dict(name=info.name, file=info.file, tasks=info.num_tasks, task_type=info.task_type,
                         metric=info.metric, rows=info.rows, available=where is not None,
                         location=str(where) if where else None, url=info.url, sha256=info.sha256))
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table(title="fedmol datasets")
    for col in ("name", "task type", "tasks", "rows", "metric", "local file"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["task_type"], str(r["tasks"]), str(r["rows"]), r["metric"],
                  f"[green]{r['location']}[/]" if r["available"] else "[yellow]absent (see below)[/]")
    console.print(t)
    if not all(r["available"] for r in rows):
        console.print(f"absent files were looked for in {', '.join(str(d) for d in candidate_dirs(data_dir))}; point "
                      "fedmol at a folder holding them with FEDMOL_DATA_DIR=DIR or --data-dir DIR (where nothing can "
                      "be downloaded), else they are downloaded from their URL on first use", highlight=False,
                      soft_wrap=True)


def shown_smiles(smiles: str, limit: int = 60) -> str:
    """A SMILES as it can be copied back (no Python escaping of backslashes); tabs and line breaks,
    which a SMILES never holds, made visible; cut at ``limit`` characters with an ellipsis."""
    text = smiles.replace("\t", "<TAB>").replace("\r", "<CR>").replace("\n", "<LF>")
    return text if len(text) <= limit else text[:limit] + "..."


def algorithm_card(name: str) -> dict:
    """What ``fedmol algorithms`` shows of one algorithm: its paper line, how it normalizes, what
    leaves a partner, DP and private-heads support and every hyperparameter with its default."""
    import inspect

    from fedmol.fl.registry import get_algorithm

    cls = get_algorithm(name)
    doc = inspect.getmodule(cls).__doc__ or ""
    summary = " ".join(doc.strip().split("\n\n")[0].split())
    return dict(name=name, summary=summary, norm=cls.norm, scaler=cls.scaler,
                accepts_partial_uploads=cls.accepts_partial_uploads, supports_dp=cls.supports_dp,
                dp_refusal=None if cls.supports_dp else cls.dp_refusal, sends=cls.model_disclosure,
                disclosures=dict(cls.disclosures),
                private_heads="supported" if cls.private_heads_refusal is None else
                f"refused: {cls.private_heads_refusal}",
                hparams=dict(cls.defaults), shared_hparams=dict(cls.base_defaults),
                hparam_types={k: dict(type=v["type"], meaning=v["meaning"])
                              for k, v in cls.hparam_schema.describe().items()})


@app.command()
@friendly
def algorithms(name: Optional[str] = typer.Argument(None, help="One algorithm (default: all)."),
               as_json: bool = typer.Option(False, "--json", help="Print the algorithms' cards as JSON.")):
    """List the algorithms with their hyperparameters and defaults (set them with `fedmol run --hp KEY=VALUE`)."""
    from fedmol.fl.registry import ALGORITHMS

    cards = [algorithm_card(n) for n in ([name.strip().lower()] if name else ALGORITHMS)]
    if as_json:
        print(json.dumps(cards, indent=1, default=str))
        return
    for c in cards:
        console.print(f"[bold]{c['name']}[/]: {c['summary']}")
        console.print(_hparam_table(c, c["hparams"]))
        console.print(f"  partners send: {c['sends']}", highlight=False)
        console.print(f"  norm {c['norm']}{' + scaler' if c['scaler'] else ''}; truncated uploads "
                      f"{'aggregated' if c['accepts_partial_uploads'] else 'dropped'}; differential privacy "
                      f"{'supported' if c['supports_dp'] else 'refused: ' + c['dp_refusal']}"
                      f"; private heads {c['private_heads']}"
                      + (f"; also sent by partners: {', '.join(c['disclosures'])}" if c["disclosures"] else ""),
                      highlight=False)
    shared = cards[0]["shared_hparams"] if cards else {}
    console.print("shared by every algorithm (local training, DP): "
                  + ", ".join(f"{k}={json.dumps(v)}" for k, v in shared.items()), highlight=False)
    if cards:
        console.print(_hparam_table(cards[0], shared))


def _hparam_table(card: dict, hparams: dict) -> Table:
    """Hyperparameters with their default, type and range, and meaning."""
    t = Table()
    for col in ("hyperparameter", "default", "type and range", "meaning"):
        t.add_column(col)
    for k, v in hparams.items():
        info = card["hparam_types"].get(k, {})
        t.add_row(k, json.dumps(v), info.get("type", ""), info.get("meaning", ""))
    return t


# featurize --------------------------------------------------------------------------------------------
@app.command()
@friendly
def featurize(
    name: Optional[str] = typer.Argument(None, help="Registry dataset name (see `fedmol datasets`)."),
    csv: Optional[Path] = CsvOpt, smiles_col: Optional[str] = SmilesCol, target_cols: Optional[str] = TargetCols,
    task: Optional[str] = TaskOpt, data_dir: Optional[Path] = DataDir, jobs: Optional[int] = Jobs,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the invalid rows to this CSV."),
):
    """Featurize a dataset into graphs (cached) and summarize valid, invalid and duplicated rows."""
    from fedmol.data.dataset import NoValidMolecule, write_invalid_csv

    try:
        ds = _load(name, data_dir, csv, smiles_col, target_cols, task, jobs, progress=not as_json)
    except NoValidMolecule as e:  # --report still lists every row with its reason
        if not report:
            raise
        write_invalid_csv(report, e.invalid_rows)
        raise e.listed_in(report) from None
    rep = ds.report.to_dict()
    if report:
        write_invalid_csv(report, rep["invalid_rows"])
    out = dict(dataset=ds.name, rows=rep["rows"], valid=rep["valid"], invalid=rep["invalid"],
               invalid_labels=rep["invalid_labels"], duplicates=rep["duplicates"], unlabeled=rep["unlabeled"],
               tasks=list(ds.info.tasks),
               task_type=ds.task_type, source=ds.source_path, source_sha256=ds.source_sha256,
               cache=ds.cache_path, invalid_rows=rep["invalid_rows"], duplicated_smiles=ds.duplicated_smiles())
    if as_json:
        print(json.dumps(out))
        return
    labels = f" ({out['invalid_labels']} with a non-finite label)" if out["invalid_labels"] else ""
    console.print(f"[bold]{ds.name}[/]: {out['rows']} rows -> [green]{out['valid']} valid[/], "
                  f"[red]{out['invalid']} invalid[/]{labels}, {out['duplicates']} duplicated SMILES, "
                  f"{out['unlabeled']} without any label")
    for r in rep["invalid_rows"][:10]:
        console.print(f"  row {r['row']}: {shown_smiles(r['smiles'])}: {r['reason']}", highlight=False, markup=False)
    if out["invalid"] > 10:
        console.print(f"  ... and {out['invalid'] - 10} more")
    dups = out["duplicated_smiles"]
    if dups:
        console.print("duplicated SMILES (every row kept; 0-based data rows):")
    for d in dups[:10]:
        console.print(f"  {shown_smiles(d['smiles'])}: rows {', '.join(map(str, d['rows']))}", highlight=False,
                      markup=False)
    if len(dups) > 10:
        console.print(f"  ... and {len(dups) - 10} more (--json lists them all)")
    where = report or (Path(ds.cache_path) / "invalid_rows.csv" if ds.cache_path else None)
    if out["invalid"] and where:
        console.print(f"invalid rows listed in {where}")


# split --------------------------------------------------------------------------------------------------
TaskSplitOpt, HoldersOpt, TargetAwareOpt = (run_option(k) for k in ("task_split", "holders_per_task", "target_aware"))


def _registry_tasks(name: Optional[str]) -> int:
    from fedmol.data.registry import get_info

    return get_info(name).num_tasks if name else 2  # no name: load_dataset says what is missing


@split_app.command("make")
@friendly
def split_make(
    name: Optional[str] = typer.Argument(None, help="Registry dataset name."),
    partners: int = typer.Option(8, "--partners", "-k", help="Number of simulated partners K."),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Heterogeneity: small = distinct chemistry and labels."),
    seed: int = typer.Option(0, "--seed", "-s"),
    quantity_skew: float = typer.Option(0.0, "--quantity-skew", help="0 = equal sizes; >0 a few large, many small."),
    out: Path = typer.Option(..., "--out", "-o", help="Split file to write (JSON)."),
    csv: Optional[Path] = CsvOpt, smiles_col: Optional[str] = SmilesCol, target_cols: Optional[str] = TargetCols,
    task: Optional[str] = TaskOpt, data_dir: Optional[Path] = DataDir, jobs: Optional[int] = Jobs,
    task_split: Optional[str] = TaskSplitOpt, holders_per_task: Optional[int] = HoldersOpt,
    target_aware: bool = TargetAwareOpt,
):
    """Deal a dataset's scaffolds to K partners and freeze the split as a file."""
    from fedmol.data.splits import check_task_split, class_warnings, make_split, write_split

    if task_split is not None or holders_per_task is not None:  # refuse a bad task split before featurizing
        n_tasks = len(target_cols.split(",")) if csv and target_cols else _registry_tasks(name)
        check_task_split(name or "the CSV", n_tasks, partners, task_split, holders_per_task)
    ds = _load(name, data_dir, csv, smiles_col, target_cols, task, jobs)
    split = make_split(ds, partners, alpha, seed, quantity_skew, task_split=task_split,
                       holders_per_task=holders_per_task, target_aware=target_aware)
    write_split(split, out)
    _show(split, class_warnings(split, ds))
    console.print(f"wrote {out}")


@split_app.command("show")
@friendly
def split_show(file: Path = typer.Argument(..., help="A split file."),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
               data_dir: Optional[Path] = DataDir,
               csv: Optional[Path] = typer.Option(None, "--csv", help="The CSV a custom split was made from.")):
    """Print a split file's spec and heterogeneity report, and warn where a partner's validation set (or the
    test set) holds one class of a classification task (the dataset is loaded for that check)."""
    from fedmol.data.splits import class_warnings, dataset_for_split, read_split

    split = read_split(file)
    try:
        warnings, note = class_warnings(split, dataset_for_split(split, data_dir, csv, progress=not as_json)), None
    except FedmolError as e:
        warnings, note = None, f"the validation and test sets were not checked for single classes: {e}"
    if as_json:
        tasks = {"tasks": [p["tasks"] for p in split["partners"]]} if split["spec"].get("task_split") else {}
        print(to_json(dict(spec=split["spec"], report=split["report"], sha256=split["sha256"], **tasks,
                           warnings=warnings)))
        return
    _show(split, warnings)
    if note:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


#: at most this many single-class warnings are printed (a many-task dataset can have thousands)
MAX_CLASS_WARNINGS = 40


def _show(split: dict, warnings: list[str] | None = None) -> None:
    from fedmol.data.heterogeneity import report_table

    s = split["spec"]
    console.print(f"[bold]{s['dataset']}[/]: K={s['partners']} alpha={s['alpha']} seed={s['seed']} "
                  f"quantity_skew={s['quantity_skew']} | test {len(split['test'])} molecules (held-out scaffolds)",
                  highlight=False)
    console.print(report_table(split["report"]))
    _show_tasks(split)
    warnings = warnings or []
    _warn(warnings[:MAX_CLASS_WARNINGS])
    if len(warnings) > MAX_CLASS_WARNINGS:
        _warn([f"... and {len(warnings) - MAX_CLASS_WARNINGS} more partner/task sets with one class "
               "(`fedmol split show FILE --json` lists them all)"])


def _show_tasks(split: dict) -> None:
    """A task split's deal: one line per partner with the tasks it holds (labels it sees)."""
    ts = split["spec"].get("task_split")
    if ts is None:
        return
    console.print(f"task split {ts['mode']}: {ts['holders_per_task']} partner(s) per task; a partner sees labels "
                  "of its own tasks only, the test set keeps every task", highlight=False)
    for k, p in enumerate(split["partners"]):
        console.print(f"  partner {k}: {', '.join(p['tasks'])}", highlight=False, markup=False, soft_wrap=True)


def _warn(lines: list[str]) -> None:
    """Each line as one ``warning:`` line of the output."""
    for line in lines:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


@split_app.command("verify")
@friendly
def split_verify(file: Path = typer.Argument(..., help="A split file."), data_dir: Optional[Path] = DataDir,
                 csv: Optional[Path] = typer.Option(None, "--csv", help="The CSV a custom split was made from.")):
    """Check the file's hash, its source's hash, and that rebuilding from its spec gives the same file."""
    from fedmol.data.splits import read_split, verify_split

    problems, notes = verify_split(file, data_dir=data_dir, csv=csv)
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")
    if problems:
        for p in problems:
            err.print(f"[bold red]FAILED:[/] {p}")
        raise typer.Exit(1)
    tasks = " (its task deal included)" if read_split(file)["spec"].get("task_split") else ""
    console.print(f"[green]OK[/] {file}: hashes match and the split rebuilds identically{tasks}")


@split_app.command("canonical")
@friendly
def split_canonical(out: Path = typer.Option(Path("data_splits"), "--out", "-o"),
                    datasets: Optional[str] = typer.Option(None, "--datasets", help="Comma-separated (default: all)."),
                    data_dir: Optional[Path] = DataDir,
                    task_split: Optional[str] = typer.Option(None, "--task-split", help="disjoint | overlap: the "
                                                             "canonical task splits instead (tox21, sider; K 4, 8; "
                                                             "alpha 1) under <dataset>/tasks/, indexed in "
                                                             "tasks_index.json")):
    """Rebuild the canonical split set (every dataset, K in 4/8/16, alpha in 0.1/1/100, seed 0)."""
    from fedmol.data.splits import TASK_INDEX, make_canonical

    names = [d.strip() for d in datasets.split(",")] if datasets else None
    records = make_canonical(out, names, data_dir=data_dir, task_split=task_split)
    index = out / ("index.json" if task_split is None else TASK_INDEX)
    write_json(index, records if task_split is None else _merged_index(index, records))
    ok = [r for r in records if "error" not in r]
    for r in records:
        if "error" in r:
            console.print(f"[yellow]skipped[/] {r['file']}: {r['error']}", highlight=False)
    console.print(f"wrote {len(ok)} split files under {out} (index: {index})")


def _merged_index(path: Path, records: list[dict]) -> list[dict]:
    """The index at ``path`` with ``records`` replacing the entries of their files (new ones appended)."""
    old = json.loads(path.read_text()) if path.is_file() else []
    new = {r["file"]: r for r in records}
    kept = [new.pop(r["file"], r) for r in old]
    return kept + list(new.values())


# train -------------------------------------------------------------------------------------------------
@app.command()
@friendly
def train(
    name: Optional[str] = typer.Argument(None, help="Registry dataset name."),
    model: str = typer.Option("gin", "--model", help="gin | gine | gcn | sage | gat | mlp (fingerprint MLP)"),
    width: float = typer.Option(1.0, "--width", help="Train a standalone model of this width (1, 0.5, 0.25, ...)."),
    seed: int = typer.Option(0, "--seed", "-s"),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: summary.json + model.safetensors (and "
                             "checkpoint/ while training: an interrupted run resumes when started again)."),
    epochs: int = typer.Option(100, "--epochs"),
    patience: int = typer.Option(30, "--patience", min=0, help="Stop after this many epochs without a better valid "
                                 "metric (0: train every epoch, as Hu et al. 2020)."),
    hidden: int = typer.Option(300, "--hidden"),
    layers: int = typer.Option(5, "--layers"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest for small molecular graphs)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (a GPU for the large datasets, e.g. HIV)."),
    split_protocol: str = typer.Option("fedmol", "--split-protocol", help="fedmol (the federated splits' test set) "
                                       "| hu2020 (Hu et al. 2020's splitter, to compare with published numbers)."),
    csv: Optional[Path] = CsvOpt, smiles_col: Optional[str] = SmilesCol, target_cols: Optional[str] = TargetCols,
    task: Optional[str] = TaskOpt, data_dir: Optional[Path] = DataDir, jobs: Optional[int] = Jobs,
):
    """Centralized reference: train one GNN on a scaffold split 80/10/10 with early stopping."""
    from fedmol.centralized import train_centralized

    import torch

    from fedmol.training import resolve_device
    torch.set_num_threads(threads)
    resolve_device(device)  # an unusable device is a one-line error before any work
    ds = _load(name, data_dir, csv, smiles_col, target_cols, task, jobs)
    if model == "mlp":  # its input: the default fingerprints, computed once and cached beside the graphs
        from fedmol.data.fingerprints import attach_fingerprints
        attach_fingerprints(ds)
    s = train_centralized(ds, out, model=model, width=width, seed=seed, epochs=epochs, patience=patience,
                          hidden=hidden, layers=layers, batch_size=batch_size, lr=lr, split_protocol=split_protocol,
                          device=device)
    (k, v), = s["test"].items()
    if s["resumed_from_epoch"]:
        console.print(f"resumed after epoch {s['resumed_from_epoch'] - 1} from {out}/checkpoint")
    console.print(f"{s['dataset']} {model} width {k}: test {s['metric']} {v:.4f} (valid {s['valid'][k]:.4f}, "
                  f"best epoch {s['best_epoch']}; last epoch {s['last_epoch']}: test {s['test_last'][k]:.4f}; "
                  f"{s['seconds']:.0f} s) -> {out}/summary.json")
    _warn(s["warnings"])


# run ---------------------------------------------------------------------------------------------------


#: the run settings ``fedmol run`` takes as options (fedmol.config.RunConfig declares them)
RUN_OPTIONS = ("algorithm", "dataset", "split", "partners", "alpha", "quantity_skew", "devices", "rounds", "seed",
               "model", "hidden", "layers", "dropout", "clients_per_round", "eval_every", "select", "patience",
               "faulty_links", "lossy_links", "task_split", "holders_per_task", "target_aware", "heads", "csv", "smiles_col", "target_cols", "task", "data_dir")


@app.command()
@friendly
@with_run_settings(*RUN_OPTIONS)
def run(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder."),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest for small molecular graphs)."),
    hp: list[str] = typer.Option([], "--hp", help="Algorithm hyperparameter KEY=VALUE (repeatable)."),
    dp_clip: Optional[float] = typer.Option(None, "--dp-clip", help="Differential privacy (DP-FedAvg): clip each "
                                            "partner's update to this L2 norm (hp dp_clip; default off)."),
    dp_noise: Optional[float] = typer.Option(None, "--dp-noise", help="DP noise multiplier sigma: Gaussian noise of "
                                             "std sigma * clip on each coordinate's sum (hp dp_noise; default 0)."),
    dp_delta: Optional[float] = typer.Option(None, "--dp-delta", help="DP delta of the epsilon written in "
                                             "summary.json's privacy (hp dp_delta; default 1e-5)."),
    backend: str = typer.Option("inprocess", "--backend", help="inprocess (one process) | flower-sim (Flower's "
                                "simulation engine on Ray: partners train in parallel; same results)."),
    client_cpus: int = typer.Option(1, "--client-cpus", min=1, help="flower-sim: CPUs Ray gives each partner."),
    **settings,
):
    """Run one federated experiment and write config.json, metrics.csv, summary.json, model.safetensors."""
    from fedmol.cli_common import check_run_inputs, run_config

    hparams = _run_hparams(hp, dp_clip, dp_noise, dp_delta)
    check_run_inputs(settings["algorithm"], hparams, out, settings["devices"], settings["split"])  # before any data
    cfg = run_config(settings, hparams=hparams)
    s = _run_on_backend(cfg, out, backend, threads, client_cpus)
    _print_run_summary(cfg, s, out)


def _run_hparams(hp: list[str], dp_clip, dp_noise, dp_delta) -> dict:
    """The ``--hp KEY=VALUE`` hyperparameters, with the ``--dp-*`` options that were given."""
    hparams = parse_hparams(hp)
    hparams.update({k: v for k, v in (("dp_clip", dp_clip), ("dp_noise", dp_noise), ("dp_delta", dp_delta))
                    if v is not None})
    return hparams


def _run_on_backend(cfg, out: Path, backend: str, threads: int, client_cpus: int) -> dict:
    """Run ``cfg`` in-process or on Flower's simulation engine; returns its summary."""
    from fedmol.fl.harness import run_federated

    import torch
    torch.set_num_threads(threads)
    if backend == "inprocess":
        return run_federated(cfg, out)
    if backend == "flower-sim":
        from fedmol.pilot.simulation import run_flower_sim
        return run_flower_sim(cfg, out, client_cpus=client_cpus, threads=threads, log=console.print)
    raise FedmolError(f"unknown --backend {backend!r}: inprocess | flower-sim")


def _print_run_summary(cfg, s: dict, out: Path) -> None:
    """The results table, warnings, the reported round, why the run stopped, and its costs."""
    from fedmol.fl.selection import FELL_BACK

    console.print(results_table(f"{cfg.algorithm} on {s['dataset']} ({s['rounds']} rounds, {s['seconds']:.0f} s)", s))
    _warn(undefined_metric_warnings(cfg, s, out) + below_chance_warnings(s))
    if s.get("selected_round") is not None:
        fell_back = str(s.get("selection", "")).partition(FELL_BACK)[2]
        console.print(f"reported: the global model of round {s['selected_round']} ({cfg.select}"
                      + (FELL_BACK + fell_back if fell_back else "") + ")", highlight=False)
    if s.get("stopped"):
        console.print(s["stopped"], highlight=False)
    console.print(f"{s['rounds_run']} rounds, {s['local_steps']} local steps, {s['molecules_seen']} molecules seen in "
                  f"training; sent {s['bytes_down'] / 1e6:.2f} MB down, {s['bytes_up'] / 1e6:.2f} MB up; "
                  f"{s['failures']} failed partner-rounds -> {out}")
    if s.get("unserved"):
        console.print(f"{s['unserved']} partner(s) cannot run any width the model is served at: no federated model, "
                      "left out of the per-partner scores (per_partner 'served': false)", highlight=False)


def below_chance_warnings(summary: dict) -> list[str]:
    """One line per width at which the reported model's test ROC-AUC is below chance (0.5) while
    its validation ROC-AUC is above it: the validation molecules do not predict how the model does
    on the held-out scaffolds."""
    if summary.get("metric") != "rocauc":
        return []
    test, valid = summary.get("test") or {}, summary.get("valid") or {}
    return [f"width {w}: test rocauc {t:.3f} is below chance (0.5) while validation scores {valid[w]:.3f}: the "
            "held-out scaffolds behave unlike the validation molecules; do not read this model's test score as "
            "its quality" for w, t in test.items()
            if isinstance(t, float) and t < 0.5 and isinstance(valid.get(w), float) and valid[w] > 0.5]


def undefined_metric_warnings(cfg, summary: dict, out: Path | None) -> list[str]:
    """One line per set ("test", "valid": the pooled validation molecules) on which the reported
    model's metric is undefined, saying why (e.g. "rocauc undefined on valid: only one class (all 0)
    for task 0"); the lines also go into ``summary`` and ``out/summary.json`` as ``warnings``.
    The reason depends on the labels only, so the federation is rebuilt only when a score is undefined."""
    import math

    scores = {where: summary.get(where) or {} for where in ("test", "valid")}
    if all(v is not None and math.isfinite(v) for by_width in scores.values() for v in by_width.values()):
        return []
    from fedmol.evaluate import Evaluator
    from fedmol.fl.harness import build_federation

    fed = build_federation(cfg, progress=False)
    ds = fed.dataset
    lines = Evaluator(ds.task_type, ds.num_tasks).undefined_warnings(
        scores, {"test": fed.test.labels, "valid": fed.valid.labels})
    summary["warnings"] = lines
    path = Path(out) / "summary.json" if out is not None else None
    if lines and path is not None and path.is_file():
        write_json(path, dict(json.loads(path.read_text()), warnings=lines))
    return lines


# bench -------------------------------------------------------------------------------------------------
@app.command()
@friendly
def bench(
    suite: str = typer.Argument(..., help="A suite of benchmarks/suites/ (quick, standard) or a suite TOML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: results/<suite> in the current folder; the committed ones: --out benchmarks/results/<suite>)."),
    algorithms: Optional[str] = typer.Option(None, "--algorithms", help="Comma-separated subset of the suite's algorithms."),
    no_references: bool = typer.Option(False, "--no-references", help="Skip the suite's references (local-only, centralized, ensembles)."),
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing: rebuild tables and plots from finished runs."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: the suite's, usually 1)."),
    workers: Optional[str] = typer.Option(None, "--workers", "-j",
                                          help="Runs at a time, each in its own process, or auto: one per free "
                                               "core (default: the suite's workers, 1 if it sets none; quick: auto)."),
    wide: bool = typer.Option(False, "--wide", help="Print every column of the results table (default: the columns "
                              "that read in 100 columns; results.md always has every column)."),
    data_dir: Optional[Path] = DataDir,
):
    """Run a benchmark suite (resumable: finished runs are skipped), then write and print its results table."""
    from fedmol.fl.bench import check_workers, run_suite

    names = [a.strip() for a in algorithms.split(",") if a.strip()] if algorithms else None
    workers = check_workers(workers.strip().lower()) if workers is not None else None
    run_suite(suite, out, data_dir=data_dir, algorithms=names, references=not no_references,
              report_only=report_only, threads=threads, workers=workers, console=console, wide=wide)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
