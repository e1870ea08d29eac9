"""DistributedDataParallel on the CPU (gloo): 2 processes with the same global batch train the same model as
1 process. The model has no BatchNorm, whose per-process statistics would legitimately differ."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny import TINY_MLP

from longtail.config import from_dict
from longtail.engine.trainer import train
from longtail.methods.runs import CHECKPOINT, load_checkpoint

CONFIG = {
    "data": {
        "name": "digits-lt",
        "imbalance": 10,
        "val_per_class": 5,
        "batch_size": 32,
        "augment": "none",
        "args": {"image_size": 8},
    },
    "model": {"name": TINY_MLP},
    "optim": {"lr": 0.05, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "epochs": 2, "warmup_epochs": 1},
    "train": {"progress": False},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    train(from_dict(CONFIG), run_dir)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(from_dict(CONFIG), tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    one, two = load_checkpoint(tmp_path / "single" / CHECKPOINT), load_checkpoint(tmp_path / "ddp" / CHECKPOINT)
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], atol=1e-5), key
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    for split in ("last_val", "last_test"):
        assert ddp[split]["main"]["top1"] == pytest.approx(single[split]["main"]["top1"], abs=0.005)
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    single_log = [json.loads(line) for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in single_log], rel=1e-4)
