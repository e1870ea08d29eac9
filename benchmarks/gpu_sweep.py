"""One sweep on a lent GPU machine, inside one wall-clock budget: the CUDA tests, a training-throughput table,
then whole schedules into the results store (docs/benchmarks.md, "On a GPU"). Start it with
``benchmarks/gpu_sweep.sh``, which installs the carried wheels. Unless ``LONGTAIL_DATA`` names a data root, a
GPU sweep unpacks the data pack ``.gpu/data.tar.gz`` (``benchmarks/pack_gpu_data.py``) into ``.gpu/data`` and
reads CIFAR-10-LT there.

    bash benchmarks/gpu_sweep.sh --commit <hash>       # on the GPU machine, from the repo root
    OUT=/tmp/sweep PYTHON=.venv/bin/python bash benchmarks/gpu_sweep.sh --tiny --settings fp32 --later-recipes

Steps, most wanted first:

1. the CUDA tests: the tests named ``cuda`` in the test files that skip without CUDA;
2. the table without ``train.compile``: images/s of whole training epochs (``Trainer._train_epoch``, the code a
   run executes; the first epoch is warm-up, its seconds shown apart) of ResNet-32 CE and RIDE-3 on
   CIFAR-10-LT IF 100 in fp32, bf16 and bf16 + channels_last; then of each queued recipe as it trains
   (setting ``recipe``), whose epoch time estimates its run;
3. whole schedules of ``--recipes`` (seed 0) through ``benchmarks/reproduce.py``: RIDE-3, CE, LDAM-DRW;
4. the table's ``+compile`` rows (their warm-up epoch includes the compilation);
5. whole schedules of ``--later-recipes``: MDCS, SHIKE.

Each step runs in a process of its own, stopped when the budget runs out, so the command ends in time; a run
whose estimate (probed epoch time x its epochs) exceeds what is left is not started. What comes back from the
device: ``<out>/sweep.log`` (written by the .sh), ``<out>/step_times.jsonl`` (the table's rows) and the store
``<out>/results/<store>.jsonl``; run folders stay in a temporary folder.

``--tiny`` rehearses every step on the CPU: digits-lt at 8x8 pixels, one-epoch budgets, ``train.device=cpu``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import reproduce
import torch
from bench_ride import first_stage
from pack_gpu_data import MANIFEST

from longtail.config import load_recipe, total_epochs
from longtail.data.datasets import default_data_root
from longtail.methods.recipes import resolve

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_PACK = PROJECT_ROOT / ".gpu" / "data.tar.gz"
SEED = 0
STORE = "cifar10-lt-if100"
TINY_STORE = "digits-lt-if100"
TINY_OVERRIDES = [
    "data.name=digits-lt", "data.args.image_size=8", "data.val_per_class=2", "data.batch_size=32",
    "train.device=cpu",
]
TINY_BATCH = 32  # also for stages with a batch size of their own (RIDE's router: 512, more than digits-lt has)
TABLE_RECIPES = ("cifar10-lt-if100-ce", "ride-cifar10-lt-if100")
RECIPES = ("ride-cifar10-lt-if100", "cifar10-lt-if100-ce", "cifar10-lt-if100-ldam-drw")
LATER_RECIPES = ("mdcs-cifar10-lt-if100", "shike-cifar10-lt-if100")
PRECISIONS = {
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "bf16+channels_last": ["train.precision=bf16", "train.channels_last=true"],
}
COMPILED = "+compile"
SETTINGS = [*PRECISIONS, *(name + COMPILED for name in PRECISIONS)]
AS_RECIPE = "recipe"  # the recipe's own precision and layout: what its run trains with
CUDA_SKIP = "skipif(not torch.cuda.is_available()"
TESTS_LIMIT_S = 180
RESERVE_S = 15  # left at the end for stopping a step and printing the table
RUN_OVERHEAD = 1.15  # validation, checkpoints and the final test on top of the training epochs
RUN_START_S = 20  # start-up: imports, data, model


class Clock:
    """Seconds left of the sweep's budget, less the reserve for its end."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - RESERVE_S - self.elapsed()


def report(clock: Clock, step: str, status: str) -> None:
    print(f"[{clock.elapsed():5.0f} s] {step}: {status}", flush=True)


def sweep_overrides(recipe: str, tiny: bool) -> list[str]:
    """The overrides every step of the sweep gives ``recipe``: none, or those of the CPU rehearsal."""
    if not tiny:
        return []
    stages = load_recipe(recipe).get("stages") or []
    batches = [f"stages.{i}.batch_size={TINY_BATCH}" for i, stage in enumerate(stages) if "batch_size" in stage]
    return [*TINY_OVERRIDES, *batches]


def setting_overrides(setting: str) -> list[str]:
    if setting == AS_RECIPE:
        return []
    precision = setting.removesuffix(COMPILED)
    return [*PRECISIONS[precision], f"train.compile={str(setting.endswith(COMPILED)).lower()}"]


# ---------------------------------------------------------------- steps (each in its own process)


def epoch_times(recipe: str, overrides: list[str], epochs: int) -> dict[str, Any]:
    """Images/s and seconds of ``epochs`` training epochs of the recipe's first stage (the first: warm-up)."""
    with first_stage(recipe, overrides) as (trainer, run):
        stats = []
        for epoch in range(epochs):
            run.loader.set_epoch(epoch)
            trainer.method.start_epoch(trainer.model, run.criterion, epoch)
            stats.append(trainer._train_epoch(run, epoch, epoch))
        precision = trainer.precision
    timed = stats[1:] or stats
    return {
        "images_per_s": statistics.fmean(s["images_per_s"] for s in timed),
        "epoch_s": statistics.fmean(s["epoch_s"] for s in timed),
        "warmup_s": stats[0]["epoch_s"],
        "precision": precision,
    }


def time_settings(recipes: Sequence[str], settings: Sequence[str], tiny: bool, epochs: int, rows: Path) -> None:
    """Append a row to ``rows`` for every (recipe, setting), as soon as it is measured; log a failure and go on."""
    for recipe in recipes:
        overrides = sweep_overrides(recipe, tiny)
        device = reproduce.device_name(reproduce.training_device(resolve(recipe, overrides)))
        for setting in settings:
            try:
                measured = epoch_times(recipe, [*overrides, *setting_overrides(setting)], epochs)
            except Exception:  # one failing setting (a compiler error, say) leaves the others to measure
                traceback.print_exc()
                print(f"{recipe} {setting}: failed", flush=True)
                continue
            row = {"recipe": recipe, "setting": setting, **measured, "epochs": epochs, "device": device}
            with rows.open("a") as file:
                file.write(json.dumps(row) + "\n")
            print(f"{recipe} {setting}: {measured['images_per_s']:.0f} images/s", flush=True)


def train_recipe(
    store: str, recipe: str, tiny: bool, budget: int | None, runs: Path, results: Path, commit: str | None
) -> None:
    if commit and reproduce.code_commit() == "unknown":
        # The device machine gets the working tree without .git: the store line names the commit sent.
        reproduce.code_commit = lambda: commit
    reproduce.reproduce(store, [recipe], [SEED], budget, sweep_overrides(recipe, tiny), runs, results)


def run_bounded(target: Callable[..., None], args: tuple, seconds: float) -> str:
    """``target(*args)`` in a fresh process, stopped after ``seconds``: 'done', 'failed' or 'stopped'."""
    # spawn, not fork: each step starts its own CUDA context, and a stopped step frees its GPU memory.
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(max(seconds, 0.0))
    if process.is_alive():
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        return f"stopped after {seconds:.0f} s (budget)"
    return "done" if process.exitcode == 0 else f"failed (exit code {process.exitcode})"


def run_cuda_tests(clock: Clock) -> str:
    files = sorted(
        str(path.relative_to(PROJECT_ROOT)) for path in (PROJECT_ROOT / "tests").glob("test_*.py")
        if CUDA_SKIP in path.read_text()
    )
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", *files]
    limit = min(TESTS_LIMIT_S, clock.left())
    try:
        finished = subprocess.run(command, cwd=PROJECT_ROOT, timeout=max(limit, 1.0))
    except subprocess.TimeoutExpired:
        return f"stopped after {limit:.0f} s"
    return "passed" if finished.returncode == 0 else f"failed (pytest exit code {finished.returncode})"


# ---------------------------------------------------------------- the sweep


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def estimated_run_s(recipe: str, tiny: bool, budget: int | None, epoch_s: float) -> float:
    config = resolve(recipe, reproduce.run_overrides(sweep_overrides(recipe, tiny), budget, SEED))
    return RUN_START_S + RUN_OVERHEAD * total_epochs(config) * epoch_s


def table_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | setting | precision | images/s | warm-up epoch s |", "|---|---|---|---:|---:|"]
    lines += [
        f"| `{r['recipe']}` | {r['setting']} | {r['precision']} | {r['images_per_s']:.0f} | {r['warmup_s']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def environment() -> str:
    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}", torch.cuda.get_device_name()]
    else:
        parts.append("no CUDA device")
    return ", ".join(parts)


def use_data_pack() -> None:
    """Unpack the data pack beside itself and read the data there, unless ``LONGTAIL_DATA`` names a root."""
    if os.environ.get("LONGTAIL_DATA") or not DATA_PACK.is_file():
        return
    folder = DATA_PACK.with_name("data")
    folder.mkdir(exist_ok=True)
    subprocess.run(["tar", "xzf", str(DATA_PACK), "-C", str(folder)], check=True)
    os.environ["LONGTAIL_DATA"] = str(folder)  # the steps' processes inherit it


def check_device_and_data() -> None:
    """Refuse a GPU sweep without a GPU; unpack the data pack, and refuse one that lacks the sweep's seed."""
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; --tiny rehearses the sweep on the CPU.")
    use_data_pack()
    manifest = default_data_root() / MANIFEST
    if manifest.is_file():
        packed = json.loads(manifest.read_text())
        if SEED not in packed["seeds"]:
            raise SystemExit(f"error: {manifest} packs seeds {packed['seeds']}, not {SEED}: pack again.")
        print(f"data: {manifest.parent}, packed seeds {packed['seeds']}, {packed['train_images']:,} training images")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the log, table rows and store come here")
    parser.add_argument("--budget-s", type=float, default=540, help="wall-clock seconds for the whole sweep")
    parser.add_argument("--commit", help="the commit of the tree sent to the device (it travels without .git)")
    parser.add_argument("--settings", nargs="*", choices=SETTINGS, default=SETTINGS, help="the table's columns")
    parser.add_argument("--table-epochs", type=int, default=3, help="epochs per table row; the first is warm-up")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help="whole schedules before the compiled rows")
    parser.add_argument("--later-recipes", nargs="*", default=list(LATER_RECIPES), help="whole schedules after them")
    parser.add_argument("--runs", type=Path, help="run folders (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="rehearse on the CPU: digits-lt, one-epoch budgets")
    args = parser.parse_args(argv)

    clock = Clock(args.budget_s)
    print(environment())
    if not args.tiny:
        check_device_and_data()
    budget = 1 if args.tiny else None
    store = TINY_STORE if args.tiny else STORE
    results, rows = args.out / "results", args.out / "step_times.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    rows.unlink(missing_ok=True)

    report(clock, "CUDA tests", run_cuda_tests(clock))
    plain = [s for s in args.settings if not s.endswith(COMPILED)]
    compiled = [s for s in args.settings if s.endswith(COMPILED)]
    if plain:
        table = (TABLE_RECIPES, plain, args.tiny, args.table_epochs, rows)
        report(clock, "table", run_bounded(time_settings, table, clock.left()))
    queued = [*args.recipes, *args.later_recipes]
    if queued:
        report(clock, "probes", run_bounded(time_settings, (queued, [AS_RECIPE], args.tiny, args.table_epochs, rows), clock.left()))
    probed = {r["recipe"]: r["epoch_s"] for r in read_jsonl(rows) if r["setting"] == AS_RECIPE}

    with tempfile.TemporaryDirectory(prefix="longtail-gpu-runs-") as scratch:
        runs = args.runs or Path(scratch)

        def train_if_it_fits(recipe: str) -> None:
            estimate = estimated_run_s(recipe, args.tiny, budget, probed[recipe]) if recipe in probed else None
            if clock.left() <= 0 or (estimate is not None and estimate > clock.left()):
                needs = f"about {estimate:.0f} s" if estimate is not None else "time"
                report(clock, recipe, f"not started: needs {needs}, {max(clock.left(), 0):.0f} s left")
                return
            run_args = (store, recipe, args.tiny, budget, runs, results, args.commit)
            report(clock, recipe, run_bounded(train_recipe, run_args, clock.left()))

        for recipe in args.recipes:
            train_if_it_fits(recipe)
        if compiled:
            compiled_table = (TABLE_RECIPES, compiled, args.tiny, args.table_epochs, rows)
            report(clock, "table, compiled", run_bounded(time_settings, compiled_table, clock.left()))
        for recipe in args.later_recipes:
            train_if_it_fits(recipe)

    print(f"\nTraining throughput, {environment()}, {args.table_epochs} epochs a row (the first is warm-up):\n")
    print(table_markdown(read_jsonl(rows)))
    print(f"\nStore {results / (store + '.jsonl')}:")
    for line in read_jsonl(results / f"{store}.jsonl"):
        top1 = line["test_last"]["main"]["top1"]
        print(
            f"  {line['recipe']}: {line['epochs']} epochs, {line['wall_s']:.1f} s training, "
            f"{line['images_per_s']:.0f} images/s, top-1 {100 * top1:.2f}% ({line['device']}, {line['precision']})"
        )


if __name__ == "__main__":
    main()
