"""Training throughput of MDCS (two views) and SHIKE (both stages) on CIFAR-10-LT through the real loader.

    python benchmarks/bench_mdcs_shike.py                              # bf16, 50 timed steps per row
    python benchmarks/bench_mdcs_shike.py --steps 3 --warmup 1         # quick check

Each row builds the method of a recipe (``mdcs-cifar10-lt-if100``: 64 images x 2 views per step, one
forward pass over the 128 rows; ``shike-cifar10-lt-if100``: 128 images per step) and times full training
steps as the trainer runs them: loader (augmentation included) -> ``method.training_step`` under autocast ->
backward -> SGD step. SHIKE's stage 2 trains the fresh heads on the frozen model (``prepare_stage``).
images/s counts images, not views. Uses cifar10-lt from the data root (``--root``, ``$LONGTAIL_DATA``, else
../shared/data); where it is absent, random images of the same shape stand in.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from longtail.data import create_datasets, create_loader
from longtail.data.augment import AugmentSpec
from longtail.data.containers import ArrayStore, ImageClasses, InMemoryImages
from longtail.data.small_images import CIFAR10_STATS
from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.optim import build_optimizer
from longtail.engine.trainer import frozen_modules
from longtail.errors import LongtailError
from longtail.methods.base import create_method
from longtail.methods.context import StepInfo
from longtail.methods.recipes import resolve

ROWS = [
    ("MDCS, 64 images x 2 views", "mdcs-cifar10-lt-if100", 0),
    ("SHIKE stage 1, 128 images", "shike-cifar10-lt-if100", 0),
    ("SHIKE stage 2 (new heads only), 128 images", "shike-cifar10-lt-if100", 1),
]
CIFAR10_LT_IF100_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def training_set(root: str | None) -> tuple[list[int], Any, str]:
    """(class counts, training set, where it came from)."""
    try:
        splits = create_datasets("cifar10-lt", root=root, imbalance=100)
        splits.train.images  # decode, or load from the cache
        return splits.info.train_counts, splits.train, "cifar10-lt IF100"
    except LongtailError as error:
        targets = np.repeat(np.arange(10), CIFAR10_LT_IF100_COUNTS)
        images = np.random.default_rng(0).integers(0, 256, (len(targets), 3, 32, 32), dtype=np.uint8)
        classes = ImageClasses([str(i) for i in range(10)], *CIFAR10_STATS, 32)
        dataset = InMemoryImages(ArrayStore(images), np.arange(len(targets)), targets, classes)
        return CIFAR10_LT_IF100_COUNTS, dataset, f"random CIFAR-10-LT-shaped images ({error})"


def augment_spec(augment: Any) -> Any:
    return AugmentSpec(**augment) if isinstance(augment, dict) else augment


def endless_batches(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class StageBench:
    """One stage of one recipe, set up as the trainer sets it up, ready to run training steps."""

    def __init__(self, recipe: str, stage_index: int, dataset: Any, counts: list[int], args: argparse.Namespace):
        self.device = torch.device(args.device)
        config = resolve(recipe, [f"train.precision={args.precision}"])
        info = SimpleNamespace(num_classes=10, train_counts=counts)
        self.method = create_method(config, info)
        self.model = self.method.build_model().to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        stages = self.method.stages()
        for stage in stages[: stage_index + 1]:
            self.method.prepare_stage(stage, self.model)
        self.stage = stages[stage_index]
        self.first_step = StepInfo(epoch=0, stage_epochs=self.stage.epochs)
        self.params = self._freeze()
        groups = self.method.param_groups(self.stage, self.model, self.params)
        self.optimizer = build_optimizer(groups, self.stage.optim)
        self.criterion = self.method.build_loss(self.stage.loss).to(self.device)
        data = config.data
        loader = create_loader(
            dataset,
            batch_size=self.stage.batch_size,
            train=True,
            augment=augment_spec(data.augment),
            strong_augment=augment_spec(data.strong_augment),
            two_views=data.two_views,
            sampler=self.stage.sampler,
            device=self.device,
            channels_last=args.channels_last,
        )
        self.batches = endless_batches(loader)
        self.dtype = torch.bfloat16 if args.precision == "bf16" else None

    def _freeze(self) -> list[torch.nn.Parameter]:
        params = self.method.trainable_parameters(self.stage, self.model)
        trainable = {id(p) for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.model.train()
        for module in frozen_modules(self.model):
            module.eval()
        return [p for p in params if p.requires_grad]

    def step(self) -> int:
        """One training step; returns the number of images."""
        batch = next(self.batches)
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = self.method.training_step(self.model, batch, self.criterion, self.first_step)
        loss.backward()
        self.optimizer.step()
        return len(batch)

    def images_per_second(self, steps: int, warmup: int) -> tuple[float, float]:
        """Median and total images/s over ``steps`` timed steps."""
        for _ in range(warmup):
            self.step()
        rates, images, started = [], 0, time.perf_counter()
        for _ in range(steps):
            step_started = time.perf_counter()
            count = self.step()
            self._synchronize()
            rates.append(count / (time.perf_counter() - step_started))
            images += count
        return statistics.median(rates), images / (time.perf_counter() - started)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    counts, dataset, source = training_set(args.root)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(
        f"data: {source}; device {args.device} ({device_name}); precision {args.precision}; "
        f"channels_last {args.channels_last}; torch threads {torch.get_num_threads()}"
    )
    print(f"{'configuration':<46} {'median images/s':>16} {'overall images/s':>17}")
    for name, recipe, stage_index in ROWS:
        bench = StageBench(recipe, stage_index, dataset, counts, args)
        median, overall = bench.images_per_second(args.steps, args.warmup)
        print(f"{name:<46} {median:>16,.0f} {overall:>17,.0f}")


if __name__ == "__main__":
    main()
