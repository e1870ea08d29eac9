"""Training throughput of RIDE (3 experts, ResNet-32) on CIFAR-10-LT IF100, through the real loader and trainer.

    python benchmarks/bench_ride.py                          # full run (target: >= 420 images/s, bf16, idle machine)
    python benchmarks/bench_ride.py --recipe digits-ride --epochs 2 --variants bf16+channels_last   # quick check

Each variant builds the recipe's trainer (``ride-cifar10-lt-if100``: batch 128, RIDE loss, crop + flip +
rotation) and runs whole training epochs with ``Trainer._train_epoch``, the code a real run executes
(loader, autocast, loss, backward, SGD step, per-step logging); images/s is the trainer's own figure,
averaged over the epochs after the first (warm-up: oneDNN kernel creation, data cache). The official code
trains at about 155 images/s on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from longtail.engine.config import resolve
from longtail.engine.trainer import Trainer

VARIANTS = {
    "bf16+channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "fp32+channels_last": ["train.precision=fp32", "train.channels_last=true"],
}


def throughput(recipe: str, overrides: list[str], epochs: int) -> list[float]:
    """images/s of each of ``epochs`` training epochs of the recipe's first stage."""
    config = resolve(recipe, [*overrides, "train.progress=false", "stages=[]"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir=Path(run_dir))
        try:
            stage = trainer.stages[0]
            trainer.method.prepare_stage(stage, trainer.model)
            run = trainer._build_stage(stage, None)
            rates = []
            for epoch in range(epochs):
                run.loader.set_epoch(epoch)
                run.criterion.set_epoch(epoch)
                rates.append(trainer._train_epoch(run, epoch, epoch)["images_per_s"])
            return rates
        finally:
            trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ride-cifar10-lt-if100")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant; the first is warm-up")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"{args.recipe}, {args.epochs} epochs per variant (first = warm-up), {torch.get_num_threads()} threads")
    print(f"{'variant':<22} {'images/s':>9} {'warm-up':>9}  per epoch")
    for name in args.variants:
        rates = throughput(args.recipe, [*VARIANTS[name], *args.overrides], args.epochs)
        measured = rates[1:] or rates
        per_epoch = " ".join(f"{rate:.0f}" for rate in rates)
        print(f"{name:<22} {statistics.mean(measured):>9.0f} {rates[0]:>9.0f}  {per_epoch}")


if __name__ == "__main__":
    main()
