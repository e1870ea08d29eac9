"""Softmax cross-entropy, with label smoothing (Szegedy et al., CVPR 2016) and optional deferred re-weighting.

    loss = -sum_c q_c log softmax(z)_c,   q = (1 - eps) * onehot(y) + eps / C

Soft (B, C) targets (Mixup/CutMix) are accepted as q directly, smoothed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, weighted_cross_entropy
from longtail.losses.registry import register_loss

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput


@register_loss("ce")
class CrossEntropyLoss(LongtailLoss):
    """Cross-entropy on ``output.logits``; ``drw_epoch`` turns on class-balanced re-weighting (DRW)."""

    epoch_args = ("drw_epoch",)  # budget=E scales these options with the schedule

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        label_smoothing: float = 0.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
        reduction: str = "weighted_mean",
    ) -> None:
        super().__init__(class_counts, drw_epoch=drw_epoch, beta=beta, reduction=reduction)
        if not 0.0 <= label_smoothing < 1.0:
            raise LongtailError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        return weighted_cross_entropy(
            output.logits, targets, self.weights_like(output.logits), self.reduction, self.label_smoothing
        )
