"""What ``longtail train`` prints at the end of a run: the test accuracy of its weights, each column
explained, and where to look next (the run folder, the plot, the commands that evaluate, predict, export).
The full table of every head and split is ``longtail eval RUN``; the numbers are in ``summary.json``."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path
from typing import Any

from longtail.evaluation.report import read_results

SHOTS = ("many", "medium", "few")
WIDTH = 110
PER_IMAGE_MEANING = {
    "experts": "{:.2f} experts run per image (RIDE's router)",
    "gmacs": "{:.3g} billion multiply-adds per image",
}
HEAD_MEANING = {
    "all_experts": "every expert, not routed",
    "tau_norm": "tau-normalised classifier",
    "logit_adjusted": "post-hoc logit adjustment",
    "iif": "post-hoc IIF",
    "cls": "CLS head",
    "dist": "DIST head",
    "stage1": "before stage 2",
    "no_meta": "without meta-information",
}


def explain_run(summary: dict[str, Any], run_dir: Path) -> str:
    """The explained summary of a finished run from ``train``'s summary dictionary."""
    split = "test" if any(key.endswith("_test") for key in summary) else "val"
    weights = [which for which in ("best", "last") if f"{which}_{split}" in summary]
    reports = {which: _report(summary, which, split) for which in weights}
    first = reports[weights[0]]
    lines = [f"{split.capitalize()} accuracy, % ({first['dataset']}, {first['metrics']['num_samples']:,} images):", ""]
    lines += _table({f"{which} weights (epoch {reports[which]['epoch']})": summary[f"{which}_{split}"]["main"]
                     for which in weights}, first["metrics"]["shot_sizes"])
    lines += ["", *_explanations(first["metrics"]["thresholds"], summary, split)]
    lines += _per_image(summary[f"{weights[0]}_{split}"]["main"])
    lines += _other_heads(summary[f"{weights[0]}_{split}"], weights[0], split)
    if summary.get("expected"):
        lines.append(f"Published: {summary['expected']}")
    lines += ["", *_next_steps(summary, run_dir, f"{weights[0]} {split}")]
    return "\n".join(lines)


def _report(summary: dict[str, Any], which: str, split: str) -> dict[str, Any]:
    return read_results(Path(summary["plots"][f"{which} {split}"]).with_name("results.json"))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(rows: dict[str, dict[str, Any]], sizes: dict[str, int]) -> list[str]:
    header = ["", "All", *(f"{shot.capitalize()} ({sizes[shot]})" for shot in SHOTS)]
    cells = [header] + [[name, *(_percent(row[key]) for key in ("top1", *SHOTS))] for name, row in rows.items()]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return ["  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:]))]).rstrip()
            for line in cells]


def _explanations(thresholds: dict[str, float], summary: dict[str, Any], split: str) -> list[str]:
    many, few = thresholds["many"], thresholds["few"]
    best = summary.get("best_metric_name") or "selection score"
    text = (
        f"All: the share of the {split} images classified right. Many / Medium / Few: the mean accuracy of the "
        f"classes with more than {many:g}, {few:g} to {many:g}, fewer than {few:g} training images (their number "
        f"in brackets; '-' for an empty group). Best weights: the epoch with the best {best} (never the test "
        "set); last: the end of training."
    )
    return textwrap.wrap(text, WIDTH)


def _per_image(main: dict[str, Any]) -> list[str]:
    averages = [meaning.format(main[name]) for name, meaning in PER_IMAGE_MEANING.items() if name in main]
    return [f"On average: {'; '.join(averages)}."] if averages else []


def _other_heads(heads: dict[str, dict[str, Any]], which: str, split: str) -> list[str]:
    others = [f"{name} ({_head_meaning(name)}) {_percent(metrics['top1'])}"
              for name, metrics in heads.items() if name != "main"]
    if not others:
        return []
    return textwrap.wrap(f"Other predictions of the {which} weights (All, %): {', '.join(others)}.", WIDTH)


def _head_meaning(name: str) -> str:
    if name.startswith("expert_"):
        return f"expert {name.removeprefix('expert_')} alone"
    return HEAD_MEANING.get(name, "see the method's docs")


def _next_steps(summary: dict[str, Any], run_dir: Path, plot_key: str) -> list[str]:
    run = shlex.quote(str(run_dir))
    weights = shlex.quote(str(run_dir / ("best.pt" if (run_dir / "best.pt").is_file() else "checkpoint.pt")))
    return [
        f"Run folder:  {run_dir}  (config.yaml, checkpoint.pt, best.pt, log.jsonl, summary.json, report/)",
        f"Plot:        {summary['plots'][plot_key]}  (accuracy of each class against its training images)",
        f"Evaluate:    longtail eval {run}  (every head on the val and test splits)",
        f"Predict:     longtail predict {weights} IMAGE...",
        f"Export:      longtail export {run} --format onnx",
    ]
