"""Classification metrics for long-tailed recognition, computed in one vectorised pass over the logits.

``evaluate`` returns (accuracies are fractions in [0, 1]):

- ``top1``, ``top5`` (None when C < 5), ``balanced_accuracy`` (mean per-class accuracy);
- ``per_class`` (C,) accuracy of each class, NaN for a class without test samples;
- ``many`` / ``medium`` / ``few``: mean per-class accuracy of the classes with more than ``many``, ``few`` to
  ``many``, fewer than ``few`` training images (``longtail.data.shaping.shot_groups``); None for an empty group.
  The thresholds default to the dataset's own: a ``DatasetInfo``'s ``shot_thresholds`` when one is given in
  place of the counts, else the rule every dataset uses (``longtail.data.shaping.default_thresholds`` of the
  largest count: 100 / 20, scaled down for datasets with fewer than 500 images in their largest class);
- ``macro_f1`` (scikit-learn, over the classes that occur in the targets or the predictions);
- ``ece``: expected calibration error of the top-1 confidence with 15 equal-width bins (Guo et al., ICML
  2017): sum_b |B_b| / N * |acc(B_b) - conf(B_b)|, bin b = (b/15, (b+1)/15];
- ``nll``: mean negative log-likelihood (natural log);
- ``confusion`` (C, C) int64, rows = true class, columns = predicted class.

``rank_groups`` / ``rank_group_accuracies``: Head / Mid / Tail by class rank at two cut points, as DeiT-LT
reports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from longtail.data.shaping import default_thresholds, shot_groups
from longtail.errors import LongtailError

if TYPE_CHECKING:
    from longtail.data.containers import DatasetInfo

ECE_BINS = 15
SHOTS = ("many", "medium", "few")
ArrayLike = torch.Tensor | np.ndarray | Sequence
TrainCounts = Union[Sequence[int], "DatasetInfo"]


def resolve_thresholds(
    train_counts: TrainCounts, many: float | None, few: float | None
) -> tuple[list[int], float, float]:
    """(per-class training counts, many, few): thresholds not given are the dataset's own (see the module
    docstring)."""
    info_thresholds = getattr(train_counts, "shot_thresholds", None)
    counts = [int(n) for n in getattr(train_counts, "train_counts", train_counts)]
    if not counts:
        raise LongtailError("train_counts is empty; pass the training set's per-class image counts.")
    default_many, default_few = info_thresholds or default_thresholds(max(counts))
    return counts, default_many if many is None else many, default_few if few is None else few


def _as_logits(logits: ArrayLike) -> torch.Tensor:
    logits = torch.as_tensor(logits).detach()
    if not logits.is_floating_point():
        raise LongtailError(f"logits must be floating point, got {logits.dtype}.")
    return logits if logits.dtype == torch.float64 else logits.float()


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, num_train_classes: int) -> None:
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0] or logits.shape[0] == 0:
        raise LongtailError(
            f"evaluate needs logits (N, C) and targets (N,) with N > 0, got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}."
        )
    num_classes = logits.shape[1]
    if num_train_classes != num_classes:
        raise LongtailError(
            f"train_counts has {num_train_classes} classes but the logits have {num_classes}; pass the training "
            "set's per-class counts of the same dataset."
        )
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise LongtailError(
            f"targets must be class indices in [0, {num_classes}), got {int(targets.min())}..{int(targets.max())}."
        )


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of samples whose target is among the k highest logits."""
    topk = logits.topk(k, dim=1).indices
    return (topk == targets[:, None]).any(dim=1).double().mean().item()


def per_class_accuracy(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """Accuracy of each class (C,), NaN for classes without samples."""
    support = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets[predictions == targets], minlength=num_classes).double()
    return (hits / support).cpu().numpy()


def shot_accuracies(
    per_class: np.ndarray, train_counts: TrainCounts, many: float | None = None, few: float | None = None
) -> dict[str, float | None]:
    """Mean per-class accuracy of the many/medium/few-shot classes; None where a group has no tested class."""
    train_counts, many, few = resolve_thresholds(train_counts, many, few)
    result: dict[str, float | None] = {}
    for name, classes in shot_groups(train_counts, many, few).items():
        tested = per_class[classes][~np.isnan(per_class[classes])]
        result[name] = float(tested.mean()) if tested.size else None
    return result


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence with ``bins`` equal-width bins (lower edge excluded, upper edge included)."""
    confidence, predictions = probabilities.max(dim=1)
    inner_edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)[1:-1]
    bin_index = torch.bucketize(confidence, inner_edges)
    correct = (predictions == targets).to(confidence.dtype)
    # A matrix product instead of bincount(weights=...), which has no deterministic CUDA kernel.
    gap_sums = (correct - confidence) @ F.one_hot(bin_index, bins).to(confidence.dtype)
    return (gap_sums.abs().sum() / confidence.numel()).item()


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    flat = torch.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu().numpy()


def evaluate(
    logits: ArrayLike,
    targets: ArrayLike,
    train_counts: TrainCounts,
    many: float | None = None,
    few: float | None = None,
) -> dict[str, Any]:
    """All metrics of ``logits`` (N, C) against ``targets`` (N,); see the module docstring for the keys.

    ``train_counts``: the training set's per-class image counts, or its ``DatasetInfo`` (whose shot
    thresholds are then the default).
    """
    logits = _as_logits(logits)
    targets = torch.as_tensor(targets, device=logits.device).long()
    train_counts, many, few = resolve_thresholds(train_counts, many, few)
    _check_inputs(logits, targets, len(train_counts))
    num_classes = logits.shape[1]
    predictions = logits.argmax(dim=1)
    per_class = per_class_accuracy(predictions, targets, num_classes)
    shots = shot_accuracies(per_class, train_counts, many, few)
    groups = shot_groups(train_counts, many, few)
    targets_np, predictions_np = targets.cpu().numpy(), predictions.cpu().numpy()
    return {
        "num_samples": int(targets.numel()),
        "num_classes": num_classes,
        "top1": (predictions == targets).double().mean().item(),
        "top5": topk_accuracy(logits, targets, 5) if num_classes >= 5 else None,
        "balanced_accuracy": float(np.nanmean(per_class)),
        **shots,
        "shot_sizes": {name: int(groups[name].size) for name in SHOTS},
        "thresholds": {"many": many, "few": few},
        "macro_f1": float(f1_score(targets_np, predictions_np, average="macro", zero_division=0)),
        "ece": expected_calibration_error(logits.softmax(dim=1), targets),
        "nll": F.cross_entropy(logits, targets).item(),
        "per_class": per_class,
        "train_counts": train_counts,
        "confusion": confusion_matrix(predictions, targets, num_classes),
    }


def evaluate_heads(
    heads: Mapping[str, ArrayLike],
    targets: ArrayLike,
    train_counts: TrainCounts,
    many: float | None = None,
    few: float | None = None,
) -> dict[str, dict[str, Any]]:
    """``evaluate`` for each head's logits, e.g. ``{'main': ..., 'cls': ..., 'dist': ..., 'expert_0': ...}``."""
    return {name: evaluate(logits, targets, train_counts, many, few) for name, logits in heads.items()}


def rank_groups(train_counts: Sequence[int], cut_points: Sequence[int]) -> dict[str, np.ndarray]:
    """Head / Mid / Tail by rank (DeiT-LT's groups): the classes ranked by descending training count (ties by
    class index), cut at the two ranks ``cut_points``. On CIFAR-LT the rank is the class index; on ImageNet-LT
    and iNat it is the official ``class_map`` order (classes sorted by frequency)."""
    first, second = cut_points
    if not 0 < first < second < len(train_counts):
        raise LongtailError(
            f"Rank-group cut points must satisfy 0 < first < second < {len(train_counts)} (the number of classes), "
            f"got {list(cut_points)}."
        )
    ranked = np.argsort(-np.asarray(train_counts), kind="stable")
    return {"head": ranked[:first], "mid": ranked[first:second], "tail": ranked[second:]}


def rank_group_accuracies(per_class: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Mean per-class accuracy of each group (classes without test samples left out; None if none is left)."""
    result: dict[str, float | None] = {}
    for name, classes in groups.items():
        tested = per_class[classes][~np.isnan(per_class[classes])]
        result[name] = float(tested.mean()) if tested.size else None
    return result
