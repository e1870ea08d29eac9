"""Train several recipes at the same epoch budget and print one All / Many / Medium / Few table.

Each recipe is trained with ``budget=E`` (its whole schedule compressed proportionally: epochs, warm-up,
milestones, DRW, stages) into ``RUNS/<recipe>``; an already finished run is reported without retraining,
so the script can be re-run to collect results. Accuracies are on the test split, for the last epoch (the
best epoch is chosen on the validation split, never on test); DeiT-LT's Head / Mid / Tail class-rank groups are
added as columns when a run reports them.

    python benchmarks/budget_compare.py --budget 30 cifar10-lt-if100-ce cifar10-lt-if100-ldam-drw ride-cifar10-lt-if100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from longtail.engine.trainer import train
from longtail.methods.recipes import resolve


SHOT_COLUMNS = {"top1": "All", "many": "Many", "medium": "Med", "few": "Few"}
# DeiT-LT's class-rank groups, reported by methods that define them (deit_lt).
RANK_COLUMNS = {"head": "Head", "mid": "Mid", "tail": "Tail"}


def train_or_load(recipe: str, budget: int, runs: Path, overrides: list[str]) -> tuple[dict, float | None]:
    run_dir = runs / recipe
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text()), None
    start = time.perf_counter()
    summary = train(resolve(recipe, [f"budget={budget}", "train.progress=false", *overrides]), run_dir)
    return summary, time.perf_counter() - start


def rows(recipe: str, summary: dict) -> list[tuple[str, dict]]:
    """One row per reported head of the last test evaluation (main first)."""
    heads = summary["last_test"]
    return [(recipe if name == "main" else f"{recipe} [{name}]", heads[name]) for name in heads]


def percent(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--budget", type=int, default=30, help="epochs of the main stage (default 30)")
    parser.add_argument("--runs", type=Path, default=Path("runs/budget"))
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every recipe")
    args = parser.parse_args()

    table = []
    for recipe in args.recipes:
        summary, seconds = train_or_load(recipe, args.budget, args.runs, args.set)
        wall = "" if seconds is None else f"{seconds / 60:6.1f}"
        table += [(name, metrics, wall) for name, metrics in rows(recipe, summary)]

    columns = dict(SHOT_COLUMNS)
    if any(key in metrics for _, metrics, _ in table for key in RANK_COLUMNS):
        columns.update(RANK_COLUMNS)
    title = f"recipe (budget {args.budget} epochs, test, last epoch)"
    width = max(len(title), *(len(name) for name, _, _ in table))
    print(f"{title:<{width}}  " + " ".join(f"{label:>5}" for label in columns.values()) + "  min")
    for name, metrics, wall in table:
        cells = " ".join(percent(metrics.get(key)) for key in columns)
        print(f"{name:<{width}}  {cells} {wall}")


if __name__ == "__main__":
    main()
