"""Verifying a submission archive: :func:`verify` returns a :class:`Report` or raises
:class:`~fedmol.leaderboard.archive.Rejected` with a one-line reason.

What is checked, in order (the first failure rejects):

1. **The archive** (:mod:`fedmol.leaderboard.archive`): paths, member kinds and names, sizes
   declared and actually decompressed, CRCs. Nothing is extracted to disk, nothing unpickled.
2. **The manifest** validates against :class:`~fedmol.leaderboard.schema.Manifest` (strict JSON:
   no NaN/inf, no duplicate keys; extra fields forbidden, every field required) and is
   self-consistent: run folders ``00..N-1``, exactly the referenced files in the archive with the
   declared sha256 and sizes, one algorithm and one set of hyperparameters and settings across
   runs, each run's seed, split and split hash agreeing with its config.
3. **Splits**: every split file named exists among the frozen files of ``data_splits/``, passes
   :func:`fedmol.data.splits.read_split` (structure and content hash), and its sha256 is the one
   the manifest and every run's config declare; its spec is the one in the config. The data file
   it was made from is found and checked by sha256 when the dataset loads.
4. **Track**: a manifest that says ``ranked`` must name a track of ``leaderboard/tracks.toml`` and
   qualify for it (its splits, device profile, rounds, fixed settings and exactly the track's
   seeds). ``unranked`` manifests skip this step (and must say why they are unranked).
5. **Per run**, with the federation rebuilt from the frozen split
   (:func:`fedmol.fl.harness.build_federation`: partners, sizes and device profiles from the seed;
   they must equal the config's): the algorithm is built from the registry with the run's
   hyperparameters and initialised on those partners, and must resolve to the declared
   hyperparameters, norm, backbone config and widths; the shipped weights (safetensors only; float
   tensors finite) must hold exactly its state's tensors with the same shapes and dtypes.
6. **Predictions re-score**: the shipped ``test_predictions.csv`` holds finite predictions for
   exactly the split's test rows at exactly the run's widths; scored with the
   :class:`~fedmol.evaluate.Evaluator` against the frozen test labels they give the claimed test
   metric at every width (abs. tolerance :data:`TOL_RESCORE`); each partner's claimed test metric
   is the one of its served width.
7. **Weights reproduce predictions**: the backbone ``fedmol.models.build(**config["model"])`` with
   the shipped weights reproduces the shipped predictions on the frozen test set (abs. tolerance
   :data:`TOL_WEIGHTS`) at every width where the saved state *is* the model the harness evaluated
   (:func:`weight_widths`, the algorithm's ``state_widths``). Elsewhere the predictions are only
   re-scored, and the report says so:

   * algorithms that evaluate the global model itself (``eval_model`` not overridden: FedAvg,
     FjORD, FedResCuE -- FjORD-style BN keeps per-width statistics in the state) and FedGen (its
     per-width BN buffers hold the statistics it served, pooled or not): every served width up to
     the model's width;
   * algorithms whose evaluated model is not the saved state at narrower widths: only the saved
     model's own width. HeteroFL recomputes static-BN statistics per width from the partners
     before evaluating and has one shared buffer for them, so it saves the width-1 pooled
     statistics; FedDF keeps one distilled student per width group and saves the widest.
8. ``rerun=K``: K runs chosen with ``random.Random(rerun_seed)`` are run again with
   :func:`fedmol.fl.harness.run_federated` from the manifest's config (split: the frozen file); the
   test and validation metrics at every width must match within :data:`TOL_RERUN` (runs are
   deterministic on one machine kind and library build) when this machine has the CPU numerics the
   manifest records (:mod:`fedmol.numerics`), else within ``CROSS_MACHINE_TOL`` (0.02: training
   amplifies last-bit differences of other BLAS kernels), and bytes up/down and failures exactly.

Not verified without ``rerun``: the validation metrics, bytes communicated, failures and timings
(they are reported by the submitter's run).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedmol.errors import FedmolError
from fedmol.leaderboard.archive import (MANIFEST, Limits, Rejected, load_safetensors, one_line, read_archive,
                                        strict_json)
from fedmol.leaderboard.schema import Manifest
from fedmol.leaderboard.submission import default_splits_dir, shared_settings
from fedmol.leaderboard.tracks import load_tracks, track_problems

TOL_RESCORE = 1e-9
TOL_WEIGHTS = 1e-5
TOL_RERUN = 1e-6
#: hyperparameters that size tensors built at init (bounded before anything is allocated)
SIZE_HPARAMS = {"gen_hidden": 4096, "noise_dim": 4096}


@dataclass
class RunCheck:
    id: str
    seed: int
    split: str
    test: dict[str, float]
    reproduced_widths: list[str]
    rescored_only_widths: list[str]
    max_abs_diff: float
    rerun: dict[str, Any] | None = None


@dataclass
class Report:
    file: str
    name: str
    track: str | None
    status: str
    unranked_reasons: list[str]
    algorithm: str
    dataset: str
    metric: str
    seeds: list[int]
    runs: list[RunCheck]
    checks: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict, repr=False)

    def to_dict(self, with_manifest: bool = False) -> dict:
        d = asdict(self)
        if not with_manifest:
            d.pop("manifest")
        return d



#: hyperparameters added to fedmol after schema 1 whose defaults change nothing, for every algorithm
#: ("*": differential privacy, FedRep's phases for private heads and FedAvgM's server step, off) or
#: one ("fedgen": pooled BN statistics and ordered dropout, off): a submission made before them lacks
#: them and resolves to these defaults
ADDED_LATER = {"*": ("dp_clip", "dp_noise", "dp_delta", "head_steps", "freeze_head", "server_lr",
                     "server_momentum"),
               "fedgen": ("pooled_bn", "sbn_batch_size", "ordered_dropout", "od_cap_every_step")}

def _json_roundtrip(x):
    """``x`` as a JSON file would give it back (tuples as lists, ints stay ints, other objects as
    their str): how configs are compared."""
    return json.loads(json.dumps(x, default=str))


def _width_key(w: float) -> str:
    return repr(float(w))


def weight_widths(algo_cls, widths: list[float], own: float) -> list[float]:
    """The served widths at which the saved global state alone reproduces the harness's evaluation
    (see the module docstring, step 7)."""
    return algo_cls.state_widths(widths, own)


def _validate_manifest(raw) -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise Rejected(f"manifest.json does not fit the schema: {where}: {first['msg']} "
                       f"({e.error_count()} problem(s))") from e


def _check_structure(m: Manifest, members: dict[str, bytes]) -> None:
    ids = [r.id for r in m.runs]
    if ids != [f"{i:02d}" for i in range(len(ids))]:
        raise Rejected(f"run ids must be 00, 01, ... in order, got {ids}")
    wanted = {MANIFEST}
    for r in m.runs:
        for ref, fname in ((r.weights, "model.safetensors"), (r.predictions, "test_predictions.csv")):
            if ref.path != f"runs/{r.id}/{fname}":
                raise Rejected(f"run {r.id}: file {ref.path!r} should be runs/{r.id}/{fname}")
            wanted.add(ref.path)
            data = members.get(ref.path)
            if data is None:
                raise Rejected(f"the manifest names {ref.path} but the archive lacks it")
            if len(data) != ref.bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
                raise Rejected(f"{ref.path}: its sha256 or size differs from the manifest's")
    extra = sorted(set(members) - wanted)
    if extra:
        raise Rejected(f"archive member {extra[0]!r} is not referenced by the manifest")
    keys = [(r.split, r.seed) for r in m.runs]
    if len(set(keys)) != len(keys):
        raise Rejected("two runs share a split and a seed")
    if m.seeds != sorted({r.seed for r in m.runs}):
        raise Rejected(f"manifest seeds {m.seeds} are not the runs' seeds {sorted({r.seed for r in m.runs})}")
    split_sha = {s.path: s.sha256 for s in m.splits}
    if len(split_sha) != len(m.splits) or sorted(split_sha) != sorted({r.split for r in m.runs}):
        raise Rejected("manifest splits are not exactly the runs' splits")
    if (m.status == "ranked") != (not m.unranked_reasons) or (m.status == "ranked" and m.track is None):
        raise Rejected("status 'ranked' needs a track and no unranked reasons; 'unranked' needs a reason")
    shared = _json_roundtrip(shared_settings(m.runs[0].config.model_dump()))
    for r in m.runs:
        c = r.config
        if c.run.seed != r.seed:
            raise Rejected(f"run {r.id}: seed {r.seed} but its config says {c.run.seed}")
        if not (c.run.algorithm == c.algorithm.name == m.algorithm):
            raise Rejected(f"run {r.id}: algorithm {c.algorithm.name!r} is not the manifest's {m.algorithm!r}")
        if _json_roundtrip(c.algorithm.hparams) != _json_roundtrip(m.hparams):
            raise Rejected(f"run {r.id}: hyperparameters differ from the manifest's")
        if c.split.sha256 != split_sha[r.split]:
            raise Rejected(f"run {r.id}: its config's split sha256 is not the one of {r.split}")
        if c.model.task_type != m.task_type:
            raise Rejected(f"run {r.id}: task type {c.model.task_type} is not the manifest's {m.task_type}")
        if _json_roundtrip(shared_settings(c.model_dump())) != shared:
            raise Rejected(f"run {r.id}: its settings differ from run 00's beyond the seed and split")
        if sorted(r.test) != sorted(_width_key(w) for w in c.widths):
            raise Rejected(f"run {r.id}: test metrics at widths {sorted(r.test)}, but the run serves "
                           f"{[_width_key(w) for w in c.widths]}")


def _check_splits(m: Manifest, splits_dir: Path) -> dict[str, tuple[Path, dict]]:
    from fedmol.data.splits import read_split

    out = {}
    root = splits_dir.resolve()
    for s in m.splits:
        local = (splits_dir / s.path).resolve()
        if root not in local.parents or not local.is_file():
            raise Rejected(f"split {s.path} is not one of the frozen split files in {splits_dir}")
        try:
            obj = read_split(local)
        except FedmolError as e:
            raise Rejected(f"frozen split {s.path} does not validate: {e}") from e
        if obj["sha256"] != s.sha256:
            raise Rejected(f"split {s.path}: the manifest's sha256 {s.sha256[:12]}... is not the frozen file's "
                           f"{obj['sha256'][:12]}...")
        if obj["spec"]["dataset"] != m.dataset:
            raise Rejected(f"split {s.path} is a split of {obj['spec']['dataset']}, not {m.dataset}")
        out[s.path] = (local, obj)
    return out


def _parse_predictions(data: bytes, what: str, tasks: list[str], task_type: str, widths: list[float],
                       test_rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{width key: (n_test, num_tasks) array in test order}`` of the model's outputs (logits for
    classification, whose probability columns must be their sigmoid) from a shipped predictions CSV
    (:func:`fedmol.fl.driver.prediction_header`)."""
    from fedmol.fl.driver import prediction_header, prediction_values

    num_tasks = len(tasks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(f"{what} is not UTF-8") from e
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    want = prediction_header(tasks, task_type)
    if header != want:
        raise Rejected(f"{what}: header must be {','.join(want)}")
    keys = {_width_key(w) for w in widths}
    pos = {int(r): i for i, r in enumerate(test_rows)}
    out = {k: np.full((len(test_rows), num_tasks), np.nan) for k in keys}
    seen = {k: np.zeros(len(test_rows), dtype=bool) for k in keys}
    for n, line in enumerate(reader, start=2):
        if len(line) != len(want):
            raise Rejected(f"{what} line {n}: {len(line)} fields, expected {len(want)}")
        row, width = line[0], line[1]
        if width not in keys:
            raise Rejected(f"{what} line {n}: width {width!r} is not one the run serves")
        if not row.isdigit() or int(row) not in pos:
            raise Rejected(f"{what} line {n}: row {row[:20]!r} is not a row of the split's test set")
        i = pos[int(row)]
        if seen[width][i]:
            raise Rejected(f"{what} line {n}: row {row} at width {width} appears twice")
        try:
            vals = [float(v) for v in line[2:]]
        except ValueError as e:
            raise Rejected(f"{what} line {n}: not a number: {e}") from e
        if not all(math.isfinite(v) for v in vals):
            raise Rejected(f"{what} line {n}: NaN or inf prediction")
        outputs = vals[num_tasks:] if task_type == "classification" else vals
        if not np.allclose(prediction_values(outputs, task_type), vals, rtol=0, atol=1e-12):
            raise Rejected(f"{what} line {n}: the probabilities are not the sigmoid of the logits")
        out[width][i] = outputs
        seen[width][i] = True
    for k in sorted(keys):
        if not seen[k].all():
            raise Rejected(f"{what}: {int((~seen[k]).sum())} test rows lack a prediction at width {k}")
    return out


def _check_partner_results(r, c, widths: list[float], algo_cls) -> None:
    """Each partner is credited exactly with the model its device can run (none when it runs no
    served width, ``docs/protocol.md``), and its test metric is that width's."""
    from fedmol.fl.driver import served_width

    caps = {e.pid: algo_cls.serving_cap(float(e.device.max_width)) for e in c.partners}
    for p in r.per_partner:
        can_run = served_width(tuple(widths), caps.get(p.partner, 0.0))
        if (p.width is None) != (can_run is None) or p.served != (can_run is not None):
            raise Rejected(f"run {r.id}: partner {p.partner} is {'' if p.served else 'not '}credited with a model, "
                           f"but its device {'cannot run any' if can_run is None else 'can run a'} served width")
        if can_run is None:
            if p.test is not None or p.valid is not None:
                raise Rejected(f"run {r.id}: partner {p.partner} has no federated model but claims scores")
            continue
        k = _width_key(p.width)
        if k not in r.test or p.test is None or abs(p.test - r.test[k]) > TOL_RESCORE:
            raise Rejected(f"run {r.id}: partner {p.partner}'s test metric is not the one of width {k}")


def _bound_hparams(hp: dict) -> None:
    for k, cap in SIZE_HPARAMS.items():
        v = hp.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= cap):
            raise Rejected(f"hyperparameter {k} = {v!r} is out of range (1..{cap})")


def _verify_run(r, m: Manifest, members: dict[str, bytes], split_path: Path, split_obj: dict,
                evaluator_cache: dict) -> RunCheck:
    c = r.config
    tag = f"run {r.id} (seed {r.seed})"
    fed = _rebuild_federation(c, split_path, tag)
    _check_federation(fed, c, m, split_obj, tag)
    algo_cls, algo = _build_algorithm(c, fed, tag)
    widths = _check_resolved(algo_cls, algo, c, tag)
    tensors = _check_weights(r.weights.path, members[r.weights.path], algo.state(), c.algorithm.name,
                             algo_cls.trains_backbone)
    preds, rescored = _rescore_predictions(r, m, members[r.predictions.path], fed, widths, evaluator_cache)
    _check_partner_results(r, c, widths, algo_cls)
    reproducible = weight_widths(algo_cls, widths, float(c.model.width))
    worst = _reproduce_predictions(r, algo_cls, tensors, fed.test, reproducible, preds)
    rep = sorted((_width_key(w) for w in reproducible), key=float, reverse=True)
    only = sorted((k for k in preds if k not in rep), key=float, reverse=True)
    return RunCheck(id=r.id, seed=r.seed, split=r.split, test=rescored, reproduced_widths=rep,
                    rescored_only_widths=only, max_abs_diff=worst)


def _rebuild_federation(c, split_path: Path, tag: str):
    """The federation the harness builds from the frozen split and the run's config."""
    from fedmol.fl.devices import PROFILE_NAMES
    from fedmol.config import RunConfig
    from fedmol.fl.harness import build_federation

    if c.run.devices not in PROFILE_NAMES:
        raise Rejected(f"{tag}: device profile {c.run.devices!r} is not built in ({', '.join(PROFILE_NAMES)}): "
                       "only built-in profiles can be verified")
    _bound_hparams(c.run.hparams)
    try:
        cfg = RunConfig(**{**c.run.model_dump(), "split": str(split_path), "data_dir": None})
        return build_federation(cfg, progress=False)
    except FedmolError as e:
        raise Rejected(f"{tag}: cannot rebuild the federation from the frozen split: {e}") from e


def _check_federation(fed, c, m: Manifest, split_obj: dict, tag: str) -> None:
    """The rebuilt federation's dataset, split and partners are the ones the config declares."""
    from fedmol.data.splits import SplitSpec

    ds = fed.dataset
    if ds.name != m.dataset or ds.task_type != m.task_type:
        raise Rejected(f"{tag}: the frozen split's dataset is {ds.name} ({ds.task_type}), not {m.dataset}")
    if SplitSpec.model_validate(split_obj["spec"]).model_dump() != c.split.spec.model_dump():
        raise Rejected(f"{tag}: its config's split spec is not the frozen file's")
    if c.split.partners != len(split_obj["partners"]) or c.split.test != len(split_obj["test"]):
        raise Rejected(f"{tag}: its config's split sizes are not the frozen file's")
    partners = [dict(pid=p.pid, n_train=p.n_train, n_valid=len(fed.local[p.pid].valid), device=p.device.to_dict())
                for p in fed.infos]
    if _json_roundtrip(partners) != _json_roundtrip([p.model_dump() for p in c.partners]):
        raise Rejected(f"{tag}: its partners (sizes or device profiles) are not those the split and seed give")


def _build_algorithm(c, fed, tag: str):
    """``(algorithm class, algorithm initialised on the federation's partners)``, as the harness builds them."""
    from fedmol.fl.setup import backbone_config
    from fedmol.fl.registry import get_algorithm

    try:
        algo_cls = get_algorithm(c.run.algorithm)
        base = backbone_config(c.run.model, fed.dataset, c.run.hidden, c.run.layers, c.run.dropout)
        algo = algo_cls(base, dict(c.run.hparams), c.run.seed)
        algo.init(fed.infos)
    except (FedmolError, ValueError, TypeError, KeyError) as e:
        raise Rejected(f"{tag}: the algorithm cannot be built from the manifest's config: {e}") from e
    return algo_cls, algo


def _check_resolved(algo_cls, algo, c, tag: str) -> list[float]:
    """The algorithm resolves to the declared hyperparameters, norm, backbone and widths; returns its widths."""
    # hyperparameters added after a submission was made resolve to behaviour-neutral defaults
    defaults = {**algo_cls.base_defaults, **algo_cls.defaults}
    later = ADDED_LATER["*"] + ADDED_LATER.get(algo_cls.name, ())
    recorded = {**{k: defaults[k] for k in later}, **c.algorithm.hparams}
    if (_json_roundtrip(algo.hp) != _json_roundtrip(recorded) or algo.norm != c.algorithm.norm
            or algo.scaler != c.algorithm.scaler):
        raise Rejected(f"{tag}: the resolved hyperparameters/norm differ from what {algo_cls.name} resolves")
    if _json_roundtrip(algo.model_config) != _json_roundtrip(c.model.model_dump()):
        raise Rejected(f"{tag}: the declared backbone {c.model.model_dump()} is not the one {algo_cls.name} builds")
    widths = [float(w) for w in algo.widths()]
    if sorted(widths, reverse=True) != [float(w) for w in sorted(c.widths, reverse=True)]:
        raise Rejected(f"{tag}: widths {c.widths} are not the ones {algo_cls.name} serves here ({widths})")
    return widths


def _check_weights(path: str, data: bytes, expected: dict, algorithm: str, fixed_shapes: bool = True) -> dict:
    """The shipped tensors, which must be exactly ``expected``'s names, dtypes and (``fixed_shapes``:
    a backbone, not a tree ensemble, whose own check runs when it loads) shapes."""
    tensors, meta = load_safetensors(data, path)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise Rejected(f"{path}: lacks tensor {missing[0]!r} of the declared model ({len(missing)} missing)")
    if unexpected:
        raise Rejected(f"{path}: tensor {unexpected[0]!r} is not part of the declared model")
    for k, t in expected.items():
        got = tensors[k]
        if fixed_shapes and tuple(got.shape) != tuple(t.shape):
            raise Rejected(f"{path}: tensor {k!r} has shape {list(got.shape)} but the declared model "
                           f"needs {list(t.shape)}")
        if got.dtype != t.dtype:
            raise Rejected(f"{path}: tensor {k!r} has dtype {got.dtype} but the declared model needs "
                           f"{t.dtype}")
    if "algorithm" in meta and meta["algorithm"] != algorithm:
        raise Rejected(f"{path}: its metadata names algorithm {meta['algorithm'][:40]!r}")
    return tensors


def _rescore_predictions(r, m: Manifest, data: bytes, fed, widths: list[float],
                         evaluator_cache: dict) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``(shipped predictions, their scores)`` by width key; each score must be the claimed test metric."""
    from fedmol.evaluate import Evaluator
    from fedmol.fl.driver import task_names

    ds = fed.dataset
    preds = _parse_predictions(data, r.predictions.path, task_names(fed.test, ds.num_tasks),
                               ds.task_type, widths, fed.test.rows)
    evaluator = evaluator_cache.setdefault((ds.task_type, ds.num_tasks), Evaluator(ds.task_type, ds.num_tasks))
    metric = evaluator.eval_metric
    if metric != m.metric:
        raise Rejected(f"the manifest's metric {m.metric} is not the Evaluator's {metric}")
    rescored = {}
    for k in sorted(preds):
        try:
            v = evaluator.eval({"y_true": fed.test.labels, "y_pred": preds[k]})[metric]
        except FedmolError as e:
            raise Rejected(f"{r.predictions.path}: cannot be scored at width {k}: {e}") from e
        claimed = r.test[k]
        if not math.isfinite(v) or abs(v - claimed) > TOL_RESCORE:
            raise Rejected(f"run {r.id}: claimed test {metric}@{k} = {claimed!r} but the shipped predictions score "
                           f"{v!r}")
        rescored[k] = v
    return preds, rescored


def _reproduce_predictions(r, algo_cls, tensors: dict, test, reproducible: list[float],
                           preds: dict[str, np.ndarray]) -> float:
    """The declared model (``algo_cls.shipped_model``: a backbone or a tree ensemble) with the shipped
    weights reproduces the shipped predictions at the ``reproducible`` widths; returns the largest
    absolute difference."""
    import torch

    from fedmol.training import predict

    model = algo_cls.shipped_model(r.config.model.model_dump())
    own = model.state_dict()
    try:
        model.load_state_dict({k: tensors[k] for k in own}, strict=True)
    except (RuntimeError, KeyError, FedmolError) as e:
        raise Rejected(f"{r.weights.path}: does not load into the declared backbone: {one_line(e)}") from e
    worst = 0.0
    with torch.no_grad():
        for w in reproducible:
            k = _width_key(w)
            _, p = predict(model, test, w)
            diff = float(np.max(np.abs(p.astype(np.float64) - preds[k]))) if len(p) else 0.0
            if not diff <= TOL_WEIGHTS:
                raise Rejected(f"run {r.id}: the shipped weights do not reproduce the shipped predictions at width "
                               f"{k} (max abs diff {diff:.3g} > {TOL_WEIGHTS:g})")
            worst = max(worst, diff)
    return worst


def _rerun(r, split_path: Path, progress: bool, numerics: dict | None = None) -> dict:
    """Run ``r`` again here; its metrics must match within :data:`TOL_RERUN` when this machine has the
    submission's CPU numerics, else within :data:`fedmol.numerics.CROSS_MACHINE_TOL` (the report says which)."""
    from fedmol.config import RunConfig
    from fedmol.fl.harness import run_federated
    from fedmol.numerics import rerun_tolerance

    tol, same = rerun_tolerance(numerics, TOL_RERUN)

    cfg = RunConfig(**{**r.config.run.model_dump(), "split": str(split_path), "data_dir": None})
    with tempfile.TemporaryDirectory(prefix="fedmol-rerun-") as tmp:
        s = run_federated(cfg, tmp, progress=progress)
    problems = []
    for part in ("test", "valid"):
        claimed = getattr(r, part)
        got = {k: float(v) for k, v in s[part].items()}
        if sorted(got) != sorted(claimed):
            problems.append(f"{part} widths {sorted(got)} vs claimed {sorted(claimed)}")
            continue
        for k in sorted(claimed):
            if not abs(got[k] - claimed[k]) <= tol:
                problems.append(f"{part} @{k}: rerun {got[k]:.8f} vs claimed {claimed[k]:.8f}"
                                + ("" if same else f" (another CPU kind: tolerance {tol:g})"))
    for part in ("bytes_up", "bytes_down", "failures"):
        if int(s[part]) != getattr(r, part):
            problems.append(f"{part}: rerun {s[part]} vs claimed {getattr(r, part)}")
    if problems:
        raise Rejected(f"run {r.id} (seed {r.seed}) does not reproduce: {'; '.join(problems)}")
    return {"seed": r.seed, "test": s["test"], "valid": s["valid"], "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"], "failures": s["failures"], "tolerance": tol, "same_numerics": same}


def verify(path: str | Path, *, rerun: int = 0, rerun_seed: int = 0, tracks_file: str | Path | None = None,
           splits_dir: str | Path | None = None, limits: Limits = Limits(), progress: bool = False) -> Report:
    """Verify a submission archive (see the module docstring); raises :class:`Rejected`."""
    members = read_archive(path, limits)
    m = _validate_manifest(strict_json(members[MANIFEST], "manifest.json"))
    checks = ["archive: safe paths, plain files, allowed members, sizes within limits, CRCs",
              "manifest: schema " + m.schema_version + " (strict), files and hashes, one configuration across runs"]
    _check_structure(m, members)
    splits = _check_splits(m, Path(splits_dir) if splits_dir is not None else default_splits_dir())
    checks.append("splits: frozen files in data_splits/, content sha256 matches: "
                  + ", ".join(f"{p} ({s.sha256[:12]})" for p, s in zip(splits, m.splits)))
    if m.status == "ranked":
        tracks = load_tracks(tracks_file)
        if m.track not in tracks:
            raise Rejected(f"ranked on unknown track {m.track!r} (known: {', '.join(sorted(tracks))})")
        problems = track_problems(tracks[m.track], [dict(split=r.split, seed=r.seed,
                                                         config=_json_roundtrip(r.config.model_dump()))
                                                    for r in m.runs])
        if problems:
            raise Rejected(f"claims a rank on track {m.track} but {problems[0]}")
        checks.append(f"track {m.track}: splits, devices, rounds, fixed settings and seeds {tracks[m.track].seeds}")
    else:
        checks.append("unranked: " + "; ".join(m.unranked_reasons))
    runs, cache = [], {}
    for r in m.runs:
        local, obj = splits[r.split]
        try:
            runs.append(_verify_run(r, m, members, local, obj, cache))
        except Rejected:
            raise
        except FedmolError as e:
            raise Rejected(f"run {r.id}: {e}") from e
    checks.append(f"predictions re-score to the claimed metrics (abs tol {TOL_RESCORE:g})")
    checks.append(f"weights reproduce the predictions (abs tol {TOL_WEIGHTS:g}) at widths "
                  + ", ".join(sorted({w for c in runs for w in c.reproduced_widths}, key=float, reverse=True)))
    if rerun:
        if not 0 < rerun <= len(m.runs):
            raise FedmolError(f"--rerun must be between 1 and the number of runs ({len(m.runs)})")
        pick = sorted(random.Random(rerun_seed).sample(range(len(m.runs)), rerun))
        recorded = m.provenance.numerics.model_dump() if m.provenance.numerics is not None else None
        for i in pick:
            runs[i].rerun = _rerun(m.runs[i], splits[m.runs[i].split][0], progress, recorded)
        tol = runs[pick[0]].rerun["tolerance"]
        checks.append(f"rerun of seed(s) {[m.runs[i].seed for i in pick]} reproduces test/valid metrics "
                      f"(abs tol {tol:g}" + ("" if runs[pick[0]].rerun["same_numerics"] else
                                             ": the runs were made on another CPU kind or did not record it")
                      + "), bytes and failures")
    return Report(file=str(path), name=m.name, track=m.track, status=m.status, unranked_reasons=m.unranked_reasons,
                  algorithm=m.algorithm, dataset=m.dataset, metric=m.metric, seeds=m.seeds, runs=runs, checks=checks,
                  manifest=m.model_dump())
