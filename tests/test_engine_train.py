"""The trainer end to end on digits-lt (8x8, fast): artifacts, exact resumption after a crash in the middle
of an epoch, cRT changing only the head, and the bad inputs (non-finite loss, finished run, changed config)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import TINY_DIGITS_DATA

from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.engine.trainer import Trainer, train
from longtail.errors import LongtailError
from longtail.methods.baselines import ERM
from longtail.methods.runs import BEST, CHECKPOINT, load_checkpoint, load_trained_model
from longtail.models import create
from longtail.models.heads import tau_normalized

TINY = {
    "data": {**TINY_DIGITS_DATA, "batch_size": 32},
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.05, "nesterov": True},
    "schedule": {"name": "multistep", "epochs": 3, "warmup_epochs": 1, "milestones": [2]},
    "train": {"progress": False, "deterministic": True},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(*overrides: str):
    return from_dict(apply_overrides(TINY, parse_overrides(list(overrides))))


class SimulatedCrash(Exception):
    pass


def crash_after(monkeypatch, steps: int, make_nan: bool = False) -> None:
    """Make ERM's training step fail at call ``steps + 1``: raise (a crash) or return a NaN loss."""
    original = ERM.training_step
    calls = {"n": 0}

    def step(self, model, batch, criterion, epoch):
        calls["n"] += 1
        loss, output = original(self, model, batch, criterion, epoch)
        if calls["n"] > steps:
            if not make_nan:
                raise SimulatedCrash
            loss = loss * float("nan")
        return loss, output

    monkeypatch.setattr(ERM, "training_step", step)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT)["model"]


@pytest.mark.slow
def test_resume_after_a_crash_mid_epoch_gives_the_same_weights(tmp_path, monkeypatch):
    config = tiny_config()
    train(config, tmp_path / "straight")
    steps_per_epoch = 497 // 32 - 1  # digits-lt IF10 keeps 497 images, 5 per class go to validation

    with monkeypatch.context() as patch:
        crash_after(patch, steps_per_epoch + 3)  # the 4th step of the second epoch
        with pytest.raises(SimulatedCrash):
            train(config, tmp_path / "crashed")
    state = load_checkpoint(tmp_path / "crashed")
    assert (state["stage"], state["epoch"], state["finished"]) == (0, 1, False)
    assert len((tmp_path / "crashed" / "log.jsonl").read_text().splitlines()) == 1

    train(config, tmp_path / "crashed", resume=True)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "crashed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert load_checkpoint(tmp_path / "crashed")["finished"]
    assert len((tmp_path / "crashed" / "log.jsonl").read_text().splitlines()) == 3


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    config = tiny_config("schedule.epochs=2")
    crash_after(monkeypatch, steps=16, make_nan=True)  # epoch 1 has 15 steps
    with pytest.raises(LongtailError, match=r"loss became nan at epoch 2, step 2 .*last good checkpoint"):
        train(config, tmp_path)
    state = load_checkpoint(tmp_path)
    assert (state["epoch"], state["finished"]) == (1, False)
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_finished_run_is_refused_unless_forced(tmp_path):
    config = tiny_config("schedule.epochs=1")
    train(config, tmp_path)
    with pytest.raises(LongtailError, match="already holds a finished run.*--run-dir.*--force"):
        train(config, tmp_path)
    train(config, tmp_path, force=True)
    assert load_checkpoint(tmp_path)["finished"]


def test_resume_with_a_different_config_names_the_keys(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after(patch, steps=20)
        with pytest.raises(SimulatedCrash):
            train(tiny_config(), tmp_path)
    with pytest.raises(LongtailError, match=r"differs from the checkpoint's in optim\.lr, schedule\.epochs\."):
        train(tiny_config("optim.lr=0.2", "schedule.epochs=4", "train.progress=true"), tmp_path)


def test_resume_accepts_a_checkpoint_written_before_a_config_key_existed(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after(patch, steps=20)
        with pytest.raises(SimulatedCrash):
            train(tiny_config(), tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    del state["config"]["train"]["accumulate_steps"]  # as written by a version without the option
    torch.save(state, tmp_path / CHECKPOINT)
    train(tiny_config(), tmp_path, resume=True)
    assert load_checkpoint(tmp_path / CHECKPOINT)["finished"]


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(LongtailError, match="Nothing to resume"):
        train(tiny_config(), tmp_path, resume=True)


@pytest.mark.slow
def test_crt_stage_changes_only_the_head(tmp_path):
    one_stage = tiny_config("schedule.epochs=1")
    two_stages = from_dict(
        {
            **one_stage.to_dict(),
            "stages": [
                {"name": "crt", "epochs": 1, "trainable": "head", "reinit_head": True, "sampler": "class-balanced"}
            ],
        }
    )
    train(one_stage, tmp_path / "joint")
    train(two_stages, tmp_path / "crt")
    joint, crt = weights(tmp_path / "joint"), weights(tmp_path / "crt")
    changed = {key for key in joint if not torch.equal(joint[key], crt[key])}
    assert changed == {"head.weight", "head.bias"}


def test_tau_normalisation_changes_only_the_head():
    model = load_model_for_tau()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    normalized = tau_normalized(model, 1.0)
    after = normalized.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before if not key.startswith("head."))
    assert torch.allclose(normalized.head.normalized_weight().norm(dim=1), torch.ones(10))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def load_model_for_tau():
    return create("resnet32", num_classes=10)


def test_mixed_precision_sam_ema_adamw_and_clipping_run_together(tmp_path):
    config = tiny_config(
        "schedule.epochs=1",
        "optim.name=adamw",
        "optim.lr=1e-3",
        "optim.sam_rho=0.05",
        "optim.clip_grad=1.0",
        "train.precision=bf16",
        "train.channels_last=true",
        "train.ema_decay=0.9",
        "train.deterministic=false",
    )
    summary = train(config, tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["finished"] and state["ema"].keys() == state["model"].keys()
    assert 0.0 <= summary["last_test"]["main"]["top1"] <= 1.0


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively(tmp_path, monkeypatch, native):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    config = tiny_config("schedule.epochs=1", "train.precision=auto")
    trainer = Trainer(config, tmp_path)
    try:
        assert trainer.precision == ("bf16" if native else "fp32")
        assert trainer.autocast_dtype == (torch.bfloat16 if native else None)
        assert trainer.evaluator.dtype == trainer.autocast_dtype
    finally:
        trainer.close()


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    with pytest.raises(LongtailError, match="fp16 needs CUDA"):
        train(tiny_config("train.precision=fp16"), tmp_path)


@pytest.mark.slow
def test_two_epoch_run_writes_every_artifact(tmp_path):
    summary = train(tiny_config("schedule.epochs=2", "eval.tau_norm=1.0", "eval.logit_adjust_tau=1.0"), tmp_path)
    for name in ("config.yaml", CHECKPOINT, BEST, "log.jsonl", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss", "lr", "images_per_s", "val_top1", "val_many"} <= records[0].keys()
    for which in ("last", "best"):
        for split in ("val", "test"):
            folder = tmp_path / "report" / f"{which}_{split}"
            results = json.loads((folder / "results.json").read_text())
            assert {"tau_norm", "logit_adjusted"} <= results["heads"].keys()
            assert (folder / "per_class.png").stat().st_size > 0
    assert "last test" in summary["table"] and "best test tau_norm" in summary["table"]
    assert summary["best_epoch"] in (1, 2)
    trained = load_trained_model(tmp_path / BEST)
    assert not trained.model.training
