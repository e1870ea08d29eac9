"""DeiT-LT student throughput (images/s) on random 32x32 data: inference, a plain training step, and the full
DeiT-LT training step (random erasing + Mixup/CutMix, a frozen ResNet-32 teacher, the ``deit_lt`` loss).

    python benchmarks/bench_deit.py                                   # tiny + small patch-4 students, bf16
    python benchmarks/bench_deit.py --steps 2 --warmup 1 --models deit_lt_tiny_patch4_32 --modes eval
    python benchmarks/bench_deit.py --amp none --batch-size 64 --threads 2

Training steps use AdamW (lr 2.5e-4, weight decay 0.05) and drop-path 0.1 as the recipes do; ``train`` is
cross-entropy on the mean of the two heads, ``deit_lt`` is ``DeiTLT.training_step`` with the teacher built
from random weights (its cost does not depend on them). Modes are interleaved step by step so that load
from other processes hits them alike; the median step time is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from _timing import interleaved_step_times

from longtail.config import LossConfig, OptimConfig, RunConfig
from longtail.data.containers import Batch
from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.optim import build_optimizer
from longtail.losses import create as create_loss
from longtail.methods.context import RunContext, StepInfo
from longtail.methods.deit_lt import DeiTLT, FrozenTeacher
from longtail.models import create

MODES = ("eval", "train", "deit_lt")
FIRST_STEP = StepInfo(epoch=0, stage_epochs=1200)  # before DRW: Mixup and CutMix on, as in most of training
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deit_lt_tiny_patch4_32", "deit_lt_small_patch4_32"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def make_batch(args: argparse.Namespace) -> Batch:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator)
    return Batch(images=images, targets=targets, indices=torch.arange(args.batch_size)).to(args.device)


def deit_lt_method(args: argparse.Namespace) -> DeiTLT:
    """The method with a random-weight ResNet-32 teacher (no checkpoint needed)."""
    counts = [int(5000 * 0.01 ** (c / max(args.num_classes - 1, 1))) for c in range(args.num_classes)]
    info = SimpleNamespace(
        name="cifar10-lt" if args.num_classes == 10 else "synthetic",
        num_classes=args.num_classes,
        class_names=[str(c) for c in range(args.num_classes)],
        train_counts=counts,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    config = RunConfig(loss=LossConfig(name="ce"))
    method = DeiTLT(config, info)
    method.setup(RunContext(config, torch.device(args.device)))
    teacher = create("resnet32", num_classes=args.num_classes).to(args.device)
    method.teacher = FrozenTeacher(teacher, image_size=args.size)
    return method


def make_step(args: argparse.Namespace, name: str, mode: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = create(name, num_classes=args.num_classes, drop_path_rate=0.1).to(args.device)
    optimizer = build_optimizer([{"params": list(model.parameters())}], OptimConfig(name="adamw", lr=2.5e-4, weight_decay=0.05))
    batch = make_batch(args)
    device_type = torch.device(args.device).type
    if mode == "deit_lt":
        method = deit_lt_method(args)
        criterion = create_loss("deit_lt", class_counts=method.info.train_counts, drw_epoch=1100).to(args.device)

    def autocast() -> contextlib.AbstractContextManager:
        if args.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def step() -> None:
        if mode == "eval":
            model.eval()
            with torch.no_grad(), autocast():
                model(batch.images)
        else:
            model.train()
            with autocast():
                if mode == "train":
                    loss = F.cross_entropy(model(batch.images).logits.float(), batch.targets)
                else:
                    loss, _ = method.training_step(model, batch, criterion, FIRST_STEP)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    args = parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {(name, mode): make_step(args, name, mode) for name in args.models for mode in args.modes}
    times = interleaved_step_times(steps, args.warmup, args.steps)
    print(
        f"batch {args.batch_size}, {args.size}x{args.size}, {args.num_classes} classes, {args.device}, amp {args.amp}, "
        f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print(f"{'model':<28}{'mode':<10}{'ms/step':>10}{'images/s':>10}")
    for (name, mode), values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{mode:<10}{median * 1e3:>10.1f}{args.batch_size / median:>10.1f}")


if __name__ == "__main__":
    main()
