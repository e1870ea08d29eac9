"""Gradient accumulation in the trainer: N micro-batches of B images train as one batch of N·B (a model
without BatchNorm, whose batch statistics would legitimately differ), the lr schedule counts optimiser steps,
an incomplete last group is stepped, resumption stays exact, and bad settings are refused."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny import TINY_MLP, TinyMLP
from torch import nn

from longtail.config import apply_overrides, from_dict, parse_overrides
from longtail.engine.optim import lr_factor
from longtail.engine.trainer import train
from longtail.errors import LongtailError
from longtail.methods.baselines import ERM
from longtail.methods.runs import CHECKPOINT, load_checkpoint

TRAIN_IMAGES = 502  # digits-lt IF 10 with 5 validation images per class: 31 batches of 16, 62 of 8


CONFIG = {
    "data": {
        "name": "digits-lt",
        "imbalance": 10,
        "val_per_class": 5,
        "batch_size": 16,
        "augment": "none",
        "args": {"image_size": 8},
    },
    "model": {"name": TINY_MLP},
    "optim": {"lr": 0.05, "weight_decay": 5e-4, "nesterov": True},
    "schedule": {"name": "cosine", "epochs": 2, "warmup_epochs": 1},
    "train": {"progress": False},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def config(*overrides: str):
    return from_dict(apply_overrides(CONFIG, parse_overrides(list(overrides))))


@pytest.mark.parametrize("settings", [
    ("train.ema_decay=0.9",),
    ("optim.clip_grad=0.5",),
    ("optim.name=adamw", "optim.lr=0.003"),
    ("optim.sam_rho=0.05",),
], ids=["sgd-ema", "sgd-clip", "adamw", "sam"])
def test_two_micro_batches_of_8_train_as_one_batch_of_16(tmp_path, settings):
    train(config(*settings), tmp_path / "one")
    train(config(*settings, "data.batch_size=8", "train.accumulate_steps=2"), tmp_path / "two")
    one, two = load_checkpoint(tmp_path / "one" / CHECKPOINT), load_checkpoint(tmp_path / "two" / CHECKPOINT)
    assert one["scheduler"]["last_epoch"] == two["scheduler"]["last_epoch"] == 2 * (TRAIN_IMAGES // 16)
    for state in ("model", "ema"):
        for key, value in (one[state] or {}).items():
            torch.testing.assert_close(two[state][key], value, atol=1e-5, rtol=1e-4, msg=f"{state} {key}")
    assert not torch.equal(one["model"]["head.weight"], TinyMLP(10).state_dict()["head.weight"])


def test_schedule_counts_optimiser_steps_and_the_last_group_is_stepped(tmp_path):
    micro_batches = TRAIN_IMAGES // 16  # 31: 7 groups of 4 and one of 3
    train(config("train.accumulate_steps=4", "schedule.epochs=3"), tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    steps_per_epoch = math.ceil(micro_batches / 4)
    assert steps_per_epoch * 4 != micro_batches
    assert state["scheduler"]["last_epoch"] == 3 * steps_per_epoch
    schedule = config("schedule.epochs=3").schedule
    records = map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
    for epoch, record in enumerate(records, start=1):
        assert record["lr"] == pytest.approx(0.05 * lr_factor(schedule, 0.05, epoch))


class SimulatedCrash(Exception):
    pass


def test_resume_after_a_crash_inside_a_group_gives_the_same_weights(tmp_path, monkeypatch):
    accumulating = config("data.batch_size=8", "train.accumulate_steps=3")
    train(accumulating, tmp_path / "straight")
    original, calls = ERM.training_step, {"n": 0}

    def crash_in_epoch_2(self, model, batch, criterion, epoch):
        calls["n"] += 1
        if calls["n"] > 62 + 4:  # the 2nd micro-batch of epoch 2's second group
            raise SimulatedCrash
        return original(self, model, batch, criterion, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(ERM, "training_step", crash_in_epoch_2)
        with pytest.raises(SimulatedCrash):
            train(accumulating, tmp_path / "crashed")
    assert load_checkpoint(tmp_path / "crashed" / CHECKPOINT)["epoch"] == 1
    train(accumulating, tmp_path / "crashed", resume=True)
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT)["model"]
    resumed = load_checkpoint(tmp_path / "crashed" / CHECKPOINT)["model"]
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


@pytest.mark.parametrize("value, message", [
    (0, "accumulate_steps must be at least 1"),
    (-2, "accumulate_steps must be at least 1"),
    (1.5, "'train.accumulate_steps' must be an integer"),
    ("two", "'train.accumulate_steps' must be an integer"),
])
def test_bad_accumulate_steps_are_refused(value, message):
    with pytest.raises(LongtailError, match=message):
        from_dict({"train": {"accumulate_steps": value}})


def test_gradient_sync_skips_the_all_reduce_only_before_a_groups_last_micro_batch(monkeypatch):
    import torch.distributed as dist

    from longtail.engine.trainer import gradient_sync

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(TinyMLP(10))
        for wrapped in (ddp, torch.compile(ddp)):
            with gradient_sync(wrapped, sync=False):
                assert not ddp.require_backward_grad_sync
            with gradient_sync(wrapped, sync=True):
                assert ddp.require_backward_grad_sync
    finally:
        dist.destroy_process_group()
    with gradient_sync(TinyMLP(10), sync=False):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    train(config("data.batch_size=16", "train.accumulate_steps=2"), run_dir)


@pytest.mark.slow
def test_two_gloo_processes_accumulating_match_one_process_with_the_same_groups(tmp_path):
    """Micro-batch k holds the same images in both runs (the ranks' shards are dealt round-robin); each epoch's
    31 micro-batches end with a group of one."""
    train(config("data.batch_size=16", "train.accumulate_steps=2"), tmp_path / "single")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    one, two = load_checkpoint(tmp_path / "single" / CHECKPOINT), load_checkpoint(tmp_path / "ddp" / CHECKPOINT)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-5, rtol=1e-4, msg=key)
