"""Clustering metrics: accuracy after Hungarian matching, per-class and head / medium / tail accuracy, NMI,
ARI and macro-F1.

Clusters are matched to classes one-to-one by maximising the number of agreeing samples on the contingency
matrix (``scipy.optimize.linear_sum_assignment``); with more clusters than classes the unmatched clusters
count as wrong, with fewer the unmatched classes get no prediction. NMI and ARI use the raw cluster ids.
Head / medium / tail (as in P²OT / SP²OT): order the classes by training size (largest first; class-id order
when no sizes are given), head = the first ``int(0.3 C)``, tail = the last ``int(0.3 C)``, medium = the rest
(the official code takes ``int(0.4 C)`` for medium, which leaves classes out when 0.3 C is not whole); each
group's accuracy is the mean per-class accuracy over its classes present in the targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

from longtail.errors import LongtailError

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]
UNMATCHED = -1
# What a clustering run reports for each head (``P2OT.extra_metrics`` as ``cluster_<name>``).
CLUSTER_METRICS = ("acc", "mean_class_acc", "nmi", "ari", "macro_f1", "head", "medium", "tail")


def _labels(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise LongtailError(f"{name} must be a 1-d array of integer ids; got shape {array.shape}, {array.dtype}.")
    if array.size and array.min() < 0:
        raise LongtailError(f"{name} must be non-negative ids; got {array.min()}.")
    return array.astype(np.int64)


def contingency_matrix(clusters: ArrayLike, targets: ArrayLike, num_clusters: int | None = None,
                       num_classes: int | None = None) -> np.ndarray:
    """Counts (num_clusters, num_classes): entry (k, c) = samples in cluster k with class c."""
    clusters, targets = _labels(clusters, "clusters"), _labels(targets, "targets")
    if clusters.shape != targets.shape:
        raise LongtailError(f"clusters and targets differ in length: {clusters.size} vs {targets.size}.")
    num_clusters = int(clusters.max(initial=-1)) + 1 if num_clusters is None else num_clusters
    num_classes = int(targets.max(initial=-1)) + 1 if num_classes is None else num_classes
    if clusters.max(initial=-1) >= num_clusters or targets.max(initial=-1) >= num_classes:
        raise LongtailError(f"ids exceed num_clusters={num_clusters} or num_classes={num_classes}.")
    counts = np.bincount(clusters * num_classes + targets, minlength=num_clusters * num_classes)
    return counts.reshape(num_clusters, num_classes)


def hungarian_mapping(clusters: ArrayLike, targets: ArrayLike, num_clusters: int | None = None,
                      num_classes: int | None = None) -> np.ndarray:
    """Cluster -> class map (num_clusters,) maximising agreement; unmatched clusters map to -1."""
    counts = contingency_matrix(clusters, targets, num_clusters, num_classes)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(counts.shape[0], UNMATCHED, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def cluster_accuracy(clusters: ArrayLike, targets: ArrayLike) -> float:
    """Fraction of samples whose matched cluster equals their class."""
    clusters, targets = _labels(clusters, "clusters"), _labels(targets, "targets")
    return float((hungarian_mapping(clusters, targets)[clusters] == targets).mean())


def shot_groups_by_size(num_classes: int, train_counts: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Class ids of head (first 30% by size), medium (middle 40%) and tail (last 30%)."""
    if train_counts is not None and len(train_counts) != num_classes:
        raise LongtailError(f"train_counts has {len(train_counts)} entries for {num_classes} classes.")
    order = (np.arange(num_classes) if train_counts is None
             else np.argsort(-np.asarray(train_counts), kind="stable"))
    edge = int(num_classes * 0.3)
    return {"head": order[:edge], "medium": order[edge:num_classes - edge], "tail": order[num_classes - edge:]}


def clustering_metrics(clusters: ArrayLike, targets: ArrayLike, train_counts: Sequence[int] | None = None,
                       num_classes: int | None = None) -> dict:
    """All clustering metrics for cluster ids ``clusters`` against class ids ``targets``.

    Returns ``acc``, ``mean_class_acc``, ``nmi``, ``ari``, ``macro_f1``, ``head``, ``medium``, ``tail`` (floats
    in [0, 1]; a group without classes in the targets is NaN), ``per_class`` (NaN for absent classes) and
    ``mapping`` (cluster -> class, -1 if unmatched).
    """
    clusters, targets = _labels(clusters, "clusters"), _labels(targets, "targets")
    if num_classes is None:
        num_classes = len(train_counts) if train_counts is not None else int(targets.max(initial=-1)) + 1
    mapping = hungarian_mapping(clusters, targets, num_classes=num_classes)
    matched = mapping[clusters]
    class_sizes = np.bincount(targets, minlength=num_classes)
    hits = np.bincount(targets[matched == targets], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(class_sizes > 0, hits / class_sizes, np.nan)
    groups = shot_groups_by_size(num_classes, train_counts)
    metrics = {
        "acc": float((matched == targets).mean()),
        "mean_class_acc": float(np.nanmean(per_class)),
        "nmi": float(normalized_mutual_info_score(targets, clusters)),
        "ari": float(adjusted_rand_score(targets, clusters)),
        "macro_f1": float(f1_score(targets, matched, labels=np.flatnonzero(class_sizes), average="macro",
                                   zero_division=0)),
    }
    for name, classes in groups.items():
        present = per_class[classes][~np.isnan(per_class[classes])]
        metrics[name] = float(present.mean()) if present.size else float("nan")
    metrics["per_class"] = per_class
    metrics["mapping"] = mapping
    return metrics


def confusion_cluster_metrics(confusion: np.ndarray, train_counts: Sequence[int]) -> dict[str, float]:
    """``CLUSTER_METRICS`` of the predictions summarised by ``confusion`` (rows: class, columns: cluster)."""
    classes, clusters = np.nonzero(confusion)
    counts = confusion[classes, clusters]
    found = clustering_metrics(np.repeat(clusters, counts), np.repeat(classes, counts), train_counts,
                               confusion.shape[0])
    return {key: found[key] for key in CLUSTER_METRICS}
