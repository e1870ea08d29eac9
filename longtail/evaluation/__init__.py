"""Evaluation: metrics (``evaluate``), several heads at once, results.json, the per-class plot, post-hoc fixes;
``longtail.evaluation.evaluator.Evaluator`` evaluates a trained model over a split."""

from __future__ import annotations

from longtail.evaluation.metrics import (
    confusion_matrix,
    evaluate,
    evaluate_heads,
    expected_calibration_error,
    per_class_accuracy,
    shot_accuracies,
    topk_accuracy,
)
from longtail.evaluation.plot import plot_per_class_accuracy
from longtail.evaluation.posthoc import posthoc_logit_adjust, select_tau, tau_normalized_weight
from longtail.evaluation.predictions import LogitCollector, output_heads
from longtail.evaluation.report import atomic_write, format_shot_table, read_results, write_results

__all__ = [
    "LogitCollector",
    "atomic_write",
    "confusion_matrix",
    "evaluate",
    "evaluate_heads",
    "expected_calibration_error",
    "format_shot_table",
    "output_heads",
    "per_class_accuracy",
    "plot_per_class_accuracy",
    "posthoc_logit_adjust",
    "read_results",
    "select_tau",
    "shot_accuracies",
    "tau_normalized_weight",
    "topk_accuracy",
    "write_results",
]
