"""``longtail eval RUN_DIR_OR_CHECKPOINT``: the All / Many / Medium / Few table of a trained model.

A run directory is evaluated with its last weights and, when it has them, its best-validation weights; a
checkpoint file with its own weights. ``key=value`` arguments change the evaluation settings (post-hoc
``eval.tau_norm`` / ``eval.logit_adjust_tau``, where the data is: ``data.root``, ``data.args.image_root``, ...;
``data.eval_batch_size``, ``train.device``, ...)
and method options that only act at prediction (e.g. RIDE's ``method.args.router_threshold=0.3``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.cli.arguments import DATA_LOCATION_KEYS, checked_overrides
from longtail.config import apply_overrides, config_spelling, from_dict, parse_overrides
from longtail.errors import LongtailError

ALLOWED_PREFIXES = (
    "eval.", *DATA_LOCATION_KEYS, "data.eval_batch_size", "data.num_workers", "train.device", "train.precision",
    "method.args."
)
SPLITS = ("val", "test")
spell_setting = config_spelling


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a run directory or checkpoint")
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.tau_norm=1.0 data.root=/data")
    parser.add_argument("--split", choices=(*SPLITS, "both"), default="both", help="split(s) to evaluate")
    parser.add_argument("--output", type=Path, help="also write results.json and the plot of each row under this folder")
    return parser


def run(args: argparse.Namespace) -> int:
    from longtail.distributed import DistContext
    from longtail.engine.trainer import resolve_device
    from longtail.evaluation.evaluator import Evaluator, format_table, table_rows, write_split_report
    from longtail.methods import runs
    from longtail.methods.context import create_datasets_for

    weights = _weights(args.path)
    state = runs.load_checkpoint(next(iter(weights.values())))
    overrides = checked_overrides("eval", args.overrides, ALLOWED_PREFIXES)
    config = from_dict(apply_overrides(state["config"], parse_overrides(overrides)))
    device = resolve_device(config.train.device)
    splits = create_datasets_for(config)
    rows = {}
    for which, path in weights.items():
        trained = runs.load_trained_model(path, device, config)
        evaluator = Evaluator(config, trained.method, splits.info, device, DistContext())
        for split in SPLITS if args.split == "both" else (args.split,):
            dataset = getattr(splits, split)
            if dataset is None:
                continue
            results = evaluator.evaluate(trained.model, dataset)
            name = f"{which} {split}".strip()
            rows.update(table_rows(name, results))
            if args.output:
                extra = {"weights": which or "checkpoint", "split": split, "checkpoint": str(path)}
                plot = write_split_report(args.output / name.replace(" ", "_"), results, splits.info, extra)
                print(f"{name}: {plot}")
    if not rows:
        raise LongtailError(f"{config.data.name} has no {args.split} split to evaluate.")
    print(format_table(rows))
    return 0


def _weights(path: Path) -> dict[str, Path]:
    from longtail.methods.runs import BEST, CHECKPOINT

    if not path.is_dir():
        return {"": path}
    found = {"last": path / CHECKPOINT, "best": path / BEST}
    return {which: file for which, file in found.items() if file.is_file()} or {"last": path / CHECKPOINT}

