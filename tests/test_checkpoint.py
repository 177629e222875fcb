"""Resumable training (fedmol.checkpoint): a run interrupted after any epoch and started again ends
bit-identical to an uninterrupted one; a checkpoint of another run is refused."""
import pytest
import torch

from fedmol import checkpoint
from fedmol.centralized import train_centralized
from fedmol.data.dataset import load_dataset
from fedmol.errors import FedmolError
from fedmol.evaluate import Evaluator
from fedmol.models import build
from fedmol.training import fit


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def bace():
    ds = load_dataset("bace", progress=False)
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))  # both classes in every part
    return ds.index_select(perm[:160]), ds.index_select(perm[160:220]), ds.index_select(perm[220:280])


def model(seed=0):
    torch.manual_seed(seed)
    return build("gin", 1, hidden=16, layers=2, dropout=0.5)  # dropout: the global RNG must be restored too


def train(folder, parts, stop_at=None, epochs=4, lr=1e-3, **kw):
    def on_epoch(epoch, *_):
        if epoch == stop_at:
            raise Interrupted  # before this epoch's state is saved: the checkpoint holds the epochs before it
    net = model()
    res = fit(net, *parts[:2], Evaluator("classification", 1), seed=3, epochs=epochs, lr=lr, test=parts[2],
              checkpoint=folder, fingerprint=dict(run="t", widths=(1.0, 0.5)), on_epoch=on_epoch, **kw)
    return net, res


@pytest.mark.parametrize("stop_at", [1, 3])
def test_resumed_run_equals_uninterrupted(tmp_path, bace, stop_at):
    whole, whole_res = train(tmp_path / "a", bace)
    with pytest.raises(Interrupted):
        train(tmp_path / "b", bace, stop_at=stop_at)
    meta = checkpoint.read_meta(tmp_path / "b")
    assert meta["epoch"] == stop_at - 1 and len(meta["history"]) == stop_at
    resumed, res = train(tmp_path / "b", bace)
    assert res["resumed_from"] == stop_at and whole_res["resumed_from"] == 0 and res["elapsed_before"] > 0
    assert res["history"] == whole_res["history"] and res["best_epoch"] == whole_res["best_epoch"]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k  # bit-identical: data order, dropout, Adam moments


def test_finished_checkpoint_trains_nothing_more(tmp_path, bace):
    _, first = train(tmp_path, bace, epochs=2)
    _, again = train(tmp_path, bace, epochs=2)
    assert again["resumed_from"] == 2 and again["history"] == first["history"]


def test_early_stopped_run_stays_stopped(tmp_path, bace):
    """A run killed after it met its stopping rule (but before it finished) does not train on."""
    _, first = train(tmp_path, bace, epochs=30, patience=1)
    assert first["epochs_run"] < 30
    _, again = train(tmp_path, bace, epochs=30, patience=1)
    assert again["epochs_run"] == first["epochs_run"] and again["history"] == first["history"]


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, bace):
    from safetensors.torch import save_file
    tmp_path.mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(tmp_path / checkpoint.STATE))
    with pytest.raises(FedmolError, match="is not a fedmol training checkpoint"):
        train(tmp_path, bace)


def test_checkpoint_of_another_run_is_refused(tmp_path, bace):
    with pytest.raises(Interrupted):
        train(tmp_path, bace, stop_at=1)
    with pytest.raises(FedmolError, match=r"holds the checkpoint of a different run \(differs in: lr\)"):
        train(tmp_path, bace, lr=1e-2)


def test_train_centralized_resumes_and_cleans_up(tmp_path, monkeypatch):
    ds = load_dataset("bace", progress=False)
    kw = dict(epochs=3, patience=0, hidden=16, layers=2, progress=False)
    whole = train_centralized(ds, tmp_path / "whole", **kw)
    assert whole["resumed_from_epoch"] == 0 and not (tmp_path / "whole" / "checkpoint").exists()
    save, calls = checkpoint.save, []

    def killed_after_two(folder, **state):
        save(folder, **state)
        calls.append(state["epoch"])
        if len(calls) == 2:
            raise Interrupted
    monkeypatch.setattr(checkpoint, "save", killed_after_two)
    with pytest.raises(Interrupted):
        train_centralized(ds, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "checkpoint" / checkpoint.STATE).is_file()
    assert not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(checkpoint, "save", save)
    resumed = train_centralized(ds, tmp_path / "cut", **kw)
    assert resumed["resumed_from_epoch"] == 2 and not (tmp_path / "cut" / "checkpoint").exists()
    assert resumed["history"] == whole["history"] and resumed["test"] == whole["test"]
    assert resumed["test_last"] == whole["test_last"]


def test_cli_resumes_and_refuses_another_runs_checkpoint(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedmol.cli import app
    args = ["train", "bace", "--epochs", "2", "--patience", "0", "--hidden", "8", "--layers", "2", "--out", str(tmp_path)]
    save = checkpoint.save

    def killed(folder, **state):
        save(folder, **state)
        raise Interrupted
    monkeypatch.setattr(checkpoint, "save", killed)
    with pytest.raises(Interrupted):
        train_centralized(load_dataset("bace", progress=False), tmp_path, epochs=2, patience=0, hidden=8, layers=2,
                          progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    other = CliRunner().invoke(app, args[:-2] + ["--lr", "0.01", "--out", str(tmp_path)])
    assert other.exit_code == 2 and "checkpoint of a different run (differs in: lr)" in " ".join(other.output.split())
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "resumed after epoch 0" in res.output and not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "metadata"])
def test_a_damaged_checkpoint_is_one_clear_line(tmp_path, bace, damage):
    """Issue 19 (9): a truncated or corrupt checkpoint is refused with what to do, never a traceback."""
    from safetensors.torch import save_file
    with pytest.raises(Interrupted):
        train(tmp_path, bace, stop_at=1)
    state = tmp_path / checkpoint.STATE
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "garbage":
        state.write_bytes(b"\x00" * 64)
    else:
        save_file({"x": torch.zeros(1)}, str(state), metadata={checkpoint.KEY: '{"epoch": 1'})
    with pytest.raises(FedmolError) as e:
        train(tmp_path, bace)
    msg = str(e.value)
    assert msg.startswith(f"{state} is a damaged training checkpoint (truncated or corrupt: ")
    assert msg.endswith(f"): delete {tmp_path} to train this run again from the start") and "\n" not in msg
