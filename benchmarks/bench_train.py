"""Training throughput of ResNet-32 on CIFAR-10-LT through the real loader and trainer, in fp32 and bf16.

For each setting it prints the images/s of the model alone (a synthetic batch, same step: forward,
cross-entropy, backward, SGD) and of ``longtail train`` (the last epoch of a short run, as logged in
``log.jsonl``), and the share of time the loader and trainer add.

    python benchmarks/bench_train.py                      # CIFAR-10-LT IF100 from ../shared/data, 2 epochs
    python benchmarks/bench_train.py --dataset digits-lt --epochs 1 --model-steps 3   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longtail.config import from_dict
from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.trainer import train
from longtail.models import create

SETTINGS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16": {"precision": "bf16", "channels_last": False},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True},
}


def model_alone(precision: str, channels_last: bool, batch_size: int, steps: int, image_size: int) -> float:
    """Images/s of training steps on one synthetic batch (the ceiling for the whole pipeline)."""
    model = create("resnet32", num_classes=10).train()
    images = torch.randn(batch_size, 3, image_size, image_size)
    targets = torch.randint(0, 10, (batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(images).logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - started)


def through_trainer(precision: str, channels_last: bool, args: argparse.Namespace) -> float:
    """Images/s of the last training epoch of a short ``longtail train`` run."""
    config = from_dict(
        {
            "data": {"name": args.dataset, "imbalance": 100, "val_per_class": 2, "batch_size": args.batch_size,
                     "augment": "standard"},
            "model": {"name": "resnet32"},
            "schedule": {"name": "cosine", "epochs": args.epochs, "warmup_epochs": 0},
            "train": {"precision": precision, "channels_last": channels_last, "progress": False,
                      "eval_every": args.epochs},
        }
    )
    with tempfile.TemporaryDirectory() as run_dir:
        train(config, run_dir)
        records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return records[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10-lt")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the trainer run (the last one is timed)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model-steps", type=int, default=30)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    print(f"ResNet-32, {args.dataset}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'setting':<22}{'model alone':>14}{'trainer':>12}{'added':>9}")
    for name in args.settings:
        setting = SETTINGS[name]
        alone = model_alone(setting["precision"], setting["channels_last"], args.batch_size, args.model_steps, 32)
        full = through_trainer(setting["precision"], setting["channels_last"], args)
        print(f"{name:<22}{alone:>10.0f} i/s{full:>8.0f} i/s{100 * (1 - full / alone):>8.1f}%")


if __name__ == "__main__":
    main()
