"""``fedmol bench SUITE``: run a benchmark grid from a TOML file, resumably, then report it.

A suite (``benchmarks/suites/<name>.toml``, or any TOML file) is the grid datasets x alphas x
device profiles x seeds x (algorithms + references), with shared run settings::

    name = "quick"                       # optional, default: the file's stem
    description = "..."
    datasets = ["b3db_classification"]  # registry names
    alphas = [0.1]                       # scaffold-Dirichlet heterogeneity
    devices = ["tiered"]                 # homogeneous | tiered | pharma | a profile TOML
    faulty_links = [0.0, 0.5]            # optional axis: P(upload truncated at a random narrower
                                         # width) for every partner; default [0.0]
    algorithms = ["fedavg", "heterofl"]  # registry names, or labels of [algorithm.<label>] tables
    seeds = [0]                          # each seed: its own split, device draw, model init
    references = ["local-only", "centralized", "ensemble"]   # [] for none; default local-only, centralized
    reference_models = ["gnn", "rf-ecfp4", "gbt-ecfp4"]      # default gnn, rf-ecfp4
    threads = 1                          # torch intra-op threads (1: fastest on small shared CPUs)
    workers = 2                          # runs at a time without --workers (default 1; "auto": the free cores)

    [run]            # fedmol.config.RunConfig settings shared by every run
    partners = 4
    rounds = 5
    model = "gin"
    hidden = 64
    layers = 3

    models = ["mlp", "gin"]   # optional axis: several backbones (then no [run] model), each with
    [model.mlp]               # its own run settings over [run]; its runs sit in runs/.../<backbone>/,
    hidden = 300              # its rows are named "<algorithm> (<family>)" (family mlp | gnn) and
    [model.gin]               # measured against their own family's references; the trees run once
    hidden = 64

    [hparams]        # hyperparameters every algorithm knows (the shared local-training ones)
    max_local_steps = 20

    [algorithm.feddf]            # hyperparameters of one algorithm
    ...
    [algorithm.fedavg_min]       # a variant: a label with its own registry algorithm and hparams
    base = "fedavg"
    hetero = "min"

    [reference]      # the references' training (fedmol.fl.references)
    min_epochs = 5
    patience = 5     # omit: keep the best of all epochs
    rf_jobs = 2      # scikit-learn n_jobs of the forests

Every name is checked before anything runs (unknown dataset, algorithm, hyperparameter, device
profile, reference: one clear error).

Layout under the output folder (default ``results/<name>`` in the current folder; the committed
results of the repository are made with ``--out benchmarks/results/<name>``)::

    suite.json                                   the resolved suite
    numerics.json                                the CPU numerics of the last invocation that ran runs
    runs/<dataset>/<devices>/a<alpha>/<algorithm>/s<seed>/           run_federated's files
    runs/<dataset>/<devices>-faulty<p>/a<alpha>/<algorithm>/s<seed>/  the same with faulty links p > 0
    runs/<dataset>/<devices>/a<alpha>/reference-<ref>-<model>/s<seed>/   config.json, summary.json
    results.csv, results.md, results_per_seed.csv, partner_gains.csv, plots/*.png

**Resume**: a run folder is only ever created complete: each run writes into
``s<seed>.partial/`` which is renamed to ``s<seed>/`` when it finished. A folder that is whole
(:func:`damage`: every file of a finished run present and readable) and whose recorded
configuration equals the suite's is skipped; one that is not whole is run again; one with another
configuration (the suite was edited, or the split method or featurizer version changed) is run
again and replaced; leftover ``.partial`` folders are
discarded. A failing run stops the suite with its error (finished runs stay; run it again to
resume).

**Faulty links** (``faulty_links``, an axis like ``alphas``): the references communicate nothing
(an ensemble sends each model once, over links taken as reliable),
so they run once per dataset x alpha x devices x seed and frame every faulty-links variant of it;
in the tables a variant is the devices label ``<devices>-faulty<p>`` (``<devices>`` when p = 0).

**Workers** (``workers`` > 1): the runs that are not finished go to that many worker processes
(spawned, each with the suite's torch threads); results are identical to a sequential run (every
run is seeded on its own), only the order in which they finish differs. ``workers = "auto"``: one
worker per free core (the cores this process may use minus the 1-minute load average), at most
one per run to do; the choice is printed.
"""

from __future__ import annotations

import math
import json
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fedmol.cores import free_cores
from fedmol.errors import FedmolError
from fedmol.fl.registry import get_algorithm
from fedmol.config import RunConfig
from fedmol.fl.harness import build_federation, run_federated
from fedmol.fl.references import (DEFAULT_REFERENCE_MODELS, DEFAULT_REFERENCES, TREE_MODELS, check_reference,
                                  neural_family, reference_config, run_reference, split_versions)
from fedmol.jsonio import write_json

#: where suite names are looked up (after ``./benchmarks/suites``)
SUITES_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"
TOP_KEYS = {"name", "description", "datasets", "alphas", "devices", "faulty_links", "algorithms", "seeds", "references",
            "reference_models", "threads", "workers", "run", "hparams", "algorithm", "reference", "models", "model"}
RUN_KEYS = set(RunConfig.model_fields) - {"algorithm", "dataset", "split", "alpha", "devices", "seed",
                                                   "hparams", "data_dir"}
REFERENCE_KEYS = {"min_epochs", "patience", "rf_jobs"}


@dataclass
class AlgoSpec:
    label: str
    base: str
    hparams: dict[str, Any]


@dataclass
class Suite:
    name: str
    path: Path
    description: str = ""
    datasets: list[str] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    faulty_links: list[float] = field(default_factory=lambda: [0.0])
    algorithms: list[AlgoSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    reference_models: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    threads: int | None = 1
    #: runs at a time when ``fedmol bench`` is not given ``--workers`` (each in its own process)
    workers: int | str = 1
    #: the backbones axis (``models``): each backbone's run settings (``[model.<name>]``) over ``run``
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def backbones(self) -> list[str]:
        return list(self.models) or [str(self.run.get("model", RunConfig.model_fields["model"].default))]

    def run_settings(self, backbone: str) -> dict[str, Any]:
        """``[run]`` with one backbone's settings over it."""
        return {**self.run, **self.models.get(backbone, {}), "model": backbone}

    def to_dict(self) -> dict:
        d = asdict(self)
        shipped = Path(self.path).resolve().parent == SUITES_DIR  # a shipped suite: the same string on every machine
        d["path"] = f"benchmarks/suites/{Path(self.path).name}" if shipped else str(self.path)
        return d


@dataclass
class Job:
    kind: str  # "federated" | "reference"
    dataset: str
    alpha: float
    devices: str
    seed: int
    method: str  # algorithm label, or "reference-<ref>-<model>"
    path: Path
    cfg: RunConfig
    reference: str | None = None
    model: str | None = None
    #: the devices labels whose table rows this run feeds (a reference frames every faulty-links variant)
    labels: tuple[str, ...] = ()
    #: the suite has several backbones: federated rows are named ``<algorithm> (<family>)``
    several_backbones: bool = False

    @property
    def group(self) -> tuple:
        """The runs that share one federation (split and featurization)."""
        return (self.dataset, self.alpha, self.devices, self.seed, self.cfg.model)

    @property
    def family(self) -> str:
        """The model family of the table rows: the neural backbone's (``gnn`` | ``mlp``) or the trees'
        (a reference's; federated boosted trees are ``gbt-ecfp4``: the same LightGBM on ECFP4)."""
        if self.kind == "federated":
            trains_backbone = get_algorithm(self.cfg.algorithm).trains_backbone
            return neural_family(self.cfg.model) if trains_backbone else "gbt-ecfp4"
        return neural_family(self.cfg.model) if self.model == "gnn" else self.model

    def entries(self) -> list[dict]:
        """What the report needs to know about this job: one entry per devices label it feeds."""
        method = self.method + (f" ({self.family})" if self.several_backbones and self.kind == "federated" else "")
        return [dict(kind=self.kind, dataset=self.dataset, alpha=self.alpha, devices=label, seed=self.seed,
                     method=method, reference=self.reference, model=self.model, family=self.family, path=self.path)
                for label in (self.labels or (self.devices,))]


# ------------------------------------------------------------------------------------------- suites
def find_suite(suite: str | Path) -> Path:
    """A suite file: a path, or a name looked up in ./benchmarks/suites then the repository's."""
    p = Path(suite)
    if p.suffix == ".toml" or p.is_file():
        if not p.is_file():
            raise FedmolError(f"suite file {p} not found")
        return p
    for folder in (Path.cwd() / "benchmarks" / "suites", SUITES_DIR):
        if (folder / f"{suite}.toml").is_file():
            return folder / f"{suite}.toml"
    known = sorted({q.stem for d in (Path.cwd() / "benchmarks" / "suites", SUITES_DIR) if d.is_dir()
                    for q in d.glob("*.toml")})
    raise FedmolError(f"unknown suite {suite!r}: no {suite}.toml in benchmarks/suites/ "
                      f"(known: {', '.join(known) or 'none'}); or give a path to a TOML file")


def _item(x, kind, where: str):
    """``x`` if it is a ``kind`` (int: a whole number; float: a finite number; str), never converted
    silently (``int(1.7)`` would change a seed); else one clear line."""
    what = {int: "a whole number", float: "a finite number", str: "a string"}[kind]
    ok = not isinstance(x, bool) and (isinstance(x, str) if kind is str else isinstance(x, int) if kind is int
                                      else isinstance(x, (int, float)) and math.isfinite(x))
    if not ok or (kind is int and not 0 <= x < 2**63):
        raise FedmolError(f"{where}: {x!r} is not {what}" + (" in [0, 2**63)" if kind is int else ""))
    return kind(x)


def check_run_table(run: dict, where: str) -> None:
    """The suite's ``[run]`` values are valid :class:`RunConfig` settings, strictly typed (``1.7`` is
    not a round count, ``"3"`` is not a number)."""
    from pydantic import ValidationError

    from fedmol.errors import requirement

    try:
        RunConfig.model_validate(run, strict=True)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0])
        raise FedmolError(f"{where}: [run] {key} = {run[key]!r}: must be "
                          f"{requirement(RunConfig.model_fields[key])}") from None


def _list(doc: dict, key: str, kind, where: str, default=None) -> list:
    v = doc.get(key, default)
    if v is None:
        raise FedmolError(f"{where}: missing {key!r} (a list)")
    if not isinstance(v, list):
        v = [v]
    out = [_item(x, kind, f"{where}: {key}") for x in v]
    if not out and key not in ("references", "reference_models"):
        raise FedmolError(f"{where}: {key} is empty")
    if len(set(map(str, out))) != len(out):
        raise FedmolError(f"{where}: {key} has duplicates: {v!r}")
    return out


def load_suite(suite: str | Path) -> Suite:
    """Read and check a suite (see the module docstring); nothing runs."""
    path = find_suite(suite)
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FedmolError(f"cannot read suite {path}: {e}") from e
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise FedmolError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    run = dict(doc.get("run", {}))
    bad = set(run) - RUN_KEYS
    if bad:
        raise FedmolError(f"{where}: unknown [run] key(s) {sorted(bad)}; known: {sorted(RUN_KEYS)}")
    check_run_table(run, where)
    ref = dict(doc.get("reference", {}))
    bad = set(ref) - REFERENCE_KEYS
    if bad:
        raise FedmolError(f"{where}: unknown [reference] key(s) {sorted(bad)}; known: {sorted(REFERENCE_KEYS)}")
    tables = doc.get("algorithm", {})
    algos = []
    for label in _list(doc, "algorithms", str, where):
        t = dict(tables.get(label, {}))
        base = str(t.pop("base", label))
        algos.append(AlgoSpec(label, base, t))
    stray = set(tables) - {a.label for a in algos}
    if stray:
        raise FedmolError(f"{where}: [algorithm.{sorted(stray)[0]}] is not in algorithms = "
                          f"{[a.label for a in algos]}")
    models = _backbones(doc, run, where)
    s = Suite(name=str(doc.get("name", path.stem)), path=path, description=str(doc.get("description", "")),
              datasets=_list(doc, "datasets", str, where), alphas=_list(doc, "alphas", float, where),
              devices=_list(doc, "devices", str, where),
              faulty_links=_list(doc, "faulty_links", float, where, [0.0]), algorithms=algos,
              seeds=_list(doc, "seeds", int, where, [0]),
              references=_list(doc, "references", str, where, list(DEFAULT_REFERENCES)),
              reference_models=_list(doc, "reference_models", str, where, list(DEFAULT_REFERENCE_MODELS)),
              run=run, hparams=dict(doc.get("hparams", {})), reference=ref, threads=doc.get("threads", 1),
              workers=doc.get("workers", 1), models=models)
    check_suite(s)
    return s


def _backbones(doc: dict, run: dict, where: str) -> dict[str, dict]:
    """The backbones axis: ``models = ["mlp", "gin"]`` with each one's ``[model.<name>]`` settings
    (hidden, layers, dropout, ...); {} when the suite has one backbone (``[run] model``)."""
    tables = doc.get("model", {})
    if "models" not in doc:
        if tables:
            raise FedmolError(f"{where}: [model.<name>] tables need the backbones axis models = [...]")
        return {}
    if "model" in run:
        raise FedmolError(f"{where}: the backbone is set both as the axis models and in [run] model; keep one")
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise FedmolError(f"{where}: model must be tables [model.<name>] of run settings")
    names = _list(doc, "models", str, where)
    stray = set(tables) - set(names)
    if stray:
        raise FedmolError(f"{where}: [model.{sorted(stray)[0]}] is not in models = {names}")
    out = {}
    for name in names:
        t = dict(tables.get(name, {}))
        bad = set(t) - (RUN_KEYS - {"model"})
        if bad:
            raise FedmolError(f"{where}: unknown [model.{name}] key(s) {sorted(bad)}; known: {sorted(RUN_KEYS - {'model'})}")
        check_run_table(t, f"{where}: [model.{name}]")
        out[name] = t
    return out


def check_suite(s: Suite) -> None:
    """Every name of the suite resolves: datasets, algorithms (and their hyperparameters), devices."""
    from fedmol.data.registry import get_info
    from fedmol.fl.devices import assign_devices
    from fedmol.fl.registry import ALGORITHMS

    where = f"suite {s.name}"
    for d in s.datasets:
        try:
            get_info(d)
        except FedmolError as e:
            raise FedmolError(f"{where}: {e}") from e
    partners = int(s.run.get("partners", RunConfig.model_fields["partners"].default))
    for dev in s.devices:
        try:
            assign_devices(dev, [1] * partners, 0)
        except FedmolError as e:
            raise FedmolError(f"{where}: {e}") from e
    for a in s.algorithms:
        try:
            cls = get_algorithm(a.base)
        except FedmolError as e:
            raise FedmolError(f"{where}: algorithm {a.label!r}: {e}") from e
        except (ImportError, AttributeError) as e:
            raise FedmolError(f"{where}: algorithm {a.label!r} is registered ({ALGORITHMS.get(a.base)}) but cannot "
                              f"be loaded: {e}; drop it from the suite or run with --algorithms") from e
        for backbone in s.backbones:
            try:
                cls(dict(name=backbone), {**s.hparams, **a.hparams}, 0, s.run.get("heads", "shared"))
            except FedmolError as e:
                raise FedmolError(f"{where}: algorithm {a.label!r}: {e}") from e
    for r in s.references:
        for m in s.reference_models:
            check_reference(r, m)
    for p in s.faulty_links:
        if not 0.0 <= p <= 1.0:
            raise FedmolError(f"{where}: faulty_links must be probabilities in [0, 1], got {p!r}")
    if "faulty_links" in s.run and s.faulty_links != [0.0]:
        raise FedmolError(f"{where}: faulty_links is set both as the axis and in [run]; keep one")
    if s.threads is not None and (not isinstance(s.threads, int) or s.threads < 1):
        raise FedmolError(f"{where}: threads must be a positive integer, got {s.threads!r}")
    check_workers(s.workers, f"{where}: workers")


def check_workers(workers, label: str = "--workers"):
    """``workers`` as a suite or the CLI gives it: a positive integer or ``"auto"`` (else a one-line error)."""
    if workers == "auto":
        return workers
    if isinstance(workers, str) and workers.strip().isdigit():
        workers = int(workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FedmolError(f"{label} must be a positive integer or \"auto\", got {workers!r}")
    return workers


def auto_workers(workers, n_todo: int) -> tuple[int, str]:
    """``(runs at a time, note)``: ``workers`` itself, or for ``"auto"`` one run per free core
    (:func:`free_cores`), at most ``n_todo``; the note says what "auto" saw."""
    if workers != "auto":
        return max(1, int(workers)), ""
    cores, free, load = free_cores()
    chosen = max(1, min(free, n_todo))
    return chosen, f" (auto: {free} of {cores} cores free at load {load:.1f})"


def default_out(s: Suite) -> Path:
    """``results/<name>`` in the current folder: a benchmark never overwrites the committed
    results under ``benchmarks/results/`` unless asked to with ``--out``."""
    return Path("results") / s.name


def _tag(devices: str) -> str:
    return Path(devices).stem if devices.endswith(".toml") else devices


def devices_label(devices: str, faulty: float) -> str:
    """The devices column of the tables: ``tiered``, or ``tiered-faulty0.5`` with faulty links."""
    return _tag(devices) + (f"-faulty{faulty:g}" if faulty else "")


def alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}"


def plan(s: Suite, out: Path, data_dir: str | Path | None = None, algorithms: list[str] | None = None,
         references: bool = True) -> list[Job]:
    """The suite's jobs, grouped by (dataset, alpha, devices, seed): references first, then algorithms."""
    algos = s.algorithms
    if algorithms is not None:
        labels = {a.label for a in s.algorithms}
        missing = [a for a in algorithms if a not in labels]
        if missing:
            raise FedmolError(f"suite {s.name} has no algorithm(s) {missing}; it has {sorted(labels)}")
        algos = [a for a in s.algorithms if a.label in algorithms]
    jobs = []
    for ds in s.datasets:
        for alpha in s.alphas:
            for dev in s.devices:
                for seed in s.seeds:
                    for backbone in s.backbones:
                        jobs += _split_jobs(s, out, ds, alpha, dev, seed, backbone, algos, references,
                                            str(data_dir) if data_dir else None)
    return jobs


def _split_jobs(s: Suite, out: Path, ds: str, alpha: float, dev: str, seed: int, backbone: str,
                algos: list[AlgoSpec], references: bool, data_dir: str | None) -> list[Job]:
    """One split's jobs for one backbone: its references, then its algorithms. With several
    backbones, a backbone's runs sit in a folder of its own; the trees (no backbone) run once."""
    several = len(s.backbones) > 1
    common = dict(dataset=ds, alpha=alpha, devices=dev, seed=seed, data_dir=data_dir, **s.run_settings(backbone))
    labels = tuple(devices_label(dev, p) for p in s.faulty_links)
    jobs = []
    if references:  # no communication, so one run frames every faulty-links variant
        base = out / "runs" / ds / _tag(dev) / alpha_tag(alpha)
        for ref in s.references:
            for model in s.reference_models:
                if model in TREE_MODELS and backbone != s.backbones[0]:
                    continue
                name = f"reference-{ref}-{model}"
                where = base / backbone if several and model not in TREE_MODELS else base
                jobs.append(Job("reference", ds, alpha, dev, seed, name, where / name / f"s{seed}",
                                RunConfig(algorithm="fedavg", hparams=dict(s.hparams), **common),
                                ref, model, labels, several))
    for p, label in zip(s.faulty_links, labels):
        base = out / "runs" / ds / label / alpha_tag(alpha)
        links = dict(faulty_links=p) if "faulty_links" not in s.run else {}
        for a in algos:
            if not get_algorithm(a.base).trains_backbone and backbone != s.backbones[0]:
                continue  # federated trees: no backbone, one run
            where = base / backbone if several and get_algorithm(a.base).trains_backbone else base
            jobs.append(Job("federated", ds, alpha, dev, seed, a.label, where / a.label / f"s{seed}",
                            RunConfig(algorithm=a.base, hparams={**s.hparams, **a.hparams}, **common, **links),
                            labels=(label,), several_backbones=several))
    return jobs


# ------------------------------------------------------------------------------------------- running
def _json_roundtrip(obj) -> Any:
    """``obj`` as a JSON file would give it back (tuples as lists, ...): how configs are compared."""
    return json.loads(json.dumps(obj))


def expected_config(job: Job, s: Suite) -> dict:
    if job.kind == "reference":
        return reference_config(job.cfg, job.reference, job.model, **_ref_train(s))
    run = job.cfg.model_dump()
    run.pop("data_dir")
    return _json_roundtrip(dict(run=run, split=split_versions()))


def recorded_config(job: Job) -> dict | None:
    try:
        conf = json.loads((job.path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if job.kind == "reference":
        return conf
    run = dict(conf.get("run", {}))
    run.pop("data_dir", None)
    spec = conf.get("split", {}).get("spec", {})
    return _json_roundtrip(dict(run=run, split=dict(method=spec.get("method"), featurizer_version=spec.get("featurizer_version"))))


def status(job: Job, s: Suite) -> str:
    """"done" (finished with this configuration and whole), "stale" (finished with another),
    "damaged" (a file of it is missing or unreadable: :func:`damage`) or "todo"."""
    if not job.path.exists():
        return "todo"
    if damage(job):
        return "damaged"
    return "done" if recorded_config(job) == expected_config(job, s) else "stale"


#: the files a finished run folder holds (the report reads its summary; a submission its weights)
WHOLE_FEDERATED = ("config.json", "summary.json", "metrics.csv", "model.safetensors", "test_predictions.csv")
WHOLE_REFERENCE = ("config.json", "summary.json")


def damage(job: Job) -> str | None:
    """Why the run folder of ``job`` is not whole (a file missing, a JSON file that does not parse as
    an object, a summary without its scores, weights that are not a readable safetensors file), else None."""
    for name in WHOLE_REFERENCE if job.kind == "reference" else WHOLE_FEDERATED:
        f = job.path / name
        if not f.is_file():
            return f"{name} missing"
        if name.endswith(".json"):
            try:
                obj = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                return f"{name} unreadable"
            if not isinstance(obj, dict) or (name == "summary.json" and not (
                    isinstance(obj.get("test"), dict) and obj["test"] and isinstance(obj.get("metric"), str))):
                return f"{name} holds no run summary" if name == "summary.json" else f"{name} is not an object"
        elif name.endswith(".safetensors"):
            try:
                from safetensors import safe_open

                with safe_open(str(f), "pt") as st:
                    st.keys()
            except Exception:  # noqa: BLE001 - safetensors' own error type: truncated or corrupt
                return f"{name} unreadable"
    return None


def _ref_train(s: Suite) -> dict:
    return dict(min_epochs=int(s.reference.get("min_epochs", 5)), patience=s.reference.get("patience"))


def run_job(job: Job, s: Suite, fed=None, progress: bool = True) -> dict:
    """Run one job into ``<path>.partial`` and rename it to ``<path>`` once complete."""
    tmp = job.path.with_name(job.path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if job.kind == "reference":
        summary = run_reference(job.cfg, job.reference, job.model, tmp, fed=fed, progress=progress,
                                n_jobs=s.reference.get("rf_jobs", -1), **_ref_train(s))
    else:
        summary = run_federated(job.cfg, tmp, progress=progress)
    if job.path.exists():
        shutil.rmtree(job.path)
    tmp.rename(job.path)
    return summary


def _worker_run(job: Job, s: Suite, threads: int | None) -> tuple[dict, float]:
    """One run in a worker process (no live progress bars: several workers share the terminal)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    summary = run_job(job, s, None, progress=False)
    return summary, time.perf_counter() - t0


def _run_parallel(todo: list, s: Suite, threads: int | None, workers: int, console: Console,
                  finished: list[Job], note: str = "") -> int:
    """Run ``todo`` in ``workers`` spawned processes; the first failure stops the suite (finished runs stay)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ran = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker_run, job, s, threads): (head, rel, job) for head, rel, job, _ in todo}
        stale = sum(1 for *_, note in todo if note)
        console.print(f"{len(todo)} runs to do on {workers} worker processes{note}"
                      + (f" ({stale} finished with another configuration: running again)" if stale else ""),
                      highlight=False, soft_wrap=True)
        _flush(console)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                head, rel, job = futures[f]
                err = f.exception()
                if err is not None:
                    for q in pending:
                        q.cancel()
                    console.print(f"{head} FAIL  {rel}: {err}", highlight=False, soft_wrap=True)
                    raise err
                summary, sec = f.result()
                ran += 1
                finished.append(job)
                console.print(f"{head} done  {rel}  {sec:.1f} s  {_headline(summary)}", highlight=False,
                              soft_wrap=True)
                _flush(console)
    return ran


def _flush(console: Console) -> None:
    try:  # a log file should show progress as it happens, not when the suite ends
        console.file.flush()
    except (AttributeError, OSError, ValueError):
        pass


def _headline(summary: dict) -> str:
    test = summary.get("test", {})
    key = "mean" if "mean" in test else (max(test, key=float) if test else None)
    if key is None:
        return ""
    return f"test {summary['metric']}@{key} {test[key]:.4f}"


def settings_notes(s: Suite, threads: int | None) -> list[str]:
    """The suite's settings, as lines for the top of ``results.md``."""
    run = {**{k: f.default for k, f in RunConfig.model_fields.items() if k in RUN_KEYS}, **s.run}
    lines = [f"Suite `{s.name}` ({s.path.name}){': ' + s.description if s.description else ''}."]
    keys = [k for k in ("partners", "rounds", "patience", "model", "hidden", "layers", "dropout", "eval_every", "select")
            if not (s.models and k in ("model", *{k for t in s.models.values() for k in t}))]
    lines.append("Runs: " + ", ".join(f"{k} {run[k]}" for k in keys)
                 + "".join(f"; backbone {b}: {t or 'defaults'}" for b, t in s.models.items()) +
                 f"; shared hparams {s.hparams or '{}'}"
                 + "".join(f"; {a.label}: {a.base} {a.hparams}" for a in s.algorithms if a.hparams or a.base != a.label)
                 + f"; seeds {s.seeds}; torch threads {threads}."
                 + (f" Faulty links (P(upload truncated at a random narrower width), every partner): "
                    f"{', '.join(f'{p:g}' for p in s.faulty_links)}; devices label `<profile>-faulty<p>`; the "
                    f"references (no communication) frame every variant." if s.faulty_links != [0.0] else ""))
    ref = {"min_epochs": 5, "patience": None, **s.reference}
    lines.append(f"References: {', '.join(s.references) or 'none'} x {', '.join(s.reference_models)}; GNN epochs "
                 f"max({ref['min_epochs']}, rounds x local_epochs), each capped like a round's local work, trained "
                 f"like a federated partner (the run seed's common start weights, Adam rebuilt every round of "
                 f"local_epochs epochs, the best validation score among the rounds a federated run evaluates; "
                 f"patience {ref['patience']}); forests: ECFP4 2048 bits, 200 trees; boosted trees (gbt-ecfp4): "
                 f"LightGBM on ECFP4, 300 trees, learning rate 0.05, depth 6; ensembles: the partners' local "
                 f"models averaged, weighted by training-set size (trees: probabilities, GNN: logits); best local: "
                 f"per partner the local family with the best score on its own validation molecules.")
    return lines


def _run_sequential(todo: list, s: Suite, threads: int | None, console: Console, finished: list,
                    progress: bool) -> int:
    """The unfinished runs one after the other in this process (references of one split share its
    federation); returns how many ran."""
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    fed_key, fed = None, None
    try:
        for head, rel, job, note in todo:
            console.print(f"{head} run   {rel}{note}", highlight=False, soft_wrap=True)
            if job.kind == "reference" and fed_key != job.group:
                fed_key, fed = job.group, build_federation(job.cfg, progress)
            tj = time.perf_counter()
            summary = run_job(job, s, fed if job.kind == "reference" else None, progress)
            finished.append(job)
            console.print(f"{' ' * len(head)} done  {time.perf_counter() - tj:.1f} s  {_headline(summary)}",
                          highlight=False, soft_wrap=True)
    finally:
        torch.set_num_threads(old_threads)
    return len(todo)


def _print_table(rep: dict, s: Suite, console: Console, wide: bool) -> None:
    """The results table with its verdicts; a file or pipe gets the width the table needs instead of
    rich's 80 columns."""
    from fedmol.fl import report

    out = console if console.is_terminal else Console(file=console.file, width=max(console.width, 170 if wide else 100))
    out.print(report.rich_table(rep["table"], title=f"fedmol bench {s.name}", verdict=rep.get("verdicts"), wide=wide))


def run_suite(suite: str | Path | Suite, out: str | Path | None = None, *, data_dir: str | Path | None = None,
              algorithms: list[str] | None = None, references: bool = True, report_only: bool = False,
              threads: int | None = None, workers: int | None = None, progress: bool = True,
              console: Console | None = None, show_table: bool = True, wide: bool = False) -> dict:
    """Run (or resume) a suite, then write its tables and plots.

    ``algorithms``: a subset of the suite's algorithm labels; ``references=False`` skips the
    references; ``report_only``: run nothing, report the finished runs. ``threads`` overrides the
    suite's torch thread count; ``workers`` (default: the suite's ``workers``) > 1 runs the unfinished
    runs in that many processes.
    Returns ``{"suite", "out", "total", "ran", "skipped", "missing",
    "seconds", "table" (pandas), "files"}``.
    """
    from fedmol.fl import report

    t0 = time.perf_counter()
    console = console or Console()
    progress = progress and console.is_terminal  # live bars only where they can redraw in place
    s = suite if isinstance(suite, Suite) else load_suite(suite)
    out = Path(out) if out is not None else default_out(s)
    jobs = plan(s, out, data_dir, algorithms, references)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "suite.json", s.to_dict())
    n_threads = threads if threads is not None else s.threads
    triage = _triage(jobs, s, out, report_only, console)
    finished = list(triage.finished)
    ran = _run_todo(triage.todo, s, n_threads, workers, console, finished, progress)
    if ran:  # the CPU numerics the runs were made with: a rerun on another CPU kind agrees only to ~1e-2
        from fedmol.numerics import numerics, numerics_id

        write_json(out / "numerics.json", dict(id=numerics_id(), numerics=numerics()))
    done_ids = {id(job) for job in finished}  # plan order, whatever order the workers finished in
    entries = [e for job in jobs if id(job) in done_ids for e in job.entries()]
    rep = report.write_report(entries, out, title=f"fedmol bench {s.name}", notes=settings_notes(s, n_threads))
    seconds = round(time.perf_counter() - t0, 1)
    if show_table and not rep["table"].empty:
        _print_table(rep, s, console, wide)
    skipped, missing = len(triage.finished), triage.missing
    console.print(f"{ran} run, {skipped} skipped" + (f", {missing} left out" if missing else "")
                  + f" in {seconds:.0f} s -> {out / 'results.md'}", highlight=False, soft_wrap=True)
    return dict(suite=s.name, out=out, total=len(jobs), ran=ran, skipped=skipped, missing=missing, seconds=seconds,
                table=rep["table"], files=rep["files"])


@dataclass
class Triage:
    """A suite's planned jobs by what this call does with them."""

    finished: list[Job] = field(default_factory=list)  # finished with this configuration and whole: skipped
    todo: list[tuple] = field(default_factory=list)    # (progress head, run folder, job, why it runs again or "")
    missing: int = 0                                   # not finished, left out of a report-only call


def _triage(jobs: list[Job], s: Suite, out: Path, report_only: bool, console: Console) -> Triage:
    """Sort ``jobs`` by their :func:`status`, with one line each for those that will not run."""
    triage = Triage()
    width = len(str(len(jobs)))
    for i, job in enumerate(jobs, 1):
        rel = job.path.relative_to(out / "runs")
        state = status(job, s)
        head = f"[{i:>{width}}/{len(jobs)}]"
        if state == "done":
            triage.finished.append(job)
            console.print(f"{head} skip  {rel} (finished)", highlight=False, soft_wrap=True)
        elif report_only:
            triage.missing += 1
            why = dict(stale="finished with another configuration", damaged=f"not whole: {damage(job)}").get(
                state, "not run")
            console.print(f"{head} --    {rel} ({why}: left out)", highlight=False, soft_wrap=True)
        else:
            note = dict(stale=" (configuration changed: running again)",
                        damaged=f" (not whole: {damage(job)}: running again)").get(state, "")
            triage.todo.append((head, rel, job, note))
    return triage


def _run_todo(todo: list, s: Suite, threads: int | None, workers: int | None, console: Console, finished: list,
              progress: bool) -> int:
    """Run ``todo`` seed-major (a stopped suite has whole seeds), in this process or in ``workers``
    (default: the suite's) processes; returns how many ran."""
    todo = sorted(todo, key=lambda t: s.seeds.index(t[2].seed))
    workers, note = auto_workers(check_workers(workers if workers is not None else s.workers), len(todo))
    if todo and workers == 1:
        if note:
            console.print(f"{len(todo)} runs to do in this process{note}", highlight=False, soft_wrap=True)
        return _run_sequential(todo, s, threads, console, finished, progress)
    if todo:
        return _run_parallel(todo, s, threads, workers, console, finished, note)
    return 0

