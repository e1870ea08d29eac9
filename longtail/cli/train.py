"""``longtail train --recipe NAME [key=value ...]``: train a recipe, resume a run, print an explained summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from longtail.config import apply_overrides, config_spelling, from_dict, parse_overrides
from longtail.errors import LongtailError

DEFAULT_RUNS = Path("runs")
spell_setting = config_spelling


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a recipe (resumes an unfinished run in --run-dir)",
        description="Train a recipe. Launch with `torchrun --nproc_per_node N -m longtail train ...` for DDP.",
    )
    parser.add_argument("--recipe", help="recipe name (`longtail recipes`) or path to a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05 budget=30")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<recipe>/<date-time>)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --run-dir")
    parser.add_argument("--force", action="store_true",
                        help="train again from scratch in --run-dir: deletes the files a run wrote there, keeps others")
    return parser


def run(args: argparse.Namespace) -> int:
    from longtail.distributed import broadcast_object, init_distributed
    from longtail.engine.trainer import resolve_device, train

    config = _config(args)
    context = init_distributed(resolve_device(config.train.device).type)
    run_dir = args.run_dir or broadcast_object(_default_run_dir(args.recipe), context)
    summary = train(config, run_dir, resume=args.resume, force=args.force)
    if context.is_main:
        from longtail.cli.run_summary import explain_run

        print(f"\n{explain_run(summary, run_dir)}")
    return 0


def _config(args: argparse.Namespace):
    from longtail.methods.recipes import resolve
    from longtail.methods.runs import load_checkpoint

    if args.recipe:
        return resolve(args.recipe, args.overrides)
    if args.resume and args.run_dir:
        stored = load_checkpoint(args.run_dir)["config"]
        return from_dict(apply_overrides(stored, parse_overrides(args.overrides)))
    raise LongtailError("Give --recipe NAME (see `longtail recipes`), or --run-dir DIR --resume to continue a run.")


def _default_run_dir(recipe: str) -> Path:
    return DEFAULT_RUNS / Path(recipe).stem / time.strftime("%Y%m%d-%H%M%S")
