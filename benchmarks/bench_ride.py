"""Training throughput of RIDE (3 experts, ResNet-32) on CIFAR-10-LT IF100, through the real loader and trainer.

    python benchmarks/bench_ride.py                          # full run (target: >= 420 images/s, bf16, idle machine)
    python benchmarks/bench_ride.py --recipe digits-ride --epochs 2 --variants bf16+channels_last   # quick check
    python benchmarks/bench_ride.py --relative 20 --threads 1   # step time relative to ResNet-32 (shared machine)

Each variant builds the recipe's trainer (``ride-cifar10-lt-if100``: batch 128, RIDE loss, crop + flip +
rotation) and runs whole training epochs with ``Trainer._train_epoch``, the code a real run executes
(loader, autocast, loss, backward, SGD step, per-step logging); images/s is the trainer's own figure,
averaged over the epochs after the first (warm-up: oneDNN kernel creation, data cache). The official code
trains at about 155 images/s on this machine.

``--relative N`` instead times N optimisation steps of the trainer (``_accumulate`` + ``_optimisation_step``)
on one fixed batch for each variant, taking turns with the same steps of ``--baseline`` (plain ResNet-32 +
cross-entropy), so that load from other processes hits both alike; it prints the median step times and the
median ratio. On an idle machine 420 images/s of RIDE against ResNet-32's 786 is a ratio of about 1.87.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from _timing import interleaved_step_times

from longtail.engine.host_memory import keep_freed_memory
from longtail.engine.trainer import StageRun, Trainer, _channels_last
from longtail.methods.recipes import resolve

VARIANTS = {
    "bf16+channels_last": ["train.precision=bf16", "train.channels_last=true"],
    "bf16+channels_last+compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "fp32+channels_last": ["train.precision=fp32", "train.channels_last=true"],
}


@contextlib.contextmanager
def first_stage(recipe: str, overrides: list[str]) -> Iterator[tuple[Trainer, StageRun]]:
    """The recipe's trainer and its first training stage, built as a run builds them, in a temporary run dir."""
    config = resolve(recipe, [*overrides, "train.progress=false", "stages=[]"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir=Path(run_dir))
        try:
            stage = trainer.stages[0]
            trainer.method.prepare_stage(stage, trainer.model)
            yield trainer, trainer._build_stage(stage, None)
        finally:
            trainer.close()


def throughput(recipe: str, overrides: list[str], epochs: int) -> list[float]:
    """images/s of each of ``epochs`` training epochs of the recipe's first stage."""
    with first_stage(recipe, overrides) as (trainer, run):
        rates = []
        for epoch in range(epochs):
            run.loader.set_epoch(epoch)
            run.criterion.set_epoch(epoch)
            rates.append(trainer._train_epoch(run, epoch, epoch)["images_per_s"])
        return rates


def fixed_batch_step(trainer: Trainer, run: StageRun) -> Callable[[], None]:
    """One optimisation step of the trainer (forward, loss, backward, optimiser) on the loader's first batch."""
    run.loader.set_epoch(0)
    run.criterion.set_epoch(0)
    batch = next(iter(run.loader)).to(trainer.device)
    if trainer.config.train.channels_last:
        batch = _channels_last(batch)

    def step() -> None:
        trainer._accumulate(run, batch, 0, True, 1, True)
        trainer._optimisation_step(run, [], 0)

    return step


def relative_step_time(recipe: str, baseline: str, overrides: list[str], repeats: int) -> tuple[float, float, float]:
    """(median step seconds of ``recipe``, of ``baseline``, median per-turn ratio), the two taking turns."""
    with first_stage(recipe, overrides) as measured, first_stage(baseline, overrides) as reference:
        steps = {"measured": fixed_batch_step(*measured), "baseline": fixed_batch_step(*reference)}
        times = interleaved_step_times(steps, warmup=2, repeats=repeats)
    ratios = [a / b for a, b in zip(times["measured"], times["baseline"])]
    return statistics.median(times["measured"]), statistics.median(times["baseline"]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ride-cifar10-lt-if100")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant; the first is warm-up")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--relative", type=int, default=0, metavar="N", help="time N steps against --baseline")
    parser.add_argument("--baseline", default="cifar10-lt-if100-ce", help="recipe of the --relative reference")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides")
    args = parser.parse_args()
    keep_freed_memory()  # as the trainer does on the CPU
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.relative:
        print(f"{args.recipe} vs {args.baseline}, {args.relative} steps each, {torch.get_num_threads()} threads")
        print(f"{'variant':<22} {'step ms':>9} {'baseline':>9} {'ratio':>7}")
        for name in args.variants:
            step, base, ratio = relative_step_time(
                args.recipe, args.baseline, [*VARIANTS[name], *args.overrides], args.relative
            )
            print(f"{name:<22} {1e3 * step:>9.0f} {1e3 * base:>9.0f} {ratio:>7.3f}")
        return
    print(f"{args.recipe}, {args.epochs} epochs per variant (first = warm-up), {torch.get_num_threads()} threads")
    print(f"{'variant':<22} {'images/s':>9} {'warm-up':>9}  per epoch")
    for name in args.variants:
        rates = throughput(args.recipe, [*VARIANTS[name], *args.overrides], args.epochs)
        measured = rates[1:] or rates
        per_epoch = " ".join(f"{rate:.0f}" for rate in rates)
        print(f"{name:<22} {statistics.mean(measured):>9.0f} {rates[0]:>9.0f}  {per_epoch}")


if __name__ == "__main__":
    main()
