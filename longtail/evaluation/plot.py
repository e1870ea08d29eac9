"""PNG plot of per-class accuracy against training class size (log axis), with the shot groups shaded."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longtail.evaluation.metrics import resolve_thresholds, shot_accuracies
from longtail.evaluation.report import atomic_write

SHADES = {"few": "#f4cccc", "medium": "#fff2cc", "many": "#d9ead3"}


def _group_spans(low: float, high: float, many: float, few: float) -> dict[str, tuple[float, float]]:
    spans = {"few": (low, few), "medium": (few, many), "many": (many, high)}
    return {name: (max(a, low), min(b, high)) for name, (a, b) in spans.items() if min(b, high) > max(a, low)}


def plot_per_class_accuracy(
    path: str | os.PathLike,
    per_class: Sequence[float] | np.ndarray,
    train_counts: Sequence[int],
    many: float | None = None,
    few: float | None = None,
    title: str | None = None,
) -> Path:
    """Scatter of each class's test accuracy (%) against its training images, shot groups shaded and their mean
    accuracy drawn as a dashed line; written to ``path`` as PNG (Agg canvas, no display needed). Thresholds
    not given are the dataset's own (``longtail.evaluation.metrics.resolve_thresholds``)."""
    train_counts, many, few = resolve_thresholds(train_counts, many, few)
    counts = np.asarray(train_counts, dtype=float)
    accuracy = 100.0 * np.asarray(per_class, dtype=float)
    low, high = counts.min() / 1.5, counts.max() * 1.5
    figure = Figure(figsize=(7.0, 4.0), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    group_means = shot_accuracies(np.asarray(per_class, dtype=float), train_counts, many, few)
    for name, (start, end) in _group_spans(low, high, many, few).items():
        mean = group_means[name]
        label = f"{name.capitalize()}: {mean * 100:.1f}%" if mean is not None else f"{name.capitalize()}: -"
        axes.axvspan(start, end, color=SHADES[name], alpha=0.8, zorder=0, label=label)
        if mean is not None:
            axes.hlines(100.0 * mean, start, end, colors="0.3", linestyles="dashed", zorder=1)
    tested = ~np.isnan(accuracy)
    axes.scatter(counts[tested], accuracy[tested], s=14, color="#1f4e79", zorder=2)
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(-3.0, 103.0)
    axes.set_xlabel("training images of the class (log scale)")
    axes.set_ylabel("test accuracy of the class (%)")
    axes.legend(loc="lower right", fontsize="small", framealpha=0.9)
    if title:
        axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write(path, lambda file: file.write(buffer.getvalue()), mode="wb")
