"""Class-balanced loss, Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.

    E_n = (1 - beta^n) / (1 - beta),   w_c = 1 / E_{n_c} (scaled so that sum_c w_c = C)
    CB(z, y) = w_y * L(z, y),   L = softmax cross-entropy or focal loss

The paper (and its official code) averages w_{y_i} L_i over the batch: ``reduction='mean'``, the default here.
``reduction='weighted_mean'`` divides by sum_i w_{y_i} instead, as ``F.cross_entropy(weight=w)`` does (the
CB baseline of the LDAM-DRW code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from longtail.errors import LongtailError
from longtail.losses.base import LongtailLoss, weighted_cross_entropy
from longtail.losses.focal import focal_loss
from longtail.losses.registry import register_loss

if TYPE_CHECKING:
    from longtail.models.output import ModelOutput

BASE_LOSSES = ("ce", "focal")


@register_loss("class_balanced")
class ClassBalancedLoss(LongtailLoss):
    """Cross-entropy (``base='ce'``) or focal loss (``base='focal'``, ``gamma``) with class-balanced weights."""

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        beta: float = 0.9999,
        base: str = "ce",
        gamma: float = 2.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(class_counts, drw_epoch=0, beta=beta, reduction=reduction)
        if base not in BASE_LOSSES:
            raise LongtailError(f"Unknown class_balanced base '{base}'. Valid bases: {', '.join(BASE_LOSSES)}.")
        if gamma < 0:
            raise LongtailError(f"focal gamma must be >= 0, got {gamma}.")
        self.base = base
        self.gamma = gamma

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
        self.check_inputs(output.logits, targets)
        weight = self.weights_like(output.logits)
        if self.base == "focal":
            return focal_loss(output.logits, targets, self.gamma, weight, self.reduction)
        return weighted_cross_entropy(output.logits, targets, weight, self.reduction)
