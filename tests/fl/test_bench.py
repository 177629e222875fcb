import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from fedmol.errors import FedmolError
from fedmol.fl import bench, registry, report

SUITE = """
name = "tiny"
datasets = ["bace"]
alphas = [1.0]
devices = ["tiered"]
algorithms = ["fedavg", "fjord"]
seeds = [0, 1]
references = ["local-only", "centralized"]
reference_models = ["gnn"]

[run]
partners = 3
rounds = 1
hidden = 16
layers = 2

[hparams]
max_local_steps = 2

[reference]
min_epochs = 1
"""


def quiet():
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def write(tmp_path, text=SUITE, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    suite = write(tmp)
    console, buf = quiet()
    res = bench.run_suite(suite, tmp / "out", progress=False, console=console)
    return suite, tmp / "out", res, buf.getvalue()


def test_runs_every_job_into_the_layout(finished):
    _, out, res, log = finished
    assert res["total"] == res["ran"] == 8 and res["skipped"] == 0  # 2 seeds x (2 references + 2 algorithms)
    base = out / "runs" / "bace" / "tiered" / "a1"
    for method in ("fedavg", "fjord", "reference-local-only-gnn", "reference-centralized-gnn"):
        for seed in (0, 1):
            assert (base / method / f"s{seed}" / "summary.json").is_file()
            assert not (base / method / f"s{seed}.partial").exists()
    assert (base / "fedavg" / "s0" / "metrics.csv").is_file()
    assert log.count(" run ") == 8 and "fedmol bench tiny" in log


def test_results_table(finished):
    _, out, res, _ = finished
    table = pd.read_csv(out / "results.csv")
    assert list(table["method"]) == ["local-only (gnn)", "centralized (gnn)", "fedavg", "fjord"]
    assert list(table["kind"]) == ["reference", "reference", "federated", "federated"]
    assert (table["n_seeds"] == 2).all() and (table["dataset"] == "bace").all() and (table["alpha"] == 1.0).all()
    for col in ("test@1.0_mean", "test@1.0_std", "test@0.25_mean", "test@partner_mean", "gain_test_mean",
                "gain_valid_mean", "share_gain_test_mean", "mb_mean", "mb_std"):
        assert col in table.columns, col
    per_seed = pd.read_csv(out / "results_per_seed.csv")
    assert len(per_seed) == 8
    fedavg = per_seed[per_seed["method"] == "fedavg"]["test@1.0"]
    row = table.set_index("method").loc["fedavg"]
    assert row["test@1.0_mean"] == pytest.approx(fedavg.mean())
    assert row["test@1.0_std"] == pytest.approx(fedavg.std(ddof=1))  # sample std over seeds
    assert row["mb_mean"] > 0 and np.isfinite(row["gain_test_mean"]) and 0 <= row["share_gain_test_mean"] <= 1
    fjord = table.set_index("method").loc["fjord"]
    assert np.isfinite(fjord["test@0.5_mean"]) and np.isfinite(fjord["test@0.25_mean"])  # served at every cap
    fed = per_seed[per_seed["kind"] == "federated"]  # which round each run reports, and its last round's score
    assert (fed["selected_round"] == 0).all() and fed["test_last@1.0"].between(0, 1).all()
    assert per_seed[per_seed["kind"] == "reference"]["selected_round"].isna().all()
    assert np.isnan(table.set_index("method").loc["local-only (gnn)", "gain_test_mean"])  # no gain over itself
    gains = pd.read_csv(out / "partner_gains.csv")
    assert set(gains["method"]) == {"centralized (gnn)", "fedavg", "fjord"} and len(gains) == 3 * 2 * 3


def test_markdown_and_plots(finished):
    _, out, res, _ = finished
    md = (out / "results.md").read_text()
    assert "ddof=1" in md and "| method |" in md and "| fedavg |" in md and " ± " in md
    assert md.count("| bace |") == 4
    assert len(res["files"]["plots"]) == 3
    for kind in ("rounds", "mb", "widths"):
        png = out / "plots" / f"{kind}_bace_tiered_a1.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reported_point_is_mean_selected_round_and_score():
    entries = [dict(method="fjord", summary=dict(selected_round=r)) for r in (4, 8)]
    entries.append(dict(method="reference", summary={}))
    table = pd.DataFrame({"method": ["fjord", "fedavg"], "test@1.0_mean": [0.7, np.nan]})
    assert report._reported_point(entries, table, "fjord", "1.0") == (6.0, 0.7)
    assert report._reported_point(entries, table, "fedavg", "1.0") is None  # no selected round, no score
    assert report._reported_point(entries, table, "fjord", "0.5") is None  # width not in the table


def test_second_invocation_skips_every_finished_run(finished):
    suite, out, _, _ = finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    console, buf = quiet()
    res = bench.run_suite(suite, out, progress=False, console=console)
    assert res["ran"] == 0 and res["skipped"] == 8 and buf.getvalue().count(" skip ") == 8
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")} == stamps


def test_resume_reruns_only_the_unfinished_run(finished, tmp_path):
    suite, out, _, _ = finished
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    run = out2 / "runs" / "bace" / "tiered" / "a1" / "fedavg" / "s1"
    shutil.rmtree(run)
    (run.parent / "s1.partial").mkdir()  # an interrupted attempt
    (run.parent / "s1.partial" / "metrics.csv").write_text("round\n0\n")
    console, buf = quiet()
    res = bench.run_suite(suite, out2, progress=False, console=console, show_table=False)
    assert res["ran"] == 1 and res["skipped"] == 7
    assert (run / "summary.json").is_file() and not (run.parent / "s1.partial").exists()


def test_edited_suite_reruns_stale_runs(finished, tmp_path):
    suite, out, _, _ = finished
    out2 = tmp_path / "out"
    shutil.copytree(out / "runs" / "bace" / "tiered" / "a1" / "fedavg", out2 / "runs" / "bace" / "tiered" / "a1" / "fedavg")
    edited = write(tmp_path, SUITE.replace("max_local_steps = 2", "max_local_steps = 1"))
    console, buf = quiet()
    res = bench.run_suite(edited, out2, progress=False, console=console, algorithms=["fedavg"], references=False,
                          show_table=False)
    assert res["total"] == 2 and res["ran"] == 2 and "configuration changed" in buf.getvalue()


def test_unknown_algorithm_is_an_error_before_anything_runs(tmp_path):
    suite = write(tmp_path, SUITE.replace('["fedavg", "fjord"]', '["fedavg", "fedmagic"]'))
    with pytest.raises(FedmolError, match="fedmagic"):
        bench.run_suite(suite, tmp_path / "out", progress=False, console=quiet()[0])
    assert not (tmp_path / "out").exists()


def test_registered_but_missing_algorithm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.ALGORITHMS, "ghost", "fedmol.fl.ghost_not_written_yet:Ghost")
    suite = write(tmp_path, SUITE.replace('["fedavg", "fjord"]', '["ghost"]'))
    with pytest.raises(FedmolError, match="registered .* but cannot be loaded"):
        bench.load_suite(suite)


@pytest.mark.parametrize("bad, match", [
    ('alphas = [1.0]', None),
    ("[algorithm.fedavg]\nnot_a_knob = 3\n", "not_a_knob"),
    ("[run]\nwidth = 3\n", "unknown \\[run\\] key"),
    ('devices = ["tiered"]', "unknown device profile"),
    ("name = \"tiny\"", "unknown key"),
])
def test_suite_mistakes_are_reported(tmp_path, bad, match):
    if match is None:  # a sanity check that the base suite loads
        assert bench.load_suite(write(tmp_path)).name == "tiny"
        return
    text = SUITE
    if bad.startswith("[run]"):
        text = text.replace("[run]\n", "[run]\nwidth = 3\n")
    elif bad.startswith("[algorithm"):
        text += bad
    elif bad.startswith("devices"):
        text = text.replace(bad, 'devices = ["quantum"]')
    else:
        text = text.replace(bad, bad + "\ncolour = \"blue\"")
    with pytest.raises(FedmolError, match=match):
        bench.load_suite(write(tmp_path, text))


def test_variant_algorithms_and_subset(tmp_path):
    text = SUITE.replace('["fedavg", "fjord"]', '["fedavg", "fedavg_min"]') + \
        '[algorithm.fedavg_min]\nbase = "fedavg"\nhetero = "min"\n'
    s = bench.load_suite(write(tmp_path, text))
    assert [(a.label, a.base, a.hparams) for a in s.algorithms] == [("fedavg", "fedavg", {}),
                                                                   ("fedavg_min", "fedavg", {"hetero": "min"})]
    jobs = bench.plan(s, tmp_path / "out", algorithms=["fedavg_min"], references=False)
    assert [j.cfg.hparams for j in jobs] == [{"max_local_steps": 2, "hetero": "min"}] * 2
    assert jobs[0].path == tmp_path / "out" / "runs" / "bace" / "tiered" / "a1" / "fedavg_min" / "s0"
    with pytest.raises(FedmolError, match="no algorithm"):
        bench.plan(s, tmp_path / "out", algorithms=["fjord"])


def test_shipped_suites_load():
    quick = bench.load_suite("quick")
    assert quick.datasets == ["b3db_classification"] and quick.seeds == [0]
    assert {"fedavg", "feddf", "heterofl", "fjord"} <= {a.label for a in quick.algorithms}
    assert bench.default_out(quick) == Path("results") / "quick"  # never the committed benchmarks/results/
    standard = bench.load_suite("standard")
    assert standard.seeds == [0, 1, 2] and standard.alphas == [0.1, 1.0, 100.0] and len(standard.datasets) >= 2
    assert standard.devices == ["tiered"] and standard.faulty_links == [0.0, 0.5]
    assert {a.label for a in standard.algorithms} == {"fedavg", "feddf", "heterofl", "fjord", "fedgen", "fedgen_pooled",
                                                      "fedgen_od", "fedgen_od_cap", "fedrescue"}
    pooled = next(a for a in standard.algorithms if a.label == "fedgen_pooled")
    assert pooled.base == "fedgen" and pooled.hparams == {"pooled_bn": True}
    od = next(a for a in standard.algorithms if a.label == "fedgen_od")
    assert od.base == "fedgen" and od.hparams == {"ordered_dropout": True}
    od_cap = next(a for a in standard.algorithms if a.label == "fedgen_od_cap")
    assert od_cap.hparams == {"ordered_dropout": True, "od_cap_every_step": True}


def test_single_seed_has_no_std():
    per_seed = pd.DataFrame([dict(dataset="d", metric="rmse", alpha=1.0, devices="tiered", kind="federated",
                                  method="fedavg", seed=0, order=4, **{"test@1.0": 1.5, "mb": 2.0})])
    for c in report.OTHER_MEASURES:
        if c not in per_seed:
            per_seed[c] = np.nan
    table = report.results_table(per_seed)
    assert table.loc[0, "test@1.0_mean"] == 1.5 and np.isnan(table.loc[0, "test@1.0_std"])
    md = report.to_markdown(table)
    assert "| 1.500 |" in md and "rmse (↓)" in md


def test_report_only_runs_nothing(finished, tmp_path):
    suite, out, _, _ = finished
    console, buf = quiet()
    res = bench.run_suite(suite, out, progress=False, console=console, report_only=True, show_table=False)
    assert res["ran"] == 0 and res["skipped"] == 8 and res["missing"] == 0
    res = bench.run_suite(suite, tmp_path / "empty", progress=False, console=console, report_only=True)
    assert res["ran"] == 0 and res["missing"] == 8 and res["table"].empty
    assert not (tmp_path / "empty" / "runs").exists()


FAULTY = SUITE.replace('devices = ["tiered"]', 'devices = ["tiered"]\nfaulty_links = [0.0, 0.5]').replace(
    "seeds = [0, 1]", "seeds = [0]")


def test_faulty_links_axis_plans_references_once(tmp_path):
    s = bench.load_suite(write(tmp_path, FAULTY))
    jobs = bench.plan(s, tmp_path / "out")
    refs = [j for j in jobs if j.kind == "reference"]
    fed = [j for j in jobs if j.kind == "federated"]
    assert len(refs) == 2 and len(fed) == 4  # references do not communicate: one run frames both variants
    assert all(j.labels == ("tiered", "tiered-faulty0.5") for j in refs)
    assert [(j.method, j.cfg.faulty_links, j.labels) for j in fed] == [
        ("fedavg", 0.0, ("tiered",)), ("fjord", 0.0, ("tiered",)),
        ("fedavg", 0.5, ("tiered-faulty0.5",)), ("fjord", 0.5, ("tiered-faulty0.5",))]
    assert fed[3].path == tmp_path / "out" / "runs" / "bace" / "tiered-faulty0.5" / "a1" / "fjord" / "s0"
    assert [e["devices"] for e in refs[0].entries()] == ["tiered", "tiered-faulty0.5"]


@pytest.mark.parametrize("bad, match", [
    ("faulty_links = [1.5]", "probabilities"),
    ("faulty_links = [0.0, 0.0]", "duplicates"),
])
def test_faulty_links_mistakes(tmp_path, bad, match):
    with pytest.raises(FedmolError, match=match):
        bench.load_suite(write(tmp_path, FAULTY.replace("faulty_links = [0.0, 0.5]", bad)))
    both = FAULTY.replace("[run]\n", "[run]\nfaulty_links = 0.2\n")
    with pytest.raises(FedmolError, match="both"):
        bench.load_suite(write(tmp_path, both))


def test_parallel_workers_equal_sequential_and_faulty_rows(tmp_path):
    suite = write(tmp_path, FAULTY)
    console, buf = quiet()
    par = bench.run_suite(suite, tmp_path / "par", workers=2, progress=False, console=console)
    assert par["ran"] == 6 and "6 runs to do on 2 worker processes" in buf.getvalue()
    seq = bench.run_suite(suite, tmp_path / "seq", progress=False, console=quiet()[0])
    assert seq["ran"] == 6
    a = pd.read_csv(tmp_path / "par" / "results_per_seed.csv").drop(columns=["seconds"])
    b = pd.read_csv(tmp_path / "seq" / "results_per_seed.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b)  # same rows in the same (plan) order, same numbers
    table = par["table"]
    assert list(zip(table["devices"], table["method"])) == [
        ("tiered", "local-only (gnn)"), ("tiered", "centralized (gnn)"), ("tiered", "fedavg"), ("tiered", "fjord"),
        ("tiered-faulty0.5", "local-only (gnn)"), ("tiered-faulty0.5", "centralized (gnn)"),
        ("tiered-faulty0.5", "fedavg"), ("tiered-faulty0.5", "fjord")]
    ref = table[table["method"] == "centralized (gnn)"]["test@1.0_mean"].to_numpy()
    assert ref[0] == ref[1]  # the same reference run frames both
    fjord = pd.read_csv(tmp_path / "par" / "runs" / "bace" / "tiered-faulty0.5" / "a1" / "fjord" / "s0" /
                        "metrics.csv")
    assert len(fjord) == 1
    assert (tmp_path / "par" / "plots" / "rounds_bace_tiered-faulty0.5_a1.png").is_file()


def test_suite_workers_is_the_default_of_bench(tmp_path, monkeypatch):
    """``workers`` in a suite file is what ``fedmol bench`` uses without ``--workers``; "auto" is one
    worker per free core, at most one per run to do; a bad value is one line."""
    seen = {}
    monkeypatch.setattr(bench, "_run_parallel", lambda todo, s, threads, workers, *a, **k: seen.update(w=workers) or 0)
    monkeypatch.setattr(bench, "_run_sequential", lambda *a, **k: seen.update(w=1) or 0)
    monkeypatch.setattr(bench, "free_cores", lambda: (8, 3, 5.2))
    quick = bench.load_suite("quick")
    assert quick.workers == "auto"
    bench.run_suite(quick, tmp_path / "o", show_table=False, progress=False, algorithms=["fedavg"], references=False)
    assert seen == {"w": 2}  # 3 cores free, but the quick suite has 2 fedavg runs
    bench.run_suite(quick, tmp_path / "q", show_table=False, progress=False, references=False)
    assert seen == {"w": 3}
    bench.run_suite(quick, tmp_path / "p", show_table=False, progress=False, algorithms=["fedavg"], references=False,
                    workers=1)
    assert seen == {"w": 1}
    assert bench.auto_workers("auto", 10) == (3, " (auto: 3 of 8 cores free at load 5.2)")
    assert bench.auto_workers(4, 10) == (4, "")
    bad = tmp_path / "bad.toml"
    bad.write_text((bench.SUITES_DIR / "quick.toml").read_text().replace('workers = "auto"', "workers = 0"))
    with pytest.raises(FedmolError, match='workers must be a positive integer or "auto", got 0'):
        bench.load_suite(bad)
    with pytest.raises(FedmolError, match='^--workers must be a positive integer or "auto", got \'many\'$'):
        bench.check_workers("many")
