"""The run folder is the user's: ``--force`` deletes only a run's own files (and needs no readable checkpoint),
a start that fails before its first checkpoint leaves the folder as it was, Ctrl-C says how to continue,
and checkpoints whose weights do not fit their config are refused with a message."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_DIGITS_DATA, TINY_MLP

from longtail.cli.main import INTERRUPTED, main
from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.engine.trainer import train
from longtail.errors import LongtailError
from longtail.methods.baselines import ERM
from longtail.methods.runs import CHECKPOINT, load_checkpoint

TINY = {
    "data": TINY_DIGITS_DATA,
    "model": {"name": TINY_MLP},
    "schedule": {"epochs": 2},
    "train": {"progress": False},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(*overrides: str):
    return from_dict(apply_overrides(TINY, parse_overrides(list(overrides))))


def interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    """Make the first training step of ``epoch`` (counted from 0) raise KeyboardInterrupt, as Ctrl-C does."""
    original = ERM.training_step

    def training_step(self, model, batch, criterion, step):
        if step.epoch == epoch:
            raise KeyboardInterrupt
        return original(self, model, batch, criterion, step)

    monkeypatch.setattr(ERM, "training_step", training_step)


def test_force_deletes_only_the_files_a_run_writes(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(), run_dir)
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "report" / "mine").mkdir()
    (run_dir / "report" / "last_test" / "annotated.png").write_bytes(b"mine")
    train(tiny_config(), run_dir, force=True)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "report" / "mine").is_dir()
    assert (run_dir / "report" / "last_test" / "annotated.png").read_bytes() == b"mine"
    assert load_checkpoint(run_dir)["finished"]


def test_force_clears_a_corrupt_checkpoint_and_the_refusal_names_the_fix(tmp_path):
    train(tiny_config(), tmp_path)
    checkpoint = tmp_path / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(LongtailError, match="truncated or damaged. Pass --force") as refused:
        train(tiny_config(), tmp_path)
    assert "weights_only" not in str(refused.value)
    train(tiny_config(), tmp_path, force=True)
    assert load_checkpoint(tmp_path)["finished"]


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    data = {**TINY_DIGITS_DATA, "name": "cifar10-lt", "root": str(tmp_path / "no-data"), "args": {}}
    missing_data = from_dict({**TINY, "data": data})
    new_run = tmp_path / "runs" / "cifar" / "first"
    with pytest.raises(LongtailError, match="does not exist"):
        train(missing_data, new_run)
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(LongtailError, match="does not exist"):
        train(missing_data, existing)
    assert [path.name for path in existing.iterdir()] == ["notes.txt"]


def test_ctrl_c_names_the_checkpoint_and_how_to_resume(tmp_path, monkeypatch, capsys):
    interrupt_in_epoch(monkeypatch, 1)
    run_dir = tmp_path / "run"
    argv = ["train", "--recipe", "digits-ce", f"model.name={TINY_MLP}", "schedule.epochs=2",
            *(f"data.{key}={value}" for key, value in TINY_DIGITS_DATA.items() if key != "args"),
            "data.args.image_size=8", "train.progress=false", "--run-dir", str(run_dir)]
    assert main(argv) == INTERRUPTED
    message = capsys.readouterr().err.strip()
    assert message.startswith("longtail: interrupted. Training stopped; the last finished epoch is saved in")
    assert str(run_dir / CHECKPOINT) in message and f"--run-dir {run_dir} --resume" in message
    assert "Traceback" not in message and load_checkpoint(run_dir)["epoch"] == 1


def test_ctrl_c_in_the_first_epoch_keeps_nothing(tmp_path, monkeypatch):
    interrupt_in_epoch(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt, match="before its first epoch ended; nothing was kept"):
        train(tiny_config(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resuming_weights_that_do_not_fit_the_config_is_refused(tmp_path):
    train(tiny_config(), tmp_path)
    state = load_checkpoint(tmp_path)
    state["finished"] = False
    state["model"]["body.1.weight"] = torch.zeros(7, 3)
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(LongtailError, match=r"Cannot resume .* do not fit .*1 of another shape \(body.1.weight\)"):
        train(tiny_config(), tmp_path, resume=True)


def test_an_initial_checkpoint_of_another_model_is_refused(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pt")
    config = tiny_config("model.name=resnet32", f"model.init_checkpoint={tmp_path / 'resnet18.pt'}")
    message = r"saved from another model: only 0 of the \d+ parameter tensors of 'CifarResNet' \(0.0% of its weights\)"
    with pytest.raises(LongtailError, match=message):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
